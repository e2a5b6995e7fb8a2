//! Cache policies: per step, decide which block ranges run and which are replaced by a cached
//! deviation (Δ-DiT, ../docs in DELTA_DIT.md) or cached branch outputs. Policies are plain data
//! plus a decision function over what they may see (step index, step count, cheap probes the
//! runtime computes); they never touch tensors, so they are unit-testable without a model.
//! [`engine::CacheEngine`] owns the buffers and executes the plans on a backend.
//!
//! # One mechanism: cached quantities
//! Everything a policy caches is a [`Quantity`]: a [`Site`] (the deviation a block range adds to
//! every stream live at its end, or every block's branch outputs) and a [`Calibrator`] (how it
//! is applied on a cached step: reused as stored, or forecast from the last full steps). A policy
//! declares its quantities once ([`CachePolicy::quantities`]) and plans each step with two
//! variants: [`StepPlan::Compute`] (run every block, store the quantities of a bit mask) and
//! [`StepPlan::Reuse`] (skip one quantity's blocks and apply it). Its probe
//! ([`CachePolicy::probe`]) may run the first blocks before the decision
//! ([`Probe::FrontResidualDiff`]). `dbcache`, `first-block` (DBCache F1B0) are written this way.
//!
//! The older shorthand — [`CacheNeeds`] with `front`/`rear`/`branches`/`first_block` and the
//! plans [`StepPlan::Full`], [`StepPlan::CachedFront`], [`StepPlan::CachedRear`],
//! [`StepPlan::ReuseBranches`], [`StepPlan::CachedAfterFirst`] — is kept: the engine lowers it to
//! the same quantities (Δ_front = blocks [0, n), Δ_rear = [L−n, L), branches, Δ of [1, L)), so
//! `delta`, `delta-adaptive`, `fora` and user policies written against it run on the one
//! mechanism unchanged.

mod adaptive;
mod dbcache;
mod delta;
pub(crate) mod engine;
mod first_block;
mod fora;
pub mod schedule;
mod spec;

pub use adaptive::DeltaAdaptive;
pub use dbcache::DbCache;
pub use delta::Delta;
pub(crate) use engine::CacheEngine;
pub use engine::StepReport;
pub use first_block::FirstBlock;
pub use fora::Fora;
pub use schedule::Schedule;
pub use spec::CacheSpec;

/// A per-step 0/1 mask written one character per step (`1101…`): `schedule`'s `mask=` and
/// `dbcache`'s `steps-mask=`, each named by its own parameter `param` in the error, whose
/// `meaning` says what a 0 and a 1 are for that policy.
pub(crate) fn parse_step_bits(param: &str, text: &str, meaning: &str, steps: usize) -> crate::Result<Vec<bool>> {
    let bits = text
        .trim()
        .chars()
        .map(|c| match c {
            '1' => Ok(true),
            '0' => Ok(false),
            _ => Err(crate::Error::param(param, text, format!("a string of {meaning}, one per step"))),
        })
        .collect::<crate::Result<Vec<bool>>>()?;
    if bits.len() != steps {
        return Err(crate::Error::param(
            param,
            text,
            format!("one bit per step: {steps} bits of {meaning}, not {}", bits.len()),
        ));
    }
    Ok(bits)
}

