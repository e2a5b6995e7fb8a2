// Element-wise kernels around the GEMMs and the sampler:
//   activation_{gelu_tanh,silu}_*  y = act(x + bias[col])        (bias optional, x and y may alias,
//                                   rows may be a column range of a wider tensor)
//   add_bcast_*             x[r, :] += y                   (modulation table, positional embedding)
//   timestep_embedding_*    diffusers get_timestep_embedding
//   patchify_* / unpatchify_*  latents <-> patch tokens
//   cfg_combine_f32         classifier-free guidance on the f32 model output
// The first two run over whole activations and are memory-bound: 16-byte vectors when the row
// length is a multiple of 8, a scalar path otherwise. The rest touch latent-sized data (a few
// hundred KB) once per step; they are written for clarity with coalesced stores.
#include "common.cuh"

namespace elementwise {


// Column (in chunks) of a grid-stride loop's flat chunk index, advanced by the stride without a
// division per item.
struct ColCursor {
    int64_t col, cols, step;
    __device__ __forceinline__ ColCursor(int64_t i, int64_t stride, int64_t chunks_per_row)
        : col(i % chunks_per_row), cols(chunks_per_row), step(stride % chunks_per_row) {}
    __device__ __forceinline__ void advance() {
        col += step;
        if (col >= cols) col -= cols;
    }
};

// Row and column (in chunks) of a grid-stride loop's flat chunk index, for rows `ld` elements apart.
struct RowColCursor {
    int64_t row, col, cols, row_step, col_step;
    __device__ __forceinline__ RowColCursor(int64_t i, int64_t stride, int64_t chunks_per_row)
        : row(i / chunks_per_row), col(i % chunks_per_row), cols(chunks_per_row),
          row_step(stride / chunks_per_row), col_step(stride % chunks_per_row) {}
    __device__ __forceinline__ void advance() {
        row += row_step;
        col += col_step;
        if (col >= cols) {
            col -= cols;
            ++row;
        }
    }
};

__device__ __forceinline__ bool aligned16(const void* a, const void* b, const void* c) {
    return (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0;
}

// ---- activations ---------------------------------------------------------------------------------
enum Act { GELU_TANH = 0, SILU = 1 };

// 0.5·x·(1 + tanh(u)) = x·sigmoid(2u) = x / (1 + e^(−2u)), u = √(2/π)(x + 0.044715x³): one exp
// instead of tanhf's polynomial. Saturates correctly: e^(−2u) → inf gives −0, → 0 gives x.
// __expf's ~2 ulp error is far below the bf16/f16 rounding of the result.
template <int ACT> __device__ __forceinline__ float act(float x) {
    if (ACT == GELU_TANH) {
        const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
        return x / (1.0f + __expf(-2.0f * u));
    }
    return x / (1.0f + __expf(-x));
}

template <typename T, int ACT, int E> __device__ __forceinline__ void activation(const ActivationParams& p) {
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const T* bias = static_cast<const T*>(p.bias);
    const int64_t n = p.n / E;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    RowColCursor cc(i, stride, p.cols / E);
    for (; i < n; i += stride, cc.advance()) {
        // In place (x == y) is safe: each element is read, then written, by the same thread.
        const int64_t at = cc.row * p.ld + cc.col * E;
        Chunk<T, E> xc, bc;
        xc.load(x + at);
        if (bias) bc.load(bias + cc.col * E);
        float f[E];
        xc.unpack(f);
        if (bias) {
            float fb[E];
            bc.unpack(fb);
#pragma unroll
            for (int k = 0; k < E; ++k) f[k] += fb[k];
        }
#pragma unroll
        for (int k = 0; k < E; ++k) f[k] = act<ACT>(f[k]);
        xc.pack(f);
        xc.store(y + at);
    }
}

template <typename T, int ACT> __device__ __forceinline__ void activation_dispatch(const ActivationParams& p) {
    if (p.cols <= 0 || p.ld < p.cols) __trap();  // launcher bug
    if (p.cols % 8 == 0 && p.ld % 8 == 0 && aligned16(p.x, p.y, p.bias)) activation<T, ACT, 8>(p);
    else activation<T, ACT, 1>(p);
}

// ---- broadcast add -------------------------------------------------------------------------------
template <typename T, int E> __device__ __forceinline__ void add_bcast(const AddBcastParams& p) {
    T* x = static_cast<T*>(p.x);
    const T* y = static_cast<const T*>(p.y);
    const int64_t n = p.rows * p.cols / E;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    ColCursor cc(i, stride, p.cols / E);
    for (; i < n; i += stride, cc.advance()) {
        Chunk<T, E> xc, yc;
        xc.load(x + i * E);
        yc.load(y + cc.col * E);
        float fx[E], fy[E];
        xc.unpack(fx);
        yc.unpack(fy);
#pragma unroll
        for (int k = 0; k < E; ++k) fx[k] += fy[k];
        xc.pack(fx);
        xc.store(x + i * E);
    }
}

template <typename T> __device__ __forceinline__ void add_bcast_dispatch(const AddBcastParams& p) {
    if (p.cols <= 0) __trap();  // launcher bug
    if (p.cols % 8 == 0 && aligned16(p.x, p.y, nullptr)) add_bcast<T, 8>(p);
    else add_bcast<T, 1>(p);
}

// ---- timestep embedding --------------------------------------------------------------------------
// One thread per (sample, frequency k): out[b, k] and out[b, half + k]. Exactly the f32 op order of
// diffusers (and src/backend/cpu/elementwise.rs): e_k = exp((−ln P)·k / (half − shift)), a = t·e_k,
// with accurate expf/sincosf: a reaches ~1000 rad, where __sinf's range reduction is useless.
template <typename T> __device__ __forceinline__ void timestep_embedding(const TimestepEmbedParams& p) {
    const int half = p.dim / 2;
    const int64_t n = (int64_t)p.batch * half;
    // −ln(max_period) rounded to f32 once, from the double logarithm (as the reference does).
    const float neg_log = -(float)log((double)p.max_period);
    T* out = static_cast<T*>(p.out);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int b = (int)(i / half), k = (int)(i % half);
        const float e = expf((neg_log * (float)k) / ((float)half - p.downscale_freq_shift));
        const float a = p.t[b] * e;
        float s, c;
        sincosf(a, &s, &c);
        out[(int64_t)b * p.dim + k] = from_f32<T>(p.flip_sin_to_cos ? c : s);
        out[(int64_t)b * p.dim + half + k] = from_f32<T>(p.flip_sin_to_cos ? s : c);
    }
}

// ---- patchify / unpatchify -----------------------------------------------------------------------
// One thread per output element so the stores coalesce; reads gather p-wide runs of the input.
template <typename T> __device__ __forceinline__ void patchify(const PatchifyParams& p) {
    const int P = p.patch, th = p.height / P, tw = p.width / P;
    const int64_t cols = (int64_t)p.channels * P * P;
    const int64_t n = (int64_t)p.batch * th * tw * cols;
    T* out = static_cast<T*>(p.out);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += stride) {
        const int64_t tok = o / cols;
        const int col = (int)(o - tok * cols);                // (c·p + kh)·p + kw
        const int c = col / (P * P), kh = (col / P) % P, kw = col % P;
        const int64_t b = tok / ((int64_t)th * tw);
        const int i = (int)((tok / tw) % th), j = (int)(tok % tw);
        const int64_t src = ((b * p.channels + c) * p.height + (int64_t)i * P + kh) * p.width + (int64_t)j * P + kw;
        out[o] = from_f32<T>(p.x[src]);
    }
}

