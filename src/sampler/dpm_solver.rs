//! DPMSolverMultistepScheduler as PixArt configures it: DPM-Solver++ 2M, midpoint, ε-prediction,
//! linspace spacing, lower-order final step with final sigma 0 (MODEL_SPEC.md §6).

use super::schedule::{alphas_cumprod, np_linspace, round_half_even, NUM_TRAIN_TIMESTEPS};
use crate::backend::{SchedulerKind, SchedulerUpdate};

pub struct DpmSolver {
    pub timesteps: Vec<i64>,
    /// σ per step plus the final 0, f32 as diffusers stores them
    pub sigmas: Vec<f32>,
}

/// (α_t, σ_t, λ_t) of a sigma, as `_sigma_to_alpha_sigma_t` and the λ lines compute them in f32.
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let s = sigma * alpha;
    (alpha, s, alpha.ln() - s.ln())
}

impl DpmSolver {
    pub fn new(steps: usize) -> Self {
        let ac = alphas_cumprod();
        let all_sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let timesteps: Vec<i64> = np_linspace(0.0, (NUM_TRAIN_TIMESTEPS - 1) as f64, steps + 1)
            .into_iter()
            .map(round_half_even)
            .rev()
            .take(steps)
            .map(|t| t as i64)
            .collect();
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| all_sigmas[t as usize]).collect();
        sigmas.push(0.0);
        DpmSolver { timesteps, sigmas }
    }

    /// The fused update of step `i` (0-based, in sampling order).
    pub fn update(&self, i: usize) -> SchedulerUpdate {
        let n = self.timesteps.len();
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[i]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[i + 1]);
        let h = lambda_t - lambda_s0;
        let c2 = sigma_t / sigma_s0;
        let c3 = alpha_t * ((-h).exp() - 1.0);
        // First order on the first step (lower_order_nums < 1) and on the last (final sigma 0).
        if i == 0 || i == n - 1 {
            return SchedulerUpdate { kind: SchedulerKind::Dpm1, c: [sigma_s0, alpha_s0, c2, c3, 0.0, 0.0] };
        }
        let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[i - 1]);
        let h0 = lambda_s0 - lambda_s1;
        let r0 = h0 / h;
        SchedulerUpdate { kind: SchedulerKind::Dpm2, c: [sigma_s0, alpha_s0, c2, c3, 1.0 / r0, 0.5 * c3] }
    }
}
