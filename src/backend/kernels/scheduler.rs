//! kernels/scheduler.cu: the fused scheduler update of the f32 latents.

use super::table::KernelId;
use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{
    SchedulerStepParams, SCHED_DDIM, SCHED_DPM1, SCHED_DPM2, SCHED_FLOW_EULER, SCHED_LCM, SCHED_THREADS,
};
use crate::backend::{shapes, SchedulerKind, SchedulerUpdate};
use crate::{Result, Tensor};

pub fn scheduler_step<D: KernelDevice>(
    d: &D,
    update: &SchedulerUpdate,
    x: &mut Tensor<D>,
    eps: &Tensor<D>,
    x0_prev: Option<&mut Tensor<D>>,
    noise: Option<&Tensor<D>>,
) -> Result<()> {
    let n = shapes::scheduler_step(x, eps, x0_prev.as_deref(), noise)?;
    if n == 0 {
        return Ok(());
    }
    let kind = match update.kind {
        SchedulerKind::Dpm1 => SCHED_DPM1,
        SchedulerKind::Dpm2 => SCHED_DPM2,
        SchedulerKind::Ddim => SCHED_DDIM,
        SchedulerKind::Lcm => SCHED_LCM,
        SchedulerKind::FlowEuler => SCHED_FLOW_EULER,
    };
    let p = SchedulerStepParams {
        x: d.ptr_mut(x).cast(),
        eps: d.ptr(eps).cast(),
        x0_prev: x0_prev.map_or(std::ptr::null_mut(), |t| d.ptr_mut(t).cast()),
        noise: noise.map_or(std::ptr::null(), |t| d.ptr(t).cast()),
        n: n as i64,
        kind: kind as i32,
        c: update.c,
        _pad: 0,
    };
    // Four elements (one float4) a thread.
    let cfg = LaunchCfg::linear(grid_stride_blocks(n, SCHED_THREADS, 4), SCHED_THREADS)?;
    // SAFETY: x, eps and the optional x0_prev and noise are f32 tensors of n elements
    // (shapes::scheduler_step).
    unsafe { d.launch(KernelId::SchedulerStepF32, &p, cfg) }
}
