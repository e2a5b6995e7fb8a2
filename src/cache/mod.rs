//! Cache policies: per step, decide which block ranges run and which are replaced by a cached
//! deviation (Δ-DiT, ../docs in DELTA_DIT.md) or cached branch outputs. Policies are plain data
//! plus a decision function over what they may see (step index, step count, cheap probes the
//! runtime computes); they never touch tensors, so they are unit-testable without a model.
//! [`engine::CacheEngine`] owns the buffers and executes the plans on a backend.

pub mod adaptive;
pub mod delta;
pub mod engine;
pub mod first_block;
pub mod fora;
mod spec;

pub use adaptive::DeltaAdaptive;
pub use delta::Delta;
pub use engine::CacheEngine;
pub use first_block::FirstBlock;
pub use fora::Fora;
pub use spec::CacheSpec;

/// What a step executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPlan {
    /// Run every block. `store_front`/`store_rear`: refresh Δ_front (blocks [0, n)) / Δ_rear
    /// (blocks [L−n, L)) with n = the policy's cached block count; `store_branches`: refresh
    /// FORA's per-block branch outputs; `store_rest`: refresh First-Block-Cache's Δ of blocks [1, L).
    Full { store_front: bool, store_rear: bool, store_branches: bool, store_rest: bool },
    /// Δ-DiT early stage: run blocks [0, L−n), then h_L = h_{L−n} + Δ_rear.
    CachedRear(usize),
    /// Δ-DiT late stage: h_n = h_0 + Δ_front, then run blocks [n, L).
    CachedFront(usize),
    /// FORA: every block reuses its cached attention/MLP outputs with this step's gates.
    ReuseBranches,
    /// First-Block-Cache: block 0 ran; h_L = h_1 + Δ_rest.
    CachedAfterFirst,
}

impl StepPlan {
    pub const FULL: StepPlan =
        StepPlan::Full { store_front: false, store_rear: false, store_branches: false, store_rest: false };

    /// Full block evaluations this plan costs, out of `layers`.
    pub fn blocks_run(&self, layers: usize) -> usize {
        match *self {
            StepPlan::Full { .. } => layers,
            StepPlan::CachedRear(n) | StepPlan::CachedFront(n) => layers - n,
            StepPlan::ReuseBranches => 0,
            StepPlan::CachedAfterFirst => 1,
        }
    }

    /// A short, stable name of the executed variant (CUDA graph key, logs).
    pub fn variant(&self) -> String {
        match *self {
            StepPlan::Full { store_front, store_rear, store_branches, store_rest } => {
                format!(
                    "full{}{}{}{}",
                    if store_front { "+front" } else { "" },
                    if store_rear { "+rear" } else { "" },
                    if store_branches { "+branches" } else { "" },
                    if store_rest { "+rest" } else { "" }
                )
            }
            StepPlan::CachedRear(n) => format!("cached-rear-{n}"),
            StepPlan::CachedFront(n) => format!("cached-front-{n}"),
            StepPlan::ReuseBranches => "reuse-branches".into(),
            StepPlan::CachedAfterFirst => "cached-after-first".into(),
        }
    }
}

/// The cheap signal a policy decides on, computed by the runtime each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    None,
    /// Relative L1 change of block 0's modulated input LN(h_0)·(1+scale)+shift since the
    /// previous step (TeaCache's signal; costs one LayerNorm pass).
    Block0InputChange,
    /// Relative L1 difference of block 0's residual h_1 − h_0 from the one stored at the last
    /// full step (First-Block-Cache; block 0 always runs).
    Block0ResidualDiff,
}

/// Which buffers the engine must allocate for a policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheNeeds {
    /// Δ_front/Δ_rear over this many blocks
    pub front: Option<usize>,
    pub rear: Option<usize>,
    pub branches: bool,
    /// First-Block-Cache: block 0's residual (current and stored) and Δ of blocks [1, L)
    pub first_block: bool,
}

/// What a policy may look at when deciding step `step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    pub step: usize,
    pub steps: usize,
    pub layers: usize,
    /// The policy's probe for this step; None on the first step or without a probe.
    pub probe: Option<f32>,
}

/// A cache policy.
pub trait CachePolicy: Send + std::fmt::Debug {
    /// `none`, `delta`, ...
    fn name(&self) -> &'static str;
    /// Parameters as `k=v,...` (the CLI spec syntax).
    fn params(&self) -> String;
    fn probe(&self) -> Probe {
        Probe::None
    }
    fn needs(&self) -> CacheNeeds;
    /// Decides step `info.step`. Called once per step, in order.
    fn plan(&mut self, info: &StepInfo) -> StepPlan;
    /// Forgets all state (a new sampling run).
    fn reset(&mut self) {}
}

/// Runs every block on every step.
#[derive(Clone, Debug, Default)]
pub struct NoCache;

impl CachePolicy for NoCache {
    fn name(&self) -> &'static str {
        "none"
    }
    fn params(&self) -> String {
        String::new()
    }
    fn needs(&self) -> CacheNeeds {
        CacheNeeds::default()
    }
    fn plan(&mut self, _info: &StepInfo) -> StepPlan {
        StepPlan::FULL
    }
}

/// Block evaluations of a whole run under `policy` when its probe never fires (data-free
/// policies give their exact schedule; `delta-adaptive` and `first-block` depend on the run).
pub fn schedule(policy: &mut dyn CachePolicy, steps: usize, layers: usize) -> Vec<StepPlan> {
    policy.reset();
    (0..steps).map(|step| policy.plan(&StepInfo { step, steps, layers, probe: None })).collect()
}
