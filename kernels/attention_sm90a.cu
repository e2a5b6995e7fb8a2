// Fused multi-head attention on Hopper's warpgroup MMA (wgmma, sm_90a): the algorithm of
// kernels/attention.cu (FlashAttention-2 style, online softmax in the log2 domain, key bias, ragged
// lengths) with both matrix products on wgmma instead of mma.sync, which peaks at about two thirds
// of Hopper's dense tensor rate. Head dim 72 (DiT-XL/2, PixArt-α/Σ) only; the launcher uses
// attention.cu for other head dims and GPUs. Built for sm_90a alone (build.rs: *_sm90a.cu).
//
// One CTA = WGS warpgroups = 64·WGS query rows of one (batch, head); warpgroup w owns rows
// 64w..64w+63.
// K/V tiles of 64 keys stream through shared memory with cp.async (K double, V triple buffered);
// one __syncthreads per tile publishes tile t and retires the buffers tile t + 1 overwrites. Per
// tile t and warpgroup, as two wgmma groups:
//   S_t(64×64)  = Q·K_tᵀ          5 wgmma m64n64k16, A = Q and B = K from shared memory (K-major;
//                                 head dim 72 padded to 80 with zero columns, as attention.cu)
//   O += P_{t−1}·V_{t−1}          4 wgmma m64n72k16, A = P from registers (the accumulator layout
//                                 of S is the A fragment layout), B = V read N-major ("transposed")
// then waits for the first group only and runs the online softmax of S_t (attention.cu's, one m16
// tile per warp) while P_{t−1}·V_{t−1} is still on the tensor cores (FlashAttention-3's
// intra-warpgroup overlap); O is rescaled once that group completes. The other warpgroups and,
// for `wgmma`, the second CTA on the SM fill the remaining gaps.
//
// Three tile shapes (WgTile below), to be measured against each other on a GPU (none has run on
// one yet): shared-memory bandwidth (128 B a clock an SM) is the first limit of `wgmma`. Its
// m64n64k16 with A and B from shared memory reads 4 KB per 32 tensor-core clocks, all of it, and
// per 64-key tile and CTA it moves ~78 KB (Q 20, K 20, V 18, copies 20) against 608 clocks of
// MMA: ~610 clocks of shared memory, at par. With Q's A fragments in registers (loaded once by
// ldmatrix; Q·Kᵀ as wgmma m64n64k16 RS) a tile moves ~58 KB for 2 warpgroups (456 clocks) and
// ~78 KB for 3 (606 against 912 of MMA): the MMA becomes the limit, at the price of 20 more
// registers a thread, hence one CTA an SM. The shim counts the same from the kernels' instruction
// streams (tests/kernels_sim_smem.rs, 1024 tokens): 1.04, 0.80 and 0.71 clocks of shared memory a
// clock of MMA.
//   wgmma         Q·Kᵀ from shared memory, 2 warpgroups (BLOCK_Q 128), 2 CTAs an SM (≤ 128 registers)
//   wgmma-qregs   Q in registers, 2 warpgroups (BLOCK_Q 128), 1 CTA an SM
//   wgmma-qregs3  Q in registers, 3 warpgroups (BLOCK_Q 192), 1 CTA an SM (≤ 168 registers)
//
// Shared memory, no-swizzle core matrices (wgmma.cuh), every 16-byte chunk written by cp.async:
//   Q [BLOCK_Q rows][10 chunks]:  chunk c of row r at (r/8)·1280 + c·128 + (r%8)·16 B (LBO 128, SBO 1280)
//   K [2][64 keys][10 chunks]:    the same layout per stage
//   V [3][10 planes][64 keys]:    chunk c of key j at c·1024 + (j/8)·128 + (j%8)·16 B (N-major: LBO 128
//                                 between 8-key groups, SBO 1024 between 8-column groups); three
//                                 stages because V_{t−1} is read while V_{t+1} is copied
//   key bias [2][64] f32
// Chunk 9 (columns 72..79) is zero-filled by cp.async with every tile: Q·Kᵀ reads it for Q and K;
// V's plane 9 is never read. Eight consecutive threads copy one chunk of eight consecutive rows:
// those land in the eight 16-byte bank groups (r%8)·16 of one core-matrix column, so every
// 8-lane phase of a cp.async is free of bank conflicts (tests/kernels_sim_smem.rs counts them;
// rows fastest across thread pairs, the earlier order, conflicted 2-way), and a warp's four
// phases copy chunks c..c+3 (c even) of its eight rows: whole 32-byte sectors of global memory.
#include "common.cuh"
#include "softmax.cuh"
#include "wgmma.cuh"
#include "attention_variants.h"

