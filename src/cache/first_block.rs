//! First-Block-Cache (ParaAttention; diffusers `FirstBlockCacheConfig`): block 0 always runs; when
//! its residual h_1 − h_0 differs from the one of the last full step by less than `threshold`
//! (relative L1), the remaining blocks are skipped with their cached deviation
//! h_L = h_1 + (h_L − h_1)_cached. `max_cached` caps consecutive cached steps (`None`: no cap).
//!
//! Defaults (threshold 0.2, max-cached 1), calibrated on the trained reference models (models/:
//! `deltadit calibrate`, 20 steps, 16 images, 2026-12-03) by the rule of `delta-adaptive`: among
//! the swept settings with 55–75% compute on both pixart-digits and dit-digits, the highest
//! worst-image PSNR over both. It runs 59% of the blocks on pixart-digits at 38.9 dB mean PSNR
//! (uncached with 12 steps, 60% compute: 36.4 dB) and 61% on dit-digits at 31.8 dB (12 steps:
//! 29.7 dB; but its worst image, 23.4 dB, is below the 12-step run's 26.4). Thresholds of 0.1 and
//! below (diffusers' `FirstBlockCacheConfig` default is 0.05) never cache on dit-digits: its
//! block-0 residual changes by more than that every step.

use super::{CacheNeeds, CachePolicy, Probe, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `first-block` policy; made by [`FirstBlock::new`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FirstBlock {
    /// relative L1 difference of block 0's residual below which the other blocks are skipped
    pub threshold: f32,
    /// most cached steps in a row (None: no cap)
    pub max_cached: Option<usize>,
    cached_in_row: usize,
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
        Ok(FirstBlock { threshold, max_cached, cached_in_row: 0 })
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
        Probe::Block0ResidualDiff
    }

    fn needs(&self) -> CacheNeeds {
        CacheNeeds { first_block: true, ..Default::default() }
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        let capped = self.max_cached.is_some_and(|m| self.cached_in_row >= m);
        match info.probe {
            Some(diff) if info.step > 0 && diff < self.threshold && !capped => {
                self.cached_in_row += 1;
                StepPlan::CachedAfterFirst
            }
            _ => {
                self.cached_in_row = 0;
                StepPlan::Full { store_front: false, store_rear: false, store_branches: false, store_rest: true }
            }
        }
    }

    fn reset(&mut self) {
        self.cached_in_row = 0;
    }
}
