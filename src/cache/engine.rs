//! Executes cache policies' plans: owns the Δ buffers (backend tensors shaped like the hidden
//! state, allocated once per run, written and read without leaving the backend) and runs each
//! step in two phases, each a capturable unit for CUDA graphs:
//!
//! ```text
//! A  embed (h_0, conditioning) + the policy's probe          graph key "embed/<probe>"
//!    host: read the probe (two floats), ask the policy for a plan, check the plan
//! B  the plan's block ranges, Δ stores/applies, final layer   graph key = plan variant
//! ```
//!
//! A policy is user code: what it declares ([`CachePolicy::needs`], [`CachePolicy::probe`]) is
//! read once and checked, and every plan it returns is checked against that declaration and
//! against what has been stored since the run began, so a wrong plan is an [`Error::CachePlan`]
//! instead of a silently wrong image.

use super::{CacheNeeds, CachePolicy, Probe, StepInfo, StepPlan};
use crate::model::{BranchCache, Branches, Context, DeltaTap, Transformer, Workspace};
use crate::{Backend, Error, Result, Tensor};

/// Runs a policy's plans on a backend (see the module docs).
pub struct CacheEngine<B: Backend> {
    policy: Box<dyn CachePolicy>,
    layers: usize,
    /// what the policy declared at creation
    needs: CacheNeeds,
    probe_kind: Probe,
    /// Δ_front per stream (anchor h_0 until the delta is written)
    front: Option<Vec<Tensor<B>>>,
    /// Δ_rear per stream (anchor h_{L−n} until the delta is written)
    rear: Option<Vec<Tensor<B>>>,
    branches: Option<Vec<BranchCache<B>>>,
    /// First-Block-Cache: block 0's residual now (per stream), the image part at the last full
    /// step, and Δ of blocks [1, L) (per stream)
    fb_residual: Option<FirstBlockBuffers<B>>,
    /// Block-0-input probe now and at the previous step
    probe: Option<(Tensor<B>, Tensor<B>)>,
    /// which caches hold values written since the run began
    stored: Stored,
    probe_has_prev: bool,
}

/// First-Block-Cache's buffers: block 0's residual now (per stream), its image part at the last
/// full step, and Δ of blocks [1, L) (per stream).
type FirstBlockBuffers<B> = (Vec<Tensor<B>>, Tensor<B>, Vec<Tensor<B>>);

