//! First-Block-Cache (ParaAttention; diffusers `FirstBlockCacheConfig`): block 0 always runs; when
//! its residual h_1 − h_0 differs from the one of the last full step by less than `threshold`
//! (relative L1), the remaining blocks are skipped with their cached deviation
//! h_L = h_1 + (h_L − h_1)_cached. `max_cached` caps consecutive cached steps (`None`: no cap).
//! It is DBCache's F1B0 case without warm-up ([`DbCache`]; the same decisions, a threshold ≥ 1
//! caching whenever a full step stored block 0's residual).
//!
//! `calibrator=taylor1|taylor2` forecasts the cached residual (cache-dit's TaylorSeer, as
//! `dbcache`'s middle) instead of reusing it.
//!
//! Defaults (threshold 0.2, max-cached 2, calibrator taylor1): tuned on dit-digits (`deltadit
//! bench`, 20 steps, 64 images, BENCHMARKS.md "The shipped defaults against fewer steps"), where
//! the earlier default (threshold 0.2, max-cached 1, plain reuse: 60.6% compute) fell below 13
//! plain steps in the worst image (23.4 dB against 27.3) and no plain threshold from 0.12 to 0.3
//! held; with TaylorSeer and two cached steps in a row it runs 56.2% of the blocks at 33.6 dB
//! mean, 27.6 worst, against 12 steps' 29.8 / 26.4. Then checked on pixart-digits, sd3-digits
//! and flux-digits (see BENCHMARKS.md for where it holds). Thresholds of 0.1 and below
//! (diffusers' `FirstBlockCacheConfig` default is 0.05) never cache on dit-digits: its block-0
//! residual changes by more than that every step. Write `calibrator=none,max-cached=1` for the
//! plain First-Block-Cache of before.

use super::delta::calibrator_param;
use super::{CachePolicy, Calibrator, DbCache, Probe, Quantity, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `first-block` policy; made by [`FirstBlock::new`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FirstBlock {
    /// relative L1 difference of block 0's residual below which the other blocks are skipped
    pub threshold: f32,
    /// most cached steps in a row (None: no cap)
    pub max_cached: Option<usize>,
    /// how the cached residual of blocks 1..L is applied (as `dbcache`'s middle)
    pub calibrator: Calibrator,
    /// the decisions: DBCache F1B0, no warm-up, `max_cached` as its max-continuous
    inner: DbCache,
}

impl FirstBlock {
    /// The default `threshold`.
    pub const DEFAULT_THRESHOLD: f32 = 0.2;
    /// The default `max_cached`.
    pub const DEFAULT_MAX_CACHED: Option<usize> = Some(2);
    /// The default `calibrator`.
    pub const DEFAULT_CALIBRATOR: Calibrator = Calibrator::Taylor(1);

    /// Checks the parameters (threshold finite and > 0, max-cached ≥ 1 or `None` for no cap).
    pub fn new(threshold: f32, max_cached: Option<usize>) -> Result<Self> {
        if !(threshold > 0.0 && threshold.is_finite()) {
            return Err(Error::param("threshold", threshold, "a finite number > 0"));
        }
        if max_cached == Some(0) {
            return Err(Error::param("max-cached", 0, "≥ 1"));
        }
        Ok(FirstBlock {
            threshold,
            max_cached,
            calibrator: Calibrator::None,
            inner: DbCache::first_block(threshold, max_cached),
        })
    }

    /// The same with the residual of blocks 1..L applied through `calibrator` (cache-dit's
    /// TaylorSeer, as `dbcache`'s `calibrator`).
    pub fn calibrated(mut self, calibrator: Calibrator) -> Self {
        self.calibrator = calibrator;
        self.inner.calibrator = calibrator;
        self
    }
}

impl CachePolicy for FirstBlock {
    fn name(&self) -> &'static str {
        "first-block"
    }

    fn params(&self) -> String {
        let c = calibrator_param(self.calibrator);
        match self.max_cached {
            Some(m) => format!("threshold={},max-cached={m}{c}", self.threshold),
            None => format!("threshold={}{c}", self.threshold),
        }
    }

    fn probe(&self) -> Probe {
        self.inner.probe()
    }

    fn quantities(&self, layers: usize) -> Vec<Quantity> {
        self.inner.quantities(layers)
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        self.inner.plan(info)
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}
