// Test kernels of the shim self-tests. They compile under the shim (sim/selftest.cpp) and under
// nvcc (sim/gpu_selftest.cu), so the same kernels check the emulated layouts on hardware.
// All take one SimTestParams; the host drivers are in sim/selftest_cases.h.
#pragma once
#include "common.cuh"
#include "wgmma.cuh"

struct SimTestParams {
    const void* in0;
    const void* in1;
    const void* in2;
    void* out0;
    void* out1;
    void* out2;
    int n;       // elements / threads, per kernel
    int phases;  // loop trips
    int mode;    // kernel-specific variant
    int width;   // shuffle width
};

namespace simtest {

__device__ __forceinline__ unsigned block_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ unsigned block_threads() { return blockDim.x * blockDim.y * blockDim.z; }

// A static __shared__ array declared in a device function template.
template <int K> __device__ unsigned exchange(unsigned v, unsigned tid, unsigned n, int i) {
    __shared__ unsigned s[K];
    s[tid] = v;
    __syncthreads();
    unsigned r = s[(tid * 3 + unsigned(i)) % n];
    __syncthreads();
    return r;
}

// Whether thread t is still running at phase i of simtest_exited.
__device__ __host__ inline bool exited_alive(unsigned t, int i) {
    if (t % 3 == 0 || (t >= 32 && t < 64)) return false;
    return !(t % 5 == 1 && i >= 3);
}
__device__ __host__ inline unsigned exited_partner(unsigned t, int i, unsigned n) {
    for (unsigned k = 1; k <= n; ++k) {
        unsigned u = (t + unsigned(i) + k) % n;
        if (exited_alive(u, i)) return u;
    }
    return t;
}

template <typename T> __device__ void store_bits(void* out, unsigned idx, T v) {
    memcpy(static_cast<unsigned char*>(out) + size_t(idx) * sizeof(T), &v, sizeof(T));
}

template <typename T> __device__ T shfl_mode(int mode, T v, int b, int w) {
    switch (mode) {
    case 0: return __shfl_sync(0xffffffffu, v, b, w);
    case 1: return __shfl_up_sync(0xffffffffu, v, unsigned(b), w);
    case 2: return __shfl_down_sync(0xffffffffu, v, unsigned(b), w);
    default: return __shfl_xor_sync(0xffffffffu, v, b, w);
    }
}

}  // namespace simtest

// out0[thread][8]: threadIdx, blockIdx, blockDim, gridDim packed.
__global__ void simtest_geometry(SimTestParams p) {
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned g = block * simtest::block_threads() + simtest::block_tid();
    unsigned* o = static_cast<unsigned*>(p.out0) + size_t(g) * 8;
    o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
    o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
    o[6] = blockDim.x * 1000000u + blockDim.y * 1000u + blockDim.z;
    o[7] = gridDim.x * 1000000u + gridDim.y * 1000u + gridDim.z;
}

// Data through dynamic and static shared memory over many barrier phases; then the
// __syncthreads_{count,and,or} reductions.
__global__ void simtest_barrier(SimTestParams p) {
    unsigned n = simtest::block_threads(), tid = simtest::block_tid();
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned* dyn = dynamic_smem<unsigned>();
    unsigned v = static_cast<const unsigned*>(p.in0)[block * n + tid];
    for (int i = 0; i < p.phases; ++i) {
        dyn[tid] = v;
        __syncthreads();
        v = v * 1664525u + 1013904223u + dyn[(tid + 7u * unsigned(i) + 1u) % n];
        __syncthreads();
        v ^= simtest::exchange<1024>(v, tid, n, i);
    }
    static_cast<unsigned*>(p.out0)[block * n + tid] = v;
    int c = __syncthreads_count(v & 1);
    int a = __syncthreads_and(v & 1);
    int o = __syncthreads_or(v & 1);
    int* r = static_cast<int*>(p.out1) + (block * n + tid) * 3;
    r[0] = c, r[1] = a, r[2] = o;
}

// Threads exit early (a whole warp, every third thread, others mid-loop); the survivors keep
// exchanging data through shared memory across barriers.
__global__ void simtest_exited(SimTestParams p) {
    unsigned n = blockDim.x, tid = threadIdx.x;
    unsigned* s = dynamic_smem<unsigned>();
    unsigned* out = static_cast<unsigned*>(p.out0) + blockIdx.x * n;
    if (!simtest::exited_alive(tid, 0)) return;
    unsigned v = tid * 2654435761u + blockIdx.x;
    for (int i = 0; i < p.phases; ++i) {
        if (!simtest::exited_alive(tid, i)) return;
        s[tid] = v;
        __syncthreads();
        v = v * 31u + s[simtest::exited_partner(tid, i, n)];
        __syncthreads();
    }
    out[tid] = v;
}

