//! The relative-L1 probe of the cache policies: the reference for rel_l1.cu.

use super::TASK_MIN_ELEMS;
use rayon::prelude::*;

/// (Σ|a − b|, Σ|b|), accumulated in f64 over fixed chunks that are then added in order, so the
/// result does not depend on how the thread pool splits the work (an adaptive cache policy
/// compares it against a threshold: two identical runs must decide alike).
pub fn rel_l1(a: &[f32], b: &[f32]) -> (f32, f32) {
    let partial: Vec<(f64, f64)> = a
        .par_chunks(TASK_MIN_ELEMS)
        .zip(b.par_chunks(TASK_MIN_ELEMS))
        .map(|(a, b)| {
            a.iter().zip(b).fold((0.0, 0.0), |(d, n), (&a, &b)| (d + (a as f64 - b as f64).abs(), n + (b as f64).abs()))
        })
        .collect();
    let (d, n) = partial.iter().fold((0.0, 0.0), |(d, n), p| (d + p.0, n + p.1));
    (d as f32, n as f32)
}
