//! Launchers for the kernels in kernels/*.cu, shared by the two backends that run them: the SIMT
//! shim ([`super::sim::Sim`]) and the GPU ([`super::cuda::Cuda`]). Each op's file checks shapes
//! (through [`super::shapes`]), fills the parameter struct of kernels/params.h and picks the grid,
//! so the shim exercises exactly the launch configuration the GPU gets.

mod attention;
mod elementwise;
mod fill;
mod forecast;
mod norm_modulate;
mod qk_norm;
mod rel_l1;
mod residual;
mod scheduler;
pub mod table;

pub(crate) use attention::AttentionChoice;
pub use attention::{attention, attention_supported_head_dim};
pub use elementwise::{activation, activation_cols, add_bcast, cfg_combine, patchify, timestep_embedding, unpatchify};
pub use fill::{copy_rows, fill_bits};
pub use forecast::{forecast, ladder_update};
pub use norm_modulate::norm_modulate;
pub use qk_norm::{qk_norm, qk_norm_rope};
pub use rel_l1::rel_l1;
pub use residual::{residual, residual_forecast};
pub use scheduler::scheduler_step;
pub use table::{AttentionKernel, KernelId};

use super::params::*;
use super::Backend;
use crate::error::BackendErrorKind;
use crate::{Error, Result, Tensor};
use std::ffi::c_void;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

impl LaunchCfg {
    /// A 1-D launch of `blocks` × `threads`.
    pub fn linear(blocks: u64, threads: u32) -> Result<Self> {
        if blocks == 0 || blocks > i32::MAX as u64 {
            return Err(Error::backend(
                "kernels",
                BackendErrorKind::UnsupportedLayout,
                format!("a launch of {blocks} blocks is out of range"),
            ));
        }
        Ok(LaunchCfg { grid: [blocks as u32, 1, 1], block: [threads, 1, 1], smem: 0 })
    }
}

/// A kernel parameter struct from kernels/params.h.
///
/// # Safety
/// Implementors must be `#[repr(C)]` plain data whose layout matches the C struct of the same
/// name (bindgen's layout assertions in params.rs check this), since it is copied byte for byte
/// into the kernel's parameter space.
pub unsafe trait KernelParams: Copy + cudarc::driver::DeviceRepr {}

macro_rules! kernel_params {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: bindgen-generated #[repr(C)] mirror of the C struct in kernels/params.h.
        unsafe impl KernelParams for $t {}
        // SAFETY: as above; plain data passed by value as a kernel argument.
        unsafe impl cudarc::driver::DeviceRepr for $t {}
    )*};
}
kernel_params!(
    FillParams,
    CopyRowsParams,
    NormModulateParams,
    QkNormParams,
    ResidualParams,
    ActivationParams,
    AddBcastParams,
    TimestepEmbedParams,
    PatchifyParams,
    UnpatchifyParams,
    CfgParams,
    SchedulerStepParams,
    RelL1Params,
    ForecastParams,
    LadderParams,
    AttentionParams,
);

/// A backend that runs the kernels of kernels/*.cu.
pub trait KernelDevice: Backend {
    /// Address of an input tensor's first element as the kernels see it (a device address on a
    /// GPU).
    fn ptr(&self, t: &Tensor<Self>) -> *const c_void;
    /// Address of an output tensor (the kernel writes through it).
    fn ptr_mut(&self, t: &mut Tensor<Self>) -> *mut c_void;
    /// Launches `kernel` with its parameter struct.
    ///
    /// # Safety
    /// `P` must be the parameter struct `kernel` takes (its `KernelInfo::params`), and every
    /// address in `params` must point into a live tensor of this backend that holds every element
    /// the kernel reads or writes for the sizes and strides in `params` and the grid of `cfg`
    /// (the launchers establish this with the shape checks of `backend::shapes`). The kernel runs
    /// without bounds checks.
    unsafe fn launch<P: KernelParams>(&self, kernel: KernelId, params: &P, cfg: LaunchCfg) -> Result<()>;
    /// The attention kernel to launch where there is a choice (head dim 72).
    fn attention_kernel(&self) -> AttentionKernel {
        AttentionKernel::default()
    }
}

/// Address of an optional tensor (NULL when absent).
pub(crate) fn ptr_or_null<D: KernelDevice>(d: &D, t: Option<&Tensor<D>>) -> *const c_void {
    t.map_or(std::ptr::null(), |t| d.ptr(t))
}

/// Blocks for a grid-stride loop over `n` items, capped so huge tensors don't launch millions
/// of blocks (each thread then loops).
pub(crate) fn grid_stride_blocks(n: usize, threads: u32, items_per_thread: usize) -> u64 {
    let per_block = threads as usize * items_per_thread.max(1);
    (n.div_ceil(per_block).clamp(1, 65_536)) as u64
}

