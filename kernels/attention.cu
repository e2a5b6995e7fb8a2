// Fused multi-head attention, FlashAttention-2 style (non-causal forward):
//   O[b, i, h] = softmax_j(Q_i·K_j · scale + key_bias[b, j]) · V_j
// without the score matrix ever leaving registers.
//
// One CTA owns a BLOCK_Q-row tile of queries of one (batch, head); its warps each own 16·M_TILES
// rows. K/V tiles of BLOCK_K keys stream through shared memory with cp.async, double buffered:
// tile t+1 is copied while tile t is computed, so one __syncthreads per tile suffices (it both
// publishes tile t and retires the buffer tile t+1 overwrites). Per tile and warp:
//   S = Q·Kᵀ          mma.m16n8k16, A = Q (ldmatrix), B = K rows (ldmatrix, no transpose)
//   online softmax     in the log2 domain: s' = s·scale·log2(e) + bias·log2(e), p = 2^(s' − m)
//   O = O·α + P·V      the S accumulators are repacked in registers as the A operand (the C and A
//                      fragment layouts line up, see ptx.cuh); B = V rows via ldmatrix.trans
// Rows of the output are normalised by the row sums at the end and staged through the warp's own
// rows of the Q tile for 16-byte coalesced stores.
//
// Head dim 72 (DiT-XL, PixArt) is not padded to 96 as FA2/FA3 do: Q·Kᵀ needs whole k16 steps, so
// Q and K are padded to 80 columns in shared memory only (the padding columns are zeroed once,
// cp.async never writes them), and P·V runs exactly nine n8 tiles over the 72 columns of V.
//
// Ragged lengths: Q rows and K/V rows past the end are zero-filled by cp.async (zfill, nothing
// read); the per-tile key-bias row in shared memory is −inf for keys ≥ nk, which masks them, and
// their V rows are zeros, so P·V never sees the NaN-poisoned shim memory. Output rows ≥ nq are not
// stored.
#include "common.cuh"
#include "softmax.cuh"
#include "attention_variants.h"

