//! Multi-head attention in f32: the reference for attention.cu. Scores for one block of query
//! rows at a time (never the whole score matrix), GEMMs from the `gemm` crate.
//!
//! Key biases (the text padding mask: 0 for kept tokens, −10000 for the others) cost nothing
//! beyond the keys they keep:
//! - softmax flushes every weight below the normal range to an exact 0 (a masked key's
//!   e^(−10000) would otherwise come out of the clamped exp as ≈ 1.2·10⁻³⁸, or a subnormal once
//!   normalised, and subnormal operands make the P·V GEMM's multiply-adds take microcode
//!   assists on many x86 cores: several times the unmasked time);
//! - keys whose bias lies far below the sample's largest are left out of both GEMMs whenever a
//!   bound on the scores proves their weights would be flushed to 0 in every row of the block
//!   (see [`Compaction`]), so a sample that keeps one text token does one key's work.
//!
//! Both only drop weights under 2·2⁻¹²⁶ of the row sum: the outputs match the full computation
//! to rounding.

use super::elementwise::{fast_exp, sum8};
use super::simd::multiversion;
use crate::backend::AttentionShape;
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per task: bounds the score block to QBLOCK × nk floats.
const QBLOCK: usize = 128;

/// A weight `e` (its row's max at e⁰ = 1, row sum `s` ≥ 1) under `FLUSH · s` becomes an exact 0:
/// then `e / s` would be below 2⁻¹²⁶ (subnormal), and every weight kept stays normal.
const FLUSH: f32 = 2.0 * f32::MIN_POSITIVE;

/// A key is a candidate to leave out when its bias is this far below the sample's largest one.
const DROP_GAP: f32 = 100.0;

/// Score margin (below the row max) past which a weight is surely flushed: fast_exp(x) for
/// x ≤ −86.6 is below `FLUSH` (its clamp at −87.3 gives ≈ 1.22·10⁻³⁸ < 2.35·10⁻³⁸); 90 leaves
/// room for the f32 rounding of the scores and the bias sums, bounded separately in
/// [`Compaction`].
const FLUSHED_BELOW: f64 = 90.0;

/// One operand: (data, first column, row stride).
pub type Operand<'a> = (&'a [f32], usize, usize);

/// Whether an operand of `rows` rows, `width` columns from its first column, fits its slice.
fn fits((data, col, stride): Operand<'_>, rows: usize, width: usize) -> bool {
    let last = rows.checked_sub(1).and_then(|r| r.checked_mul(stride)).and_then(|v| v.checked_add(col + width));
    rows == 0 || last.is_some_and(|end| end <= data.len() && col + width <= stride)
}

/// Per sample, the keys its bias puts at least [`DROP_GAP`] below its largest bias `b_max`
/// (`dropped`, the largest of their biases `b_drop`) and the others (`kept`). A task leaves the
/// dropped keys out when, with `c = scale·max_i |q_i|` over its block's query rows, `n*` the
/// smallest |k| among the keys at `b_max`, `n_drop` the largest among the dropped ones, and
/// `r = 1 + 8(d+1)ε` covering the f32 rounding of the norms and of a d-term dot product,
///
///   (b_max − c·n*·r) − (b_drop + c·n_drop·r)  >  90 + slack.
///
/// By Cauchy–Schwarz the left term is at most each row's max score and the right one at least
/// each dropped key's score, so every dropped key lies more than [`FLUSHED_BELOW`] under its
/// row's max: its weight would be an exact 0 after the flush, and the row sum only loses terms
/// below its last bit. `slack` (relative 10⁻⁵ of the magnitudes) bounds the f32 rounding of the
/// bias sums. Otherwise the block runs on all keys.
struct Compaction {
    kept: Vec<usize>,
    dropped: Vec<usize>,
    /// the keys whose bias is `max_bias`
    top: Vec<usize>,
    max_bias: f64,
    /// max dropped bias, −10³⁰ at the least (−∞ biases then stay finite in the bound)
    max_dropped_bias: f64,
}

