//! Element-wise ops, embeddings and layout changes: the references for elementwise.cu.

use super::ROW_CHUNK;
use crate::backend::{Activation, Cfg};
use rayon::prelude::*;

#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline]
pub fn apply_activation(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Silu => silu(x),
    }
}

pub fn activation(x: &[f32], bias: Option<&[f32]>, act: Activation, cols: usize, out: &mut [f32]) {
    out.par_chunks_mut(cols * ROW_CHUNK).zip(x.par_chunks(cols * ROW_CHUNK)).for_each(|(o, x)| {
        for (orow, xrow) in o.chunks_mut(cols).zip(x.chunks(cols)) {
            for (j, (o, &x)) in orow.iter_mut().zip(xrow).enumerate() {
                *o = apply_activation(x + bias.map_or(0.0, |b| b[j]), act);
            }
        }
    });
}

pub fn add_bcast(x: &mut [f32], y: &[f32]) {
    let cols = y.len();
    x.par_chunks_mut(cols).for_each(|row| row.iter_mut().zip(y).for_each(|(x, &y)| *x += y));
}

/// diffusers `get_timestep_embedding` in f32, op by op as torch orders them.
pub fn timestep_embedding(t: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f32, out: &mut [f32]) {
    let half = dim / 2;
    let neg_log = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|k| ((neg_log * k as f32) / (half as f32 - shift)).exp()).collect();
    for (b, &tb) in t.iter().enumerate() {
        let row = &mut out[b * dim..(b + 1) * dim];
        for (k, &f) in freqs.iter().enumerate() {
            let a = tb * f;
            let (first, second) = if flip_sin_to_cos { (a.cos(), a.sin()) } else { (a.sin(), a.cos()) };
            row[k] = first;
            row[half + k] = second;
        }
    }
}

pub fn patchify(x: &[f32], [_, c, h, w]: [usize; 4], p: usize, out: &mut [f32]) {
    let (th, tw) = (h / p, w / p);
    let cols = c * p * p;
    out.par_chunks_mut(cols).enumerate().for_each(|(tok, o)| {
        let (bi, i, j) = (tok / (th * tw), (tok / tw) % th, tok % tw);
        for ci in 0..c {
            for kh in 0..p {
                for kw in 0..p {
                    o[(ci * p + kh) * p + kw] = x[((bi * c + ci) * h + i * p + kh) * w + j * p + kw];
                }
            }
        }
    });
}

pub fn unpatchify(x: &[f32], [_, c, h, w]: [usize; 4], p: usize, out: &mut [f32]) {
    let (th, tw) = (h / p, w / p);
    let cols = c * p * p;
    out.par_chunks_mut(h * w).enumerate().for_each(|(plane, o)| {
        let (bi, ci) = (plane / c, plane % c);
        for y in 0..h {
            for xx in 0..w {
                let (i, pp, j, q) = (y / p, y % p, xx / p, xx % p);
                o[y * w + xx] = x[(bi * th * tw + i * tw + j) * cols + (pp * p + q) * c + ci];
            }
        }
    });
}

pub fn cfg_combine(out: &[f32], [batch, c, c_out, hw]: [usize; 4], cfg: Cfg, eps: &mut [f32]) {
    for b in 0..batch {
        for ch in 0..c {
            let dst = &mut eps[(b * c + ch) * hw..][..hw];
            let row = |sample: usize| &out[(sample * c_out + ch) * hw..][..hw];
            match cfg {
                Cfg::Off => dst.copy_from_slice(row(b)),
                Cfg::On { scale, cond_first } => {
                    let (cond, uncond) = if cond_first { (row(b), row(b + batch)) } else { (row(b + batch), row(b)) };
                    for ((d, &cv), &uv) in dst.iter_mut().zip(cond).zip(uncond) {
                        *d = uv + scale * (cv - uv);
                    }
                }
            }
        }
    }
}
