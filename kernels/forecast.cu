// The calibrated Δ apply and the TaylorSeer ladder update of cached quantities, each one pass:
//   x = (accumulate ? x : 0) + Σ_{i < terms} coef[i] · t_i      in f32, rounded once
// A cached step's forecast Δ(a) + e·d_1 + e²/2·d_2 is added to the stream with accumulate = 1
// (one read of the stream and of each snapshot, one write: the same pass as the plain Δ apply,
// with the snapshots' reads fused in). A full step's ladder update d_{i+1} = (d_i(a) − d_i(b))/w
// (coefficients (1/w, −1/w)) is ladder_update: every level and the "previous" snapshot in one
// pass, where level-by-level forecasts needed a copy of each level's old value and of d_0 besides
// (order 2: 6 tensor passes instead of 10). The coefficients are f32 on the device,
// written before a captured graph runs: their values change from step to step, the graph does
// not. Memory-bound: 16-byte vectors, one grid-stride loop over the flat tensor.
#include "common.cuh"

namespace forecast {

template <typename T, int E> __device__ __forceinline__ void forecast(const ForecastParams& p) {
    T* x = static_cast<T*>(p.x);
    const T* t[FORECAST_MAX_TERMS] = {static_cast<const T*>(p.t0), static_cast<const T*>(p.t1),
                                      static_cast<const T*>(p.t2)};
    float c[FORECAST_MAX_TERMS];
#pragma unroll
    for (int j = 0; j < FORECAST_MAX_TERMS; ++j) c[j] = j < p.terms ? p.coef[j] : 0.0f;
    const int64_t n = p.n / E;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t off = i * E;
        // Issue every independent load before any math.
        Chunk<T, E> xc, tc[FORECAST_MAX_TERMS];
        if (p.accumulate) xc.load(x + off);
#pragma unroll
        for (int j = 0; j < FORECAST_MAX_TERMS; ++j)
            if (j < p.terms) tc[j].load(t[j] + off);
        float acc[E];
        if (p.accumulate) {
            xc.unpack(acc);
        } else {
#pragma unroll
            for (int k = 0; k < E; ++k) acc[k] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < FORECAST_MAX_TERMS; ++j) {
            if (j >= p.terms) break;
            float f[E];
            tc[j].unpack(f);
#pragma unroll
            for (int k = 0; k < E; ++k) acc[k] = fmaf(c[j], f[k], acc[k]);
        }
        Chunk<T, E> out;
        out.pack(acc);  // the one rounding
        out.store(x + off);
    }
}

template <typename T> __device__ __forceinline__ void forecast_dispatch(const ForecastParams& p) {
    if (p.terms < 1 || p.terms > FORECAST_MAX_TERMS || !p.coef) __trap();  // launcher bug
    const bool vec = p.n % 8 == 0 && (((uintptr_t)p.x | (uintptr_t)p.t0 | (uintptr_t)p.t1 | (uintptr_t)p.t2) & 15) == 0;
    if (vec) forecast<T, 8>(p);
    else forecast<T, 1>(p);
}

template <typename T, int E> __device__ __forceinline__ void ladder(const LadderParams& p) {
    const T* d0 = static_cast<const T*>(p.d0);
    T* prev = static_cast<T*>(p.prev);
    T* lv[2] = {static_cast<T*>(p.lv0), static_cast<T*>(p.lv1)};
    float c[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) c[j] = j < 2 * p.levels ? p.coef[j] : 0.0f;
    const int64_t n = p.n / E;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t off = i * E;
        Chunk<T, E> dc, pc, lc[2];
        dc.load(d0 + off);
        pc.load(prev + off);
#pragma unroll
        for (int j = 0; j < 2; ++j)
            if (j < p.levels) lc[j].load(lv[j] + off);
        float cur[E], old[E];
        dc.unpack(cur);
        pc.unpack(old);
        dc.store(prev + off);  // d0 becomes the next full step's "previous", bit for bit
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            if (j >= p.levels) break;
            float nw[E];
#pragma unroll
            for (int k = 0; k < E; ++k) nw[k] = fmaf(c[2 * j + 1], old[k], c[2 * j] * cur[k]);
            lc[j].unpack(old);  // this level's value at the last full step, for the next level
            Chunk<T, E> out;
            out.pack(nw);  // the one rounding of the new level
            out.store(lv[j] + off);
            out.unpack(cur);  // the level above differences the stored value
        }
    }
}

template <typename T> __device__ __forceinline__ void ladder_dispatch(const LadderParams& p) {
    if (p.levels < 1 || p.levels > FORECAST_MAX_TERMS - 1 || !p.coef || (p.levels > 1 && !p.lv1)) __trap();
    const bool vec =
        p.n % 8 == 0 && (((uintptr_t)p.d0 | (uintptr_t)p.prev | (uintptr_t)p.lv0 | (uintptr_t)p.lv1) & 15) == 0;
    if (vec) ladder<T, 8>(p);
    else ladder<T, 1>(p);
}

}  // namespace forecast

extern "C" __global__ void __launch_bounds__(FORECAST_THREADS) forecast_bf16(ForecastParams p) {
    forecast::forecast_dispatch<bf16>(p);
}
extern "C" __global__ void __launch_bounds__(FORECAST_THREADS) forecast_f16(ForecastParams p) {
    forecast::forecast_dispatch<f16>(p);
}

extern "C" __global__ void __launch_bounds__(FORECAST_THREADS) ladder_update_bf16(LadderParams p) {
    forecast::ladder_dispatch<bf16>(p);
}
extern "C" __global__ void __launch_bounds__(FORECAST_THREADS) ladder_update_f16(LadderParams p) {
    forecast::ladder_dispatch<f16>(p);
}

DELTADIT_SIM_REGISTER(forecast,
    DELTADIT_SIM_KERNEL(forecast_bf16, ForecastParams)
    DELTADIT_SIM_KERNEL(forecast_f16, ForecastParams)
    DELTADIT_SIM_KERNEL(ladder_update_bf16, LadderParams)
    DELTADIT_SIM_KERNEL(ladder_update_f16, LadderParams))
