//! Executes cache policies' plans: owns the Δ buffers (backend tensors shaped like the hidden
//! state, allocated once per run, written and read without leaving the backend) and runs each
//! step in two phases, each a capturable unit for CUDA graphs:
//!
//! ```text
//! A  embed (h_0, conditioning) + the policy's probe          graph key "embed/<probe>"
//!    host: read the probe (two floats), ask the policy for a plan
//! B  the plan's block ranges, Δ stores/applies, final layer   graph key = plan variant
//! ```

use super::{CachePolicy, Probe, StepInfo, StepPlan};
use crate::backend::CacheWrite;
use crate::model::{BranchCache, Branches, Context, DeltaTap, Transformer, Workspace};
use crate::{Backend, Result, Tensor};

pub struct CacheEngine<B: Backend> {
    policy: Box<dyn CachePolicy>,
    layers: usize,
    /// Δ_front (anchor h_0 until the delta is written)
    front: Option<Tensor<B>>,
    /// Δ_rear (anchor h_{L−n} until the delta is written)
    rear: Option<Tensor<B>>,
    branches: Option<Vec<BranchCache<B>>>,
    /// First-Block-Cache: block 0's residual now, at the last full step, and Δ of blocks [1, L)
    fb_residual: Option<(Tensor<B>, Tensor<B>, Tensor<B>)>,
    fb_has_prev: bool,
    /// Block-0-input probe now and at the previous step
    probe: Option<(Tensor<B>, Tensor<B>)>,
    probe_has_prev: bool,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    pub plan: StepPlan,
    pub blocks_run: usize,
    pub probe: Option<f32>,
}

impl<B: Backend> CacheEngine<B> {
    pub fn new(be: &B, model: &Transformer<B>, ws: &Workspace<B>, mut policy: Box<dyn CachePolicy>) -> Result<Self> {
        policy.reset();
        let needs = policy.needs();
        let shape = ws.x.shape().to_vec();
        let dt = be.act_dtype();
        let buf = || be.alloc(&shape, dt);
        Ok(CacheEngine {
            layers: model.num_blocks(),
            front: needs.front.map(|_| buf()).transpose()?,
            rear: needs.rear.map(|_| buf()).transpose()?,
            branches: if needs.branches { Some(model.branch_caches(be, ws)?) } else { None },
            fb_residual: if needs.first_block { Some((buf()?, buf()?, buf()?)) } else { None },
            fb_has_prev: false,
            probe: if policy.probe() == Probe::Block0InputChange { Some((buf()?, buf()?)) } else { None },
            probe_has_prev: false,
            policy,
        })
    }

    pub fn policy(&self) -> &dyn CachePolicy {
        &*self.policy
    }

    /// One model evaluation of step `step`: embed, blocks per the policy, final layer, then
    /// `tail` (the pipeline's CFG combine) inside the same graph.
    pub fn step(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        step: usize,
        steps: usize,
        tail: &mut dyn FnMut(&B, &mut Workspace<B>) -> Result<()>,
    ) -> Result<StepReport> {
        let probe_kind = self.policy.probe();
        let key = format!("embed/{probe_kind:?}");
        be.graph_run(&key, &mut || {
            model.embed(be, ctx, ws)?;
            match probe_kind {
                Probe::None => Ok(()),
                Probe::Block0InputChange => {
                    model.probe_block0_input(be, ws, &mut self.probe.as_mut().expect("probe buffers").0)
                }
                Probe::Block0ResidualDiff => {
                    // Block 0 always runs; its residual h_1 − h_0 is the probe.
                    let (res, _, _) = self.fb_residual.as_mut().expect("first-block buffers");
                    let mut taps = [DeltaTap { from: 0, to: 1, buf: res }];
                    model.run_blocks(be, ctx, ws, 0..1, &mut taps, Branches::Compute)
                }
            }
        })?;

        let probe = self.read_probe(be, probe_kind)?;
        let plan = self.policy.plan(&StepInfo { step, steps, layers: self.layers, probe });
        let blocks_run = plan.blocks_run(self.layers);
        be.graph_run(&plan.variant(), &mut || {
            self.run_plan(be, model, ctx, ws, plan)?;
            model.finish(be, ws)?;
            tail(be, ws)
        })?;
        Ok(StepReport { plan, blocks_run, probe })
    }

    fn read_probe(&mut self, be: &B, kind: Probe) -> Result<Option<f32>> {
        match kind {
            Probe::None => Ok(None),
            Probe::Block0InputChange => {
                let (cur, prev) = self.probe.as_mut().unwrap();
                let v = if self.probe_has_prev {
                    let (d, n) = be.rel_l1(cur, prev)?;
                    Some(d / n.max(f32::MIN_POSITIVE))
                } else {
                    None
                };
                be.copy(cur, prev)?;
                self.probe_has_prev = true;
                Ok(v)
            }
            Probe::Block0ResidualDiff => {
                if !self.fb_has_prev {
                    return Ok(None);
                }
                let (cur, prev, _) = self.fb_residual.as_ref().unwrap();
                let (d, n) = be.rel_l1(cur, prev)?;
                Ok(Some(d / n.max(f32::MIN_POSITIVE)))
            }
        }
    }

    fn run_plan(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        plan: StepPlan,
    ) -> Result<()> {
        let l = self.layers;
        match plan {
            StepPlan::Full { store_front, store_rear, store_branches, store_rest } => {
                let needs = self.policy.needs();
                let mut taps = Vec::new();
                if let (true, Some(n), Some(buf)) = (store_front, needs.front, self.front.as_mut()) {
                    taps.push(DeltaTap { from: 0, to: n, buf });
                }
                if let (true, Some(n), Some(buf)) = (store_rear, needs.rear, self.rear.as_mut()) {
                    taps.push(DeltaTap { from: l - n, to: l, buf });
                }
                // First-Block-Cache: block 0 ran in phase A.
                let start = if self.fb_residual.is_some() { 1 } else { 0 };
                if let (true, Some((_, _, rest))) = (store_rest, self.fb_residual.as_mut()) {
                    taps.push(DeltaTap { from: 1, to: l, buf: rest });
                }
                let branches = match (self.branches.as_mut(), store_branches) {
                    (Some(c), true) => Branches::Store(c),
                    _ => Branches::Compute,
                };
                model.run_blocks(be, ctx, ws, start..l, &mut taps, branches)?;
                if let (true, Some((res, prev, _))) = (store_rest, self.fb_residual.as_mut()) {
                    be.copy(res, prev)?;
                    self.fb_has_prev = true;
                }
                Ok(())
            }
            StepPlan::CachedRear(n) => {
                model.run_blocks(be, ctx, ws, 0..l - n, &mut [], Branches::Compute)?;
                be.residual(&mut ws.x, self.rear.as_ref().expect("rear buffer"), None, CacheWrite::None)
            }
            StepPlan::CachedFront(n) => {
                be.residual(&mut ws.x, self.front.as_ref().expect("front buffer"), None, CacheWrite::None)?;
                model.run_blocks(be, ctx, ws, n..l, &mut [], Branches::Compute)
            }
            StepPlan::ReuseBranches => {
                let c = self.branches.as_ref().expect("branch caches");
                model.run_blocks(be, ctx, ws, 0..l, &mut [], Branches::Reuse(c))
            }
            StepPlan::CachedAfterFirst => {
                let (_, _, rest) = self.fb_residual.as_ref().expect("first-block buffers");
                be.residual(&mut ws.x, rest, None, CacheWrite::None)
            }
        }
    }
}
