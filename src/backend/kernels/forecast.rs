//! kernels/forecast.cu: the calibrated Δ apply and the TaylorSeer ladder update, one pass.

use super::elementwise::vector_blocks;
use super::table::family;
use super::{KernelDevice, LaunchCfg};
use crate::backend::params::{ForecastParams, LadderParams, FORECAST_MAX_TERMS, FORECAST_THREADS};
use crate::backend::shapes;
use crate::{DType, Error, Result, Tensor};

pub fn forecast<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    terms: &[&Tensor<D>],
    coef: &Tensor<D>,
    coef_offset: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "forecast";
    shapes::forecast(OP, x, terms, coef, coef_offset)?;
    let kernel = family::FORECAST.for_dtype(x.dtype())?;
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let _ = FORECAST_MAX_TERMS;
    let term = |i: usize| terms.get(i).map_or(std::ptr::null(), |t| d.ptr(t));
    // SAFETY (pointer arithmetic): coef holds at least coef_offset + terms f32 (shapes::forecast).
    let coef_ptr = unsafe { (d.ptr(coef) as *const f32).add(coef_offset) };
    let p = ForecastParams {
        x: d.ptr_mut(x),
        t0: term(0),
        t1: term(1),
        t2: term(2),
        coef: coef_ptr,
        n: n as i64,
        terms: terms.len() as i32,
        accumulate: i32::from(accumulate),
    };
    if coef.dtype() != DType::F32 {
        return Err(Error::DType { op: OP, tensor: "coef", expected: DType::F32, found: coef.dtype() });
    }
    let cfg = LaunchCfg::linear(vector_blocks(n, n, FORECAST_THREADS), FORECAST_THREADS)?;
    // SAFETY: every term has x's shape and dtype, and coef holds the coefficients read
    // (shapes::forecast), so every element the kernel touches lies inside them.
    unsafe { d.launch(kernel, &p, cfg) }
}

pub fn ladder_update<D: KernelDevice>(
    d: &D,
    d0: &Tensor<D>,
    prev: &mut Tensor<D>,
    levels: &mut [&mut Tensor<D>],
    coef: &Tensor<D>,
    coef_offset: usize,
) -> Result<()> {
    const OP: &str = "ladder_update";
    shapes::ladder_update(OP, d0, prev, levels, coef, coef_offset)?;
    let kernel = family::LADDER_UPDATE.for_dtype(d0.dtype())?;
    let n = d0.numel();
    if n == 0 {
        return Ok(());
    }
    // SAFETY (pointer arithmetic): coef holds at least coef_offset + 2·levels f32
    // (shapes::ladder_update).
    let coef_ptr = unsafe { (d.ptr(coef) as *const f32).add(coef_offset) };
    let lv1 = match levels.get_mut(1) {
        Some(t) => d.ptr_mut(t),
        None => std::ptr::null_mut(),
    };
    let p = LadderParams {
        d0: d.ptr(d0),
        prev: d.ptr_mut(prev),
        lv0: d.ptr_mut(levels[0]),
        lv1,
        coef: coef_ptr,
        n: n as i64,
        levels: levels.len() as i32,
        _pad: 0,
    };
    let cfg = LaunchCfg::linear(vector_blocks(n, n, FORECAST_THREADS), FORECAST_THREADS)?;
    // SAFETY: prev and every level have d0's shape and dtype and coef holds the coefficients
    // read (shapes::ladder_update), so every element the kernel touches lies inside them.
    unsafe { d.launch(kernel, &p, cfg) }
}
