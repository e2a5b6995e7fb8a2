// RMSNorm of each attention head of Q and K, in place (SD3.5 / FLUX `attn.norm_q`, `attn.norm_k`):
//   v = v * (1 / sqrt(mean(v²) + eps)) * w        per (row, Q or K, head), f32 math, one rounding
// optionally fused with FLUX's RoPE on the normalised head (still f32, the same one rounding).
// Layout, items and launch geometry: params.h (QkNormParams).
//
// Memory-bound: every byte of Q and K is read once and written once; the weights are one head long
// and stay in L1. On the vector path a head is held in registers by a group of lanes, one 16-byte
// chunk a lane (head dim 64: 8 lanes, four heads a warp, 512 contiguous bytes a warp-load), and its
// sum of squares is a shuffle reduction inside the group.
#include "common.cuh"

namespace qk_norm {

// Sum over this lane's group of `lanes` lanes (a power of two dividing 32: xor offsets below it
// stay inside the aligned group). `lanes` is uniform, so every lane of the warp runs the same
// shuffles.
__device__ __forceinline__ float group_sum(float v, int lanes) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        if (o < lanes) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

// Where one item (row, Q or K, head) lives: its first element and its weight. Items past the end
// (the last warp's padding groups) point at item 0 and are not live: they only join the shuffles.
template <typename T> struct Item {
    T* x;
    const T* w;
    const float* rope;  // this row's (cos, sin) pairs, or nullptr: no RoPE
    bool live;
};

template <typename T> __device__ __forceinline__ Item<T> locate(const QkNormParams& p, int64_t item, int64_t items) {
    Item<T> it;
    it.live = item < items;
    const int64_t i = it.live ? item : 0;  // never form an out-of-range address
    const int64_t two_heads = 2 * (int64_t)p.heads;
    const int64_t row = i / two_heads;
    const int rem = (int)(i - row * two_heads);
    const bool is_k = rem >= p.heads;
    const int head = is_k ? rem - p.heads : rem;
    it.x = static_cast<T*>(p.x) + row * p.row_stride + (is_k ? p.k_col : p.q_col) + (int64_t)head * p.head_dim;
    it.w = static_cast<const T*>(is_k ? p.wk : p.wq);
    it.rope = p.rope ? p.rope + (p.rope_offset + row % p.rope_tokens) * (int64_t)p.head_dim : nullptr;
    return it;
}

// The items of this lane's group, in warp-uniform steps (every lane of a warp runs the same number
// of iterations, so the shuffles of group_sum always see the whole warp).
template <typename T, typename F> __device__ __forceinline__ void for_each_item(const QkNormParams& p, F&& f) {
    const int lanes = p.group_lanes;
    const int groups_per_warp = 32 / lanes;
    const int64_t items = p.rows * 2 * (int64_t)p.heads;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int64_t warps = (int64_t)gridDim.x * blockDim.x / 32;
    const int group = (threadIdx.x % 32) / lanes;
    for (int64_t base = warp * groups_per_warp; base < items; base += warps * groups_per_warp) {
        f(locate<T>(p, base + group, items));
    }
}

// RoPE of one adjacent pair in f32 (diffusers' x*cos + rot(x)*sin: products and sum rounded
// separately, never contracted into an FMA).
__device__ __forceinline__ void rotate_pair(float& a, float& b, const float* cs) {
    const float c = cs[0], s = cs[1];
    const float a2 = __fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s));
    const float b2 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    a = a2;
    b = b2;
}

