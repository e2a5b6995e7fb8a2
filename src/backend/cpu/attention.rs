//! Multi-head attention in f32: the reference for attention.cu. Scores for one block of query
//! rows at a time (never the whole score matrix). The two GEMMs run as AVX2 + FMA register tiles
//! over keys and values packed once per head where AVX2 is the CPU backend's level
//! ([`attention_tiles`]), else through the `gemm` crate (AVX-512, the x86-64 baseline, other
//! architectures, and the blocks whose masked keys are left out).
//!
//! Key biases (the text padding mask: 0 for kept tokens, −10000 for the others) cost nothing
//! beyond the keys they keep:
//! - the softmax flushes every weight under 2⁻⁶⁴ of its row's largest to an exact 0. A masked
//!   key's e^(−10000) comes out of the clamped `fast_exp` as ≈ 1.2·10⁻³⁸, whose products in the
//!   P·V GEMM are subnormal; subnormal operands and results take microcode assists on many x86
//!   cores, where the masked cross-attention ran at 4× the unmasked time (about 8% slower on a
//!   Zen 3 EPYC, which has cheaper assists);
//! - keys whose bias lies far below the sample's largest are left out of both GEMMs whenever a
//!   bound on the scores proves their weights would be flushed to 0 in every row of the block
//!   (see [`Compaction`]), so a sample that keeps one text token does one key's work.
//!
//! Both only drop weights under 2⁻⁶⁴ of their row's sum (which is at least its largest weight,
//! e⁰ = 1): the outputs match the computation over every key to rounding.
//!
//! The softmax leaves P unnormalised (its exps, flush and sum are one pass over the scores) and
//! the P·V outputs are divided by the row sums instead: d values a row rather than nk.

use super::attention_tiles;
use super::elementwise::fast_exp;
use super::simd::multiversion;
use crate::backend::AttentionShape;
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per task: bounds the score block to QBLOCK × nk floats.
const QBLOCK: usize = 128;

/// An unnormalised weight `e` (its row's max at e⁰ = 1, so the row sum is ≥ 1) under FLUSH = 2⁻⁶⁴
/// becomes an exact 0: it is under 2⁻⁶⁴ of the sum, far below the sum's last bit, and every kept
/// weight's products with values of magnitude ≥ 2⁻⁶² stay normal.
const FLUSH: f32 = 5.421_011e-20;

/// A key is a candidate to leave out when its bias is this far below the sample's largest one.
const DROP_GAP: f32 = 100.0;

/// How far below its row's max score a key's score must be for its weight to be flushed surely:
/// `fast_exp(x)` for x ≤ −44.4 is under `FLUSH` (ln 2⁻⁶⁴ ≈ −44.36); 90 leaves ample room for the
/// f32 rounding of the scores, bounded in [`Compaction`].
const FLUSHED_BELOW: f64 = 90.0;

/// One operand: (data, first column, row stride).
pub type Operand<'a> = (&'a [f32], usize, usize);

/// Whether an operand of `rows` rows, `width` columns from its first column, fits its slice.
fn fits((data, col, stride): Operand<'_>, rows: usize, width: usize) -> bool {
    let last = rows.checked_sub(1).and_then(|r| r.checked_mul(stride)).and_then(|v| v.checked_add(col + width));
    rows == 0 || last.is_some_and(|end| end <= data.len() && col + width <= stride)
}

