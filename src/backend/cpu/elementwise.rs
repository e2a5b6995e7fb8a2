//! Element-wise ops, embeddings and layout changes: the references for elementwise.cu.

use super::simd::multiversion;
use super::task_len;
use crate::backend::{Activation, Cfg};
use rayon::prelude::*;

/// e^x in f32 to ~2 ulp, written so loops over it auto-vectorise (libm's expf/tanhf are scalar
/// calls and dominated the CPU forward): Cody–Waite reduction x = n·ln2 + r with n rounded by
/// the 1.5·2²³ trick, Cephes' degree-6 polynomial for e^r, 2ⁿ built in the exponent bits.
/// Inputs are clamped to [−87.3, 88.7], so tiny results are ~1e−38 rather than 0. 2ⁿ comes from
/// the bits of the rounded sum (its low mantissa bits hold n), not an f32→i32 cast: Rust's cast
/// saturates, which LLVM lowers to scalar code, and the loop no longer vectorises.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND; // bits(t) = bits(ROUND) + n for |n| < 2²²
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23)
}

/// Σ v in f32 over 8 interleaved partial sums: vectorises, and rounds less than one running sum.
#[inline(always)]
pub fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// GELU, tanh approximation: 0.5·x·(1 + tanh(u)) = x / (1 + e^(−2u)), u = √(2/π)(x + 0.044715x³).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + fast_exp(-2.0 * u))
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + fast_exp(-x))
}

multiversion! {
    /// `act` over a slice, with the match outside the loop so each arm vectorises.
    pub fn apply_activation_slice(v: &mut [f32], act: Activation) {
        activate(v, act)
    }
}

#[inline(always)]
fn activate(v: &mut [f32], act: Activation) {
    match act {
        Activation::None => {}
        Activation::GeluTanh => v.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
        Activation::Silu => v.iter_mut().for_each(|x| *x = silu(*x)),
    }
}

multiversion! {
    /// Rows of `out = act(x + bias)`.
    fn activation_rows(x: &[f32], bias: Option<&[f32]>, act: Activation, cols: usize, out: &mut [f32]) {
        for (orow, xrow) in out.chunks_mut(cols).zip(x.chunks(cols)) {
            match bias {
                Some(b) => orow.iter_mut().zip(xrow).zip(b).for_each(|((o, &x), &b)| *o = x + b),
                None => orow.copy_from_slice(xrow),
            }
            activate(orow, act);
        }
    }
}

pub fn activation(x: &[f32], bias: Option<&[f32]>, act: Activation, cols: usize, out: &mut [f32]) {
    let chunk = task_len(x.len(), cols);
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, x)| activation_rows(x, bias, act, cols, o));
}

/// `act` in place on columns `[col, col + cols)` of each `width`-element row of x.
pub fn activation_cols(x: &mut [f32], width: usize, col: usize, cols: usize, act: Activation) {
    if width == 0 || cols == 0 {
        return;
    }
    let chunk = task_len(x.len(), width);
    x.par_chunks_mut(chunk).for_each(|rows| {
        for row in rows.chunks_mut(width) {
            apply_activation_slice(&mut row[col..col + cols], act);
        }
    });
}

/// `dst[(dr + r)·dst_ld + dc + c] = src[(sr + r)·src_ld + sc + c]` for r < rows, c < cols.
#[allow(clippy::too_many_arguments)]
pub fn copy_rows(
    src: &[f32],
    src_ld: usize,
    (sr, sc): (usize, usize),
    dst: &mut [f32],
    dst_ld: usize,
    (dr, dc): (usize, usize),
    rows: usize,
    cols: usize,
) {
    for r in 0..rows {
        let (s, d) = ((sr + r) * src_ld + sc, (dr + r) * dst_ld + dc);
        dst[d..d + cols].copy_from_slice(&src[s..s + cols]);
    }
}

multiversion! {
    /// Rows of `x += y` (y broadcast over rows).
    fn add_bcast_rows(x: &mut [f32], y: &[f32]) {
        for row in x.chunks_mut(y.len()) {
            row.iter_mut().zip(y).for_each(|(x, &y)| *x += y);
        }
    }
}

pub fn add_bcast(x: &mut [f32], y: &[f32]) {
    let cols = y.len();
    x.par_chunks_mut(task_len(x.len(), cols)).for_each(|rows| add_bcast_rows(rows, y));
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