// Shuffles of several types; in0: u64 per thread, in1: int b per thread (srcLane/delta/laneMask).
// out0[thread][6] as u64 slots: u32, float, int, u64, double, bf16x2 results.
// out1[thread][2]: a shuffle in warp 1 only, and two half-warp groups with partial masks.
__global__ void simtest_shfl(SimTestParams p) {
    unsigned tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    uint64_t x = static_cast<const uint64_t*>(p.in0)[tid];
    int b = static_cast<const int*>(p.in1)[tid];
    uint32_t xu = uint32_t(x);
    float xf = __uint_as_float(uint32_t(x >> 32));
    int xi = int(uint32_t(x >> 16));
    double xd = __longlong_as_double((long long)(x * 0x9E3779B97F4A7C15ull));
    __nv_bfloat162 xb;
    memcpy(static_cast<void*>(&xb), &xu, 4);
    uint64_t* o = static_cast<uint64_t*>(p.out0) + size_t(tid) * 6;
    for (int k = 0; k < 6; ++k) o[k] = 0;
    simtest::store_bits(o + 0, 0, simtest::shfl_mode(p.mode, xu, b, p.width));
    simtest::store_bits(o + 1, 0, simtest::shfl_mode(p.mode, xf, b, p.width));
    simtest::store_bits(o + 2, 0, simtest::shfl_mode(p.mode, xi, b, p.width));
    simtest::store_bits(o + 3, 0, simtest::shfl_mode(p.mode, x, b, p.width));
    simtest::store_bits(o + 4, 0, simtest::shfl_mode(p.mode, xd, b, p.width));
    simtest::store_bits(o + 5, 0, simtest::shfl_mode(p.mode, xb, b, p.width));
    __syncthreads();
    uint32_t* o1 = static_cast<uint32_t*>(p.out1) + size_t(tid) * 2;
    o1[0] = 0;
    if (warp == 1) o1[0] = __shfl_xor_sync(0xffffffffu, xu, 5);  // other warps wait at the barrier
    __syncthreads();
    if (lane < 16) o1[1] = __shfl_down_sync(0x0000ffffu, xu, 3, 16);
    else o1[1] = __shfl_up_sync(0xffff0000u, xu, 2, 16);
}

// Votes and friends; in0: int pred per thread. out0[thread][8].
__global__ void simtest_vote(SimTestParams p) {
    unsigned tid = threadIdx.x, lane = tid % 32;
    int pred = static_cast<const int*>(p.in0)[tid];
    unsigned* o = static_cast<unsigned*>(p.out0) + size_t(tid) * 8;
    o[0] = __ballot_sync(0xffffffffu, pred);
    o[1] = unsigned(__any_sync(0xffffffffu, pred));
    o[2] = unsigned(__all_sync(0xffffffffu, pred));
    o[3] = (lane & 4) ? __ballot_sync(0xf0f0f0f0u, pred) : 0xdeadu;  // lanes with bit 2 set: 4-7, 12-15, ...
    o[4] = __match_any_sync(0xffffffffu, pred & 3);
    o[5] = __reduce_add_sync(0xffffffffu, unsigned(pred));
    o[6] = unsigned(__reduce_max_sync(0xffffffffu, pred - 1000));
    o[7] = __activemask();  // the shim: lanes not exited yet (all, before the __syncwarp)
    __syncwarp();
}