/// Per sample, the keys its bias puts more than [`DROP_GAP`] below its largest bias `b_max`
/// (`dropped`; `b_drop` the largest of their biases) and the others (`kept`). A task leaves the
/// dropped keys out when, with `a_c = max_i |q_ic|` over its block's query rows, `A_j = Σ_c
/// a_c·|k_jc|` (so `|q_i·k_j| ≤ A_j` for every row i) and `r = 1 + 4(d+2)ε` covering the f32
/// rounding of `A_j` and of the GEMM's d-term dot products,
///
///   (b_max − scale·r·min_{k at b_max} A_k) − (b_drop + scale·r·max_{j dropped} A_j)  >  90 + slack:
///
/// the left term is at most each row's max score, the right one at least each dropped key's
/// score, so every dropped key lies more than [`FLUSHED_BELOW`] under its row's max and its
/// weight would be an exact 0 after the flush (the row sum only loses terms below its last bit).
/// `slack`, relative 10⁻⁵ of the magnitudes, bounds the f32 rounding of the bias sums. A
/// non-finite `A` fails the test; a failing block runs on all keys.
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
    /// of `q` (stride `qs`), `d` columns each; see the type's documentation. `tmp`: scratch.
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
        tmp: &mut Vec<f32>,
    ) -> bool {
        tmp.resize(d + self.top.len().max(self.dropped.len()), 0.0);
        let (a, dots) = tmp.split_at_mut(d);
        col_max_abs(q, qs, rows, a);
        let mut extreme = |keys: &[usize], min: bool| {
            let dots = &mut dots[..keys.len()];
            abs_dots(k, ks, a, keys, dots);
            let m =
                dots.iter().fold(if min { f32::INFINITY } else { 0.0 }, |m, &x| if min { m.min(x) } else { m.max(x) });
            dots.iter().all(|x| x.is_finite()).then_some(m as f64)
        };
        let (Some(a_top), Some(a_drop)) = (extreme(&self.top, true), extreme(&self.dropped, false)) else {
            return false;
        };
        let c = scale.abs() as f64 * (1.0 + 4.0 * (d + 2) as f64 * f32::EPSILON as f64);
        let (lo, hi) = (self.max_bias - c * a_top, self.max_dropped_bias + c * a_drop);
        let slack = 1e-5 * (self.max_bias.abs() + self.max_dropped_bias.abs() + c * (a_top + a_drop));
        lo - hi > FLUSHED_BELOW + slack
    }
}

multiversion! {
    /// `a[c] = max_i |x[i·stride + c]|` over `rows` rows, for the `a.len()` columns.
    fn col_max_abs(x: &[f32], stride: usize, rows: usize, a: &mut [f32]) {
        a.fill(0.0);
        for i in 0..rows {
            let row = &x[i * stride..i * stride + a.len()];
            a.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v.abs()));
        }
    }
}

multiversion! {
    /// `out[n] = Σ_c a[c]·|x[keys[n]·stride + c]|` over the `a.len()` columns.
    fn abs_dots(x: &[f32], stride: usize, a: &[f32], keys: &[usize], out: &mut [f32]) {
        for (o, &j) in out.iter_mut().zip(keys) {
            let row = &x[j * stride..j * stride + a.len()];
            let mut acc = [0.0f32; 8];
            let (rc, ac) = (row.chunks_exact(8), a.chunks_exact(8));
            let tail: f32 = rc.remainder().iter().zip(ac.remainder()).map(|(&v, &w)| v.abs() * w).sum();
            for (r, w) in rc.zip(ac) {
                for l in 0..8 {
                    acc[l] += r[l].abs() * w[l];
                }
            }
            *o = acc.iter().sum::<f32>() + tail;
        }
    }
}