impl Compaction {
    /// The compaction of one sample's `bias` row, or None when no key is a candidate.
    fn of(bias: &[f32]) -> Option<Compaction> {
        let max = bias.iter().fold(f32::NEG_INFINITY, |m, &b| m.max(b));
        if !max.is_finite() {
            return None;
        }
        let (dropped, kept): (Vec<usize>, Vec<usize>) = (0..bias.len()).partition(|&j| bias[j] < max - DROP_GAP);
        if dropped.is_empty() {
            return None;
        }
        let top = kept.iter().copied().filter(|&j| bias[j] == max).collect();
        let max_dropped_bias = dropped.iter().fold(-1e30f64, |m, &j| m.max(bias[j] as f64));
        Some(Compaction { kept, dropped, top, max_bias: max as f64, max_dropped_bias })
    }

    /// Whether the dropped keys of `k` (stride `ks`) are flushed in every one of the `rows` rows
    /// of `q` (stride `qs`), `d` columns each; see the type's documentation. `norms`: scratch.
    #[allow(clippy::too_many_arguments)]
    fn holds(
        &self,
        scale: f32,
        d: usize,
        q: &[f32],
        qs: usize,
        rows: usize,
        k: &[f32],
        ks: usize,
        norms: &mut Vec<f32>,
    ) -> bool {
        let mut extreme = |rows: &[usize], min: bool| {
            norms.resize(rows.len(), 0.0);
            sq_norms(k, ks, d, Some(rows), norms);
            let m =
                norms.iter().fold(if min { f32::INFINITY } else { 0.0 }, |m, &x| if min { m.min(x) } else { m.max(x) });
            (m as f64).sqrt()
        };
        let (n_top, n_drop) = (extreme(&self.top, true), extreme(&self.dropped, false));
        norms.resize(rows, 0.0);
        sq_norms(q, qs, d, None, norms);
        let q_max = norms.iter().fold(0.0f32, |m, &x| m.max(x)) as f64;
        let r = 1.0 + 8.0 * (d + 1) as f64 * f32::EPSILON as f64;
        let c = scale.abs() as f64 * q_max.sqrt() * r;
        let (lo, hi) = (self.max_bias - c * n_top, self.max_dropped_bias + c * n_drop);
        let slack = 1e-5 * (self.max_bias.abs() + self.max_dropped_bias.abs() + c * (n_top + n_drop));
        lo - hi > FLUSHED_BELOW + slack
    }
}

multiversion! {
    /// `out[n] = Σ_c x[r·stride + c]²` over `d` columns of row `r = rows[n]` (None: `r = n`).
    fn sq_norms(x: &[f32], stride: usize, d: usize, rows: Option<&[usize]>, out: &mut [f32]) {
        for (n, o) in out.iter_mut().enumerate() {
            let r = rows.map_or(n, |rows| rows[n]);
            let row = &x[r * stride..r * stride + d];
            let mut acc = [0.0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().map(|&v| v * v).sum();
            for c in chunks {
                for l in 0..8 {
                    acc[l] += c[l] * c[l];
                }
            }
            *o = acc.iter().sum::<f32>() + tail;
        }
    }
}

/// A task's buffers, reused across its blocks.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    /// kept keys, values and biases gathered for a compacted block
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Vec<f32>,
    norms: Vec<f32>,
}