template <typename T> __device__ __forceinline__ void unpatchify(const UnpatchifyParams& p) {
    const int P = p.patch, H = p.h * P, W = p.w * P;
    const int64_t cols = (int64_t)P * P * p.channels;
    const int64_t n = (int64_t)p.batch * p.channels * H * W;
    const T* x = static_cast<const T*>(p.x);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += stride) {
        const int64_t plane = o / ((int64_t)H * W);           // b·C + c
        const int pix = (int)(o - plane * H * W);
        const int64_t b = plane / p.channels;
        const int c = (int)(plane % p.channels);
        const int y = pix / W, xx = pix % W;
        const int i = y / P, pp = y % P, j = xx / P, q = xx % P;
        const int64_t tok = b * p.h * p.w + (int64_t)i * p.w + j;
        p.out[o] = to_f32(x[tok * cols + (int64_t)(pp * P + q) * p.channels + c]);
    }
}

// ---- classifier-free guidance --------------------------------------------------------------------
// eps = u + scale·(c − u) with the reference's roundings (no FMA contraction), so the guided ε
// matches the CPU backend bit for bit.
__device__ __forceinline__ void cfg_combine(const CfgParams& p) {
    const int64_t plane = (int64_t)p.channels * p.hw;
    const int64_t n = (int64_t)p.batch * plane;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t b = e / plane;
        const int64_t within = e - b * plane;                 // ch·hw + s, same in out's sample
        const int64_t out_plane = (int64_t)p.channels_out * p.hw;
        if (!p.cfg) {
            p.eps[e] = p.out[b * out_plane + within];
            continue;
        }
        const int64_t first = b * out_plane + within, second = (b + p.batch) * out_plane + within;
        const float c = p.out[p.cond_first ? first : second];
        const float u = p.out[p.cond_first ? second : first];
        p.eps[e] = __fadd_rn(u, __fmul_rn(p.scale, __fsub_rn(c, u)));
    }
}

}  // namespace elementwise

