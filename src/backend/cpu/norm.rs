//! LayerNorm (no affine parameters) + adaLN modulation: the reference for norm_modulate.cu.

use super::elementwise::sum8;
use super::ROW_CHUNK;
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
    out[..s.rows * d].par_chunks_mut(d * ROW_CHUNK).enumerate().for_each(|(chunk, o)| {
        for (i, orow) in o.chunks_mut(d).enumerate() {
            let r = chunk * ROW_CHUNK + i;
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
            for j in 0..d {
                let n = (xrow[j] - mean) * rstd;
                orow[j] = n * (1.0 + scale[j]) + shift[j];
            }
        }
    });
}
