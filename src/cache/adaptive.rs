//! `delta-adaptive`: Δ-DiT's stage-adaptive ranges (rear blocks cached before b, front blocks
//! from b on), with the fixed interval N replaced by an error-triggered refresh.
//!
//! Probe: the relative L1 change, from one step to the next, of block 0's modulated input
//! LN(h_0)·(1 + scale_msa) + shift_msa: it moves with both the latents and the timestep
//! conditioning and costs one LayerNorm pass (TeaCache uses the same signal). The changes are
//! accumulated since the last full step; a full step runs when the sum reaches `threshold`, when
//! `max_cached` cached steps ran in a row, and on the first `warmup` steps (the outline forms
//! there and the Δ's are least stable).
//!
//! Defaults (threshold 0.12, warmup 2, max-cached 1, b = 0, N_c = ¾ of the blocks as the
//! paper's [`Delta::paper`](super::Delta::paper)): with b = 0 every cached step skips the front
//! N_c blocks. Tuned on pixart-digits and dit-digits (`deltadit bench`, 20 steps, 64 images,
//! BENCHMARKS.md "The shipped defaults against fewer steps"): 70% compute on both, 43.4 dB mean
//! (34.8 worst) on pixart-digits against 14 plain steps' 39.0 (33.5), 35.5 (28.2) on dit-digits
//! against 14 steps' 32.2 (27.4). The earlier default (threshold 0.1, b at 12/20 of the
//! steps) fell 0.1 dB below 14 steps in pixart-digits' worst image, and threshold 0.1 with b = 0
//! below 15 steps in dit-digits' worst. Checked untuned on sd3-digits and flux-digits, it does
//! not hold on sd3-digits (66.2%: mean 33.5 dB against 14 steps' 37.4) or flux-digits (66.7%: worst
//! image 35.6 dB against 43.4), nor did the old default there. A trained model's probe changes by ≈ 0.03–0.3 a
//! step; on random weights by 0.25–1.3, so there the policy refreshes every step. Defaults do
//! not transfer between models: calibrate your own.

use super::{CacheNeeds, CachePolicy, Probe, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `delta-adaptive` policy (see the module docs); made by [`DeltaAdaptive::new`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeltaAdaptive {
    /// accumulated probe change that triggers a full step
    pub threshold: f32,
    /// full steps at the start
    pub warmup: usize,
    /// most cached steps in a row
    pub max_cached: usize,
    /// cached blocks per cached step
    pub nc: usize,
    /// stage boundary (a step index): rear blocks skipped before it, front blocks from it on
    pub b: usize,
    accumulated: f32,
    cached_in_row: usize,
}

impl DeltaAdaptive {
    /// The default `threshold`.
    pub const DEFAULT_THRESHOLD: f32 = 0.12;
    /// The default `warmup`.
    pub const DEFAULT_WARMUP: usize = 2;
    /// The default `max_cached`.
    pub const DEFAULT_MAX_CACHED: usize = 1;
    /// The default `b`: 0, the front blocks cached on every cached step.
    pub const DEFAULT_B: usize = 0;

    /// Checks the parameters against the model depth (`layers`) and the step count.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        threshold: f32,
        warmup: usize,
        max_cached: usize,
        nc: usize,
        b: usize,
        layers: usize,
        steps: usize,
    ) -> Result<Self> {
        if !(threshold > 0.0 && threshold.is_finite()) {
            return Err(Error::param("threshold", threshold, "a finite number > 0"));
        }
        if warmup > steps {
            return Err(Error::param("warmup", warmup, format!("0 ≤ warmup ≤ {steps} (the number of steps)")));
        }
        if max_cached < 1 {
            return Err(Error::param("max-cached", max_cached, "≥ 1"));
        }
        if nc < 1 || nc >= layers {
            return Err(Error::param("nc", nc, format!("1 ≤ nc < {layers} (the model's number of blocks)")));
        }
        if b > steps {
            return Err(Error::param("b", b, format!("0 ≤ b ≤ {steps} (the number of steps)")));
        }
        Ok(DeltaAdaptive { threshold, warmup, max_cached, nc, b, accumulated: 0.0, cached_in_row: 0 })
    }

    fn full(&mut self, info: &StepInfo) -> StepPlan {
        self.accumulated = 0.0;
        self.cached_in_row = 0;
        StepPlan::Full {
            store_front: self.b < info.steps,
            store_rear: info.step + 1 < self.b,
            store_branches: false,
            store_rest: false,
        }
    }
}

impl CachePolicy for DeltaAdaptive {
    fn name(&self) -> &'static str {
        "delta-adaptive"
    }

    fn params(&self) -> String {
        format!(
            "threshold={},warmup={},max-cached={},nc={},b={}",
            self.threshold, self.warmup, self.max_cached, self.nc, self.b
        )
    }

    fn probe(&self) -> Probe {
        Probe::Block0InputChange
    }

    fn needs(&self) -> CacheNeeds {
        CacheNeeds { front: Some(self.nc), rear: Some(self.nc), ..Default::default() }
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        if info.step == 0 || info.step < self.warmup {
            return self.full(info);
        }
        // No probe (cannot measure): treat as a large change.
        self.accumulated += info.probe.unwrap_or(f32::INFINITY);
        if self.accumulated >= self.threshold || self.cached_in_row >= self.max_cached {
            return self.full(info);
        }
        self.cached_in_row += 1;
        if info.step < self.b {
            StepPlan::CachedRear(self.nc)
        } else {
            StepPlan::CachedFront(self.nc)
        }
    }

    fn reset(&mut self) {
        self.accumulated = 0.0;
        self.cached_in_row = 0;
    }
}