/// The ops a kernel backend (sim, cuda) runs through the launchers of this module, written once:
/// `impl Backend for X { ...; kernel_backend_ops!(); }`.
macro_rules! kernel_backend_ops {
    () => {
        fn norm_modulate(
            &self,
            x: &$crate::Tensor<Self>,
            modv: &$crate::Tensor<Self>,
            shift_row: usize,
            scale_row: usize,
            eps: f32,
            out: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::norm_modulate(self, x, modv, shift_row, scale_row, eps, out)
        }

        fn qk_norm(
            &self,
            x: &mut $crate::Tensor<Self>,
            q_col: usize,
            k_col: usize,
            heads: usize,
            head_dim: usize,
            wq: &$crate::Tensor<Self>,
            wk: &$crate::Tensor<Self>,
            eps: f32,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::qk_norm(self, x, q_col, k_col, heads, head_dim, wq, wk, eps)
        }

        fn qk_norm_rope(
            &self,
            x: &mut $crate::Tensor<Self>,
            q_col: usize,
            k_col: usize,
            heads: usize,
            head_dim: usize,
            wq: &$crate::Tensor<Self>,
            wk: &$crate::Tensor<Self>,
            eps: f32,
            rope: $crate::backend::Rope<'_, Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::qk_norm_rope(self, x, q_col, k_col, heads, head_dim, wq, wk, eps, rope)
        }

        fn residual(
            &self,
            x: &mut $crate::Tensor<Self>,
            y: &$crate::Tensor<Self>,
            gate: Option<(&$crate::Tensor<Self>, usize)>,
            cache: $crate::backend::CacheWrite<'_, Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::residual(self, x, y, gate, cache)
        }

        fn residual_forecast(
            &self,
            x: &mut $crate::Tensor<Self>,
            terms: &[&$crate::Tensor<Self>],
            coef: &$crate::Tensor<Self>,
            gate: Option<(&$crate::Tensor<Self>, usize)>,
            cache: $crate::backend::CacheWrite<'_, Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::residual_forecast(self, x, terms, coef, gate, cache)
        }

        fn forecast(
            &self,
            x: &mut $crate::Tensor<Self>,
            terms: &[&$crate::Tensor<Self>],
            coef: &$crate::Tensor<Self>,
            coef_offset: usize,
            accumulate: bool,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::forecast(self, x, terms, coef, coef_offset, accumulate)
        }

        fn ladder_update(
            &self,
            d0: &$crate::Tensor<Self>,
            prev: &mut $crate::Tensor<Self>,
            levels: &mut [&mut $crate::Tensor<Self>],
            coef: &$crate::Tensor<Self>,
            coef_offset: usize,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::ladder_update(self, d0, prev, levels, coef, coef_offset)
        }

        fn attention(
            &self,
            shape: &$crate::backend::AttentionShape,
            q: $crate::backend::ColSlice<'_, Self>,
            k: $crate::backend::ColSlice<'_, Self>,
            v: $crate::backend::ColSlice<'_, Self>,
            key_bias: Option<&$crate::Tensor<Self>>,
            out: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::attention(self, shape, q, k, v, key_bias, out)
        }

        fn activation(
            &self,
            x: &$crate::Tensor<Self>,
            bias: Option<&$crate::Tensor<Self>>,
            act: $crate::backend::Activation,
            out: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::activation(self, x, bias, act, out)
        }

        fn activation_cols(
            &self,
            x: &mut $crate::Tensor<Self>,
            col: usize,
            cols: usize,
            act: $crate::backend::Activation,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::activation_cols(self, x, col, cols, act)
        }

        fn copy_rows(
            &self,
            src: &$crate::Tensor<Self>,
            src_at: (usize, usize),
            dst: &mut $crate::Tensor<Self>,
            dst_at: (usize, usize),
            size: (usize, usize),
        ) -> $crate::Result<()> {
            $crate::backend::kernels::copy_rows(self, src, src_at, dst, dst_at, size)
        }

        fn add_bcast(&self, x: &mut $crate::Tensor<Self>, y: &$crate::Tensor<Self>) -> $crate::Result<()> {
            $crate::backend::kernels::add_bcast(self, x, y)
        }

        fn timestep_embedding(
            &self,
            t: &$crate::Tensor<Self>,
            flip_sin_to_cos: bool,
            downscale_freq_shift: f32,
            out: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::timestep_embedding(self, t, flip_sin_to_cos, downscale_freq_shift, out)
        }

        fn patchify(
            &self,
            latents: &$crate::Tensor<Self>,
            patch: usize,
            out: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::patchify(self, latents, patch, out)
        }

        fn unpatchify(
            &self,
            x: &$crate::Tensor<Self>,
            patch: usize,
            out: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::unpatchify(self, x, patch, out)
        }

        fn cfg_combine(
            &self,
            out: &$crate::Tensor<Self>,
            cfg: $crate::backend::Cfg,
            eps: &mut $crate::Tensor<Self>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::cfg_combine(self, out, cfg, eps)
        }

        fn scheduler_step(
            &self,
            update: &$crate::backend::SchedulerUpdate,
            x: &mut $crate::Tensor<Self>,
            eps: &$crate::Tensor<Self>,
            x0_prev: Option<&mut $crate::Tensor<Self>>,
            noise: Option<&$crate::Tensor<Self>>,
        ) -> $crate::Result<()> {
            $crate::backend::kernels::scheduler_step(self, update, x, eps, x0_prev, noise)
        }

        fn rel_l1(&self, a: &$crate::Tensor<Self>, b: &$crate::Tensor<Self>) -> $crate::Result<(f32, f32)> {
            $crate::backend::kernels::rel_l1(self, a, b)
        }
    };
}
pub(crate) use kernel_backend_ops;