namespace attention {

// Shape of one head-dim specialisation. All loops over these are unrolled, so every fragment
// array stays in registers.
template <int D_, int WARPS_, int M_TILES_, int BLOCK_K_, bool Q_IN_REGS_, int MIN_BLOCKS_> struct Tile {
    static constexpr int D = D_;
    static constexpr int DK = (D + 15) / 16 * 16;  // Q·Kᵀ reduction, whole k16 steps: 64, 80, 128
    static constexpr int K_STEPS = DK / 16;
    static constexpr int O_TILES = D / 8;          // P·V n8 tiles: 8, 9, 16
    // Shared-memory row pitch: + 16 bytes, so that the 8 rows one ldmatrix matrix reads (pitch
    // 144, 176 or 272 bytes) start in 8 distinct 16-byte bank groups: conflict-free without a
    // swizzle (a 144-byte row of d = 72 breaks the usual 128-byte XOR swizzle anyway).
    static constexpr int LD = DK + 8;
    static constexpr int CHUNKS = D / 8;           // 16-byte cp.async chunks per global row
    static constexpr int WARPS = WARPS_, THREADS = 32 * WARPS_, M_TILES = M_TILES_;
    static constexpr int BLOCK_Q = 16 * M_TILES_ * WARPS_, BLOCK_K = BLOCK_K_;
    static constexpr int S_TILES = BLOCK_K / 8;     // n8 tiles of the score block
    static constexpr bool Q_IN_REGS = Q_IN_REGS_;   // keep Q's A fragments in registers
    static constexpr int MIN_BLOCKS = MIN_BLOCKS_;  // CTAs per SM to fit (caps registers)
    // Q [BLOCK_Q][LD], K [2][BLOCK_K][LD], V [2][BLOCK_K][LD] (16-bit), key bias [2][BLOCK_K] f32.
    static constexpr int SMEM = 2 * (BLOCK_Q + 4 * BLOCK_K) * LD + 4 * 2 * BLOCK_K;
    static_assert(D % 8 == 0 && DK - D <= 8 && BLOCK_K % 16 == 0 && O_TILES >= 2, "tile shape");
    static_assert(BLOCK_K <= THREADS, "one thread per key loads the bias row");
};

// Two m16 tiles per warp (32 query rows) halve the shared-memory traffic of the K/V fragments per
// mma compared with one (each ldmatrix'd B fragment feeds two mma); 4 warps give a 128-row Q
// tile. The loop is latency-bound (2-3 warps per scheduler), so the choices below were measured
// on an H100 (bench/attention_sdpa.py, PixArt/DiT shapes), all without spills:
//   d64 : 64-key tiles, Q fragments in registers (S 64 + O 64 + Q 32), 2 CTAs/SM.
//   d72 : 32-key tiles, Q re-read from shared memory, ≤ 168 registers so 3 CTAs/SM fit
//         (S 32 + O 72): ~7% faster than 64-key tiles with Q in registers at 2 CTAs/SM.
//   d128: 32-key tiles, Q from shared memory (S 32 + O 128), 2 CTAs/SM; 64-key tiles spill.
// Tried and slower: one m16 tile per warp (4 or 8 warps); a one-tile software pipeline (Q·K(t+1)ᵀ
// in the softmax block of tile t, 218 vs 252 TFLOP/s at d72) — its second score buffer costs
// the third CTA per SM.
using TileD64 = Tile<64, 4, 2, 64, true, 2>;
using TileD72 = Tile<72, 4, 2, 32, false, 3>;
using TileD128 = Tile<128, 4, 2, 32, false, 2>;

using namespace attention_softmax;

// Copies ROWS rows × D columns (row stride `stride` elements) into shared rows of pitch LD;
// rows ≥ valid are zero-filled without reading global memory. Each 8-lane phase of a 16-byte
// cp.async writes 8 distinct bank groups: the first MAIN chunks of every row go in row order (a
// phase = 8 consecutive chunks of one row, 128 contiguous bytes of global memory too), the rest
// (chunk 8 at d72) one row per thread, spread over all bank groups by the odd pitch (11 groups
// of 16 bytes). Plain row order let a d72 phase straddle two rows: 1.78 wavefronts a phase
// (tests/kernels_sim_smem.rs counts them).
template <class K, int ROWS, typename T>
__device__ __forceinline__ void load_rows(T* s, const T* g, int64_t stride, int valid, int tid) {
    constexpr int MAIN = K::CHUNKS / 8 * 8, REST = K::CHUNKS - MAIN;
    constexpr int TOTAL = ROWS * MAIN, TAIL = ROWS * REST;
    static_assert(REST == 0 || (K::LD * 2 / 16) % 2 == 1, "odd pitch in 16-byte units for the remainder chunks");
    // 32-bit offsets (a tile spans < 2^31 elements): these stay live across the K/V loop.
    auto copy = [&](int r, int col) {
        const bool ok = r < valid;
        cp_async_16_zfill(s + r * K::LD + col, g + (ok ? r * (int)stride + col : 0), ok);
    };
#pragma unroll
    for (int i = 0; i < (TOTAL + K::THREADS - 1) / K::THREADS; ++i) {
        const int c = tid + i * K::THREADS;
        if (TOTAL % K::THREADS == 0 || c < TOTAL) copy(c / MAIN, (c % MAIN) * 8);
    }
#pragma unroll
    for (int i = 0; i < (TAIL + K::THREADS - 1) / K::THREADS; ++i) {
        const int c = tid + i * K::THREADS;
        if (TAIL % K::THREADS == 0 || c < TAIL) copy(c % ROWS, (MAIN + c / ROWS) * 8);
    }
}

template <typename T, class K> __device__ __forceinline__ void run(const AttentionParams& p) {
    constexpr int D = K::D, LD = K::LD, MT = K::M_TILES, BQ = K::BLOCK_Q, BK = K::BLOCK_K;
    constexpr int S_TILES = K::S_TILES, O_TILES = K::O_TILES, K_STEPS = K::K_STEPS;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * BQ, head = blockIdx.y, b = blockIdx.z;

    T* sQ = dynamic_smem<T>();
    T* sK = sQ + BQ * LD;
    T* sV = sK + 2 * BK * LD;
    float* sBias = reinterpret_cast<float*>(sV + 2 * BK * LD);

    const T* gq = static_cast<const T*>(p.q) + b * p.q_batch_stride + q0 * p.q_row_stride + head * D;
    const T* gk = static_cast<const T*>(p.k) + b * p.k_batch_stride + head * D;
    const T* gv = static_cast<const T*>(p.v) + b * p.v_batch_stride + head * D;
    const float* gbias = p.key_bias ? p.key_bias + b * p.bias_batch_stride : nullptr;
    const int n_tiles = (p.nk + BK - 1) / BK;

    // Padding columns D..DK of Q and both K buffers take part in Q·Kᵀ: they must be zeros.
    if constexpr (K::DK != D) {
        for (int r = tid; r < BQ + 2 * BK; r += K::THREADS)
            *reinterpret_cast<uint4*>((r < BQ ? sQ + r * LD : sK + (r - BQ) * LD) + D) = make_uint4(0, 0, 0, 0);
    }
    load_rows<K, BQ>(sQ, gq, p.q_row_stride, min(BQ, p.nq - q0), tid);
    load_rows<K, BK>(sK, gk, p.k_row_stride, min(BK, p.nk), tid);
    load_rows<K, BK>(sV, gv, p.v_row_stride, min(BK, p.nk), tid);
    cp_async_commit();
    if (tid < BK) sBias[tid] = key_term(gbias, tid, p.nk);

    // ldmatrix lane addressing (ptx.cuh): lane L gives row L % 8 of matrix L / 8.
    //   A operand (Q) and V (.trans): matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
    //   K (B operand of Q·Kᵀ):        matrices (keys 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15)
    const int a_row = lane & 15, a_col = (lane >> 4) * 8;
    const int k_row = (lane & 7) + ((lane >> 4) << 3), k_col = ((lane >> 3) & 1) * 8;
    const int quad = lane & 3;          // accumulator column pair 2·quad of each n8 tile
    const T* sQw = sQ + (warp * 16 * MT) * LD;  // this warp's query rows

    float o[MT][O_TILES][4];
    float row_max[MT][2], row_sum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < O_TILES; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.0f;
    }
    uint32_t qf[K::Q_IN_REGS ? MT : 1][K::Q_IN_REGS ? K_STEPS : 1][4];

