//! DBCache (Dual Block Cache) exactly as cache-dit 1.5.3 defines it (`cache_dit.caching`:
//! `CachedBlocks_Pattern_Base.forward`, `CachedContextManager.can_cache` / `similarity`,
//! `CachedContext.mark_step_begin`), for one transformer run per step with CFG in the batch:
//!
//! - the first `fn` blocks ("Fn") run on every step; their image-stream residual
//!   r = h_fn − h_0 is the signal ([`Probe::FrontResidualDiff`]);
//! - a step is cached when it is past the warm-up (`step ≥ warmup`), fewer than `max-cached`
//!   steps of the run were cached, fewer than `max-continuous` steps in a row before it were
//!   cached, a full step stored r_full, and the relative L1 difference
//!   mean|r_full − r| / mean|r_full| is below `threshold` (a threshold ≥ 1 caches whenever r_full
//!   exists, as cache-dit's);
//! - a cached step skips the middle blocks [fn, L − bn) and adds their residual stored at the
//!   last full step — on every stream live there, the context stream of MMDiT families too (cache-
//!   dit's `Bn_residual` and its encoder part) — or its forecast by the calibrator (cache-dit's
//!   TaylorSeer, `calibrator=taylor1|taylor2`, [`Calibrator::Taylor`]);
//! - the last `bn` blocks ("Bn") run on every step;
//! - a full step stores r_full (the engine, on every full step, warm-up included) and the middle
//!   residual.
//!
//! - `steps-mask=1111110…` is cache-dit's `steps_computation_mask` with its default "dynamic"
//!   policy: a step whose bit is 1 always runs in full, a step whose bit is 0 is decided as above,
//!   and the warm-up is cut to the mask's leading run of ones when that is shorter (cache-dit's
//!   `CachedContext.warmup_steps`). Its predefined masks are bits too:
//!   `cache_dit.steps_mask(mask_policy="fast", total_steps=n)`.
//!
//! `first-block` ([`super::FirstBlock`]) is its F1B0 case without warm-up.
//!
//! Beyond cache-dit: `verify=τ` verifies each cached step's forecast ([`Quantity::verify`]): the
//! middle's last block runs for real on the forecast input, and when its output differs from
//! the forecast by more than τ (relative L1, image stream) the step falls back to a full step
//! (not counted as cached). Needs a middle of at least 2 blocks.