/// `out[b·nq + i, h·d..] = softmax_j(scale·q·k_j + bias[b, j]) · v`.
///
/// Checked: every operand must hold the rows and columns the shape implies (a panic otherwise,
/// before any raw GEMM reads them).
pub fn attention_f32(
    s: &AttentionShape,
    q: Operand<'_>,
    k: Operand<'_>,
    v: Operand<'_>,
    key_bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let sizes = s
        .heads
        .checked_mul(s.head_dim)
        .zip(s.batch.checked_mul(s.nq))
        .zip(s.batch.checked_mul(s.nk))
        .filter(|((w, q), _)| q.checked_mul(*w).is_some());
    let Some(((width, qrows), krows)) = sizes else {
        panic!("attention_f32: the sizes of {s:?} overflow");
    };
    let d = s.head_dim;
    assert!(
        fits(q, qrows, width) && fits(k, krows, width) && fits(v, krows, width),
        "attention_f32: q, k or v shorter than the shape {s:?} implies"
    );
    assert!(out.len() >= qrows * width, "attention_f32: out shorter than [{qrows}, {width}]");
    assert!(key_bias.is_none_or(|b| b.len() >= krows), "attention_f32: key_bias shorter than [{}, {}]", s.batch, s.nk);
    let compaction: Vec<Option<Compaction>> = match key_bias {
        Some(kb) => (0..s.batch).map(|b| Compaction::of(&kb[b * s.nk..(b + 1) * s.nk])).collect(),
        None => Vec::new(),
    };
    let qblocks = s.nq.div_ceil(QBLOCK);
    // Each task owns a disjoint [rows, columns-of-one-head] region of out; the raw pointer is
    // shared because those regions interleave in memory.
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..s.batch * s.heads * qblocks).into_par_iter().for_each_init(Scratch::default, |buf, task| {
        let (bh, qb) = (task / qblocks, task % qblocks);
        let (b, h) = (bh / s.heads, bh % s.heads);
        let i0 = qb * QBLOCK;
        let rows = QBLOCK.min(s.nq - i0);
        let qp = &q.0[(b * s.nq + i0) * q.2 + q.1 + h * d..];
        let kp = &k.0[b * s.nk * k.2 + k.1 + h * d..];
        let vp = &v.0[b * s.nk * v.2 + v.1 + h * d..];
        let bias = key_bias.map(|kb| &kb[b * s.nk..(b + 1) * s.nk]);
        // (keys, their rows: data and stride, values likewise, their biases)
        let (nk, kp, ks, vp, vs, bias) = match (compaction.get(b).and_then(Option::as_ref), bias) {
            (Some(c), Some(bias)) if c.holds(s.scale, d, qp, q.2, rows, kp, k.2, &mut buf.norms) => {
                buf.k.clear();
                buf.v.clear();
                buf.bias.clear();
                for &j in &c.kept {
                    buf.k.extend_from_slice(&kp[j * k.2..j * k.2 + d]);
                    buf.v.extend_from_slice(&vp[j * v.2..j * v.2 + d]);
                    buf.bias.push(bias[j]);
                }
                (c.kept.len(), &buf.k[..], d, &buf.v[..], d, Some(&buf.bias[..]))
            }
            _ => (s.nk, kp, k.2, vp, v.2, bias),
        };
        let scores = &mut buf.scores;
        scores.resize(rows * nk, 0.0);
        // SAFETY: qp/kp are in bounds for rows×d (stride q.2) and nk×d (stride ks) reads, as the
        // caller's shape checks (or the gather above) guarantee; scores holds rows×nk floats.
        unsafe {
            gemm::gemm(
                rows,
                nk,
                d,
                scores.as_mut_ptr(),
                1,
                nk as isize,
                false,
                qp.as_ptr(),
                1,
                q.2 as isize,
                kp.as_ptr(),
                ks as isize,
                1,
                0.0f32,
                s.scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        softmax_rows(scores, nk, bias);
        let op = out_ptr;
        // SAFETY: this task writes rows [b·nq + i0, +rows) × columns [h·d, h·d + d) of out, a
        // region no other task touches; vp is in bounds for nk×d reads with stride vs.
        unsafe {
            let dst = op.0.add((b * s.nq + i0) * width + h * d);
            gemm::gemm(
                rows,
                d,
                nk,
                dst,
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                nk as isize,
                vp.as_ptr(),
                1,
                vs as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
}

/// Scores per softmax pass: the exps of this many rows' worth run as one loop (full vectors
/// even for short rows), still within L1.
const SOFTMAX_GROUP: usize = 2048;

multiversion! {
    /// Each `nk`-wide row of `scores` ← softmax(row + bias), weights under `FLUSH` of the row
    /// sum flushed to 0 (so no weight is subnormal).
    fn softmax_rows(scores: &mut [f32], nk: usize, bias: Option<&[f32]>) {
        for group in scores.chunks_mut(nk * (SOFTMAX_GROUP / nk).max(1)) {
            for row in group.chunks_mut(nk) {
                if let Some(bias) = bias {
                    row.iter_mut().zip(bias).for_each(|(x, &bb)| *x += bb);
                }
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                row.iter_mut().for_each(|x| *x -= max);
            }
            group.iter_mut().for_each(|x| *x = fast_exp(*x));
            for row in group.chunks_mut(nk) {
                let sum = sum8(row);
                let (inv, floor) = (1.0 / sum, FLUSH * sum);
                row.iter_mut().for_each(|x| *x = if *x < floor { 0.0 } else { *x * inv });
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint regions from different tasks (see above).
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer itself is never used to create overlapping references.
unsafe impl Sync for SendPtr {}
