//! First-Block-Cache (ParaAttention; diffusers `FirstBlockCacheConfig`): block 0 always runs; when
//! its residual h_1 − h_0 differs from the one of the last full step by less than `threshold`
//! (relative L1), the remaining blocks are skipped with their cached deviation
//! h_L = h_1 + (h_L − h_1)_cached. `max_cached` caps consecutive cached steps (`None`: no cap).
//! It is DBCache's F1B0 case without warm-up ([`DbCache`]; the same decisions, a threshold ≥ 1
//! caching whenever a full step stored block 0's residual).
//!
//! Defaults (threshold 0.2, max-cached 1), calibrated on the trained reference models (models/:
//! `deltadit calibrate`, 20 steps, 16 images, 2026-12-03) by the rule of `delta-adaptive`: among
//! the swept settings with 55–75% compute on both pixart-digits and dit-digits, the highest
//! worst-image PSNR over both. It runs 59% of the blocks on pixart-digits at 38.9 dB mean PSNR
//! (uncached with 12 steps, 60% compute: 36.4 dB) and 61% on dit-digits at 31.8 dB (12 steps:
//! 29.7 dB; but its worst image, 23.4 dB, is below the 12-step run's 26.4). Thresholds of 0.1 and
//! below (diffusers' `FirstBlockCacheConfig` default is 0.05) never cache on dit-digits: its
//! block-0 residual changes by more than that every step.

use super::{CachePolicy, DbCache, Probe, Quantity, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `first-block` policy; made by [`FirstBlock::new`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FirstBlock {
    /// relative L1 difference of block 0's residual below which the other blocks are skipped
    pub threshold: f32,
    /// most cached steps in a row (None: no cap)
    pub max_cached: Option<usize>,
    /// the decisions: DBCache F1B0, no warm-up, `max_cached` as its max-continuous
    inner: DbCache,
}

impl FirstBlock {
    /// The default `threshold`.
    pub const DEFAULT_THRESHOLD: f32 = 0.2;
    /// The default `max_cached`.
    pub const DEFAULT_MAX_CACHED: Option<usize> = Some(1);

    /// Checks the parameters (threshold finite and > 0, max-cached ≥ 1 or `None` for no cap).
    pub fn new(threshold: f32, max_cached: Option<usize>) -> Result<Self> {
        if !(threshold > 0.0 && threshold.is_finite()) {
            return Err(Error::param("threshold", threshold, "a finite number > 0"));
        }
        if max_cached == Some(0) {
            return Err(Error::param("max-cached", 0, "≥ 1"));
        }
        Ok(FirstBlock { threshold, max_cached, inner: DbCache::first_block(threshold, max_cached) })
    }
}

impl CachePolicy for FirstBlock {
    fn name(&self) -> &'static str {
        "first-block"
    }

    fn params(&self) -> String {
        match self.max_cached {
            Some(m) => format!("threshold={},max-cached={m}", self.threshold),
            None => format!("threshold={}", self.threshold),
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
