//! Δ-DiT exactly as DELTA_DIT.md specifies: a full step every N steps stores Δ_front = h_Nc − h_0
//! and Δ_rear = h_L − h_{L−Nc}; cached steps before the stage boundary b skip the rear N_c blocks
//! (h_L = h_{L−Nc} + Δ_rear), from b on the front N_c blocks (h_Nc = h_0 + Δ_front).
//! `order=reverse` swaps the stages (front blocks cached before b, rear ones from b on): the
//! paper's ordering is not best on every model, and the calibrator (`deltadit calibrate`) tries
//! both.
//!
//! `calibrator=taylor1|taylor2` forecasts Δ_front and Δ_rear on cached steps with cache-dit's
//! TaylorSeer ([`Calibrator::Taylor`]) instead of reusing them: the policy then declares them as
//! quantities 0 (Δ_front, blocks [0, nc)) and 1 (Δ_rear, blocks [L − nc, L)) and plans
//! [`StepPlan::Compute`] / [`StepPlan::Reuse`] on the same schedule.

use super::{CacheNeeds, CachePolicy, Calibrator, Quantity, StepInfo, StepPlan};
use crate::model::Family;
use crate::{Error, Result};

/// The `delta` policy (Δ-DiT); made by [`Delta::new`] or [`Delta::preset`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delta {
    /// cache interval: full step when step % n == 0
    pub n: usize,
    /// cached blocks per cached step
    pub nc: usize,
    /// stage boundary (a step index): rear blocks skipped before it, front blocks from it on
    pub b: usize,
    /// the stages swapped: front blocks skipped before `b`, rear ones from it on
    pub reverse: bool,
    /// how Δ_front and Δ_rear are applied on cached steps
    pub calibrator: Calibrator,
}

impl Delta {
    /// Checks the parameters against the model depth and the step count.
    pub fn new(n: usize, nc: usize, b: usize, layers: usize, steps: usize) -> Result<Self> {
        if n < 1 {
            return Err(Error::param("n", n, "≥ 1 (cache interval in steps)"));
        }
        if nc < 1 || nc >= layers {
            return Err(Error::param("nc", nc, format!("1 ≤ nc < {layers} (the model's number of blocks)")));
        }
        if b > steps {
            return Err(Error::param("b", b, format!("0 ≤ b ≤ {steps} (the number of steps)")));
        }
        Ok(Delta { n, nc, b, reverse: false, calibrator: Calibrator::None })
    }

    /// The same with the stages swapped (`reverse`) or as the paper orders them.
    pub fn reversed(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// The same with Δ_front and Δ_rear applied through `calibrator`.
    pub fn calibrated(mut self, calibrator: Calibrator) -> Self {
        self.calibrator = calibrator;
        self
    }

    /// The shipped default (`--cache delta`): at more than 8 steps N = 3 and N_c = ⌊⅚ L⌋ with
    /// the forecast of Δ_front/Δ_rear by TaylorSeer order 1 (`calibrator=taylor1`), the stage
    /// boundary b and the order of [`Delta::paper`] (PixArt and DiT b at 12/20 of the steps, SD3
    /// reversed with b at ¾, FLUX b = all the steps); at 8 steps or fewer the paper's few-step
    /// (LCM) setting as it is.
    ///
    /// Why: on the trained models of models/ (20 steps, 64 images, `deltadit bench`,
    /// BENCHMARKS.md "The shipped defaults against fewer steps") the paper's N = 2, N_c = ¾ L
    /// falls below plain fewer steps of the same compute (pixart-digits 62.5%: 34.3 dB mean
    /// against 13 steps' 37.8; with TaylorSeer 35.7) — no N = 2 setting of N_c ∈ {¾, ⅚, 11/12}
    /// beat it there. Tuned on pixart-digits (12 blocks: N_c = 10, 45.8% compute, 34.1 dB mean,
    /// 30.3 worst against 10 steps' 33.4 / 29.6) and dit-digits (8 blocks: N_c = 6, 51.2%,
    /// 29.9 / 25.2 against 11 steps' 28.8 / 25.0), then checked untuned on sd3-digits and
    /// flux-digits (6 blocks: N_c = 5, 45.8%, 44.7 / 42.9 against 10 steps' 41.2 / 37.1).
    /// N_c = L − 1 (pixart N_c = 11) was worse than fewer steps in dit-digits' worst image, ¾ L
    /// in pixart-digits' mean. Four small trained models back it: calibrate yours.
    pub fn preset(family: Family, layers: usize, steps: usize) -> Self {
        let paper = Self::paper(family, layers, steps);
        if steps <= 8 {
            return paper;
        }
        let nc = (layers * 5 / 6).clamp(1, layers.saturating_sub(1).max(1));
        Delta { n: 3, nc, calibrator: Calibrator::Taylor(1), ..paper }
    }

    /// The paper's settings where it gives them (20-step PixArt: N=2, N_c=21 of 28, b=12; 4-step
    /// LCM: N=2, N_c=4, b=2), scaled to other depths and step counts, plain reuse; DiT uses N=3
    /// as the third-party DiT-XL/2 reproduction does. (`delta:n=…,nc=…,calibrator=none`
    /// reproduces it; [`Delta::preset`] is the shipped default.)
    ///
    /// SD3 (MMDiT, flow matching) has no published setting: N=2 and N_c = ¾ of the blocks as the
    /// paper, in the reverse order with b at ¾ of the steps (front blocks cached for the first
    /// three quarters, rear ones after). Chosen with `deltadit calibrate` on models/sd3-digits
    /// (the best Δ-DiT setting at ≤ 62.5% compute) and confirmed on 64 images there: 42.3 dB mean,
    /// 31.6 worst, against the paper's order 41.3 / 25.8 and 13 plain steps (65%) 39.9 / 29.6.
    ///
    /// FLUX.1 (double- then single-stream blocks, flow matching) has no published setting either:
    /// N=2 and N_c = ¾ of all blocks (double and single counted together), the paper's order with
    /// b = all the steps — every cached step skips the rear N_c blocks. The rear range starts
    /// inside the double blocks (FLUX.1's 19 + 38: N_c = 43, blocks 14..57, the last 5 double
    /// blocks and every single block; models/flux-digits' 2 + 4: N_c = 5, blocks 1..6): the front
    /// double blocks, where the text and image streams first attend to each other with their own
    /// weights, run every step, and the boundary to the single blocks needs nothing of its own
    /// (the cache moves both streams across it). Chosen by the SD3 rule — the best Δ-DiT setting
    /// at ≤ 62.5% compute of `deltadit calibrate` on models/flux-digits (n=2, nc=5, b=20: 58.3%,
    /// 41.2 dB mean, 40.0 worst; the reverse order at b=15 41.2 / 39.4) — and it loses to plain
    /// fewer steps there (12 steps, 60%: 44.2 / 41.2). FLUX.1-schnell's 4 steps take the few-step
    /// rule below, not calibrated on FLUX.
    pub fn paper(family: Family, layers: usize, steps: usize) -> Self {
        let few_steps = steps <= 8;
        let n = if family == Family::DiT && !few_steps { 3 } else { 2 };
        let mmdit = family == Family::Sd3 && !few_steps;
        let flux = family == Family::Flux && !few_steps;
        let nc_frac = if few_steps { 4.0 / 28.0 } else { 21.0 / 28.0 };
        let b_frac = match (few_steps, mmdit, flux) {
            (true, _, _) => 0.5,
            (false, true, _) => 0.75,
            (false, false, true) => 1.0,
            (false, false, false) => 12.0 / 20.0,
        };
        let nc = ((layers as f64 * nc_frac).round() as usize).clamp(1, layers.saturating_sub(1).max(1));
        let b = ((steps as f64 * b_frac).round() as usize).min(steps);
        Delta { n, nc, b, reverse: mmdit, calibrator: Calibrator::None }
    }

    fn cached(&self, step: usize) -> bool {
        !step.is_multiple_of(self.n)
    }

    /// Whether a cached step `step` skips the rear blocks (else the front ones).
    fn rear_stage(&self, step: usize) -> bool {
        (step < self.b) != self.reverse
    }
}

impl CachePolicy for Delta {
    fn name(&self) -> &'static str {
        "delta"
    }

