//! kernels/fill.cu: poison or initialise a buffer with one bit pattern.

use super::table::family;
use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{FillParams, FILL_THREADS};
use crate::{Result, Tensor};

pub fn fill_bits<D: KernelDevice>(d: &D, t: &mut Tensor<D>, bits: u32) -> Result<()> {
    let n = t.numel();
    if n == 0 {
        return Ok(());
    }
    let suffix = if t.dtype().size() == 2 { "u16" } else { "u32" };
    let kernel = family::FILL.with_suffix(suffix).ok_or_else(|| {
        crate::Error::backend("kernels", crate::error::BackendErrorKind::NotBuilt, format!("no fill_{suffix} kernel"))
    })?;
    let p = FillParams { x: d.ptr_mut(t), n: n as i64, value: bits, _pad: 0 };
    // SAFETY: the kernel writes n elements of the tensor's element size, which it holds.
    unsafe { d.launch(kernel, &p, LaunchCfg::linear(grid_stride_blocks(n, FILL_THREADS, 4), FILL_THREADS)?) }
}