// One 16x16x8 mma per warp: in0 A tiles (16x16 u16 row-major), in1 B tiles (16x8, [k][n]),
// in2 C tiles (16x8 f32); out0 D tiles. mode bit 0: f16 (else bf16); bit 1: d aliases c.
__global__ void simtest_mma(SimTestParams p) {
    unsigned lane = threadIdx.x % 32, warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const uint16_t* A = static_cast<const uint16_t*>(p.in0) + warp * 256;
    const uint16_t* B = static_cast<const uint16_t*>(p.in1) + warp * 128;
    const float* C = static_cast<const float*>(p.in2) + warp * 128;
    float* D = static_cast<float*>(p.out0) + warp * 128;
    unsigned g = lane >> 2, t = lane & 3;
    uint32_t a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) {
        unsigned r = g + 8 * (i & 1), k = 2 * t + 8 * (i >> 1);
        a[i] = pack_u16x2(A[r * 16 + k], A[r * 16 + k + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        unsigned k = 2 * t + 8 * i;
        b[i] = pack_u16x2(B[k * 8 + g], B[(k + 1) * 8 + g]);
    }
    for (int i = 0; i < 4; ++i) c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    float* dst = (p.mode & 2) ? c : d;
    if (p.mode & 1) mma_m16n8k16_f16(dst, a, b, c);
    else mma_m16n8k16_bf16(dst, a, b, c);
    for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = dst[i];
}

// Every ldmatrix form from one 64-row tile (16-byte rows); in0: the tile (u16), in1: the row index
// each lane points at. mode 0: dynamic shared memory, 1: a static __shared__ array.
// out0[lane][14]: x1, x2, x4, x1.trans, x2.trans, x4.trans registers.
__global__ void simtest_ldmatrix(SimTestParams p) {
    __shared__ __align__(16) uint16_t st[64 * 8];
    uint16_t* tile = p.mode ? st : dynamic_smem<uint16_t>();
    unsigned lane = threadIdx.x;
    for (unsigned i = lane; i < 64 * 8; i += 32) tile[i] = static_cast<const uint16_t*>(p.in0)[i];
    __syncwarp();
    const uint16_t* row = tile + 8 * static_cast<const int*>(p.in1)[lane];
    uint32_t r[14];
    ldmatrix_x1(r + 0, row);
    ldmatrix_x2(r + 1, row);
    ldmatrix_x4(r + 3, row);
    ldmatrix_x1_trans(r + 7, row);
    ldmatrix_x2_trans(r + 8, row);
    ldmatrix_x4_trans(r + 10, row);
    for (int j = 0; j < 14; ++j) static_cast<uint32_t*>(p.out0)[lane * 14 + j] = r[j];
}

// One attention tile per warp, the FlashAttention-2 way: Q, K, V (16x16 each, row-major) arrive
// by cp.async; S = Q K^T with ldmatrix (A: x4, B: x4 of K rows), P = S packed from the C layout
// straight into A fragments, O = P V with B from ldmatrix.x4.trans. Checks the C->A reuse and
// every layout together. in0/in1/in2: Q/K/V tiles per warp; out0: O (f32). mode 1: f16.
template <typename T> __device__ void attention_tile(const SimTestParams& p) {
    unsigned lane = threadIdx.x % 32, wib = threadIdx.x / 32;
    unsigned warp = blockIdx.x * (blockDim.x / 32) + wib;
    uint16_t* sm = dynamic_smem<uint16_t>() + wib * 3 * 256;  // Q, K, V tiles of this warp
    for (int m = 0; m < 3; ++m) {  // 32 chunks of 16 bytes per tile: one per lane
        const uint16_t* src = static_cast<const uint16_t*>(m == 0 ? p.in0 : m == 1 ? p.in1 : p.in2) + warp * 256;
        cp_async_16(sm + m * 256 + lane * 8, src + lane * 8);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncwarp();
    const uint16_t *Q = sm, *K = sm + 256, *V = sm + 512;
    uint32_t a[4], kb[4], vb[4];
    ldmatrix_x4(a, Q + (lane % 16) * 16 + (lane / 16) * 8);
    ldmatrix_x4(kb, K + ((lane % 8) + 8 * (lane / 16)) * 16 + ((lane / 8) % 2) * 8);
    float s0[4] = {0, 0, 0, 0}, s1[4] = {0, 0, 0, 0};
    mma_m16n8k16<T>(s0, a, kb, s0);      // keys 0-7
    mma_m16n8k16<T>(s1, a, kb + 2, s1);  // keys 8-15
    uint32_t pa[4] = {pack2<T>(s0[0], s0[1]), pack2<T>(s0[2], s0[3]), pack2<T>(s1[0], s1[1]),
                      pack2<T>(s1[2], s1[3])};
    ldmatrix_x4_trans(vb, V + ((lane % 8) + 8 * ((lane / 8) % 2)) * 16 + (lane / 16) * 8);
    float o0[4] = {0, 0, 0, 0}, o1[4] = {0, 0, 0, 0};
    mma_m16n8k16<T>(o0, pa, vb, o0);      // dims 0-7
    mma_m16n8k16<T>(o1, pa, vb + 2, o1);  // dims 8-15
    float* O = static_cast<float*>(p.out0) + warp * 256;
    unsigned g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        unsigned r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
        O[r * 16 + c] = o0[i];
        O[r * 16 + 8 + c] = o1[i];
    }
}
__global__ void simtest_attention_tile(SimTestParams p) {
    if (p.mode) attention_tile<__half>(p);
    else attention_tile<__nv_bfloat16>(p);
}

// cp.async groups: A (group 0), B (group 1), C (zero-fill for odd threads), D via wait_all.
// out0[thread][8] probes (u32): A before any wait, A and B after wait<1>, B and C after wait<0>,
// D after wait_all, the neighbour's A after a barrier.
__global__ void simtest_cp_async(SimTestParams p) {
    unsigned tid = threadIdx.x, n = blockDim.x;
    unsigned char* sm = dynamic_smem<unsigned char>();
    unsigned char *A = sm, *B = sm + 16 * n, *C = sm + 32 * n, *D = sm + 48 * n;
    const unsigned char* in0 = static_cast<const unsigned char*>(p.in0);
    const unsigned char* in1 = static_cast<const unsigned char*>(p.in1);
    uint32_t* o = static_cast<uint32_t*>(p.out0) + tid * 8;
    auto word = [](const unsigned char* q) { uint32_t v; memcpy(&v, q, 4); return v; };
    cp_async_16(A + 16 * tid, in0 + 16 * tid);
    cp_async_commit();
    cp_async_16(B + 16 * tid, in1 + 16 * tid);
    cp_async_commit();
    cp_async_16_zfill(C + 16 * tid, in0 + 16 * tid, tid % 2 == 0);
    o[0] = word(A + 16 * tid + 12);
    cp_async_wait<1>();
    o[1] = word(A + 16 * tid + 12);
    o[2] = word(B + 16 * tid + 12);
    cp_async_commit();
    cp_async_wait<0>();
    o[3] = word(B + 16 * tid + 12);
    o[4] = word(C + 16 * tid + 12);
    cp_async_16(D + 16 * tid, in1 + 16 * ((tid + 1) % n));
    cp_async_wait_all();
    o[5] = word(D + 16 * tid + 4);
    __syncthreads();
    o[6] = word(A + 16 * ((tid + 1) % n) + 8);
    o[7] = 0;
}

// Atomics on shared and global memory. in0: int value per thread (global index).
// out0 (global accumulators, zeroed by the host): [0] f32 sum, [1] u32 count, [2] i32 max,
// [3] i32 min, [4] u32 CAS-add sum, [5..5+gridDim.x) per-block exch marks.
// out1[block][6]: shared f32 sum, i32 hist bins 0..3 (value & 3), i32 max.
__global__ void simtest_atomics(SimTestParams p) {
    __shared__ float ssum;
    __shared__ int hist[4];
    __shared__ int smax;
    unsigned tid = threadIdx.x;
    if (tid == 0) ssum = 0, smax = -(1 << 30);
    if (tid < 4) hist[tid] = 0;
    __syncthreads();
    int v = static_cast<const int*>(p.in0)[blockIdx.x * blockDim.x + tid];
    atomicAdd(&ssum, float(v));
    atomicAdd(&hist[v & 3], 1);
    atomicMax(&smax, v);
    unsigned* g = static_cast<unsigned*>(p.out0);
    atomicAdd(reinterpret_cast<float*>(g), float(v));
    atomicAdd(g + 1, 1u);
    atomicMax(reinterpret_cast<int*>(g + 2), v);
    atomicMin(reinterpret_cast<int*>(g + 3), v);
    unsigned old = g[4], assumed;
    do {
        assumed = old;
        old = atomicCAS(g + 4, assumed, assumed + unsigned(v & 0xff));
    } while (old != assumed);
    atomicExch(g + 5 + blockIdx.x, tid + 1);
    __syncthreads();
    if (tid == 0) {
        float* o = static_cast<float*>(p.out1) + blockIdx.x * 6;
        o[0] = ssum;
        for (int k = 0; k < 4; ++k) o[1 + k] = float(hist[k]);
        o[5] = float(smax);
    }
}

// The barrier benchmark: p.phases barrier phases, data through shared memory.
__global__ void simtest_bench_barrier(SimTestParams p) {
    __shared__ float s[1024];
    unsigned tid = threadIdx.x, n = blockDim.x;
    float v = float(tid);
    for (int i = 0; i < p.phases; i += 2) {
        s[tid] = v;
        __syncthreads();
        v = s[(tid + 1) % n];
        __syncthreads();
    }
    static_cast<float*>(p.out0)[tid] = v;
}

// p.phases bf16 mma per warp (throughput of the emulation).
__global__ void simtest_bench_mma(SimTestParams p) {
    unsigned lane = threadIdx.x % 32;
    uint32_t a[4] = {pack_bf16x2(0.5f, lane), pack_bf16x2(1, 2), pack_bf16x2(-1, 0.25f), pack_bf16x2(lane, 1)};
    uint32_t b[2] = {pack_bf16x2(0.125f, 1), pack_bf16x2(-0.5f, lane)};
    float c[4] = {0, 0, 0, 0};
    for (int i = 0; i < p.phases; ++i) mma_m16n8k16_bf16(c, a, b, c);
    static_cast<float*>(p.out0)[blockIdx.x * blockDim.x + threadIdx.x] = c[0] + c[1] + c[2] + c[3];
}

// p.phases shuffles per warp.
__global__ void simtest_bench_shfl(SimTestParams p) {
    float v = float(threadIdx.x);
    for (int i = 0; i < p.phases; ++i) v += __shfl_xor_sync(0xffffffffu, v, i & 31) * 0.5f;
    static_cast<float*>(p.out0)[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// wgmma.mma_async m64nNk16 (sm_90a), one warpgroup (128 threads). in0: A [64][16], in1: B as
// [16][N] (k, n), in2: C [64][N] f32; out0: D = A·B + C [64][N]. Shared-memory layouts with
// LBO ≠ SBO (and unlike the attention kernel's), chosen so that a reading with the two exchanged
// stays inside the written bytes (the host can then tell which reading a GPU follows):
//   mode 0 (bf16, N = 64): A and B K-major from shared memory, core matrix (mn/8, k/8) at
//     (mn/8)·256 + (k/8)·128: LBO 128, SBO 256.
//   mode 1 (f16, N = 72): A from registers, B N-major, core matrix (n/8, k/8) at (n/8)·256 +
//     (k/8)·128: LBO 128, SBO 256.
// Shim-only planted bugs: 2 no wgmma.fence, 3 no wait before exit, 4 a swizzled descriptor,
// 5 A registers changed before the wait.
__global__ void simtest_wgmma(SimTestParams p) {
#if defined(DELTADIT_SIM) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
    const unsigned tid = threadIdx.x, lane = tid % 32, w = (tid / 32) % 4, g = lane / 4, t = lane % 4;
    const int mode = p.mode, n = mode == 1 ? 72 : 64;
    const uint16_t* A = static_cast<const uint16_t*>(p.in0);
    const uint16_t* B = static_cast<const uint16_t*>(p.in1);
    const float* C = static_cast<const float*>(p.in2);
    float* D = static_cast<float*>(p.out0);
    uint16_t* sA = dynamic_smem<uint16_t>();
    uint16_t* sB = sA + 1024;
    for (unsigned i = tid; i < 64 * 16; i += blockDim.x) {
        unsigned m = i / 16, k = i % 16;
        sA[((m / 8) * 256 + (k / 8) * 128 + (m % 8) * 16 + (k % 8) * 2) / 2] = A[i];
    }
    for (unsigned i = tid; i < 16u * n; i += blockDim.x) {
        unsigned k = i / n, c = i % n;
        unsigned off = mode == 1 ? (c / 8) * 256 + (k / 8) * 128 + (k % 8) * 16 + (c % 8) * 2
                                 : (c / 8) * 256 + (k / 8) * 128 + (c % 8) * 16 + (k % 8) * 2;
        sB[off / 2] = B[i];
    }
    fence_proxy_async_smem();
    __syncthreads();
    float d[36];
    for (int j = 0; j < n / 8; ++j)
        for (int e = 0; e < 4; ++e) d[4 * j + e] = C[(16 * w + g + 8 * (e >> 1)) * n + 8 * j + 2 * t + (e & 1)];
    uint32_t a[4];
    for (int i = 0; i < 4; ++i) {
        unsigned r = 16 * w + g + 8 * (i & 1), k = 2 * t + 8 * (i >> 1);
        a[i] = pack_u16x2(A[r * 16 + k], A[r * 16 + k + 1]);
    }
    float(&d32)[32] = *reinterpret_cast<float(*)[32]>(d);
    if (mode != 2) wgmma_fence();
    if (mode == 1 || mode == 5) {
        Wgmma<__half, 72>::rs_tb(d, a, wgmma_desc(sB, 128, 256));
    } else {
        uint64_t da = wgmma_desc(sA, 128, 256) | (mode == 4 ? uint64_t(1) << 62 : 0);
        Wgmma<__nv_bfloat16, 64>::ss(d32, da, wgmma_desc(sB, 128, 256));
    }
    wgmma_commit();
    if (mode == 5) a[0] ^= 1u;
    if (mode == 3) return;
    wgmma_wait<0>();
    wgmma_fence_operands(d);
    for (int j = 0; j < n / 8; ++j)
        for (int e = 0; e < 4; ++e) D[(16 * w + g + 8 * (e >> 1)) * n + 8 * j + 2 * t + (e & 1)] = d[4 * j + e];
#else
    __trap();  // built without sm_90a
#endif
}
