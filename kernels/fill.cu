// Fill a buffer with one bit pattern: the tests poison outputs with NaN before a kernel runs, so an
// element the kernel under test forgets to write shows up. Also the build's smoke kernel.
#include "common.cuh"

template <typename U> __device__ __forceinline__ void fill_impl(const FillParams& p) {
    U* x = static_cast<U*>(p.x);
    const U v = static_cast<U>(p.value);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) x[i] = v;
}

extern "C" __global__ void __launch_bounds__(FILL_THREADS) fill_u16(FillParams p) { fill_impl<uint16_t>(p); }
extern "C" __global__ void __launch_bounds__(FILL_THREADS) fill_u32(FillParams p) { fill_impl<uint32_t>(p); }

DELTADIT_SIM_REGISTER(fill,
    DELTADIT_SIM_KERNEL(fill_u16, FillParams)
    DELTADIT_SIM_KERNEL(fill_u32, FillParams))
