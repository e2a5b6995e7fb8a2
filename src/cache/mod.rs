//! Cache policies: per step, decide which block ranges run and which are replaced by a cached
//! deviation (Δ-DiT, ../docs in DELTA_DIT.md) or cached branch outputs. Policies are plain data
//! plus a decision function over what they may see (step index, step count, cheap probes the
//! runtime computes); they never touch tensors, so they are unit-testable without a model.
//! [`engine::CacheEngine`] owns the buffers and executes the plans on a backend.

mod adaptive;
mod delta;
pub(crate) mod engine;
mod first_block;
mod fora;
pub mod schedule;
mod spec;

pub use adaptive::DeltaAdaptive;
pub use delta::Delta;
pub(crate) use engine::CacheEngine;
pub use engine::StepReport;
pub use first_block::FirstBlock;
pub use fora::Fora;
pub use schedule::Schedule;
pub use spec::CacheSpec;

/// What a step executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepPlan {
    /// Run every block. `store_front`/`store_rear`: refresh Δ_front (blocks [0, n)) / Δ_rear
    /// (blocks [L−n, L)) with n = the policy's cached block count; `store_branches`: refresh
    /// FORA's per-block branch outputs; `store_rest`: refresh First-Block-Cache's Δ of blocks [1, L).
    #[allow(missing_docs)]
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
    /// Every block, nothing stored.
    pub const FULL: StepPlan =
        StepPlan::Full { store_front: false, store_rear: false, store_branches: false, store_rest: false };

    /// Full block evaluations this plan costs, out of `layers`.
    pub fn blocks_run(&self, layers: usize) -> usize {
        match *self {
            StepPlan::Full { .. } => layers,
            StepPlan::CachedRear(n) | StepPlan::CachedFront(n) => layers.saturating_sub(n),
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
#[non_exhaustive]
pub enum Probe {
    /// No probe: the plan depends on the step index only.
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
    /// Δ_front over blocks [0, n) (read by [`StepPlan::CachedFront`]`(n)`)
    pub front: Option<usize>,
    /// Δ_rear over blocks [L − n, L) (read by [`StepPlan::CachedRear`]`(n)`)
    pub rear: Option<usize>,
    /// FORA's per-block branch outputs
    pub branches: bool,
    /// First-Block-Cache: block 0's residual (current and stored) and Δ of blocks [1, L)
    pub first_block: bool,
}

/// What a policy may look at when deciding step `step`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct StepInfo {
    /// the step being decided, from 0
    pub step: usize,
    /// steps of the run
    pub steps: usize,
    /// the model's blocks
    pub layers: usize,
    /// The policy's probe for this step; None on the first step or without a probe.
    pub probe: Option<f32>,
}

impl StepInfo {
    /// What step `step` of `steps` sees on a model of `layers` blocks (tests of a policy).
    pub fn new(step: usize, steps: usize, layers: usize, probe: Option<f32>) -> Self {
        StepInfo { step, steps, layers, probe }
    }
}

/// A cache policy: plain data and a decision per step. Implement it to add a policy; the engine
/// reads [`CachePolicy::needs`] and [`CachePolicy::probe`] once per run and checks every plan
/// against them (a plan that skips other blocks than declared, or reads a cache no earlier step
/// stored, is an [`Error::CachePlan`](crate::Error::CachePlan)).
pub trait CachePolicy: Send + std::fmt::Debug {
    /// `none`, `delta`, ...
    fn name(&self) -> &'static str;
    /// Parameters as `k=v,...` (the CLI spec syntax).
    fn params(&self) -> String;
    /// The signal [`StepInfo::probe`] carries.
    fn probe(&self) -> Probe {
        Probe::None
    }
    /// The caches the engine must allocate.
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

/// The plans of a whole run under `policy` when its probe never fires (data-free policies give
/// their exact schedule; `delta-adaptive` and `first-block` depend on the run).
pub fn schedule(policy: &mut dyn CachePolicy, steps: usize, layers: usize) -> Vec<StepPlan> {
    policy.reset();
    (0..steps).map(|step| policy.plan(&StepInfo { step, steps, layers, probe: None })).collect()
}
