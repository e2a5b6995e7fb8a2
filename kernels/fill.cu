// Fill a buffer with one bit pattern: the tests poison outputs with NaN before a kernel runs, so an
// element the kernel under test forgets to write shows up. Also the build's smoke kernel.
// copy_rows_*: a strided block copy (rows of a column range into another matrix's columns).
#include "common.cuh"

template <typename U> __device__ __forceinline__ void fill_impl(const FillParams& p) {
    U* x = static_cast<U*>(p.x);
    const U v = static_cast<U>(p.value);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) x[i] = v;
}

extern "C" __global__ void __launch_bounds__(FILL_THREADS) fill_u16(FillParams p) { fill_impl<uint16_t>(p); }
extern "C" __global__ void __launch_bounds__(FILL_THREADS) fill_u32(FillParams p) { fill_impl<uint32_t>(p); }

// One thread per element of the block; the column index advances without a division per item.
template <typename U> __device__ __forceinline__ void copy_rows_impl(const CopyRowsParams& p) {
    const U* src = static_cast<const U*>(p.src);
    U* dst = static_cast<U*>(p.dst);
    const int64_t n = p.rows * p.cols;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t r = i / p.cols, c = i % p.cols;
    const int64_t dr = stride / p.cols, dc = stride % p.cols;
    for (; i < n; i += stride) {
        dst[r * p.dst_ld + c] = src[r * p.src_ld + c];
        r += dr;
        c += dc;
        if (c >= p.cols) {
            c -= p.cols;
            ++r;
        }
    }
}

extern "C" __global__ void __launch_bounds__(FILL_THREADS) copy_rows_u16(CopyRowsParams p) { copy_rows_impl<uint16_t>(p); }
extern "C" __global__ void __launch_bounds__(FILL_THREADS) copy_rows_u32(CopyRowsParams p) { copy_rows_impl<uint32_t>(p); }

DELTADIT_SIM_REGISTER(fill,
    DELTADIT_SIM_KERNEL(fill_u16, FillParams)
    DELTADIT_SIM_KERNEL(fill_u32, FillParams)
    DELTADIT_SIM_KERNEL(copy_rows_u16, CopyRowsParams)
    DELTADIT_SIM_KERNEL(copy_rows_u32, CopyRowsParams))