    for (int it = 0; it < n_tiles; ++it) {
        const int st = it & 1;
        // Tile `it` has landed for every thread, and every warp is done with tile it − 1, whose
        // buffers the copies below overwrite.
        cp_async_wait<0>();
        __syncthreads();
        if constexpr (K::Q_IN_REGS) {
            if (it == 0) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int ks = 0; ks < K_STEPS; ++ks)
                        ldmatrix_x4(qf[mt][ks], sQw + (mt * 16 + a_row) * LD + ks * 16 + a_col);
            }
        }
        float bias_next = 0.0f;
        if (it + 1 < n_tiles) {
            const int k0 = (it + 1) * BK, valid = min(BK, p.nk - k0);
            load_rows<K, BK>(sK + (st ^ 1) * BK * LD, gk + k0 * p.k_row_stride, p.k_row_stride, valid, tid);
            load_rows<K, BK>(sV + (st ^ 1) * BK * LD, gv + k0 * p.v_row_stride, p.v_row_stride, valid, tid);
            if (tid < BK) bias_next = key_term(gbias, k0 + tid, p.nk);  // stored after the compute
        }
        cp_async_commit();
        const T* kS = sK + st * BK * LD;
        const T* vS = sV + st * BK * LD;
        const float* bS = sBias + st * BK;

        // ---- S = Q·Kᵀ --------------------------------------------------------------------------
        float s[MT][S_TILES][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < S_TILES; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < K_STEPS; ++ks) {
            uint32_t qa[MT][4];
            if constexpr (!K::Q_IN_REGS) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(qa[mt], sQw + (mt * 16 + a_row) * LD + ks * 16 + a_col);
            }
