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

/// `x += gate ⊙ y` (or `x += y`), then `cache = x` (anchor) or `cache = x − cache` (delta).
pub fn residual_f32(x: &mut [f32], y: &[f32], dim: usize, gate: Gate<'_>, cache: Cache<'_>) {
    let chunk = task_len(x.len(), dim);
    let per = chunk / dim.max(1);
    let xs = x.par_chunks_mut(chunk).zip(y.par_chunks(chunk)).enumerate();
    match cache {
        Cache::None => xs.for_each(|(c, (xc, yc))| residual_rows(xc, yc, dim, gate, c * per, None, false)),
        Cache::Anchor(cache) => xs
            .zip(cache.par_chunks_mut(chunk))
            .for_each(|((c, (xc, yc)), cc)| residual_rows(xc, yc, dim, gate, c * per, Some(cc), false)),
        Cache::Delta(cache) => xs
            .zip(cache.par_chunks_mut(chunk))
            .for_each(|((c, (xc, yc)), cc)| residual_rows(xc, yc, dim, gate, c * per, Some(cc), true)),
    }
}

multiversion! {
    /// Rows `first..` of the update; with a cache, `cache = x` (or `x − cache` when `delta`) per
    /// row right after the row's update, while it is still in L1.
    fn residual_rows(x: &mut [f32], y: &[f32], dim: usize, gate: Gate<'_>, first: usize, cache: Option<&mut [f32]>, delta: bool) {
        let mut cache = cache.map(|c| c.chunks_mut(dim));
        for (i, (xr, yr)) in x.chunks_mut(dim).zip(y.chunks(dim)).enumerate() {
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
