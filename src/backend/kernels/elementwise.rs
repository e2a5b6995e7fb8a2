//! kernels/elementwise.cu: bias + activation, broadcast add, timestep embedding,
//! patchify/unpatchify and the CFG combine.

use super::KernelDevice;
use crate::backend::{Activation, Cfg};
use crate::{Result, Tensor};

pub fn activation<D: KernelDevice>(d: &D, x: &Tensor<D>, bias: Option<&Tensor<D>>, act: Activation, out: &mut Tensor<D>) -> Result<()> {
    let _ = (d, x, bias, act, out);
    Err(crate::Error::Unsupported("activation: kernel launcher not written yet".into()))
}

pub fn add_bcast<D: KernelDevice>(d: &D, x: &mut Tensor<D>, y: &Tensor<D>) -> Result<()> {
    let _ = (d, x, y);
    Err(crate::Error::Unsupported("add_bcast: kernel launcher not written yet".into()))
}

pub fn timestep_embedding<D: KernelDevice>(d: &D, t: &Tensor<D>, flip_sin_to_cos: bool, downscale_freq_shift: f32, out: &mut Tensor<D>) -> Result<()> {
    let _ = (d, t, flip_sin_to_cos, downscale_freq_shift, out);
    Err(crate::Error::Unsupported("timestep_embedding: kernel launcher not written yet".into()))
}

pub fn patchify<D: KernelDevice>(d: &D, latents: &Tensor<D>, patch: usize, out: &mut Tensor<D>) -> Result<()> {
    let _ = (d, latents, patch, out);
    Err(crate::Error::Unsupported("patchify: kernel launcher not written yet".into()))
}

pub fn unpatchify<D: KernelDevice>(d: &D, x: &Tensor<D>, patch: usize, out: &mut Tensor<D>) -> Result<()> {
    let _ = (d, x, patch, out);
    Err(crate::Error::Unsupported("unpatchify: kernel launcher not written yet".into()))
}

pub fn cfg_combine<D: KernelDevice>(d: &D, out: &Tensor<D>, cfg: Cfg, eps: &mut Tensor<D>) -> Result<()> {
    let _ = (d, out, cfg, eps);
    Err(crate::Error::Unsupported("cfg_combine: kernel launcher not written yet".into()))
}