/// The text form of a step mask, as [`parse_step_bits`] reads it.
pub(crate) fn step_bits(mask: &[bool]) -> String {
    mask.iter().map(|&b| if b { '1' } else { '0' }).collect()
}

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
    /// Run every block (from the end of the probe's blocks, [`Probe::FrontResidualDiff`]) and
    /// store the quantities whose bit is set in `store` (bit i: quantity i of
    /// [`CachePolicy::quantities`]).
    #[allow(missing_docs)]
    Compute { store: u32 },
    /// Skip quantity `quantity`'s blocks [from, to) (its [`Site::Blocks`] range; `0..L` for
    /// [`Site::Branches`], whose blocks run on reused branch outputs) and apply its cached or
    /// forecast value; every other block runs.
    #[allow(missing_docs)]
    Reuse { quantity: usize, from: usize, to: usize },
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
            StepPlan::Compute { .. } => layers,
            StepPlan::Reuse { from, to, .. } => layers.saturating_sub(to.saturating_sub(from)),
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
            StepPlan::Compute { store } => {
                let mut s = String::from("compute");
                for q in (0..32).filter(|q| store & (1 << q) != 0) {
                    s += &format!("+q{q}");
                }
                s
            }
            StepPlan::Reuse { quantity, from, to } => format!("reuse-q{quantity}-{from}-{to}"),
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
    /// full step (First-Block-Cache; block 0 always runs). The same as
    /// `FrontResidualDiff(1)`.
    Block0ResidualDiff,
    /// Blocks [0, n) always run before the decision; the probe is the relative L1 difference
    /// Σ|r − r_full| / Σ|r_full| of their image-stream residual r = h_n − h_0 from r_full, the
    /// one of the last full step (DBCache's Fn signal; the context stream of MMDiT families is
    /// not part of it, as in cache-dit). Plans then start at block n; the engine stores r_full
    /// on every full step.
    FrontResidualDiff(usize),
}

impl Probe {
    /// Blocks the probe runs before the decision (0, or n for [`Probe::FrontResidualDiff`]).
    pub fn blocks(&self) -> usize {
        match *self {
            Probe::Block0ResidualDiff => 1,
            Probe::FrontResidualDiff(n) => n,
            _ => 0,
        }
    }
}

/// Where a cached quantity comes from and where it goes back in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Site {
    /// The deviation Δ = s_to − s_from that blocks [from, to) add to every stream s live at
    /// boundary `to` ([`crate::model::Transformer::live_streams`]); a cached step skips those
    /// blocks and sets s_to = s_from + Δ̂.
    #[allow(missing_docs)]
    Blocks { from: usize, to: usize },
    /// Every block's branch outputs (attention, cross-attention, MLP, before their gates):
    /// FORA. A cached step runs every block's residuals on the stored (or forecast) outputs with
    /// the current step's gates.
    Branches,
}

/// How a cached quantity is applied on a cached step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Calibrator {
    /// The value stored at the last full step, as is.
    #[default]
    None,
    /// cache-dit's TaylorSeer of this order (1 or 2): a finite-difference ladder over the full
    /// steps, d_0 = Y(a), d_{i+1} = (d_i(a) − d_i(b)) / (a − b) between consecutive full steps
    /// b < a (computed from step 3 on: cache-dit's state counts steps from its creation at the
    /// first full step, one behind the step index, and differences once its count exceeds 1),
    /// and at cached step k the forecast
    /// Σ_i d_i·(k − a)^i / i!. Order 1 is Y(a) + (k − a)·(Y(a) − Y(b))/(a − b).
    Taylor(usize),
}

impl Calibrator {
    /// Snapshots of the quantity it keeps (the ladder d_0..d_order).
    pub fn snapshots(&self) -> usize {
        match *self {
            Calibrator::None => 1,
            Calibrator::Taylor(order) => order + 1,
        }
    }
}

/// A cached quantity: what is stored on full steps and applied on cached ones.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Quantity {
    /// where it comes from
    pub site: Site,
    /// how it is applied
    pub calibrator: Calibrator,
    /// Verified forecasting ([`Site::Blocks`] of two blocks or more): on a cached step the
    /// forecast input of the range's last block, s_from + Δ̂(from..to−1), runs through that
    /// block for real, and its output h̃_to is compared with the forecast ĥ_to = s_from +
    /// Δ̂(from..to): when Σ|h̃_to − ĥ_to| / Σ|ĥ_to| (image stream) exceeds this threshold the
    /// step falls back to a full step from block `from` ([`CachePolicy::fallback`]); else it
    /// goes on from h̃_to. Costs one block per cached step (two on a fallback).
    pub verify: Option<f32>,
}