use super::{CachePolicy, Calibrator, Probe, Quantity, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `dbcache` policy (see the module docs); made by [`DbCache::new`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DbCache {
    /// Fn: blocks that always run first (the signal's blocks)
    pub front: usize,
    /// Bn: blocks that always run last
    pub back: usize,
    /// relative L1 difference of the Fn residual below which a step is cached
    pub threshold: f32,
    /// full steps at the start
    pub warmup: usize,
    /// most cached steps of a run (None: no cap)
    pub max_cached: Option<usize>,
    /// most cached steps in a row (None: no cap)
    pub max_continuous: Option<usize>,
    /// how the middle residual is applied
    pub calibrator: Calibrator,
    /// verified forecasting: the threshold of the check (None: no check)
    pub verify: Option<f32>,
    /// cache-dit's steps computation mask: `true` steps always run in full (None: no mask)
    pub steps_mask: Option<Vec<bool>>,
    cached_steps: usize,
    continuous: usize,
    last_cached: Option<usize>,
}

impl DbCache {
    /// The default `fn` (cache-dit's recommended F1B0 for small models; its own default is F8B0).
    pub const DEFAULT_FN: usize = 1;
    /// The default `bn`.
    pub const DEFAULT_BN: usize = 0;
    /// The default `threshold` (cache-dit's `residual_diff_threshold` is 0.08; 0.12 is the
    /// setting of the table with warm-up 2).
    pub const DEFAULT_THRESHOLD: f32 = 0.12;
    /// The default `warmup`.
    pub const DEFAULT_WARMUP: usize = 2;
    /// The default `calibrator`: TaylorSeer order 1. cache-dit's own default is none; with it,
    /// F1B0 at 0.12 falls below sampling fewer steps in the worst image on models/pixart-digits,
    /// with TaylorSeer it is ahead of fewer steps in mean and worst on every trained model of
    /// models/ (BENCHMARKS.md, "Shipped defaults").
    pub const DEFAULT_CALIBRATOR: Calibrator = Calibrator::Taylor(1);

    /// Checks the parameters against the model depth `layers`: 1 ≤ fn, fn + bn < layers (a
    /// non-empty middle), threshold finite and > 0, caps ≥ 1, TaylorSeer order 1 or 2.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        front: usize,
        back: usize,
        threshold: f32,
        warmup: usize,
        max_cached: Option<usize>,
        max_continuous: Option<usize>,
        calibrator: Calibrator,
        layers: usize,
    ) -> Result<Self> {
        if front < 1 || front >= layers {
            return Err(Error::param("fn", front, format!("1 ≤ fn < {layers} (the model's number of blocks)")));
        }
        if front + back >= layers {
            return Err(Error::param(
                "bn",
                back,
                format!("0 ≤ bn < {} (fn + bn below the model's {layers} blocks: a middle to cache)", layers - front),
            ));
        }
        if !(threshold > 0.0 && threshold.is_finite()) {
            return Err(Error::param("threshold", threshold, "a finite number > 0"));
        }
        if max_cached == Some(0) {
            return Err(Error::param("max-cached", 0, "≥ 1, or none for no cap"));
        }
        if max_continuous == Some(0) {
            return Err(Error::param("max-continuous", 0, "≥ 1, or none for no cap"));
        }
        if let Calibrator::Taylor(o) = calibrator {
            if !(1..=2).contains(&o) {
                return Err(Error::param("calibrator", format!("taylor{o}"), "none, taylor1 or taylor2"));
            }
        }
        Ok(DbCache {
            verify: None,
            steps_mask: None,
            front,
            back,
            threshold,
            warmup,
            max_cached,
            max_continuous,
            calibrator,
            cached_steps: 0,
            continuous: 0,
            last_cached: None,
        })
    }

    /// The same with verified forecasting at `threshold` (finite, > 0; a middle of ≥ 2 blocks,
    /// checked against the model when the run starts).
    pub fn verified(mut self, threshold: Option<f32>) -> Result<Self> {
        if let Some(t) = threshold {
            if !(t > 0.0 && t.is_finite()) {
                return Err(Error::param("verify", t, "a finite number > 0"));
            }
        }
        self.verify = threshold;
        Ok(self)
    }

    /// The same with cache-dit's steps computation mask (`1`: a full step, `0`: decided by the
    /// threshold), one bit per step of a `steps`-step run.
    pub fn with_steps_mask(mut self, mask: &str, steps: usize) -> Result<Self> {
        let bits =
            super::parse_step_bits("steps-mask", mask, "0 and 1 (1: a full step; 0: the threshold decides)", steps)?;
        self.steps_mask = Some(bits);
        Ok(self)
    }

    /// F1B0 without warm-up or a cap on cached steps: First-Block-Cache.
    pub(crate) fn first_block(threshold: f32, max_continuous: Option<usize>) -> Self {
        DbCache {
            front: 1,
            back: 0,
            threshold,
            warmup: 0,
            max_cached: None,
            max_continuous,
            calibrator: Calibrator::None,
            verify: None,
            steps_mask: None,
            cached_steps: 0,
            continuous: 0,
            last_cached: None,
        }
    }

    /// The cached middle blocks [fn, L − bn) of a model of `layers` blocks.
    pub fn middle(&self, layers: usize) -> (usize, usize) {
        (self.front, layers.saturating_sub(self.back).max(self.front))
    }

    /// cache-dit's `can_cache` (non-separate CFG) on this step's probe.
    fn can_cache(&self, step: usize, probe: Option<f32>) -> bool {
        // cache-dit cuts the warm-up to the mask's leading run of full steps.
        let warmup = match &self.steps_mask {
            Some(m) => self.warmup.min(m.iter().take_while(|&&b| b).count()),
            None => self.warmup,
        };
        if step < warmup {
            return false;
        }
        if self.steps_mask.as_ref().is_some_and(|m| m.get(step).copied().unwrap_or(false)) {
            return false;
        }
        if self.max_cached.is_some_and(|m| self.cached_steps >= m) {
            return false;
        }
        if self.max_continuous.is_some_and(|m| self.continuous >= m) {
            return false;
        }
        // No stored residual of a full step: nothing to compare with.
        let Some(diff) = probe else { return false };
        self.threshold >= 1.0 || diff < self.threshold
    }
}

impl CachePolicy for DbCache {
    fn name(&self) -> &'static str {
        "dbcache"
    }

    fn params(&self) -> String {
        let cap = |m: Option<usize>| m.map_or("none".to_string(), |m| m.to_string());
        let calibrator = match self.calibrator {
            Calibrator::Taylor(o) => format!("taylor{o}"),
            _ => "none".into(),
        };
        let verify = self.verify.map_or(String::new(), |v| format!(",verify={v}"));
        let mask = self.steps_mask.as_ref().map_or(String::new(), |m| format!(",steps-mask={}", super::step_bits(m)));
        format!(
            "fn={},bn={},threshold={},warmup={},max-cached={},max-continuous={},calibrator={calibrator}{verify}{mask}",
            self.front,
            self.back,
            self.threshold,
            self.warmup,
            cap(self.max_cached),
            cap(self.max_continuous)
        )
    }

    fn probe(&self) -> Probe {
        Probe::FrontResidualDiff(self.front)
    }

    fn quantities(&self, layers: usize) -> Vec<Quantity> {
        let (from, to) = self.middle(layers);
        let q = Quantity::blocks(from, to).calibrated(self.calibrator);
        vec![match self.verify {
            Some(t) => q.verified(t),
            None => q,
        }]
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        let step = info.step;
        // A step after a full one breaks the streak (mark_step_begin).
        if step == 0 || self.last_cached != Some(step - 1) {
            self.continuous = 0;
        }
        if self.can_cache(step, info.probe) {
            self.cached_steps += 1;
            self.continuous += 1;
            self.last_cached = Some(step);
            let (from, to) = self.middle(info.layers);
            StepPlan::Reuse { quantity: 0, from, to }
        } else {
            StepPlan::Compute { store: 1 }
        }
    }

    fn fallback(&mut self, step: usize) {
        // The check failed: the step ran in full.
        if self.last_cached == Some(step) {
            self.cached_steps -= 1;
            self.continuous = 0;
            self.last_cached = None;
        }
    }

    fn reset(&mut self) {
        self.cached_steps = 0;
        self.continuous = 0;
        self.last_cached = None;
    }
}
