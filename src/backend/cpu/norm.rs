//! LayerNorm (no affine parameters) + adaLN modulation: the reference for norm_modulate.cu.

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
            let mean = xrow.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = xrow.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for j in 0..d {
                let n = ((xrow[j] as f64 - mean) * rstd) as f32;
                orow[j] = n * (1.0 + scale[j]) + shift[j];
            }
        }
    });
}
