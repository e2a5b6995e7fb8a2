//! The fused scheduler update: the reference for scheduler.cu.
//! Each formula applies its coefficients in the order diffusers' tensor ops do, one f32 rounding
//! per op, so the CPU backend matches diffusers' sampling loops to the last bits that matter.

use crate::backend::{SchedulerKind, SchedulerUpdate};
use rayon::prelude::*;

pub fn scheduler_step(
    u: &SchedulerUpdate,
    x: &mut [f32],
    eps: &[f32],
    x0_prev: Option<&mut [f32]>,
    noise: Option<&[f32]>,
) {
    let c = u.c;
    let kind = u.kind;
    let step = |x: &mut f32, e: f32, prev: Option<&mut f32>, nz: Option<f32>| {
        let x0 = match kind {
            // flow matching: ε is the velocity, σ = c1
            SchedulerKind::FlowEuler => *x - c[1] * e,
            _ => (*x - c[0] * e) / c[1],
        };
        *x = match kind {
            SchedulerKind::Dpm1 => c[2] * *x - c[3] * x0,
            SchedulerKind::Dpm2 => {
                let p = prev.as_deref().copied().unwrap_or(f32::NAN);
                let d1 = c[4] * (x0 - p);
                c[2] * *x - c[3] * x0 - c[5] * d1
            }
            SchedulerKind::Ddim => c[2] * x0 + c[3] * e,
            SchedulerKind::Lcm => {
                let den = c[2] * x0 + c[3] * *x;
                match nz {
                    Some(n) => c[4] * den + c[5] * n,
                    None => den,
                }
            }
            SchedulerKind::FlowEuler => *x + c[0] * e,
        };
        if let Some(p) = prev {
            *p = x0;
        }
    };
    match (x0_prev, noise) {
        (Some(prev), noise) => x
            .par_iter_mut()
            .zip(eps)
            .zip(prev.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((x, &e), p))| step(x, e, Some(p), noise.map(|n| n[i]))),
        (None, noise) => {
            x.par_iter_mut().zip(eps).enumerate().for_each(|(i, (x, &e))| step(x, e, None, noise.map(|n| n[i])))
        }
    }
}
