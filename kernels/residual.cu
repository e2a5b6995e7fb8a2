// Gated residual with the fused Δ-cache store (Δ-DiT):
//   x_out = x + gate[b] ⊙ y          in f32, rounded once to the storage type
//   anchor: cache = x_out            (the rounded value the next block reads)
//   delta:  cache = x_out - cache    (f32 difference of the stored values, rounded once)
// Fusing the cache write into the residual saves a full extra pass over the activations on every
// anchor/delta step. With forecast terms, y itself is Σ coef[j]·t_j (FORA's reused branch outputs
// extrapolated by TaylorSeer), read and combined in the same pass instead of a forecast pass into
// a buffer the residual then reads again. Memory-bound: 16-byte vectors, one grid-stride loop over the flat tensor; the
// gate row of each sample is re-read by every token and stays in L1/L2.
#include "common.cuh"

namespace residual {

enum Mode { PLAIN = 0, ANCHOR = 1, DELTA = 2 };


// Row and column (in chunks) of a grid-stride loop's flat chunk index, advanced by the stride
// without a division per item.
struct RowCursor {
    int64_t row;
    int32_t col, cpr;
    int64_t step_rows;
    int32_t step_cols;
    __device__ __forceinline__ RowCursor(int64_t i, int64_t stride, int32_t chunks_per_row) {
        cpr = chunks_per_row;
        row = i / cpr;
        col = (int32_t)(i - row * cpr);
        step_rows = stride / cpr;
        step_cols = (int32_t)(stride - step_rows * cpr);
    }
    __device__ __forceinline__ void advance() {
        row += step_rows;
        col += step_cols;
        if (col >= cpr) {
            col -= cpr;
            ++row;
        }
    }
};

template <typename T, int MODE, int E> __device__ __forceinline__ void residual(const ResidualParams& p) {
    T* x = static_cast<T*>(p.x);
    const T* y = static_cast<const T*>(p.y);
    T* cache = static_cast<T*>(p.cache);
    // modv NULL: no gate. The gate of sample b starts at gate + b * mod_batch_stride.
    const T* gate = p.modv ? static_cast<const T*>(p.modv) + (int64_t)p.gate_row * p.dim : nullptr;
    const int terms = p.terms;
    const T* t1 = static_cast<const T*>(p.t1);
    const T* t2 = static_cast<const T*>(p.t2);
    float c[FORECAST_MAX_TERMS];
#pragma unroll
    for (int j = 0; j < FORECAST_MAX_TERMS; ++j) c[j] = j < terms ? p.coef[j] : 0.0f;
    const int32_t cpr = p.dim / E;
    const int64_t n = p.rows * cpr;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    RowCursor rc(i, stride, cpr);
    for (; i < n; i += stride, rc.advance()) {
        const int64_t off = i * E;  // = row * dim + col * E
        // Issue every independent load before any math.
        Chunk<T, E> xc, yc, gc, cc;
        xc.load(x + off);
        yc.load(y + off);
        if (gate) {
            // rows < 2^31 (launcher check): a 32-bit division.
            const int64_t b = (uint32_t)rc.row / (uint32_t)p.tokens;
            gc.load(gate + b * p.mod_batch_stride + (int64_t)rc.col * E);
        }
        if (MODE == DELTA) cc.load(cache + off);
        Chunk<T, E> tc[2];
        if (terms > 1) tc[0].load(t1 + off);
        if (terms > 2) tc[1].load(t2 + off);

        float fx[E], fy[E];
        xc.unpack(fx);
        yc.unpack(fy);
        if (terms > 0) {
            // the forecast y = c0·t0 + c1·t1 + c2·t2, in f32 (not rounded before the update)
#pragma unroll
            for (int k = 0; k < E; ++k) fy[k] *= c[0];
#pragma unroll
            for (int j = 1; j < FORECAST_MAX_TERMS; ++j) {
                if (j >= terms) break;
                float f[E];
                tc[j - 1].unpack(f);
#pragma unroll
                for (int k = 0; k < E; ++k) fy[k] = fmaf(c[j], f[k], fy[k]);
            }
        }
        if (gate) {
            float fg[E];
            gc.unpack(fg);
#pragma unroll
            for (int k = 0; k < E; ++k) fx[k] = fmaf(fg[k], fy[k], fx[k]);
        } else {
#pragma unroll
            for (int k = 0; k < E; ++k) fx[k] += fy[k];
        }
        Chunk<T, E> out;
        out.pack(fx);  // the one rounding of x_out
        out.store(x + off);
        if (MODE == ANCHOR) out.store(cache + off);
        if (MODE == DELTA) {
            float fo[E], fc[E];
            out.unpack(fo);  // the stored (rounded) x_out, as the next block will read it
            cc.unpack(fc);
#pragma unroll
            for (int k = 0; k < E; ++k) fo[k] -= fc[k];
            cc.pack(fo);
            cc.store(cache + off);
        }
    }
}

template <typename T, int MODE> __device__ __forceinline__ void residual_dispatch(const ResidualParams& p) {
    if (p.dim <= 0 || p.tokens <= 0 || (MODE != PLAIN && !p.cache)) __trap();  // launcher bug
    if (p.terms < 0 || p.terms > FORECAST_MAX_TERMS || (p.terms > 0 && !p.coef) || (p.terms > 1 && !p.t1) ||
        (p.terms > 2 && !p.t2))
        __trap();  // launcher bug
    // 16-byte vectors need dim (and the gate stride) to be multiples of 8 elements and aligned
    // bases (always true of whole tensors; checked, not assumed). Uniform branch.
    const bool vec = p.dim % 8 == 0 && p.mod_batch_stride % 8 == 0 &&
                     (((uintptr_t)p.x | (uintptr_t)p.y | (uintptr_t)p.modv | (uintptr_t)p.cache | (uintptr_t)p.t1 |
                       (uintptr_t)p.t2) & 15) == 0;
    if (vec) residual<T, MODE, 8>(p);
    else residual<T, MODE, 1>(p);
}

}  // namespace residual

#define RESIDUAL_KERNEL(mode, MODE, dtype, T)                                                         \
    extern "C" __global__ void __launch_bounds__(RESIDUAL_THREADS) residual_##mode##_##dtype(ResidualParams p) { \
        residual::residual_dispatch<T, residual::MODE>(p);                                               \
    }
RESIDUAL_KERNEL(plain, PLAIN, bf16, bf16)
RESIDUAL_KERNEL(anchor, ANCHOR, bf16, bf16)
RESIDUAL_KERNEL(delta, DELTA, bf16, bf16)
RESIDUAL_KERNEL(plain, PLAIN, f16, f16)
RESIDUAL_KERNEL(anchor, ANCHOR, f16, f16)
RESIDUAL_KERNEL(delta, DELTA, f16, f16)

DELTADIT_SIM_REGISTER(residual,
    DELTADIT_SIM_KERNEL(residual_plain_bf16, ResidualParams)
    DELTADIT_SIM_KERNEL(residual_anchor_bf16, ResidualParams)
    DELTADIT_SIM_KERNEL(residual_delta_bf16, ResidualParams)
    DELTADIT_SIM_KERNEL(residual_plain_f16, ResidualParams)
    DELTADIT_SIM_KERNEL(residual_anchor_f16, ResidualParams)
    DELTADIT_SIM_KERNEL(residual_delta_f16, ResidualParams))
