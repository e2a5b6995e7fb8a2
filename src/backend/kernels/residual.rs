//! kernels/residual.cu: gated residual with the fused Δ-cache anchor/delta writes.

use super::elementwise::{int32, vector_blocks};
use super::table::family;
use super::{KernelDevice, LaunchCfg};
use crate::backend::params::{ResidualParams, RESIDUAL_THREADS};
use crate::backend::{shapes, CacheWrite};
use crate::{Error, Result, Tensor};

pub fn residual<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    y: &Tensor<D>,
    gate: Option<(&Tensor<D>, usize)>,
    cache: CacheWrite<'_, D>,
) -> Result<()> {
    const OP: &str = "residual";
    shapes::same_shape(OP, "y", y, x)?;
    shapes::same_dtype(OP, x, &[("y", y)])?;
    let (rows, dim) = (x.rows(), x.cols());
    // No gate: tokens = rows (one "sample"), stride 0; the kernel never reads modv.
    let (modv, tokens, mod_stride, gate_row) = match gate {
        Some((modv, row)) => {
            let s = shapes::modulation(OP, x, modv, &[row])?;
            (d.ptr(modv), s.tokens, s.mod_stride, int32(OP, "modv", modv, row)?)
        }
        None => (std::ptr::null(), rows.max(1), 0, 0),
    };
    let (kernels, cache) = match cache {
        CacheWrite::None => (family::RESIDUAL_PLAIN, None),
        CacheWrite::Anchor(c) => (family::RESIDUAL_ANCHOR, Some(c)),
        CacheWrite::Delta(c) => (family::RESIDUAL_DELTA, Some(c)),
    };
    let kernel = kernels.for_dtype(x.dtype())?;
    if let Some(c) = cache.as_deref() {
        shapes::same_shape(OP, "cache", c, x)?;
        shapes::same_dtype(OP, x, &[("cache", c)])?;
    }
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    // The kernel divides row indices in 32 bits.
    if rows > i32::MAX as usize {
        return Err(Error::Shape {
            op: OP,
            tensor: "x",
            expected: "fewer than 2^31 rows".into(),
            found: x.shape().to_vec(),
        });
    }
    let p = ResidualParams {
        x: d.ptr_mut(x),
        y: d.ptr(y),
        modv,
        cache: cache.map_or(std::ptr::null_mut(), |c| d.ptr_mut(c)),
        rows: rows as i64,
        tokens: tokens as i64,
        mod_batch_stride: mod_stride as i64,
        dim: int32(OP, "x", y, dim)?,
        gate_row,
    };
    let cfg = LaunchCfg::linear(vector_blocks(rows * dim, dim, RESIDUAL_THREADS), RESIDUAL_THREADS)?;
    // SAFETY: x, y and cache have x's shape and dtype, and modv holds the gate row of every
    // sample (shapes::modulation), so every element the kernel touches lies inside them.
    unsafe { d.launch(kernel, &p, cfg) }
}
