//! kernels/scheduler.cu: the fused scheduler update of the f32 latents.

use super::KernelDevice;
use crate::backend::SchedulerUpdate;
use crate::{Result, Tensor};

pub fn scheduler_step<D: KernelDevice>(
    d: &D,
    update: &SchedulerUpdate,
    x: &mut Tensor<D>,
    eps: &Tensor<D>,
    x0_prev: Option<&mut Tensor<D>>,
    noise: Option<&Tensor<D>>,
) -> Result<()> {
    let _ = (d, update, x, eps, x0_prev, noise);
    Err(crate::Error::Unsupported("scheduler_step: kernel launcher not written yet".into()))
}
