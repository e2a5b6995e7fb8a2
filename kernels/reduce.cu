// Relative-L1 probe for cache policies: out[0] += Σ|a − b|, out[1] += Σ|b| (f32 atomics; the
// launcher zeroes `out` first and reads the two floats back).
//
// Memory-bound: 16-byte vectors, per-thread f32 partial sums, a warp-shuffle + shared-memory block
// reduction and one pair of atomics per block. The grid is capped (REDUCE_MAX_BLOCKS) so atomics
// stay few; each thread's partial covers at most a few thousand elements, which keeps the f32 sums
// well within the probe's needs (the result is a ratio compared against a threshold).
#include "common.cuh"

namespace reduce {

// The 16-byte vector of E elements and the scalar element, as f32.
template <typename T> struct Elem {
    static constexpr int E = 16 / sizeof(T);
    __device__ __forceinline__ static float get(const T* p, int64_t i) { return to_f32(p[i]); }
    __device__ __forceinline__ static void vec(const T* p, int64_t v, float (&f)[E]) {
        Chunk<T, E> c;
        c.load(p + v * E);
        c.unpack(f);
    }
};

template <> struct Elem<float> {
    static constexpr int E = 4;
    __device__ __forceinline__ static float get(const float* p, int64_t i) { return p[i]; }
    __device__ __forceinline__ static void vec(const float* p, int64_t v, float (&f)[4]) {
        const float4 r = reinterpret_cast<const float4*>(p)[v];
        f[0] = r.x, f[1] = r.y, f[2] = r.z, f[3] = r.w;
    }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T> __device__ __forceinline__ void rel_l1(const RelL1Params& p) {
    using L = Elem<T>;
    constexpr int E = L::E;
    const T* a = static_cast<const T*>(p.a);
    const T* b = static_cast<const T*>(p.b);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

    float diff = 0.0f, norm = 0.0f;
    const bool vec = (((uintptr_t)a | (uintptr_t)b) & 15) == 0;
    const int64_t nv = vec ? p.n / E : 0;
    for (int64_t v = tid; v < nv; v += stride) {
        float fa[E], fb[E];
        L::vec(a, v, fa);
        L::vec(b, v, fb);
#pragma unroll
        for (int k = 0; k < E; ++k) {
            diff += fabsf(fa[k] - fb[k]);
            norm += fabsf(fb[k]);
        }
    }
    for (int64_t i = nv * E + tid; i < p.n; i += stride) {
        const float fa = L::get(a, i), fb = L::get(b, i);
        diff += fabsf(fa - fb);
        norm += fabsf(fb);
    }

    __shared__ float red[2][REDUCE_THREADS / 32];
    diff = warp_sum(diff);
    norm = warp_sum(norm);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        red[0][warp] = diff;
        red[1][warp] = norm;
    }
    __syncthreads();
    if (warp == 0) {
        const int nwarps = blockDim.x / 32;
        diff = lane < nwarps ? red[0][lane] : 0.0f;
        norm = lane < nwarps ? red[1][lane] : 0.0f;
        diff = warp_sum(diff);
        norm = warp_sum(norm);
        if (lane == 0) {
            atomicAdd(p.out, diff);
            atomicAdd(p.out + 1, norm);
        }
    }
}

}  // namespace reduce

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) rel_l1_bf16(RelL1Params p) { reduce::rel_l1<bf16>(p); }
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) rel_l1_f16(RelL1Params p) { reduce::rel_l1<f16>(p); }
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) rel_l1_f32(RelL1Params p) { reduce::rel_l1<float>(p); }

DELTADIT_SIM_REGISTER(reduce,
    DELTADIT_SIM_KERNEL(rel_l1_bf16, RelL1Params)
    DELTADIT_SIM_KERNEL(rel_l1_f16, RelL1Params)
    DELTADIT_SIM_KERNEL(rel_l1_f32, RelL1Params))
