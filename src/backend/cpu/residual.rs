//! Gated residual with the fused Δ-cache writes: the reference for delta.cu.

use super::ROW_CHUNK;
use crate::backend::shapes::ModSizes;
use rayon::prelude::*;

pub enum Cache<'a> {
    None,
    Anchor(&'a mut [f32]),
    Delta(&'a mut [f32]),
}

/// `x += gate ⊙ y` (or `x += y`), then `cache = x` (anchor) or `cache = x − cache` (delta).
pub fn residual_f32(x: &mut [f32], y: &[f32], dim: usize, gate: Option<(&[f32], ModSizes, usize)>, cache: Cache<'_>) {
    let update = |r: usize, xr: &mut [f32], yr: &[f32]| match gate {
        Some((modv, s, row)) => {
            let g = &modv[(r / s.tokens) * s.mod_stride + row * dim..][..dim];
            xr.iter_mut().zip(yr).zip(g).for_each(|((x, &y), &g)| *x += g * y);
        }
        None => xr.iter_mut().zip(yr).for_each(|(x, &y)| *x += y),
    };
    let chunk = dim * ROW_CHUNK;
    let xs = x.par_chunks_mut(chunk).zip(y.par_chunks(chunk)).enumerate();
    match cache {
        Cache::None => xs.for_each(|(c, (xc, yc))| {
            for (i, (xr, yr)) in xc.chunks_mut(dim).zip(yc.chunks(dim)).enumerate() {
                update(c * ROW_CHUNK + i, xr, yr);
            }
        }),
        Cache::Anchor(cache) => xs.zip(cache.par_chunks_mut(chunk)).for_each(|((c, (xc, yc)), cc)| {
            for (i, (xr, yr)) in xc.chunks_mut(dim).zip(yc.chunks(dim)).enumerate() {
                update(c * ROW_CHUNK + i, xr, yr);
            }
            cc.copy_from_slice(xc);
        }),
        Cache::Delta(cache) => xs.zip(cache.par_chunks_mut(chunk)).for_each(|((c, (xc, yc)), cc)| {
            for (i, (xr, yr)) in xc.chunks_mut(dim).zip(yc.chunks(dim)).enumerate() {
                update(c * ROW_CHUNK + i, xr, yr);
            }
            cc.iter_mut().zip(xc.iter()).for_each(|(c, &x)| *c = x - *c);
        }),
    }
}
