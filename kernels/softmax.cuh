// The online softmax of the attention kernels (attention.cu, attention_sm90a.cu), on the f32
// accumulators of one m16 row tile of scores in mma.m16n8k16's C layout (ptx.cuh; wgmma's D layout
// per warp is the same): s[n][i] = (row g + 8(i >> 1), key 8n + 2·quad + (i & 1)). Each thread holds
// rows g and g + 8; the 4 threads of a quad share a row. Log2 domain: p = 2^(s·c − m), with the
// softmax scale c = scale·log2(e) folded into the exponent's FMA, and 2^x on the MUFU.EX2 unit
// (ex2_approx_ftz: exp2f adds a denormal fix-up of 3 instructions around it, measured on an H100 as
// the attention kernel's top stall reason; see ptx.cuh).
#pragma once

namespace attention_softmax {

constexpr float LOG2E = 1.4426950408889634f;

// Additive score term of key j in the log2 domain; −inf masks keys past the end.
__device__ __forceinline__ float key_term(const float* bias, int j, int nk) {
    if (j >= nk) return -INFINITY;
    return bias ? bias[j] * LOG2E : 0.0f;
}

// Tiles with a key bias (or keys past the end, or a non-positive scale) add the bias row first:
// s' = s·c + b (bias: this tile's BLOCK_K key terms in shared memory); the exponent then uses c = 1.
// The others, most of a self-attention, keep the raw scores (the row max of raw scores is the max
// of the scaled ones for c > 0).
template <int S_TILES>
__device__ __forceinline__ void add_key_bias(float (&s)[S_TILES][4], const float* bias, int quad, float scale_log2) {
#pragma unroll
    for (int n = 0; n < S_TILES; ++n) {
        const float2 kb = *reinterpret_cast<const float2*>(bias + n * 8 + 2 * quad);
        s[n][0] = fmaf(s[n][0], scale_log2, kb.x);
        s[n][1] = fmaf(s[n][1], scale_log2, kb.y);
        s[n][2] = fmaf(s[n][2], scale_log2, kb.x);
        s[n][3] = fmaf(s[n][3], scale_log2, kb.y);
    }
}

// One tile of the online softmax for rows r = 0 (g) and 1 (g + 8): replaces the scores by
// p = 2^(s·mul − m_new), updates the running max and the per-thread partial row sums (the quad
// reduces them once, at the end) and returns in alpha[r] the factor the row's output accumulators
// must be scaled by (2^(m_old − m_new)).
template <int S_TILES>
__device__ __forceinline__ void online_softmax(float (&s)[S_TILES][4], float (&row_max)[2], float (&row_sum)[2], float mul,
                                               float (&alpha)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < S_TILES; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mx = fmaxf(row_max[r], mx * mul);
        // A row with only −inf so far (cannot happen for a valid row: key 0 is in tile 0, but an
        // all −inf bias must not turn into NaN here).
        const float base = mx == -INFINITY ? 0.0f : mx;
        alpha[r] = ex2_approx_ftz(row_max[r] - base);
        row_max[r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < S_TILES; ++n) {
            s[n][2 * r] = ex2_approx_ftz(fmaf(s[n][2 * r], mul, -base));
            s[n][2 * r + 1] = ex2_approx_ftz(fmaf(s[n][2 * r + 1], mul, -base));
            sum += s[n][2 * r] + s[n][2 * r + 1];
        }
        row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
}

// O's rows scaled by alpha (O_TILES n8 tiles in the C layout).
template <int O_TILES> __device__ __forceinline__ void rescale(float (&o)[O_TILES][4], const float (&alpha)[2]) {
#pragma unroll
    for (int n = 0; n < O_TILES; ++n) {
        o[n][0] *= alpha[0];
        o[n][1] *= alpha[0];
        o[n][2] *= alpha[1];
        o[n][3] *= alpha[1];
    }
}

// The C fragments of score tiles 2kk and 2kk + 1 are exactly the A fragment of the k16 step kk over
// those 16 keys: a0 = (g, 2q..), a1 = (g + 8, 2q..), a2 = (g, 8 + 2q..), a3 = (g + 8, 8 + 2q..).
template <typename T, int S_TILES>
__device__ __forceinline__ void p_fragment(uint32_t (&a)[4], const float (&s)[S_TILES][4], int kk) {
    a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

}  // namespace attention_softmax