impl Quantity {
    /// The deviation of blocks [from, to), reused as stored.
    pub fn blocks(from: usize, to: usize) -> Self {
        Quantity { site: Site::Blocks { from, to }, calibrator: Calibrator::None, verify: None }
    }

    /// Every block's branch outputs (FORA), reused as stored.
    pub fn branches() -> Self {
        Quantity { site: Site::Branches, calibrator: Calibrator::None, verify: None }
    }

    /// The same, applied through `calibrator`.
    pub fn calibrated(mut self, calibrator: Calibrator) -> Self {
        self.calibrator = calibrator;
        self
    }

    /// The same, verified against one real block (see [`Quantity::verify`]).
    pub fn verified(mut self, threshold: f32) -> Self {
        self.verify = Some(threshold);
        self
    }

    /// The blocks a [`StepPlan::Reuse`] of it skips on a model of `layers` blocks.
    pub fn range(&self, layers: usize) -> (usize, usize) {
        match self.site {
            Site::Blocks { from, to } => (from, to),
            Site::Branches => (0, layers),
        }
    }
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
/// reads [`CachePolicy::quantities`] (or the shorthand [`CachePolicy::needs`]) and
/// [`CachePolicy::probe`] once per run and checks every plan against them (a plan that skips
/// other blocks than declared, or reads a cache no earlier step stored, is an
/// [`Error::CachePlan`](crate::Error::CachePlan)).
///
/// A policy of cached quantities declares them in `quantities()` and plans
/// [`StepPlan::Compute`] / [`StepPlan::Reuse`]; e.g. one that stores the whole model's Δ on
/// some steps and reuses it on the others:
///
/// ```
/// use deltadit::cache::{CachePolicy, Quantity, StepInfo, StepPlan};
/// #[derive(Debug)]
/// struct Mask { full: Vec<bool> }
/// impl CachePolicy for Mask {
///     fn name(&self) -> &'static str { "mask" }
///     fn params(&self) -> String { String::new() }
///     fn quantities(&self, layers: usize) -> Vec<Quantity> { vec![Quantity::blocks(0, layers)] }
///     fn plan(&mut self, info: &StepInfo) -> StepPlan {
///         if self.full[info.step] {
///             StepPlan::Compute { store: 1 } // bit 0: quantity 0
///         } else {
///             StepPlan::Reuse { quantity: 0, from: 0, to: info.layers }
///         }
///     }
/// }
/// let mut m = Mask { full: vec![true, false, true, false] };
/// let blocks: Vec<usize> = deltadit::cache::schedule(&mut m, 4, 4).iter().map(|p| p.blocks_run(4)).collect();
/// assert_eq!(blocks, [4, 0, 4, 0]);
/// ```
pub trait CachePolicy: Send + std::fmt::Debug {
    /// `none`, `delta`, ...
    fn name(&self) -> &'static str;
    /// Parameters as `k=v,...` (the CLI spec syntax).
    fn params(&self) -> String;
    /// The signal [`StepInfo::probe`] carries.
    fn probe(&self) -> Probe {
        Probe::None
    }
    /// The caches the engine must allocate, in the shorthand of Δ_front / Δ_rear / branches /
    /// First-Block-Cache (read by the legacy plans; none by default).
    fn needs(&self) -> CacheNeeds {
        CacheNeeds::default()
    }
    /// The cached quantities [`StepPlan::Compute`] and [`StepPlan::Reuse`] index, on a model of
    /// `layers` blocks (none by default).
    fn quantities(&self, layers: usize) -> Vec<Quantity> {
        let _ = layers;
        Vec::new()
    }
    /// Decides step `info.step`. Called once per step, in order.
    fn plan(&mut self, info: &StepInfo) -> StepPlan;
    /// Forgets all state (a new sampling run).
    fn reset(&mut self) {}
    /// Step `step`'s [`StepPlan::Reuse`] of a verified quantity failed its check and ran as a
    /// full step storing that quantity instead ([`Quantity::verify`]); the policy may update
    /// its state (the engine reports the step as [`StepPlan::Compute`]).
    fn fallback(&mut self, step: usize) {
        let _ = step;
    }
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