namespace attention_sm90a {

constexpr int D = 72, CHUNKS = 10, VALID_CHUNKS = D / 8;  // 16-byte chunks per smem / global row
constexpr int BLOCK_K = 64;
constexpr int O_TILES = D / 8, S_TILES = BLOCK_K / 8, K_STEPS = CHUNKS / 2;
// Byte strides of the layouts above.
constexpr uint32_t CORE = 128;               // one core matrix; also the K-major LBO
constexpr uint32_t ROW_GROUP = CHUNKS * CORE;  // K-major SBO: next 8 rows of Q or K
constexpr uint32_t V_PLANE = BLOCK_K * 16;     // N-major SBO: next 8 columns of V
constexpr int KV_ELEMS = BLOCK_K * CHUNKS * 8;  // one K or V stage (16-bit elements)

// A tile shape: WGS warpgroups of 64 query rows, Q·Kᵀ's A operand from shared memory or from
// registers, MIN_BLOCKS CTAs an SM to fit (caps the registers).
template <int WGS_, bool Q_IN_REGS_, int MIN_BLOCKS_> struct WgTile {
    static constexpr int D = attention_sm90a::D;
    static constexpr int WGS = WGS_, THREADS = 128 * WGS_, BLOCK_Q = 64 * WGS_, MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr bool Q_IN_REGS = Q_IN_REGS_;
    static constexpr int Q_ELEMS = BLOCK_Q * CHUNKS * 8;
    static constexpr int SMEM = 2 * (Q_ELEMS + 5 * KV_ELEMS) + 4 * 2 * BLOCK_K;  // Q, 2 K and 3 V stages, bias
};
using TileSmemQ = WgTile<2, false, 2>;   // wgmma
using TileQRegs = WgTile<2, true, 1>;    // wgmma-qregs
using TileQRegs3 = WgTile<3, true, 1>;   // wgmma-qregs3
using namespace attention_softmax;

// Element offset of chunk c of row r in a K-major tile (Q, K) or in the N-major V tile.
__device__ __forceinline__ int kmajor_at(int r, int c) { return (r >> 3) * (ROW_GROUP / 2) + c * 64 + (r & 7) * 8; }
__device__ __forceinline__ int nmajor_at(int r, int c) { return c * BLOCK_K * 8 + (r >> 3) * 64 + (r & 7) * 8; }

// Copies ROWS rows of D columns (row stride `stride` elements) into the tile layout; rows ≥ valid
// and chunk 9 are zero-filled without reading global memory.
template <int THREADS, int ROWS, bool NMAJOR, typename T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t stride, int valid, int tid) {
    constexpr int TOTAL = ROWS * CHUNKS;
    static_assert(ROWS % 8 == 0 && CHUNKS % 2 == 0, "whole 8-row groups; chunk pairs within one warp");
#pragma unroll
    for (int i = 0; i < (TOTAL + THREADS - 1) / THREADS; ++i) {
        const int idx = tid + i * THREADS;
        if (TOTAL % THREADS == 0 || idx < TOTAL) {
            const int rest = idx >> 3, c = rest % CHUNKS, r = (rest / CHUNKS) * 8 + (idx & 7);
            const bool ok = r < valid && c < VALID_CHUNKS;
            cp_async_16_zfill(s + (NMAJOR ? nmajor_at(r, c) : kmajor_at(r, c)), g + (ok ? r * (int)stride + c * 8 : 0), ok);
        }
    }
}

// The accumulator arrays as the flat register lists wgmma takes.
template <int N> __device__ __forceinline__ float (&flat(float (&a)[N][4]))[N * 4] {
    return reinterpret_cast<float(&)[N * 4]>(a);
}

// O(64×72) += P·V over one 64-key tile: four k16 steps, P from registers, V N-major (2 key groups
// of 128 bytes per step). Issued, not committed.
template <typename T>
__device__ __forceinline__ void pv(float (&o)[O_TILES][4], const uint32_t (&pa)[BLOCK_K / 16][4], const T* vS) {
#pragma unroll
    for (int kk = 0; kk < BLOCK_K / 16; ++kk) Wgmma<T, D>::rs_tb(flat(o), pa[kk], wgmma_desc(vS + kk * 2 * 64, CORE, V_PLANE));
}