/// A task's buffers, reused across its blocks.
#[derive(Default)]
struct Scratch {
    /// the block's scores, `rows` rows of `nk` floats
    scores: Vec<f32>,
    /// 1 / each row's sum of weights
    inv: Vec<f32>,
    /// the compaction test's scratch
    tmp: Vec<f32>,
    /// kept keys, values and biases gathered for a compacted block
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Vec<f32>,
    /// the head's keys and values packed for the tiles, and whether they are this task's head's
    kp: Vec<f32>,
    vp: Vec<f32>,
    packed: bool,
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
    // A task runs `per_task` query blocks of one head, so the tiles' packed keys and values serve
    // all of them; heads are split into more tasks only when there are too few to share out.
    let heads = s.batch * s.heads;
    if qblocks == 0 || heads == 0 {
        return; // no query row to write
    }
    let chunks = (4 * rayon::current_num_threads()).div_ceil(heads).clamp(1, qblocks);
    let per_task = qblocks.div_ceil(chunks);
    let chunks = qblocks.div_ceil(per_task);
    let tiles = attention_tiles::available() && s.nk > 0 && d > 0;
    // Each task owns a disjoint [rows, columns-of-one-head] region of out; the raw pointer is
    // shared because those regions interleave in memory.
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..heads * chunks).into_par_iter().for_each_init(Scratch::default, |buf, task| {
        let op = out_ptr; // the whole wrapper, not its field: closures capture fields apart
        let (bh, chunk) = (task / chunks, task % chunks);
        let (b, h) = (bh / s.heads, bh % s.heads);
        let kp = &k.0[b * s.nk * k.2 + k.1 + h * d..];
        let vp = &v.0[b * s.nk * v.2 + v.1 + h * d..];
        let bias = key_bias.map(|kb| &kb[b * s.nk..(b + 1) * s.nk]);
        buf.packed = false;
        for qb in chunk * per_task..((chunk + 1) * per_task).min(qblocks) {
            let i0 = qb * QBLOCK;
            let rows = QBLOCK.min(s.nq - i0);
            let qp = &q.0[(b * s.nq + i0) * q.2 + q.1 + h * d..];
            // SAFETY: this block writes rows [b·nq + i0, +rows) × columns [h·d, h·d + d) of out,
            // a region no other task touches (inside out: asserted above).
            let dst = unsafe { op.0.add((b * s.nq + i0) * width + h * d) };
            let compacted = match (compaction.get(b).and_then(Option::as_ref), bias) {
                (Some(c), Some(bias)) if c.holds(s.scale, d, qp, q.2, rows, kp, k.2, &mut buf.tmp) => Some((c, bias)),
                _ => None,
            };
            if let Some((c, bias)) = compacted {
                buf.k.clear();
                buf.v.clear();
                buf.bias.clear();
                for &j in &c.kept {
                    buf.k.extend_from_slice(&kp[j * k.2..j * k.2 + d]);
                    buf.v.extend_from_slice(&vp[j * v.2..j * v.2 + d]);
                    buf.bias.push(bias[j]);
                }
                let keys = Keys { n: c.kept.len(), k: (&buf.k, d), v: (&buf.v, d), bias: Some(&buf.bias) };
                // SAFETY: the gathered rows hold `n` keys and values of d floats; dst as above.
                unsafe { block_gemm(s, (qp, q.2), rows, &keys, (&mut buf.scores, &mut buf.inv), dst, width) };
            } else if tiles {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 and FMA are present (`available`); q's rows, the packed operands
                // and dst's rows hold what the shape implies (asserted above).
                unsafe {
                    if !buf.packed {
                        attention_tiles::pack_keys(kp, k.2, s.nk, d, &mut buf.kp);
                        attention_tiles::pack_values(vp, v.2, s.nk, d, &mut buf.vp);
                        buf.packed = true;
                    }
                    buf.scores.resize(rows * s.nk, 0.0);
                    attention_tiles::scores(qp.as_ptr(), q.2, rows, &buf.kp, s.nk, d, &mut buf.scores, s.scale);
                    buf.inv.resize(rows, 0.0);
                    attention_tiles::softmax_rows(&mut buf.scores, s.nk, bias, &mut buf.inv, FLUSH);
                    attention_tiles::weighted_values(&buf.scores, rows, &buf.inv, &buf.vp, s.nk, d, dst, width);
                }
            } else {
                let keys = Keys { n: s.nk, k: (kp, k.2), v: (vp, v.2), bias };
                // SAFETY: kp and vp hold nk rows of d floats, k.2 and v.2 apart; dst as above.
                unsafe { block_gemm(s, (qp, q.2), rows, &keys, (&mut buf.scores, &mut buf.inv), dst, width) };
            }
        }
    });
}

