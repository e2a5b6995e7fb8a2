//! TaylorSeer on the CPU: the forecast apply and the ladder update, the references for
//! kernels/forecast.cu. Term by term over a task's slice (each loop one FMA stream the compiler
//! vectorises; `mul_add` is a libm call below AVX2+FMA, hence the multiversioned bodies).

use super::simd::multiversion;
use super::task_len;
use rayon::prelude::*;

/// `x = (accumulate ? x : 0) + Σ_i c[i]·terms[i]`, each element's sum in term order.
pub fn forecast_f32(x: &mut [f32], terms: &[&[f32]], c: &[f32], accumulate: bool) {
    let chunk = task_len(x.len(), 1);
    x.par_chunks_mut(chunk).enumerate().for_each(|(i, xc)| {
        let ts: Vec<&[f32]> = terms.iter().map(|t| &t[i * chunk..i * chunk + xc.len()]).collect();
        forecast_slice(xc, &ts, c, accumulate)
    });
}

multiversion! {
    fn forecast_slice(x: &mut [f32], terms: &[&[f32]], c: &[f32], accumulate: bool) {
        if !accumulate {
            x.fill(0.0);
        }
        for (t, &cj) in terms.iter().zip(c) {
            x.iter_mut().zip(t.iter()).for_each(|(x, &t)| *x = cj.mul_add(t, *x));
        }
    }
}

/// The ladder update: `cur = d0; old = prev; prev = d0`, then per level
/// `new = c[2i]·cur + c[2i+1]·old; old = level; level = new; cur = new`.
pub fn ladder_update_f32(d0: &[f32], prev: &mut [f32], levels: &mut [&mut [f32]], c: &[f32]) {
    let chunk = task_len(d0.len(), 1);
    let mut per_task: Vec<Vec<&mut [f32]>> = (0..d0.len().div_ceil(chunk)).map(|_| Vec::new()).collect();
    for l in levels.iter_mut() {
        for (t, ch) in per_task.iter_mut().zip(l.chunks_mut(chunk)) {
            t.push(ch);
        }
    }
    prev.par_chunks_mut(chunk)
        .zip(d0.par_chunks(chunk))
        .zip(per_task.into_par_iter())
        .for_each(|((p, d), mut lv)| ladder_slice(d, p, &mut lv, c));
}

multiversion! {
    fn ladder_slice(d0: &[f32], prev: &mut [f32], levels: &mut [&mut [f32]], c: &[f32]) {
        // `old` holds, level by level, the value the next level differences against
        let mut old = prev.to_vec();
        prev.copy_from_slice(d0);
        let mut below: &[f32] = d0;
        for (i, lv) in levels.iter_mut().enumerate() {
            let (ca, cb) = (c[2 * i], c[2 * i + 1]);
            lv.iter_mut().zip(old.iter_mut()).zip(below).for_each(|((l, o), &cur)| {
                let new = cb.mul_add(*o, ca * cur);
                *o = *l;
                *l = new;
            });
            below = lv;
        }
    }
}
