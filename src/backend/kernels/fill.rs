//! kernels/fill.cu: poison or initialise a buffer with one bit pattern.

use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{FillParams, FILL_THREADS};
use crate::{Result, Tensor};

pub fn fill_bits<D: KernelDevice>(d: &D, t: &mut Tensor<D>, bits: u32) -> Result<()> {
    let n = t.numel();
    if n == 0 {
        return Ok(());
    }
    let name = if t.dtype().size() == 2 { "fill_u16" } else { "fill_u32" };
    let p = FillParams { x: d.ptr_mut(t), n: n as i64, value: bits, _pad: 0 };
    d.launch(name, &p, LaunchCfg::linear(grid_stride_blocks(n, FILL_THREADS, 4), FILL_THREADS)?)
}