/// One block's keys: how many, K's and V's rows (data, row stride), their biases.
struct Keys<'a> {
    n: usize,
    k: (&'a [f32], usize),
    v: (&'a [f32], usize),
    bias: Option<&'a [f32]>,
}

/// One query block through the `gemm` crate: scores, softmax, P·V into `dst` (rows `width`
/// apart).
///
/// # Safety
/// q holds `rows` rows of d floats `q.1` apart, the keys' K and V `keys.n` rows of d floats;
/// dst's `rows` rows of d floats, `width` apart, are this caller's alone.
unsafe fn block_gemm(
    s: &AttentionShape,
    q: (&[f32], usize),
    rows: usize,
    keys: &Keys<'_>,
    (scores, inv): (&mut Vec<f32>, &mut Vec<f32>),
    dst: *mut f32,
    width: usize,
) {
    let (d, nk) = (s.head_dim, keys.n);
    scores.resize(rows * nk, 0.0);
    // SAFETY: q and K are in bounds for rows×d and nk×d reads at their strides (the caller's
    // contract); scores holds rows×nk floats.
    unsafe {
        gemm::gemm(
            rows,
            nk,
            d,
            scores.as_mut_ptr(),
            1,
            nk as isize,
            false,
            q.0.as_ptr(),
            1,
            q.1 as isize,
            keys.k.0.as_ptr(),
            keys.k.1 as isize,
            1,
            0.0f32,
            s.scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    inv.resize(rows, 0.0);
    softmax_rows(scores, nk, keys.bias, inv);
    // SAFETY: V is in bounds for nk×d reads; dst's rows are the caller's alone.
    unsafe {
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
            keys.v.0.as_ptr(),
            1,
            keys.v.1 as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        );
        for (r, &f) in inv.iter().enumerate() {
            // SAFETY: row r of dst: d floats the caller owns.
            std::slice::from_raw_parts_mut(dst.add(r * width), d).iter_mut().for_each(|x| *x *= f);
        }
    }
}

/// Scores per softmax group: the exps of a group's short rows run as one loop, full vectors even
/// for rows shorter than one (a text that keeps one token); 8 KiB, within L1.
const SOFTMAX_GROUP: usize = 2048;

/// Rows at least this long run their exps, flush and sum as one fused pass per row.
const FUSED_ROW: usize = 256;

multiversion! {
    /// Each `nk`-wide row of `scores` ← exp(row + bias − its max), weights under [`FLUSH`] set to
    /// an exact 0, and `inv[r]` ← 1 / the row's sum: the softmax with its normalisation left to
    /// the caller (applied to the d outputs of P·V rather than to the nk weights of P).
    fn softmax_rows(scores: &mut [f32], nk: usize, bias: Option<&[f32]>, inv: &mut [f32]) {
        let add_bias_max = |row: &mut [f32]| {
            if let Some(bias) = bias {
                row.iter_mut().zip(bias).for_each(|(x, &bb)| *x += bb);
            }
            row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
        };
        let flushed = |x: f32| {
            let e = fast_exp(x);
            if e < FLUSH { 0.0 } else { e }
        };
        if nk >= FUSED_ROW {
            for (row, inv) in scores.chunks_mut(nk).zip(inv.iter_mut()) {
                let max = add_bias_max(row);
                // one pass: exp, flush, and the sum in 8 interleaved partial sums
                let mut acc = [0.0f32; 8];
                let mut chunks = row.chunks_exact_mut(8);
                for c in &mut chunks {
                    for l in 0..8 {
                        c[l] = flushed(c[l] - max);
                        acc[l] += c[l];
                    }
                }
                let mut tail = 0.0f32;
                for x in chunks.into_remainder() {
                    *x = flushed(*x - max);
                    tail += *x;
                }
                *inv = 1.0 / (acc.iter().sum::<f32>() + tail);
            }
            return;
        }
        let per_group = (SOFTMAX_GROUP / nk.max(1)).max(1);
        for (group, inv) in scores.chunks_mut(nk * per_group).zip(inv.chunks_mut(per_group)) {
            for row in group.chunks_mut(nk) {
                let max = add_bias_max(row);
                row.iter_mut().for_each(|x| *x -= max);
            }
            group.iter_mut().for_each(|x| *x = flushed(*x));
            for (row, inv) in group.chunks(nk).zip(inv.iter_mut()) {
                *inv = 1.0 / row.iter().sum::<f32>();
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
