// Relative-L1 probe for cache policies: the two sums Σ|a − b| and Σ|b|, as one f32 pair per block
// (partial[2·block], partial[2·block + 1]); the launcher reads the pairs back and adds them in
// block order on the host.
//
// Deterministic by construction: a thread's elements, the shuffle tree and the block's pair depend
// only on n and the grid, never on scheduling (float atomics would add the blocks' sums in
// whatever order they finish, and an adaptive cache policy comparing the ratio against a
// threshold could then decide differently on two identical runs). Memory-bound: 16-byte vectors,
// per-thread f32 partial sums, a warp-shuffle + shared-memory block reduction. The grid is capped
// (REL_L1_MAX_BLOCKS) so the pairs read back stay few; each thread's partial covers at most a few
// thousand elements.
#include "common.cuh"

namespace rel_l1 {

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

template <typename T> __device__ __forceinline__ void run(const RelL1Params& p) {
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

    __shared__ float red[2][REL_L1_THREADS / 32];
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
            p.partial[2 * blockIdx.x] = diff;
            p.partial[2 * blockIdx.x + 1] = norm;
        }
    }
}

}  // namespace rel_l1

extern "C" __global__ void __launch_bounds__(REL_L1_THREADS) rel_l1_bf16(RelL1Params p) { rel_l1::run<bf16>(p); }
extern "C" __global__ void __launch_bounds__(REL_L1_THREADS) rel_l1_f16(RelL1Params p) { rel_l1::run<f16>(p); }
extern "C" __global__ void __launch_bounds__(REL_L1_THREADS) rel_l1_f32(RelL1Params p) { rel_l1::run<float>(p); }

DELTADIT_SIM_REGISTER(rel_l1,
    DELTADIT_SIM_KERNEL(rel_l1_bf16, RelL1Params)
    DELTADIT_SIM_KERNEL(rel_l1_f16, RelL1Params)
    DELTADIT_SIM_KERNEL(rel_l1_f32, RelL1Params))
