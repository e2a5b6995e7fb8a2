//! Gated residual with the fused Δ-cache writes: the reference for residual.cu.

use super::simd::multiversion;
use super::task_len;
use crate::backend::shapes::ModSizes;
use rayon::prelude::*;

pub enum Cache<'a> {
    None,
    Anchor(&'a mut [f32]),
    Delta(&'a mut [f32]),
}

/// The gate: (modulation tensor, its sizes, the row of the gate in it).
pub type Gate<'a> = Option<(&'a [f32], ModSizes, usize)>;

/// `x += gate ⊙ y` (or `x += y`), then `cache = x` (anchor) or `cache = x − cache` (delta), with
/// `y = Σ_i coef[i]·ys[i]` (with `coef`; else `y = ys[0]`), each row of the forecast formed in
/// f32 right before its update.
pub fn residual_terms_f32(
    x: &mut [f32],
    ys: &[&[f32]],
    coef: Option<&[f32]>,
    dim: usize,
    gate: Gate<'_>,
    cache: Cache<'_>,
) {
    let chunk = task_len(x.len(), dim);
    let per = chunk / dim.max(1);
    let rows_of = |c: usize, len: usize| -> Vec<&[f32]> { ys.iter().map(|y| &y[c * chunk..c * chunk + len]).collect() };
    let xs = x.par_chunks_mut(chunk).enumerate();
    match cache {
        Cache::None => xs.for_each(|(c, xc)| {
            let yc = rows_of(c, xc.len());
            residual_rows(xc, &yc, coef, dim, gate, c * per, None, false)
        }),
        Cache::Anchor(cache) => xs.zip(cache.par_chunks_mut(chunk)).for_each(|((c, xc), cc)| {
            let yc = rows_of(c, xc.len());
            residual_rows(xc, &yc, coef, dim, gate, c * per, Some(cc), false)
        }),
        Cache::Delta(cache) => xs.zip(cache.par_chunks_mut(chunk)).for_each(|((c, xc), cc)| {
            let yc = rows_of(c, xc.len());
            residual_rows(xc, &yc, coef, dim, gate, c * per, Some(cc), true)
        }),
    }
}

multiversion! {
    /// Rows `first..` of the update; with a cache, `cache = x` (or `x − cache` when `delta`) per
    /// row right after the row's update, while it is still in L1. With `coef`, each row's y is
    /// first formed from the terms in a row buffer (still in L1 when the update reads it).
    #[allow(clippy::too_many_arguments)]
    fn residual_rows(x: &mut [f32], ys: &[&[f32]], coef: Option<&[f32]>, dim: usize, gate: Gate<'_>, first: usize, cache: Option<&mut [f32]>, delta: bool) {
        let mut cache = cache.map(|c| c.chunks_mut(dim));
        let mut forecast = coef.map(|_| vec![0.0f32; dim]);
        for (i, xr) in x.chunks_mut(dim).enumerate() {
            let yr: &[f32] = match (&mut forecast, coef) {
                (Some(f), Some(c)) => {
                    f.iter_mut().zip(&ys[0][i * dim..(i + 1) * dim]).for_each(|(f, &t)| *f = c[0] * t);
                    for (t, &cj) in ys.iter().zip(c).skip(1) {
                        f.iter_mut().zip(&t[i * dim..(i + 1) * dim]).for_each(|(f, &t)| *f = cj.mul_add(t, *f));
                    }
                    f
                }
                _ => &ys[0][i * dim..(i + 1) * dim],
            };
            match gate {
                Some((modv, s, row)) => {
                    let g = &modv[((first + i) / s.tokens) * s.mod_stride + row * dim..][..dim];
                    xr.iter_mut().zip(yr).zip(g).for_each(|((x, &y), &g)| *x += g * y);
                }
                None => xr.iter_mut().zip(yr).for_each(|(x, &y)| *x += y),
            }
            if let Some(cr) = cache.as_mut().and_then(|c| c.next()) {
                if delta {
                    cr.iter_mut().zip(xr.iter()).for_each(|(c, &x)| *c = x - *c);
                } else {
                    cr.copy_from_slice(xr);
                }
            }
        }
    }
}
