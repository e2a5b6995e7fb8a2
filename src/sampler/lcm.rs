//! LCMScheduler (PixArt-LCM): 50 original steps, timestep scaling 10, noise injected from outside
//! so runs are reproducible against diffusers' generator.

use super::schedule::{alphas_cumprod, NUM_TRAIN_TIMESTEPS};
use crate::backend::{SchedulerKind, SchedulerUpdate};

pub const ORIGINAL_INFERENCE_STEPS: usize = 50;
pub const TIMESTEP_SCALING: f32 = 10.0;

pub struct Lcm {
    pub timesteps: Vec<i64>,
    alphas_cumprod: Vec<f32>,
}

impl Lcm {
    pub fn new(steps: usize) -> Self {
        let k = (NUM_TRAIN_TIMESTEPS / ORIGINAL_INFERENCE_STEPS) as i64;
        let origin: Vec<i64> = (1..=ORIGINAL_INFERENCE_STEPS as i64).map(|i| i * k - 1).rev().collect();
        // idx = floor(linspace(0, 50, steps, endpoint=False))
        let timesteps = (0..steps)
            .map(|i| {
                let idx = (i as f64 * ORIGINAL_INFERENCE_STEPS as f64 / steps as f64).floor() as usize;
                origin[idx]
            })
            .collect();
        Lcm { timesteps, alphas_cumprod: alphas_cumprod() }
    }

    /// Whether step `i` injects noise (every step but the last).
    pub fn needs_noise(&self, i: usize) -> bool {
        i + 1 < self.timesteps.len()
    }

    pub fn update(&self, i: usize) -> SchedulerUpdate {
        let t = self.timesteps[i];
        let prev = if i + 1 < self.timesteps.len() { self.timesteps[i + 1] } else { t };
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev as usize];
        let st = t as f32 * TIMESTEP_SCALING;
        let c_skip = 0.25 / (st * st + 0.25);
        let c_out = st / (st * st + 0.25).sqrt();
        SchedulerUpdate {
            kind: SchedulerKind::Lcm,
            c: [(1.0 - a_t).sqrt(), a_t.sqrt(), c_out, c_skip, a_prev.sqrt(), (1.0 - a_prev).sqrt()],
        }
    }
}