template <typename T, class K> __device__ __forceinline__ void run(const AttentionParams& p) {
    constexpr int THREADS = K::THREADS, BLOCK_Q = K::BLOCK_Q, Q_ELEMS = K::Q_ELEMS;
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warp = (tid >> 5) & 3;
    const int q0 = blockIdx.x * BLOCK_Q, head = blockIdx.y, b = blockIdx.z;

    T* sQ = dynamic_smem<T>();
    T* sK = sQ + Q_ELEMS;
    T* sV = sK + 2 * KV_ELEMS;
    float* sBias = reinterpret_cast<float*>(sV + 3 * KV_ELEMS);

    const T* gq = static_cast<const T*>(p.q) + b * p.q_batch_stride + q0 * p.q_row_stride + head * D;
    const T* gk = static_cast<const T*>(p.k) + b * p.k_batch_stride + head * D;
    const T* gv = static_cast<const T*>(p.v) + b * p.v_batch_stride + head * D;
    const float* gbias = p.key_bias ? p.key_bias + b * p.bias_batch_stride : nullptr;
    const int n_tiles = (p.nk + BLOCK_K - 1) / BLOCK_K;

    load_tile<THREADS, BLOCK_Q, false>(sQ, gq, p.q_row_stride, min(BLOCK_Q, p.nq - q0), tid);
    load_tile<THREADS, BLOCK_K, false>(sK, gk, p.k_row_stride, min(BLOCK_K, p.nk), tid);
    load_tile<THREADS, BLOCK_K, true>(sV, gv, p.v_row_stride, min(BLOCK_K, p.nk), tid);
    cp_async_commit();
    if (tid < BLOCK_K) sBias[tid] = key_term(gbias, tid, p.nk);

    const int quad = tid & 3;  // accumulator column pair 2·quad of each n8 tile
    const T* sQw = sQ + wg * 8 * (ROW_GROUP / 2);  // this warpgroup's 64 rows (8 row groups)

    float o[O_TILES][4];
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < O_TILES; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    // Q in registers: this warp's 16 rows as the A fragments of Q·Kᵀ's five k16 steps, by
    // ldmatrix.x4 from the core matrices (matrix j of step ks: rows +8·(j & 1), chunk 2ks + j/2;
    // lane L gives row L % 8 of matrix L / 8, 16 contiguous bytes: conflict-free). Loaded once,
    // after the first copies have landed; wgmma never reads Q's shared memory then.
    uint32_t qa[K::Q_IN_REGS ? K_STEPS : 1][4];
    if constexpr (K::Q_IN_REGS) {
        cp_async_wait<0>();
        __syncthreads();
        const int row = wg * 64 + warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int ks = 0; ks < K_STEPS; ++ks) ldmatrix_x4(qa[ks], sQ + kmajor_at(row, 2 * ks + (lane >> 4)));
    }

    // P·V of tile t − 1 runs on the tensor cores while this warpgroup computes the softmax of tile
    // t (FlashAttention-3's intra-warpgroup overlap): per tile, S_t = Q·K_tᵀ and O += P_{t−1}·V_{t−1}
    // are issued as two groups, the wait for the first leaves the second in flight.
    uint32_t pa[BLOCK_K / 16][4];  // P_{t−1}: the A fragments of its four k16 steps
    for (int it = 0; it < n_tiles; ++it) {
        // Tile `it` has landed for every thread (the proxy fence hands this thread's cp.async data
        // to wgmma's async proxy), and every warpgroup is done with the buffers the copies below
        // overwrite: K of tile it − 1 (its S was waited for in iteration it − 1) and V of tile
        // it − 2 (its P·V too); V of tile it − 1 stays, P·V reads it in this iteration.
        cp_async_wait<0>();
        fence_proxy_async_smem();
        __syncthreads();
        float bias_next = 0.0f;
        if (it + 1 < n_tiles) {
            const int k0 = (it + 1) * BLOCK_K, valid = min(BLOCK_K, p.nk - k0);
            load_tile<THREADS, BLOCK_K, false>(sK + ((it + 1) & 1) * KV_ELEMS, gk + k0 * p.k_row_stride, p.k_row_stride, valid, tid);
            load_tile<THREADS, BLOCK_K, true>(sV + ((it + 1) % 3) * KV_ELEMS, gv + k0 * p.v_row_stride, p.v_row_stride, valid, tid);
            if (tid < BLOCK_K) bias_next = key_term(gbias, k0 + tid, p.nk);  // stored after the compute
        }
        cp_async_commit();
        const T* kS = sK + (it & 1) * KV_ELEMS;
        const float* bS = sBias + (it & 1) * BLOCK_K;

        // ---- S_t = Q·K_tᵀ, then O += P_{t−1}·V_{t−1} (two groups) -----------------------------------
        float s[S_TILES][4];
#pragma unroll
        for (int n = 0; n < S_TILES; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        wgmma_fence_operands(flat(s));
        wgmma_fence_operands(flat(o));
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < K_STEPS; ++ks) {  // k16 step = chunks 2ks, 2ks + 1 (128 elements on)
            if constexpr (K::Q_IN_REGS)
                Wgmma<T, BLOCK_K>::rs(flat(s), qa[ks], wgmma_desc(kS + ks * 128, CORE, ROW_GROUP));
            else
                Wgmma<T, BLOCK_K>::ss(flat(s), wgmma_desc(sQw + ks * 128, CORE, ROW_GROUP), wgmma_desc(kS + ks * 128, CORE, ROW_GROUP));
        }
        wgmma_commit();
        if (it > 0) {
            wgmma_fence();  // ptxas would inject this one itself (C7519): P arrives through a branch
            pv(o, pa, sV + ((it - 1) % 3) * KV_ELEMS);
            wgmma_commit();
            wgmma_wait<1>();  // S_t is complete; P_{t−1}·V_{t−1} may still run
        } else {
            wgmma_wait<0>();
        }
        wgmma_fence_operands(flat(s));

        // ---- online softmax (log2 domain, softmax.cuh) --------------------------------------------
        const bool biased = gbias != nullptr || (it + 1) * BLOCK_K > p.nk || !(p.scale_log2 > 0.0f);
        if (biased) add_key_bias(s, bS, quad, p.scale_log2);
        float alpha[2];
        online_softmax(s, row_max, row_sum, biased ? 1.0f : p.scale_log2, alpha);

        // ---- O (now including P_{t−1}·V_{t−1}) rescaled; P_t packed as the next A operand -----------
        wgmma_wait<0>();
        wgmma_fence_operands(flat(o));
        rescale(o, alpha);
#pragma unroll
        for (int kk = 0; kk < BLOCK_K / 16; ++kk) p_fragment<T>(pa[kk], s, kk);
        // The bias buffer of the next tile was last read in tile it − 1 (retired by the barrier
        // above); the next iteration's barrier publishes it.
        if (tid < BLOCK_K && it + 1 < n_tiles) sBias[((it + 1) & 1) * BLOCK_K + tid] = bias_next;
    }
    // P·V of the last tile.
    wgmma_fence_operands(flat(o));
    wgmma_fence();
    pv(o, pa, sV + ((n_tiles - 1) % 3) * KV_ELEMS);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(flat(o));

    // ---- epilogue: O / row sum, staged row-major (pitch 80) over the Q tile -----------------------
    // Every warpgroup's wgmma reads of Q completed at its last wait; the barrier orders them (and
    // the other warpgroup's) before the overwrite.
    __syncthreads();
    constexpr int LD = CHUNKS * 8;
    const int g = lane >> 2;
    T* sO = sQ + (wg * 64 + warp * 16) * LD;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = row_sum[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = 1.0f / sum;
        T* row = sO + (g + 8 * r) * LD + 2 * quad;
#pragma unroll
        for (int n = 0; n < O_TILES; ++n)
            *reinterpret_cast<uint32_t*>(row + n * 8) = pack2<T>(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
    __syncthreads();
    T* go = static_cast<T*>(p.o) + b * p.o_batch_stride + q0 * p.o_row_stride + head * D;
    constexpr int TOTAL = BLOCK_Q * VALID_CHUNKS;
#pragma unroll
    for (int i = 0; i < (TOTAL + THREADS - 1) / THREADS; ++i) {
        const int c = tid + THREADS * i;
        if (TOTAL % THREADS == 0 || c < TOTAL) {
            const int r = c / VALID_CHUNKS, col = (c % VALID_CHUNKS) * 8;
            if (q0 + r < p.nq)
                *reinterpret_cast<uint4*>(go + r * p.o_row_stride + col) = *reinterpret_cast<const uint4*>(sQ + r * LD + col);
        }
    }
}

}  // namespace attention_sm90a

// The entry points: one row of kernels/attention_variants.h each.
#define ATTN_ENTRY(...) DELTADIT_ATTENTION_ENTRY(attention_sm90a::run, __VA_ARGS__)
DELTADIT_ATTENTION_SM90A(ATTN_ENTRY)
#undef ATTN_ENTRY

DELTADIT_SIM_REGISTER(attention_sm90a, DELTADIT_ATTENTION_SM90A(DELTADIT_ATTENTION_SIM_KERNELS))
