//! FORA (Fast-Forward Caching): every block's attention, cross-attention and MLP outputs are
//! computed on every N-th step and reused, with the current step's gates, on the N − 1 steps
//! between. Cached steps evaluate no block.
//!
//! `calibrator=taylor1|taylor2` forecasts every branch output (before its gate; the current
//! step's gates applied) with cache-dit's TaylorSeer ([`Calibrator::Taylor`]) instead of reusing
//! it: the policy then declares them as quantity 0 ([`Quantity::branches`]) and plans
//! [`StepPlan::Compute`] / [`StepPlan::Reuse`] on the same schedule.

use super::delta::calibrator_param;
use super::{CacheNeeds, CachePolicy, Calibrator, Quantity, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `fora` policy; made by [`Fora::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fora {
    /// cache interval: full step when step % n == 0
    pub n: usize,
    /// how the branch outputs are applied on cached steps
    pub calibrator: Calibrator,
}

impl Fora {
    /// The default `n`.
    pub const DEFAULT_N: usize = 3;
    /// The default `calibrator`: TaylorSeer order 1. Plain reuse at n = 3 (35% compute) is
    /// already above 7 plain steps (35%) on the four trained models of models/, but barely on
    /// dit-digits' worst image (21.7 dB against 21.1); the forecast lifts every model's mean by
    /// 2–7 dB and its worst image by 2.5–8 dB (BENCHMARKS.md "The shipped defaults against
    /// fewer steps"). Write `calibrator=none` for FORA as published.
    pub const DEFAULT_CALIBRATOR: Calibrator = Calibrator::Taylor(1);

    /// Checks the interval (≥ 1).
    pub fn new(n: usize) -> Result<Self> {
        if n < 1 {
            return Err(Error::param("n", n, "≥ 1 (cache interval in steps)"));
        }
        Ok(Fora { n, calibrator: Calibrator::None })
    }

    /// The same with the branch outputs applied through `calibrator`.
    pub fn calibrated(mut self, calibrator: Calibrator) -> Self {
        self.calibrator = calibrator;
        self
    }
}

impl CachePolicy for Fora {
    fn name(&self) -> &'static str {
        "fora"
    }

    fn params(&self) -> String {
        format!("n={}{}", self.n, calibrator_param(self.calibrator))
    }

    fn needs(&self) -> CacheNeeds {
        CacheNeeds { branches: self.n > 1 && self.calibrator == Calibrator::None, ..Default::default() }
    }

    fn quantities(&self, _layers: usize) -> Vec<Quantity> {
        if self.n > 1 && self.calibrator != Calibrator::None {
            vec![Quantity::branches().calibrated(self.calibrator)]
        } else {
            Vec::new()
        }
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        if self.calibrator != Calibrator::None && self.n > 1 {
            return if info.step.is_multiple_of(self.n) {
                // every full step feeds the forecast's ladder
                StepPlan::Compute { store: 1 }
            } else {
                StepPlan::Reuse { quantity: 0, from: 0, to: info.layers }
            };
        }
        if info.step.is_multiple_of(self.n) {
            StepPlan::Full {
                store_front: false,
                store_rear: false,
                store_branches: self.n > 1 && info.step + 1 < info.steps,
                store_rest: false,
            }
        } else {
            StepPlan::ReuseBranches
        }
    }
}
