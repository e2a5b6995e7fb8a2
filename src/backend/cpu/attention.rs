//! Multi-head attention in f32: the reference for attention.cu. Scores for one block of query
//! rows at a time (never the whole score matrix), GEMMs from the `gemm` crate.

use super::elementwise::{fast_exp, sum8};
use super::simd::multiversion;
use crate::backend::AttentionShape;
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per task: bounds the score block to QBLOCK × nk floats.
const QBLOCK: usize = 128;

/// One operand: (data, first column, row stride).
pub type Operand<'a> = (&'a [f32], usize, usize);

/// Whether an operand of `rows` rows, `width` columns from its first column, fits its slice.
fn fits((data, col, stride): Operand<'_>, rows: usize, width: usize) -> bool {
    let last = rows.checked_sub(1).and_then(|r| r.checked_mul(stride)).and_then(|v| v.checked_add(col + width));
    rows == 0 || last.is_some_and(|end| end <= data.len() && col + width <= stride)
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
    let qblocks = s.nq.div_ceil(QBLOCK);
    // Each task owns a disjoint [rows, columns-of-one-head] region of out; the raw pointer is
    // shared because those regions interleave in memory.
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..s.batch * s.heads * qblocks).into_par_iter().for_each_init(Vec::new, |scores, task| {
        let (bh, qb) = (task / qblocks, task % qblocks);
        let (b, h) = (bh / s.heads, bh % s.heads);
        let i0 = qb * QBLOCK;
        let rows = QBLOCK.min(s.nq - i0);
        scores.resize(rows * s.nk, 0.0);
        let qp = &q.0[(b * s.nq + i0) * q.2 + q.1 + h * d..];
        let kp = &k.0[b * s.nk * k.2 + k.1 + h * d..];
        let vp = &v.0[b * s.nk * v.2 + v.1 + h * d..];
        // SAFETY: qp/kp are in bounds for rows×d (stride q.2) and nk×d (stride k.2) reads, as the
        // caller's shape checks guarantee; scores holds rows×nk floats.
        unsafe {
            gemm::gemm(
                rows,
                s.nk,
                d,
                scores.as_mut_ptr(),
                1,
                s.nk as isize,
                false,
                qp.as_ptr(),
                1,
                q.2 as isize,
                kp.as_ptr(),
                k.2 as isize,
                1,
                0.0f32,
                s.scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        softmax_rows(scores, s.nk, key_bias.map(|kb| &kb[b * s.nk..(b + 1) * s.nk]));
        let op = out_ptr;
        // SAFETY: this task writes rows [b·nq + i0, +rows) × columns [h·d, h·d + d) of out, a
        // region no other task touches; vp is in bounds for nk×d reads with stride v.2.
        unsafe {
            let dst = op.0.add((b * s.nq + i0) * width + h * d);
            gemm::gemm(
                rows,
                d,
                s.nk,
                dst,
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                s.nk as isize,
                vp.as_ptr(),
                1,
                v.2 as isize,
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

multiversion! {
    /// Each `nk`-wide row of `scores` ← softmax(row + bias).
    fn softmax_rows(scores: &mut [f32], nk: usize, bias: Option<&[f32]>) {
        for row in scores.chunks_mut(nk) {
            if let Some(bias) = bias {
                row.iter_mut().zip(bias).for_each(|(x, &bb)| *x += bb);
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            row.iter_mut().for_each(|x| *x = fast_exp(*x - max));
            let inv = 1.0 / sum8(row);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint regions from different tasks (see above).
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer itself is never used to create overlapping references.
unsafe impl Sync for SendPtr {}
