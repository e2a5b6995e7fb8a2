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
    launch("residual", d, x, &[y], None, gate, cache)
}

/// [`residual`] on a forecast `y = Σ_i coef[i]·terms[i]`, combined in the same pass.
pub fn residual_forecast<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    terms: &[&Tensor<D>],
    coef: &Tensor<D>,
    gate: Option<(&Tensor<D>, usize)>,
    cache: CacheWrite<'_, D>,
) -> Result<()> {
    const OP: &str = "residual_forecast";
    shapes::forecast(OP, x, terms, coef, 0)?;
    launch(OP, d, x, terms, Some(coef), gate, cache)
}

fn launch<D: KernelDevice>(
    op: &'static str,
    d: &D,
    x: &mut Tensor<D>,
    terms: &[&Tensor<D>],
    coef: Option<&Tensor<D>>,
    gate: Option<(&Tensor<D>, usize)>,
    cache: CacheWrite<'_, D>,
) -> Result<()> {
    let y = terms[0];
    shapes::same_shape(op, "y", y, x)?;
    shapes::same_dtype(op, x, &[("y", y)])?;
    let (rows, dim) = (x.rows(), x.cols());
    // No gate: tokens = rows (one "sample"), stride 0; the kernel never reads modv.
    let (modv, tokens, mod_stride, gate_row) = match gate {
        Some((modv, row)) => {
            let s = shapes::modulation(op, x, modv, &[row])?;
            (d.ptr(modv), s.tokens, s.mod_stride, int32(op, "modv", modv, row)?)
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
        shapes::same_shape(op, "cache", c, x)?;
        shapes::same_dtype(op, x, &[("cache", c)])?;
    }
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    // The kernel divides row indices in 32 bits.
    if rows > i32::MAX as usize {
        return Err(Error::Shape {
            op,
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
        dim: int32(op, "x", y, dim)?,
        gate_row,
        t1: terms.get(1).map_or(std::ptr::null(), |t| d.ptr(t)),
        t2: terms.get(2).map_or(std::ptr::null(), |t| d.ptr(t)),
        coef: coef.map_or(std::ptr::null(), |c| d.ptr(c) as *const f32),
        terms: if coef.is_some() { terms.len() as i32 } else { 0 },
    };
    let cfg = LaunchCfg::linear(vector_blocks(rows * dim, dim, RESIDUAL_THREADS), RESIDUAL_THREADS)?;
    // SAFETY: x, y (every term) and cache have x's shape and dtype, coef holds `terms` f32
    // values (shapes::forecast), and modv holds the gate row of every sample
    // (shapes::modulation), so every element the kernel touches lies inside them.
    unsafe { d.launch(kernel, &p, cfg) }
}