    fn params(&self) -> String {
        let order = if self.reverse { ",order=reverse" } else { "" };
        format!("n={},nc={},b={}{order}{}", self.n, self.nc, self.b, calibrator_param(self.calibrator))
    }

    fn needs(&self) -> CacheNeeds {
        if self.calibrator != Calibrator::None {
            return CacheNeeds::default();
        }
        CacheNeeds { front: Some(self.nc), rear: Some(self.nc), ..Default::default() }
    }

    fn quantities(&self, layers: usize) -> Vec<Quantity> {
        front_rear_quantities(self.nc, layers, self.calibrator)
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        let plan = self.legacy_plan(info);
        calibrated_plan(plan, self.nc, info.layers, self.calibrator)
    }
}

/// `,calibrator=…` for `params()` (empty without one).
pub(super) fn calibrator_param(c: Calibrator) -> String {
    match c {
        Calibrator::Taylor(o) => format!(",calibrator=taylor{o}"),
        _ => String::new(),
    }
}

/// Δ_front (quantity 0) and Δ_rear (quantity 1) of `nc` blocks through `calibrator`; none
/// without one (the policy uses the [`CacheNeeds`] shorthand then).
pub(crate) fn front_rear_quantities(nc: usize, layers: usize, calibrator: Calibrator) -> Vec<Quantity> {
    if calibrator == Calibrator::None {
        return Vec::new();
    }
    vec![
        Quantity::blocks(0, nc).calibrated(calibrator),
        Quantity::blocks(layers.saturating_sub(nc), layers).calibrated(calibrator),
    ]
}

/// A shorthand Δ-DiT plan in terms of [`front_rear_quantities`] when calibrated.
pub(crate) fn calibrated_plan(plan: StepPlan, nc: usize, layers: usize, calibrator: Calibrator) -> StepPlan {
    if calibrator == Calibrator::None {
        return plan;
    }
    match plan {
        StepPlan::Full { store_front, store_rear, .. } => {
            StepPlan::Compute { store: u32::from(store_front) | (u32::from(store_rear) << 1) }
        }
        StepPlan::CachedFront(_) => StepPlan::Reuse { quantity: 0, from: 0, to: nc },
        StepPlan::CachedRear(_) => StepPlan::Reuse { quantity: 1, from: layers.saturating_sub(nc), to: layers },
        other => other,
    }
}

impl Delta {
    fn legacy_plan(&mut self, info: &StepInfo) -> StepPlan {
        let i = info.step;
        if self.cached(i) {
            return if self.rear_stage(i) { StepPlan::CachedRear(self.nc) } else { StepPlan::CachedFront(self.nc) };
        }
        // Store only the deviations the cached steps before the next full step will read.
        let upcoming = (i + 1..(i + self.n).min(info.steps)).filter(|&j| self.cached(j));
        let (mut front, mut rear) = (false, false);
        for j in upcoming {
            if self.rear_stage(j) {
                rear = true
            } else {
                front = true
            }
        }
        StepPlan::Full { store_front: front, store_rear: rear, store_branches: false, store_rest: false }
    }
}
