//! kernels/reduce.cu: relative-L1 probe (Σ|a − b|, Σ|b|) for cache policies.

use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{RelL1Params, REDUCE_MAX_BLOCKS, REDUCE_THREADS};
use crate::backend::shapes;
use crate::{DType, Result, Tensor};

pub fn rel_l1<D: KernelDevice>(d: &D, a: &Tensor<D>, b: &Tensor<D>) -> Result<(f32, f32)> {
    const OP: &str = "rel_l1";
    shapes::same_shape(OP, "b", b, a)?;
    shapes::same_dtype(OP, a, &[("b", b)])?;
    let suffix = match a.dtype() {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
    };
    let n = a.numel();
    if n == 0 {
        return Ok((0.0, 0.0));
    }
    // The kernel accumulates into two floats with atomics: zero them first.
    let mut out = d.alloc(&[2], DType::F32)?;
    d.fill_bits(&mut out, 0)?;
    let p = RelL1Params { a: d.ptr(a), b: d.ptr(b), out: d.ptr_mut(&mut out).cast(), n: n as i64 };
    // 16-byte vectors per thread; few blocks so the atomics stay few (each thread loops).
    let per_vec = 16 / a.dtype().size();
    let blocks = grid_stride_blocks(n, REDUCE_THREADS, per_vec).min(REDUCE_MAX_BLOCKS as u64);
    d.launch(&format!("{OP}_{suffix}"), &p, LaunchCfg::linear(blocks, REDUCE_THREADS)?)?;
    let v = d.download(&out)?;
    Ok((v[0], v[1]))
}
