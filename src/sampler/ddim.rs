//! DDIMScheduler as the DiT pipeline configures it: η = 0, leading spacing, set_alpha_to_one.

use super::schedule::{alphas_cumprod, NUM_TRAIN_TIMESTEPS};
use crate::backend::{SchedulerKind, SchedulerUpdate};

pub struct Ddim {
    pub timesteps: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    ratio: i64,
}

impl Ddim {
    pub fn new(steps: usize) -> Self {
        let ratio = (NUM_TRAIN_TIMESTEPS / steps) as i64;
        let timesteps = (0..steps as i64).rev().map(|i| i * ratio).collect();
        Ddim { timesteps, alphas_cumprod: alphas_cumprod(), ratio }
    }

    pub fn update(&self, i: usize) -> SchedulerUpdate {
        let t = self.timesteps[i];
        let prev = t - self.ratio;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { 1.0 };
        let beta_t = 1.0 - a_t;
        // x0 = (x − √β_t·ε)/√ᾱ_t;  x = √ᾱ_prev·x0 + √(1 − ᾱ_prev − σ²)·ε with σ = 0
        SchedulerUpdate {
            kind: SchedulerKind::Ddim,
            c: [beta_t.sqrt(), a_t.sqrt(), a_prev.sqrt(), (1.0 - a_prev - 0.0).sqrt(), 0.0, 0.0],
        }
    }
}
