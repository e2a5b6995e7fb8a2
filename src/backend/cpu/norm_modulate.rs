//! LayerNorm (no affine parameters) + adaLN modulation: the reference for norm_modulate.cu.

use super::elementwise::sum8;
use super::simd::multiversion;
use super::task_len;
use crate::backend::shapes::ModSizes;
use rayon::prelude::*;

/// `out = LN(x)·(1 + scale) + shift` per row; statistics in f64, biased variance.
pub fn norm_modulate_f32(
    x: &[f32],
    modv: &[f32],
    s: ModSizes,
    shift_row: usize,
    scale_row: usize,
    eps: f32,
    out: &mut [f32],
) {
    let d = s.dim;
    let chunk = task_len(s.rows * d, d);
    out[..s.rows * d].par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
        norm_modulate_rows(x, modv, s, shift_row, scale_row, eps, c * chunk / d, o);
    });
}

multiversion! {
    /// Rows `first..` of `out` (as many as `out` holds).
    fn norm_modulate_rows(x: &[f32], modv: &[f32], s: ModSizes, shift_row: usize, scale_row: usize, eps: f32, first: usize, out: &mut [f32]) {
        let d = s.dim;
        for (i, orow) in out.chunks_mut(d).enumerate() {
            let r = first + i;
            let xrow = &x[r * d..(r + 1) * d];
            let m = &modv[(r / s.tokens) * s.mod_stride..];
            let (shift, scale) = (&m[shift_row * d..(shift_row + 1) * d], &m[scale_row * d..(scale_row + 1) * d]);
            // Two passes in f32 over 8 partial sums: the centred second pass keeps the variance
            // accurate without f64 (which does not vectorise here).
            let mean = sum8(xrow) / d as f32;
            for (o, &x) in orow.iter_mut().zip(xrow) {
                *o = (x - mean) * (x - mean);
            }
            let var = sum8(orow) / d as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for (((o, &x), &sc), &sh) in orow.iter_mut().zip(xrow).zip(scale).zip(shift) {
                *o = (x - mean) * rstd * (1.0 + sc) + sh;
            }
        }
    }
}
