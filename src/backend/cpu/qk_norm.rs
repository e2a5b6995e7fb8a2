//! RMSNorm of each attention head of Q and K, in place: the reference for qk_norm.cu.

use super::simd::multiversion;
use super::task_len;
use rayon::prelude::*;

/// For each row of `x` (`[rows, width]`) and each (col, w) of `heads_at`, the `heads` heads of
/// `head_dim` elements from column `col` become `v·(1/√(mean(v²) + eps))·w`, all in f32.
pub fn qk_norm_f32(
    x: &mut [f32],
    width: usize,
    heads_at: [(usize, &[f32]); 2],
    heads: usize,
    head_dim: usize,
    eps: f32,
) {
    if width == 0 {
        return;
    }
    let chunk = task_len(x.len(), width);
    x.par_chunks_mut(chunk).for_each(|rows| qk_norm_rows(rows, width, heads_at, heads, head_dim, eps));
}

multiversion! {
    /// Every row of `x` (whole rows of `width`).
    fn qk_norm_rows(x: &mut [f32], width: usize, heads_at: [(usize, &[f32]); 2], heads: usize, head_dim: usize, eps: f32) {
        for row in x.chunks_exact_mut(width) {
            for (col, w) in heads_at {
                for v in row[col..col + heads * head_dim].chunks_exact_mut(head_dim) {
                    let rstd = 1.0 / (sum_sq8(v) / head_dim as f32 + eps).sqrt();
                    // diffusers' order: (v·rsqrt(…))·w
                    for (v, &w) in v.iter_mut().zip(w) {
                        *v = *v * rstd * w;
                    }
                }
            }
        }
    }
}

/// Σ v² in f32 over 8 interleaved partial sums (vectorises).
#[inline(always)]
fn sum_sq8(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`qk_norm_f32`], then the rotary position embedding of every normalised head (FLUX): row r
/// sits at position `offset + r % tokens` of `table` (`[positions, head_dim]` f32, element 2i the
/// cosine and 2i + 1 the sine of pair i), and each adjacent pair (a, b) becomes
/// (a·cos − b·sin, b·cos + a·sin), each product and the sum rounded in f32 as diffusers'
/// `apply_rotary_emb` computes `x·cos + rot(x)·sin`.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_f32(
    x: &mut [f32],
    width: usize,
    heads_at: [(usize, &[f32]); 2],
    heads: usize,
    head_dim: usize,
    eps: f32,
    table: &[f32],
    tokens: usize,
    offset: usize,
) {
    if width == 0 {
        return;
    }
    let chunk = task_len(x.len(), width);
    let rows_per_chunk = chunk / width;
    x.par_chunks_mut(chunk).enumerate().for_each(|(c, rows)| {
        qk_norm_rows(rows, width, heads_at, heads, head_dim, eps);
        for (i, row) in rows.chunks_exact_mut(width).enumerate() {
            let pos = offset + (c * rows_per_chunk + i) % tokens;
            let cs = &table[pos * head_dim..(pos + 1) * head_dim];
            for (col, _) in heads_at {
                for v in row[col..col + heads * head_dim].chunks_exact_mut(head_dim) {
                    rotate(v, cs);
                }
            }
        }
    });
}

/// One head's adjacent pairs rotated by the (cos, sin) pairs of `cs`.
#[inline(always)]
fn rotate(v: &mut [f32], cs: &[f32]) {
    for (p, t) in v.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
        let (a, b, c, s) = (p[0], p[1], t[0], t[1]);
        p[0] = a * c + -b * s;
        p[1] = b * c + a * s;
    }
}