#pragma unroll
            for (int np = 0; np < S_TILES / 2; ++np) {
                uint32_t kb[4];  // B fragments of key tiles 2np (kb[0..1]) and 2np + 1 (kb[2..3])
                ldmatrix_x4(kb, kS + (np * 16 + k_row) * LD + ks * 16 + k_col);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const uint32_t* a = K::Q_IN_REGS ? qf[mt][ks] : qa[mt];
                    mma_m16n8k16<T>(s[mt][2 * np], a, kb, s[mt][2 * np]);
                    mma_m16n8k16<T>(s[mt][2 * np + 1], a, kb + 2, s[mt][2 * np + 1]);
                }
            }
        }

        // ---- online softmax (log2 domain, softmax.cuh) --------------------------------------------
        const bool biased = gbias != nullptr || (it + 1) * BK > p.nk || !(p.scale_log2 > 0.0f);
        if (biased) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) add_key_bias(s[mt], bS, quad, p.scale_log2);
        }
        const float mul = biased ? 1.0f : p.scale_log2;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float alpha[2];
            online_softmax(s[mt], row_max[mt], row_sum[mt], mul, alpha);
            rescale(o[mt], alpha);
        }

        // ---- O += P·V ---------------------------------------------------------------------------
        // P of each k16 step straight from the score accumulators (softmax.cuh: p_fragment).
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) p_fragment<T>(pa[mt], s[mt], kk);
            const T* vrow = vS + (kk * 16 + a_row) * LD;
#pragma unroll
            for (int np = 0; np < O_TILES / 2; ++np) {
                uint32_t vb[4];  // B fragments of output tiles 2np (vb[0..1]) and 2np + 1 (vb[2..3])
                ldmatrix_x4_trans(vb, vrow + np * 16 + a_col);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_m16n8k16<T>(o[mt][2 * np], pa[mt], vb, o[mt][2 * np]);
                    mma_m16n8k16<T>(o[mt][2 * np + 1], pa[mt], vb + 2, o[mt][2 * np + 1]);
                }
            }
            if constexpr (O_TILES % 2 == 1) {  // d = 72: the ninth n8 tile, keys 0-7 and 8-15
                uint32_t vb[2];
                ldmatrix_x2_trans(vb, vrow + (O_TILES - 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mma_m16n8k16<T>(o[mt][O_TILES - 1], pa[mt], vb, o[mt][O_TILES - 1]);
            }
        }
        // The bias buffer of the next tile was last read in tile it − 1 (retired by the barrier
        // above); the next iteration's barrier publishes it.
        if (tid < BK && it + 1 < n_tiles) sBias[(st ^ 1) * BK + tid] = bias_next;
    }

    // ---- epilogue: O / row sum, staged through this warp's own Q rows ------------------------------
    // Only this warp ever reads these rows of sQ, and its last read is done (ldmatrix is
    // warp-synchronous); the __syncwarp orders it before the overwrite anyway.
    __syncwarp();
    T* sO = sQ + (warp * 16 * MT) * LD;
    const int g = lane >> 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = row_sum[mt][r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = 1.0f / sum;
            T* row = sO + (mt * 16 + g + 8 * r) * LD + 2 * quad;
#pragma unroll
            for (int n = 0; n < O_TILES; ++n)
                *reinterpret_cast<uint32_t*>(row + n * 8) = pack2<T>(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
        }
    }
    __syncwarp();
    const int row0 = q0 + warp * 16 * MT;
    T* go = static_cast<T*>(p.o) + b * p.o_batch_stride + row0 * p.o_row_stride + head * D;
    constexpr int TOTAL = 16 * MT * K::CHUNKS;
#pragma unroll
    for (int i = 0; i < (TOTAL + 31) / 32; ++i) {
        const int c = lane + 32 * i;
        if (TOTAL % 32 == 0 || c < TOTAL) {
            const int r = c / K::CHUNKS, col = (c % K::CHUNKS) * 8;
            if (row0 + r < p.nq)
                *reinterpret_cast<uint4*>(go + r * p.o_row_stride + col) = *reinterpret_cast<const uint4*>(sO + r * LD + col);
        }
    }
}

// The K/V tile heights the comments above assume.
static_assert(TileD64::BLOCK_K == 64 && TileD72::BLOCK_K == 32 && TileD128::BLOCK_K == 32, "K/V tile heights");

}  // namespace attention

// The entry points: one row of kernels/attention_variants.h each.
#define ATTN_ENTRY(...) DELTADIT_ATTENTION_ENTRY(attention::run, __VA_ARGS__)
DELTADIT_ATTENTION_MMA(ATTN_ENTRY)
#undef ATTN_ENTRY

DELTADIT_SIM_REGISTER(attention, DELTADIT_ATTENTION_MMA(DELTADIT_ATTENTION_SIM_KERNELS))
