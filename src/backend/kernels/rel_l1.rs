//! kernels/rel_l1.cu: the relative-L1 probe (Σ|a − b|, Σ|b|) of the cache policies.

use super::table::family;
use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{RelL1Params, REL_L1_MAX_BLOCKS, REL_L1_THREADS};
use crate::backend::shapes;
use crate::{DType, Result, Tensor};

/// (Σ|a − b|, Σ|b|). The kernel leaves one pair of f32 sums per block; they are added here in block
/// order (in f64), so the result is the same on every run for the same inputs.
pub fn rel_l1<D: KernelDevice>(d: &D, a: &Tensor<D>, b: &Tensor<D>) -> Result<(f32, f32)> {
    const OP: &str = "rel_l1";
    shapes::same_shape(OP, "b", b, a)?;
    shapes::same_dtype(OP, a, &[("b", b)])?;
    let kernel = family::REL_L1.for_dtype(a.dtype())?;
    let n = a.numel();
    if n == 0 {
        return Ok((0.0, 0.0));
    }
    // 16-byte vectors per thread; few blocks so the pairs read back stay few (each thread loops).
    let per_vec = 16 / a.dtype().size();
    let blocks = grid_stride_blocks(n, REL_L1_THREADS, per_vec).min(REL_L1_MAX_BLOCKS as u64);
    let mut partial = d.alloc(&[2 * blocks as usize], DType::F32)?;
    let p = RelL1Params { a: d.ptr(a), b: d.ptr(b), partial: d.ptr_mut(&mut partial).cast(), n: n as i64 };
    // SAFETY: a and b hold n elements of the dtype the kernel is for; `partial` holds one pair of
    // floats for each of the `blocks` blocks launched.
    unsafe { d.launch(kernel, &p, LaunchCfg::linear(blocks, REL_L1_THREADS)?)? };
    let sums = d.download(&partial)?;
    let (diff, norm) = sums.chunks_exact(2).fold((0f64, 0f64), |(s, t), p| (s + p[0] as f64, t + p[1] as f64));
    Ok((diff as f32, norm as f32))
}
