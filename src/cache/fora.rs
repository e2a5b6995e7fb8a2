//! FORA (Fast-Forward Caching): every block's attention, cross-attention and MLP outputs are
//! computed on every N-th step and reused, with the current step's gates, on the N − 1 steps
//! between. Cached steps evaluate no block.

use super::{CacheNeeds, CachePolicy, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `fora` policy; made by [`Fora::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fora {
    /// cache interval: full step when step % n == 0
    pub n: usize,
}

impl Fora {
    /// The default `n`.
    pub const DEFAULT_N: usize = 3;

    /// Checks the interval (≥ 1).
    pub fn new(n: usize) -> Result<Self> {
        if n < 1 {
            return Err(Error::param("n", n, "≥ 1 (cache interval in steps)"));
        }
        Ok(Fora { n })
    }
}

impl CachePolicy for Fora {
    fn name(&self) -> &'static str {
        "fora"
    }

    fn params(&self) -> String {
        format!("n={}", self.n)
    }

    fn needs(&self) -> CacheNeeds {
        CacheNeeds { branches: self.n > 1, ..Default::default() }
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
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