/// The caches written since the last reset.
#[derive(Clone, Copy, Debug, Default)]
struct Stored {
    front: bool,
    rear: bool,
    branches: bool,
    /// First-Block-Cache's Δ of blocks [1, L) and its stored block-0 residual
    rest: bool,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StepReport {
    /// the plan the policy chose
    pub plan: StepPlan,
    /// full block evaluations it cost
    pub blocks_run: usize,
    /// the probe the policy decided on, where it has one and a previous step to compare with
    pub probe: Option<f32>,
}

fn plan_err(policy: &dyn CachePolicy, step: usize, plan: &StepPlan, msg: impl Into<String>) -> Error {
    Error::CachePlan { policy: policy.name().to_string(), step, plan: plan.variant(), msg: msg.into() }
}

/// Checks what a policy declares against the model depth.
fn check_needs(policy: &dyn CachePolicy, needs: &CacheNeeds, probe: Probe, layers: usize) -> Result<()> {
    let bad = |msg: String| Error::CachePlan { policy: policy.name().to_string(), step: 0, plan: "needs".into(), msg };
    for (what, n) in [("front", needs.front), ("rear", needs.rear)] {
        if let Some(n) = n {
            if n == 0 || n > layers {
                return Err(bad(format!(
                    "declares a {what} range of {n} blocks; the model has {layers} (1..={layers})"
                )));
            }
        }
    }
    // Each block boundary takes at most one fused Δ write: Δ_rear always ends at L.
    if needs.front == Some(layers) && needs.rear.is_some() {
        return Err(bad(format!(
            "Δ_front over all {layers} blocks ends where Δ_rear does; a front range must be shorter than the model when a rear one is declared"
        )));
    }
    // First-Block-Cache runs block 0 in the probe phase; the two go together.
    if needs.first_block != (probe == Probe::Block0ResidualDiff) {
        return Err(bad(format!(
            "needs.first_block = {} with probe {probe:?}: First-Block-Cache's buffers and the Block0ResidualDiff probe go together",
            needs.first_block
        )));
    }
    // Block 0 runs on h_0 in the probe phase of every step: the other caches' ranges, which start
    // from h_0 or rerun block 0, cannot follow it.
    if needs.first_block && (needs.front.is_some() || needs.rear.is_some() || needs.branches) {
        return Err(bad(
            "First-Block-Cache (needs.first_block) cannot be combined with Δ_front, Δ_rear or branch caches".into(),
        ));
    }
    if needs.first_block && layers < 2 {
        return Err(bad("First-Block-Cache needs at least 2 blocks".into()));
    }
    Ok(())
}

impl<B: Backend> CacheEngine<B> {
    /// Allocates the buffers `policy` declares for a model with workspace `ws`.
    pub fn new(be: &B, model: &Transformer<B>, ws: &Workspace<B>, mut policy: Box<dyn CachePolicy>) -> Result<Self> {
        policy.reset();
        let layers = model.num_blocks();
        let needs = policy.needs();
        let probe_kind = policy.probe();
        check_needs(&*policy, &needs, probe_kind, layers)?;
        // Buffers shaped like the image stream (probes), or one per stream (Δ caches).
        let image = &ws.streams[0];
        let buf = || be.alloc(image.shape(), image.dtype());
        let bufs = || model.stream_buffers(be, ws);
        Ok(CacheEngine {
            layers,
            needs,
            probe_kind,
            front: needs.front.map(|_| bufs()).transpose()?,
            rear: needs.rear.map(|_| bufs()).transpose()?,
            branches: if needs.branches { Some(model.branch_caches(be, ws)?) } else { None },
            fb_residual: if needs.first_block { Some((bufs()?, buf()?, bufs()?)) } else { None },
            probe: if probe_kind == Probe::Block0InputChange { Some((buf()?, buf()?)) } else { None },
            stored: Stored::default(),
            probe_has_prev: false,
            policy,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &dyn CachePolicy {
        &*self.policy
    }

    /// A new run: the policy forgets its state, and nothing cached counts as stored.
    pub fn reset(&mut self) {
        self.policy.reset();
        self.stored = Stored::default();
        self.probe_has_prev = false;
    }

    /// One model evaluation of step `step`: embed, blocks per the policy, final layer, then
    /// `tail` (the pipeline's CFG combine) inside the same graph.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        step: usize,
        steps: usize,
        tail: &mut (dyn FnMut(&B, &mut Workspace<B>) -> Result<()> + Send),
    ) -> Result<StepReport> {
        let probe_kind = self.probe_kind;
        let key = format!("embed/{probe_kind:?}");
        let (probe_bufs, fb) = (&mut self.probe, &mut self.fb_residual);
        be.graph_run(&key, &mut || {
            model.embed(be, ctx, ws)?;
            match (probe_kind, probe_bufs.as_mut(), fb.as_mut()) {
                (Probe::Block0InputChange, Some((cur, _)), _) => model.probe_block0_input(be, ws, cur),
                (Probe::Block0ResidualDiff, _, Some((res, _, _))) => {
                    // Block 0 always runs; its residual h_1 − h_0 is the probe.
                    let mut taps = [DeltaTap { from: 0, to: 1, bufs: res }];
                    model.run_blocks(be, ctx, ws, 0..1, &mut taps, Branches::Compute)
                }
                _ => Ok(()),
            }
        })?;

        let probe = self.read_probe(be)?;
        let plan = self.policy.plan(&StepInfo { step, steps, layers: self.layers, probe });
        self.check_plan(step, &plan)?;
        // skip_layers (uncached runs only) leaves blocks out of a full step
        let skipped = ctx.skip.iter().filter(|&&s| s).count();
        let blocks_run = plan.blocks_run(self.layers).saturating_sub(skipped);
        be.graph_run(&plan.variant(), &mut || {
            self.run_plan(be, model, ctx, ws, plan)?;
            model.finish(be, ws)?;
            tail(be, ws)
        })?;
        self.note_stored(&plan);
        Ok(StepReport { plan, blocks_run, probe })
    }

    /// A plan may only store what the policy declared and read what has been stored this run,
    /// over exactly the ranges it declared.
    fn check_plan(&self, step: usize, plan: &StepPlan) -> Result<()> {
        let err = |msg: String| Err(plan_err(&*self.policy, step, plan, msg));
        let (n, s) = (&self.needs, &self.stored);
        match *plan {
            StepPlan::Full { store_front, store_rear, store_branches, store_rest } => {
                for (asked, declared, what) in [
                    (store_front, n.front.is_some(), "Δ_front"),
                    (store_rear, n.rear.is_some(), "Δ_rear"),
                    (store_branches, n.branches, "branch outputs"),
                    (store_rest, n.first_block, "First-Block-Cache's Δ"),
                ] {
                    if asked && !declared {
                        return err(format!("stores {what}, which the policy's needs() did not declare"));
                    }
                }
                Ok(())
            }
            StepPlan::CachedRear(k) | StepPlan::CachedFront(k) => {
                let (declared, stored, what) = match plan {
                    StepPlan::CachedRear(_) => (n.rear, s.rear, "rear"),
                    _ => (n.front, s.front, "front"),
                };
                match declared {
                    None => err(format!("reads Δ_{what}, which needs() did not declare")),
                    Some(d) if d != k => {
                        err(format!("skips {k} {what} blocks, but needs() declared the Δ_{what} of {d} blocks"))
                    }
                    Some(_) if !stored => err(format!("reads Δ_{what} before any full step of this run stored it")),
                    Some(_) => Ok(()),
                }
            }
            StepPlan::ReuseBranches if !n.branches => {
                err("reuses branch outputs, which needs() did not declare".into())
            }
            StepPlan::ReuseBranches if !s.branches => err("reuses branch outputs before any step stored them".into()),
            StepPlan::CachedAfterFirst if !n.first_block => {
                err("applies First-Block-Cache's Δ, which needs() did not declare".into())
            }
            StepPlan::CachedAfterFirst if !s.rest => {
                err("applies First-Block-Cache's Δ before any full step of this run stored it".into())
            }
            StepPlan::ReuseBranches | StepPlan::CachedAfterFirst => Ok(()),
        }
    }

    fn note_stored(&mut self, plan: &StepPlan) {
        if let StepPlan::Full { store_front, store_rear, store_branches, store_rest } = *plan {
            self.stored.front |= store_front;
            self.stored.rear |= store_rear;
            self.stored.branches |= store_branches;
            self.stored.rest |= store_rest;
        }
    }

    fn read_probe(&mut self, be: &B) -> Result<Option<f32>> {
        let ratio = |(d, n): (f32, f32)| d / n.max(f32::MIN_POSITIVE);
        match (self.probe_kind, self.probe.as_mut(), self.fb_residual.as_ref()) {
            (Probe::Block0InputChange, Some((cur, prev)), _) => {
                let v = if self.probe_has_prev { Some(ratio(be.rel_l1(cur, prev)?)) } else { None };
                be.copy(cur, prev)?;
                self.probe_has_prev = true;
                Ok(v)
            }
            (Probe::Block0ResidualDiff, _, Some((cur, prev, _))) if self.stored.rest => {
                Ok(Some(ratio(be.rel_l1(&cur[0], prev)?)))
            }
            _ => Ok(None),
        }
    }

    /// Runs a plan that [`Self::check_plan`] accepted: the buffers it uses exist.
    fn run_plan(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        plan: StepPlan,
    ) -> Result<()> {
        let l = self.layers;
        let missing = |what: &str| Error::CachePlan {
            policy: self.policy.name().to_string(),
            step: 0,
            plan: plan.variant(),
            msg: format!("no {what} buffer"),
        };
        match plan {
            StepPlan::Full { store_front, store_rear, store_branches, store_rest } => {
                let mut taps = Vec::new();
                if let (true, Some(n), Some(bufs)) = (store_front, self.needs.front, self.front.as_mut()) {
                    taps.push(DeltaTap { from: 0, to: n, bufs });
                }
                if let (true, Some(n), Some(bufs)) = (store_rear, self.needs.rear, self.rear.as_mut()) {
                    taps.push(DeltaTap { from: l - n, to: l, bufs });
                }
                // First-Block-Cache: block 0 ran in phase A.
                let start = if self.fb_residual.is_some() { 1 } else { 0 };
                if let (true, Some((_, _, rest))) = (store_rest, self.fb_residual.as_mut()) {
                    taps.push(DeltaTap { from: 1, to: l, bufs: rest });
                }
                let branches = match (self.branches.as_mut(), store_branches) {
                    (Some(c), true) => Branches::Store(c),
                    _ => Branches::Compute,
                };
                model.run_blocks(be, ctx, ws, start..l, &mut taps, branches)?;
                if let (true, Some((res, prev, _))) = (store_rest, self.fb_residual.as_mut()) {
                    be.copy(&res[0], prev)?;
                }
                Ok(())
            }
            StepPlan::CachedRear(n) => {
                let rear = self.rear.as_ref().ok_or_else(|| missing("Δ_rear"))?;
                model.run_blocks(be, ctx, ws, 0..l - n, &mut [], Branches::Compute)?;
                model.apply_delta(be, ws, l, rear)
            }
            StepPlan::CachedFront(n) => {
                let front = self.front.as_ref().ok_or_else(|| missing("Δ_front"))?;
                model.apply_delta(be, ws, n, front)?;
                model.run_blocks(be, ctx, ws, n..l, &mut [], Branches::Compute)
            }
            StepPlan::ReuseBranches => {
                let c = self.branches.as_ref().ok_or_else(|| missing("branch"))?;
                model.run_blocks(be, ctx, ws, 0..l, &mut [], Branches::Reuse(c))
            }
            StepPlan::CachedAfterFirst => {
                let (_, _, rest) = self.fb_residual.as_ref().ok_or_else(|| missing("First-Block-Cache"))?;
                model.apply_delta(be, ws, l, rest)
            }
        }
    }
}
