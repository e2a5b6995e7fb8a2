// One fused update of the f32 latents per sampling step (formulas in params.h, SCHED_*):
// x0 from (x, ε), the new x, and x0_prev = x0 for the next multistep update, in one pass.
//
// Every operation is an explicitly rounded intrinsic (__fmul_rn, __fsub_rn, ...) in the reference's
// order: nvcc would otherwise contract a·b − c·d into FMAs, and the sampler's trajectory is then no
// longer bit-identical to src/backend/cpu/scheduler.rs (and diffusers' f32 tensor ops).
#include "common.cuh"

namespace scheduler {

template <int KIND>
__device__ __forceinline__ float step(const float (&c)[6], float x, float e, float prev, bool has_noise, float nz,
                                      float& x0_out) {
    if (KIND == SCHED_FLOW_EULER) {
        // diffusers computes sample + (sigma_next - sigma) * model_output in f32: one product, one sum.
        x0_out = __fsub_rn(x, __fmul_rn(c[1], e));
        return __fadd_rn(x, __fmul_rn(c[0], e));
    }
    const float x0 = __fdiv_rn(__fsub_rn(x, __fmul_rn(c[0], e)), c[1]);
    x0_out = x0;
    if (KIND == SCHED_DPM1) return __fsub_rn(__fmul_rn(c[2], x), __fmul_rn(c[3], x0));
    if (KIND == SCHED_DPM2) {
        const float d1 = __fmul_rn(c[4], __fsub_rn(x0, prev));
        return __fsub_rn(__fsub_rn(__fmul_rn(c[2], x), __fmul_rn(c[3], x0)), __fmul_rn(c[5], d1));
    }
    if (KIND == SCHED_DDIM) return __fadd_rn(__fmul_rn(c[2], x0), __fmul_rn(c[3], e));
    // SCHED_LCM: the last step passes no noise and keeps the denoised value.
    const float den = __fadd_rn(__fmul_rn(c[2], x0), __fmul_rn(c[3], x));
    return has_noise ? __fadd_rn(__fmul_rn(c[4], den), __fmul_rn(c[5], nz)) : den;
}

// Element i: x0_prev is read (DPM2; NaN when absent, as the reference) before it is overwritten.
template <int KIND> __device__ __forceinline__ void one(const SchedulerStepParams& p, const float (&c)[6], int64_t i) {
    const float prev = (KIND == SCHED_DPM2 && p.x0_prev) ? p.x0_prev[i] : __int_as_float(0x7fc00000);
    const float nz = p.noise ? p.noise[i] : 0.0f;
    float x0;
    p.x[i] = step<KIND>(c, p.x[i], p.eps[i], prev, p.noise != nullptr, nz, x0);
    if (p.x0_prev) p.x0_prev[i] = x0;
}

template <int KIND> __device__ __forceinline__ void scheduler_step(const SchedulerStepParams& p) {
    float c[6];
#pragma unroll
    for (int k = 0; k < 6; ++k) c[k] = p.c[k];
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    // float4 vectors over the 16-byte aligned prefix (whole tensors: all of it but n % 4).
    const bool vec = (((uintptr_t)p.x | (uintptr_t)p.eps | (uintptr_t)p.x0_prev | (uintptr_t)p.noise) & 15) == 0;
    const int64_t n4 = vec ? p.n / 4 : 0;
    for (int64_t v = tid; v < n4; v += stride) {
        float4* x4 = reinterpret_cast<float4*>(p.x) + v;
        const float4 xv = *x4, ev = reinterpret_cast<const float4*>(p.eps)[v];
        const float4 pv = (KIND == SCHED_DPM2 && p.x0_prev) ? reinterpret_cast<const float4*>(p.x0_prev)[v]
                                                            : make_float4(__int_as_float(0x7fc00000), __int_as_float(0x7fc00000),
                                                                          __int_as_float(0x7fc00000), __int_as_float(0x7fc00000));
        const float4 nv = p.noise ? reinterpret_cast<const float4*>(p.noise)[v] : make_float4(0.f, 0.f, 0.f, 0.f);
        const bool hn = p.noise != nullptr;
        float4 out, x0;
        out.x = step<KIND>(c, xv.x, ev.x, pv.x, hn, nv.x, x0.x);
        out.y = step<KIND>(c, xv.y, ev.y, pv.y, hn, nv.y, x0.y);
        out.z = step<KIND>(c, xv.z, ev.z, pv.z, hn, nv.z, x0.z);
        out.w = step<KIND>(c, xv.w, ev.w, pv.w, hn, nv.w, x0.w);
        *x4 = out;
        if (p.x0_prev) reinterpret_cast<float4*>(p.x0_prev)[v] = x0;
    }
    for (int64_t i = n4 * 4 + tid; i < p.n; i += stride) one<KIND>(p, c, i);
}

__device__ __forceinline__ void dispatch(const SchedulerStepParams& p) {
    // kind is uniform: one specialised loop instead of a switch per element.
    switch (p.kind) {
    case SCHED_DPM1: scheduler_step<SCHED_DPM1>(p); break;
    case SCHED_DPM2: scheduler_step<SCHED_DPM2>(p); break;
    case SCHED_DDIM: scheduler_step<SCHED_DDIM>(p); break;
    case SCHED_LCM: scheduler_step<SCHED_LCM>(p); break;
    case SCHED_FLOW_EULER: scheduler_step<SCHED_FLOW_EULER>(p); break;
    default: __trap();  // launcher bug
    }
}

}  // namespace scheduler

extern "C" __global__ void __launch_bounds__(SCHED_THREADS) scheduler_step_f32(SchedulerStepParams p) {
    scheduler::dispatch(p);
}

DELTADIT_SIM_REGISTER(scheduler,
    DELTADIT_SIM_KERNEL(scheduler_step_f32, SchedulerStepParams))