// Lane j of the group holds chunk j (8 elements) of the head in registers.
template <typename T> __device__ __forceinline__ void heads_in_registers(const QkNormParams& p) {
    const int lanes = p.group_lanes;
    const int j = threadIdx.x % lanes;
    const int nchunk = p.head_dim / 8;
    const float inv_dim = 1.0f / (float)p.head_dim;
    for_each_item<T>(p, [&](const Item<T>& it) {
        const bool on = it.live && j < nchunk;
        Chunk<T, 8> xc;
        float f[8];
        float ss = 0.0f;
        if (on) {
            xc.load(it.x + j * 8);
            xc.unpack(f);
#pragma unroll
            for (int i = 0; i < 8; ++i) ss = fmaf(f[i], f[i], ss);
        }
        // once per head: the IEEE sqrt and divide cost nothing against the memory traffic
        const float rstd = 1.0f / sqrtf(group_sum(ss, lanes) * inv_dim + p.eps);
        if (on) {
            Chunk<T, 8> wc;
            wc.load(it.w + j * 8);
            float w[8];
            wc.unpack(w);
#pragma unroll
            for (int i = 0; i < 8; ++i) f[i] = f[i] * rstd * w[i];
            if (it.rope) {
#pragma unroll
                for (int i = 0; i < 4; ++i) rotate_pair(f[2 * i], f[2 * i + 1], it.rope + j * 8 + 2 * i);
            }
            Chunk<T, 8>::write(it.x + j * 8, f);
        }
    });
}

// Any head dim or layout: two passes over the head in global memory, lane j taking elements
// j, j + lanes, ... The second pass reads each element again (L1) just before the same lane
// overwrites it, and every lane's first pass has ended at the group_sum shuffles.
template <typename T> __device__ __forceinline__ void heads_looped(const QkNormParams& p) {
    const int lanes = p.group_lanes;
    const int j = threadIdx.x % lanes;
    const float inv_dim = 1.0f / (float)p.head_dim;
    for_each_item<T>(p, [&](const Item<T>& it) {
        float ss = 0.0f;
        for (int e = j; it.live && e < p.head_dim; e += lanes) {
            const float v = to_f32(it.x[e]);
            ss = fmaf(v, v, ss);
        }
        const float rstd = 1.0f / sqrtf(group_sum(ss, lanes) * inv_dim + p.eps);
        if (it.rope) {
            // lane j owns pairs j, j + lanes, ...: both elements of a pair in one lane
            for (int e = 2 * j; it.live && e + 1 < p.head_dim; e += 2 * lanes) {
                float a = to_f32(it.x[e]) * rstd * to_f32(it.w[e]);
                float b = to_f32(it.x[e + 1]) * rstd * to_f32(it.w[e + 1]);
                rotate_pair(a, b, it.rope + e);
                it.x[e] = from_f32<T>(a);
                it.x[e + 1] = from_f32<T>(b);
            }
            return;
        }
        for (int e = j; it.live && e < p.head_dim; e += lanes) {
            it.x[e] = from_f32<T>(to_f32(it.x[e]) * rstd * to_f32(it.w[e]));
        }
    });
}

template <typename T> __device__ __forceinline__ void qk_norm(const QkNormParams& p) {
    const int lanes = p.group_lanes;
    // Launcher bugs, not data conditions: fail loudly rather than mis-assign heads.
    if (lanes <= 0 || lanes > 32 || (lanes & (lanes - 1)) != 0 || blockDim.x % 32 != 0 || p.heads <= 0 ||
        p.head_dim <= 0 || (p.rope && (p.rope_tokens <= 0 || p.head_dim % 2 != 0)))
        __trap();
    // 16-byte chunks need every head to start 16-byte aligned: checked, not assumed. The condition
    // is uniform over the grid (params only).
    const bool vec = p.head_dim % 8 == 0 && p.head_dim <= 8 * 32 && p.row_stride % 8 == 0 && p.q_col % 8 == 0 &&
                     p.k_col % 8 == 0 && (((uintptr_t)p.x | (uintptr_t)p.wq | (uintptr_t)p.wk) & 15) == 0;
    if (vec) {
        if (lanes * 8 < p.head_dim) __trap();  // a group must hold the head
        heads_in_registers<T>(p);
    } else {
        heads_looped<T>(p);
    }
}

}  // namespace qk_norm

extern "C" __global__ void __launch_bounds__(QK_NORM_THREADS) qk_norm_bf16(QkNormParams p) {
    qk_norm::qk_norm<bf16>(p);
}
extern "C" __global__ void __launch_bounds__(QK_NORM_THREADS) qk_norm_f16(QkNormParams p) {
    qk_norm::qk_norm<f16>(p);
}

DELTADIT_SIM_REGISTER(qk_norm,
    DELTADIT_SIM_KERNEL(qk_norm_bf16, QkNormParams)
    DELTADIT_SIM_KERNEL(qk_norm_f16, QkNormParams))