#define EW_KERNEL(name, Params, body)                                                              \
    extern "C" __global__ void __launch_bounds__(EW_THREADS) name(Params p) { body; }
EW_KERNEL(activation_gelu_tanh_bf16, ActivationParams, (elementwise::activation_dispatch<bf16, elementwise::GELU_TANH>(p)))
EW_KERNEL(activation_gelu_tanh_f16, ActivationParams, (elementwise::activation_dispatch<f16, elementwise::GELU_TANH>(p)))
EW_KERNEL(activation_silu_bf16, ActivationParams, (elementwise::activation_dispatch<bf16, elementwise::SILU>(p)))
EW_KERNEL(activation_silu_f16, ActivationParams, (elementwise::activation_dispatch<f16, elementwise::SILU>(p)))
EW_KERNEL(add_bcast_bf16, AddBcastParams, elementwise::add_bcast_dispatch<bf16>(p))
EW_KERNEL(add_bcast_f16, AddBcastParams, elementwise::add_bcast_dispatch<f16>(p))
EW_KERNEL(timestep_embedding_bf16, TimestepEmbedParams, elementwise::timestep_embedding<bf16>(p))
EW_KERNEL(timestep_embedding_f16, TimestepEmbedParams, elementwise::timestep_embedding<f16>(p))
EW_KERNEL(patchify_bf16, PatchifyParams, elementwise::patchify<bf16>(p))
EW_KERNEL(patchify_f16, PatchifyParams, elementwise::patchify<f16>(p))
EW_KERNEL(unpatchify_bf16, UnpatchifyParams, elementwise::unpatchify<bf16>(p))
EW_KERNEL(unpatchify_f16, UnpatchifyParams, elementwise::unpatchify<f16>(p))
EW_KERNEL(cfg_combine_f32, CfgParams, elementwise::cfg_combine(p))

DELTADIT_SIM_REGISTER(elementwise,
    DELTADIT_SIM_KERNEL(activation_gelu_tanh_bf16, ActivationParams)
    DELTADIT_SIM_KERNEL(activation_gelu_tanh_f16, ActivationParams)
    DELTADIT_SIM_KERNEL(activation_silu_bf16, ActivationParams)
    DELTADIT_SIM_KERNEL(activation_silu_f16, ActivationParams)
    DELTADIT_SIM_KERNEL(add_bcast_bf16, AddBcastParams)
    DELTADIT_SIM_KERNEL(add_bcast_f16, AddBcastParams)
    DELTADIT_SIM_KERNEL(timestep_embedding_bf16, TimestepEmbedParams)
    DELTADIT_SIM_KERNEL(timestep_embedding_f16, TimestepEmbedParams)
    DELTADIT_SIM_KERNEL(patchify_bf16, PatchifyParams)
    DELTADIT_SIM_KERNEL(patchify_f16, PatchifyParams)
    DELTADIT_SIM_KERNEL(unpatchify_bf16, UnpatchifyParams)
    DELTADIT_SIM_KERNEL(unpatchify_f16, UnpatchifyParams)
    DELTADIT_SIM_KERNEL(cfg_combine_f32, CfgParams))
