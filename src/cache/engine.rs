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

use super::{CacheNeeds, CachePolicy, Calibrator, Probe, Quantity, Site, StepInfo, StepPlan};
use crate::model::{BranchCache, Branches, Context, DeltaTap, Transformer, Workspace};
use crate::{Backend, Error, Result, Tensor};

/// Runs a policy's plans on a backend (see the module docs).
pub struct CacheEngine<B: Backend> {
    policy: Box<dyn CachePolicy>,
    layers: usize,
    /// what the policy declared at creation (the shorthand)
    needs: CacheNeeds,
    probe_kind: Probe,
    /// every cached quantity: the shorthand's first (see [`Legacy`]), then the policy's
    /// [`CachePolicy::quantities`]
    slots: Vec<Slot<B>>,
    /// where the shorthand's caches sit in `slots`
    legacy: Legacy,
    /// Block-0-input probe now and at the previous step
    probe: Option<(Tensor<B>, Tensor<B>)>,
    /// [`Probe::FrontResidualDiff`]: the front blocks' residual now (per stream) and its image
    /// part at the last full step
    front_probe: Option<(Vec<Tensor<B>>, Tensor<B>)>,
    front_probe_stored: bool,
    probe_has_prev: bool,
}

/// One cached quantity's buffers and bookkeeping.
struct Slot<B: Backend> {
    q: Quantity,
    bufs: SlotBufs<B>,
    /// a full step of this run stored it
    stored: bool,
    /// the forecast's snapshots, for a [`Calibrator::Taylor`] quantity
    ladder: Option<Ladder<B>>,
    /// verified forecasting ([`Quantity::verify`])
    head: Option<Head<B>>,
}

/// A verified quantity's extra buffers: the Δ of its range but the last block (per stream, and
/// its ladder when calibrated), the streams at `from` saved for a fallback, and the forecast
/// image stream at `to` the check compares with.
struct Head<B: Backend> {
    threshold: f32,
    bufs: Vec<Tensor<B>>,
    ladder: Option<Ladder<B>>,
    save: Vec<Tensor<B>>,
    fc: Tensor<B>,
}

/// A ladder's coefficients (f32 on the backend): 0..3 the forecast's (1, e, e²/2), then per
/// level i the pair (1/w, −1/w) of d_{i+1} = (d_i(a) − d_i(b))/w.
const COEFS: usize = 3 + 2 * 2;

/// cache-dit's TaylorSeer ladder of one Δ quantity (see [`Calibrator::Taylor`]), every tensor
/// per stream and on the backend: d_0 is the slot's Δ buffer; `lv[i]` is d_{i+1}; `prev` is d_0
/// at the previous full step. Levels not (yet) defined are zero with zero coefficients, so every
/// step issues the same ops on the same buffers (a CUDA graph per plan); the coefficients live
/// in `coef`, written before the step. The apply (stream += d_0 + e·d_1 + e²/2·d_2) is one
/// [`Backend::forecast`] pass, the update of every level one [`Backend::ladder_update`] pass.
struct Ladder<B: Backend> {
    order: usize,
    lv: Vec<Vec<Tensor<B>>>,
    prev: Vec<Tensor<B>>,
    coef: Tensor<B>,
    /// defined levels d_0..d_{valid−1} (cache-dit's non-None prefix of `dY_current`)
    valid: usize,
    /// the last full step
    last_full: Option<usize>,
}

impl<B: Backend> Ladder<B> {
    /// Snapshots shaped like `like` (the streams of a Δ, or every branch slot of FORA).
    fn new(be: &B, like: &[&Tensor<B>], order: usize) -> Result<Self> {
        let zeros = || -> Result<Vec<Tensor<B>>> {
            like.iter()
                .map(|t| {
                    let mut z = be.alloc(t.shape(), t.dtype())?;
                    be.fill_bits(&mut z, 0)?;
                    Ok(z)
                })
                .collect()
        };
        let lv = (0..order).map(|_| zeros()).collect::<Result<_>>()?;
        let prev = zeros()?;
        let coef = be.upload(&[0.0; COEFS], &[COEFS], crate::DType::F32)?;
        Ok(Ladder { order, lv, prev, coef, valid: 0, last_full: None })
    }

    /// Host part of a full step `step` that stores the quantity: the update's coefficients
    /// (cache-dit's `TaylorSeerState.derivative`: d_{i+1} is defined where d_i was at the last
    /// full step and its step counter exceeds 1 — a counter created at the first update, after
    /// that step's advance, so one behind the step index: `step > 2`); returns the levels
    /// defined after it.
    fn prepare_update(&mut self, be: &B, step: usize) -> Result<usize> {
        let w = self.last_full.map_or(1.0, |b| (step - b) as f32);
        let mut c = [0.0f32; COEFS];
        c[0] = 1.0;
        let mut valid = 1;
        for i in 0..self.order {
            if i < self.valid && step > 2 {
                c[3 + 2 * i] = 1.0 / w;
                c[4 + 2 * i] = -1.0 / w;
                valid = i + 2;
            } else {
                break;
            }
        }
        be.write(&mut self.coef, &c)?;
        Ok(valid)
    }

    /// Host part of a cached step `step`: the forecast's coefficients (k − a)^i / i!.
    fn prepare_apply(&mut self, be: &B, step: usize) -> Result<()> {
        let e = self.last_full.map_or(0.0, |a| step.saturating_sub(a) as f32);
        let mut c = [0.0f32; COEFS];
        c[0] = 1.0;
        if self.valid > 1 {
            c[1] = e;
        }
        if self.valid > 2 {
            c[2] = 0.5 * e * e;
        }
        be.write(&mut self.coef, &c)
    }

    /// Device part of the update, after the full step wrote d_0 = `d0` (its first `live`
    /// tensors: the streams live at a Δ's end, or every branch slot).
    fn update(&mut self, be: &B, d0: &[&Tensor<B>], live: usize) -> Result<()> {
        for s in 0..live {
            let mut levels: Vec<&mut Tensor<B>> = self.lv.iter_mut().map(|l| &mut l[s]).collect();
            be.ladder_update(d0[s], &mut self.prev[s], &mut levels, &self.coef, 3)?;
        }
        Ok(())
    }

    /// Device part of a cached step: every `live` stream += d_0 + Σ_i c_i·d_i, one pass.
    fn apply(&self, be: &B, streams: &mut [Tensor<B>], d0: &[Tensor<B>], live: usize) -> Result<()> {
        for (s, x) in streams.iter_mut().enumerate().take(live) {
            let mut terms = vec![&d0[s]];
            terms.extend(self.lv.iter().map(|l| &l[s]));
            be.forecast(x, &terms, &self.coef, 0, true)?;
        }
        Ok(())
    }
}

enum SlotBufs<B: Backend> {
    /// a Δ per stream (the anchor s_from until the delta is written)
    Delta(Vec<Tensor<B>>),
    /// every block's branch outputs
    Branches(Vec<BranchCache<B>>),
}

/// Slot indices of the [`CacheNeeds`] shorthand: Δ_front, Δ_rear, branches, First-Block-Cache's
/// Δ of blocks [1, L).
#[derive(Clone, Copy, Debug, Default)]
struct Legacy {
    front: Option<usize>,
    rear: Option<usize>,
    branches: Option<usize>,
    rest: Option<usize>,
    /// index of the policy's quantity 0
    generic: usize,
}

/// A plan in slot terms: the slots to store (full step), or the slot to apply.
#[derive(Clone, Copy, Debug)]
enum Lowered {
    Full { store: u64 },
    Reuse { slot: usize },
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

/// Checks what a policy declares against the model depth; returns the quantities of the
/// shorthand and the policy's, in slot order.
fn check_needs(
    policy: &dyn CachePolicy,
    needs: &CacheNeeds,
    quantities: &[Quantity],
    probe: Probe,
    layers: usize,
) -> Result<(Vec<Quantity>, Legacy)> {
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
    let probe_blocks = probe.blocks();
    if let Probe::FrontResidualDiff(n) = probe {
        if n == 0 || n >= layers {
            return Err(bad(format!(
                "probe FrontResidualDiff({n}): the probe's blocks must be 1..{layers} (fewer than the model's {layers})"
            )));
        }
    }
    // The shorthand, lowered.
    let mut all = Vec::new();
    let mut legacy = Legacy::default();
    let mut push = |q: Quantity| {
        all.push(q);
        Some(all.len() - 1)
    };
    if let Some(n) = needs.front {
        legacy.front = push(Quantity::blocks(0, n));
    }
    if let Some(n) = needs.rear {
        legacy.rear = push(Quantity::blocks(layers - n, layers));
    }
    if needs.branches {
        legacy.branches = push(Quantity::branches());
    }
    if needs.first_block {
        legacy.rest = push(Quantity::blocks(1, layers));
    }
    legacy.generic = all.len();
    if quantities.len() > 32 {
        return Err(bad(format!(
            "declares {} quantities; at most 32 (the bits of StepPlan::Compute)",
            quantities.len()
        )));
    }
    for (i, q) in quantities.iter().enumerate() {
        let what = format!("quantity {i} ({q:?})");
        match q.site {
            Site::Blocks { from, to } => {
                if from >= to || to > layers {
                    return Err(bad(format!(
                        "{what}: blocks {from}..{to} must be a non-empty range within 0..{layers}"
                    )));
                }
                if from < probe_blocks {
                    return Err(bad(format!(
                        "{what}: blocks {from}..{to} start before the end of the probe's blocks ({probe_blocks}), which run before the plan"
                    )));
                }
            }
            Site::Branches => {
                if probe_blocks > 0 {
                    return Err(bad(format!("{what}: branch outputs cannot follow a probe that runs blocks")));
                }
            }
        }
        if let Some(t) = q.verify {
            match q.site {
                Site::Blocks { from, to } if to >= from + 2 && t > 0.0 && t.is_finite() => {}
                _ => {
                    return Err(bad(format!(
                        "{what}: verification needs a block range of at least 2 blocks and a finite threshold > 0"
                    )))
                }
            }
        }
        match q.calibrator {
            Calibrator::None | Calibrator::Taylor(1) | Calibrator::Taylor(2) => {}
            Calibrator::Taylor(o) => return Err(bad(format!("{what}: TaylorSeer order {o}; orders 1 and 2"))),
        }
        all.push(*q);
    }
    // Each boundary takes at most one fused Δ write (a verified range also writes the Δ of all
    // but its last block), and one branch cache per run.
    let mut ends: Vec<usize> = Vec::new();
    for q in &all {
        if let (Site::Blocks { to, .. }, Some(_)) = (q.site, q.verify) {
            ends.push(to - 1);
        }
    }
    for q in &all {
        if let Site::Blocks { to, .. } = q.site {
            if ends.contains(&to) {
                return Err(bad(format!(
                    "a verified quantity's check writes a Δ ending at block boundary {to}, where {q:?} ends; at most one may"
                )));
            }
        }
    }
    ends.sort_unstable();
    if ends.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("two verified quantities end at the same block boundary".into()));
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            match (a.site, b.site) {
                (Site::Blocks { to: t1, .. }, Site::Blocks { to: t2, .. }) if t1 == t2 => {
                    return Err(bad(format!(
                        "two cached Δ's end at block boundary {t1} ({b:?} and {a:?}); at most one may"
                    )))
                }
                (Site::Branches, Site::Branches) => return Err(bad("two branch caches; at most one".into())),
                _ => {}
            }
        }
    }
    Ok((all, legacy))
}

impl<B: Backend> CacheEngine<B> {
    /// Allocates the buffers `policy` declares for a model with workspace `ws`.
    pub fn new(be: &B, model: &Transformer<B>, ws: &Workspace<B>, mut policy: Box<dyn CachePolicy>) -> Result<Self> {
        policy.reset();
        let layers = model.num_blocks();
        let needs = policy.needs();
        let probe_kind = policy.probe();
        let (quantities, legacy) = check_needs(&*policy, &needs, &policy.quantities(layers), probe_kind, layers)?;
        // Buffers shaped like the image stream (probes), or one per stream (Δ caches).
        let image = &ws.streams[0];
        let buf = || be.alloc(image.shape(), image.dtype());
        let bufs = || model.stream_buffers(be, ws);
        let slots = quantities
            .into_iter()
            .map(|q| {
                let bufs = match q.site {
                    Site::Blocks { .. } => SlotBufs::Delta(bufs()?),
                    Site::Branches => SlotBufs::Branches(model.branch_caches(be, ws)?),
                };
                let ladder = match (q.calibrator, &bufs) {
                    (Calibrator::Taylor(order), SlotBufs::Delta(d)) => {
                        Some(Ladder::new(be, &d.iter().collect::<Vec<_>>(), order)?)
                    }
                    (Calibrator::Taylor(order), SlotBufs::Branches(c)) => {
                        let like: Vec<&Tensor<B>> = c.iter().flat_map(|b| &b.slots).collect();
                        Some(Ladder::new(be, &like, order)?)
                    }
                    _ => None,
                };
                let head = match (q.verify, q.site) {
                    (Some(threshold), Site::Blocks { .. }) => {
                        let hb = model.stream_buffers(be, ws)?;
                        let ladder = match q.calibrator {
                            Calibrator::Taylor(order) => Some(Ladder::new(be, &hb.iter().collect::<Vec<_>>(), order)?),
                            _ => None,
                        };
                        Some(Head { threshold, bufs: hb, ladder, save: model.stream_buffers(be, ws)?, fc: buf()? })
                    }
                    _ => None,
                };
                Ok(Slot { q, bufs, stored: false, ladder, head })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CacheEngine {
            layers,
            needs,
            probe_kind,
            slots,
            legacy,
            probe: if probe_kind == Probe::Block0InputChange { Some((buf()?, buf()?)) } else { None },
            front_probe: if probe_kind.blocks() > 0 { Some((bufs()?, buf()?)) } else { None },
            front_probe_stored: false,
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
        for s in &mut self.slots {
            s.stored = false;
            if let Some(l) = s.ladder.as_mut() {
                // Levels past `valid` carry zero coefficients: no need to clear them.
                l.valid = 0;
                l.last_full = None;
            }
        }
        self.front_probe_stored = false;
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
        let (probe_bufs, front) = (&mut self.probe, &mut self.front_probe);
        be.graph_run(&key, &mut || {
            model.embed(be, ctx, ws)?;
            match (probe_kind, probe_bufs.as_mut(), front.as_mut()) {
                (Probe::Block0InputChange, Some((cur, _)), _) => model.probe_block0_input(be, ws, cur),
                (_, _, Some((res, _))) => {
                    // The front blocks always run; their residual h_n − h_0 is the probe.
                    let n = probe_kind.blocks();
                    let mut taps = [DeltaTap { from: 0, to: n, bufs: res }];
                    model.run_blocks(be, ctx, ws, 0..n, &mut taps, Branches::Compute)
                }
                _ => Ok(()),
            }
        })?;

        let probe = self.read_probe(be)?;
        let plan = self.policy.plan(&StepInfo { step, steps, layers: self.layers, probe });
        let lowered = self.check_plan(step, &plan)?;
        // skip_layers (uncached runs only) leaves blocks out of a full step
        let skipped = ctx.skip.iter().filter(|&&s| s).count();
        let blocks_run = plan.blocks_run(self.layers).saturating_sub(skipped);
        // Calibrated quantities: this step's coefficients, written before the captured unit.
        let new_valid = self.prepare_ladders(be, step, lowered)?;
        if let Lowered::Reuse { slot } = lowered {
            if self.slots[slot].head.is_some() {
                return self.verified_step(be, model, ctx, ws, step, slot, plan, probe, tail);
            }
        }
        be.graph_run(&plan.variant(), &mut || {
            self.run_plan(be, model, ctx, ws, lowered)?;
            model.finish(be, ws)?;
            tail(be, ws)
        })?;
        self.note_full(step, lowered, new_valid);
        Ok(StepReport { plan, blocks_run, probe })
    }

    /// Calibrated quantities: this step's coefficients, written before the captured unit;
    /// returns the ladder levels (main, head) a full step leaves defined.
    fn prepare_ladders(&mut self, be: &B, step: usize, lowered: Lowered) -> Result<Vec<[Option<usize>; 2]>> {
        let mut new_valid = vec![[None; 2]; self.slots.len()];
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let head = slot.head.as_mut().and_then(|h| h.ladder.as_mut());
            for (k, ladder) in [slot.ladder.as_mut(), head].into_iter().enumerate() {
                let Some(ladder) = ladder else { continue };
                match lowered {
                    Lowered::Full { store } if store & (1 << i) != 0 => {
                        new_valid[i][k] = Some(ladder.prepare_update(be, step)?)
                    }
                    Lowered::Reuse { slot } if slot == i => ladder.prepare_apply(be, step)?,
                    _ => {}
                }
            }
        }
        Ok(new_valid)
    }

    /// Bookkeeping after a full step: what it stored, the ladders' new levels.
    fn note_full(&mut self, step: usize, lowered: Lowered, new_valid: Vec<[Option<usize>; 2]>) {
        if let Lowered::Full { store } = lowered {
            for (i, s) in self.slots.iter_mut().enumerate() {
                s.stored |= store & (1 << i) != 0;
            }
            self.front_probe_stored |= self.front_probe.is_some();
        }
        for (slot, valid) in self.slots.iter_mut().zip(new_valid) {
            let head = slot.head.as_mut().and_then(|h| h.ladder.as_mut());
            for (ladder, valid) in [slot.ladder.as_mut(), head].into_iter().zip(valid) {
                if let (Some(ladder), Some(valid)) = (ladder, valid) {
                    ladder.valid = valid;
                    ladder.last_full = Some(step);
                }
            }
        }
    }

    /// A cached step of a verified quantity (see [`Quantity::verify`]): the check's block in a
    /// first captured unit, the host reads the error, then the rest of the step or a full step
    /// from the range's start in a second one.
    #[allow(clippy::too_many_arguments)]
    fn verified_step(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        step: usize,
        i: usize,
        plan: StepPlan,
        probe: Option<f32>,
        tail: &mut (dyn FnMut(&B, &mut Workspace<B>) -> Result<()> + Send),
    ) -> Result<StepReport> {
        let (l, start) = (self.layers, self.probe_kind.blocks());
        let Site::Blocks { from, to } = self.slots[i].q.site else {
            return Err(plan_err(&*self.policy, step, &plan, "a verified quantity must be a block range"));
        };
        let variant = plan.variant();
        {
            let slot = &mut self.slots[i];
            let SlotBufs::Delta(full) = &slot.bufs else {
                return Err(plan_err(&*self.policy, step, &plan, "a verified quantity must hold a Δ"));
            };
            let (ladder, head) = (&slot.ladder, slot.head.as_mut().expect("verified slot"));
            be.graph_run(&format!("{variant}/verify"), &mut || {
                if start < from {
                    model.run_blocks(be, ctx, ws, start..from, &mut [], Branches::Compute)?;
                }
                for s in 0..model.live_streams(from) {
                    be.copy(&ws.streams[s], &mut head.save[s])?;
                }
                // ĥ_to of the image stream: s_from + Δ̂(from..to)
                be.copy(&ws.streams[0], &mut head.fc)?;
                match ladder {
                    Some(ld) => ld.apply(be, std::slice::from_mut(&mut head.fc), full, 1)?,
                    None => be.residual(&mut head.fc, &full[0], None, crate::backend::CacheWrite::None)?,
                }
                // ĥ_{to−1} = s_from + Δ̂(from..to−1), then the range's last block for real
                match &head.ladder {
                    Some(ld) => ld.apply(be, &mut ws.streams, &head.bufs, model.live_streams(to - 1))?,
                    None => model.apply_delta(be, ws, to - 1, &head.bufs)?,
                }
                model.run_blocks(be, ctx, ws, to - 1..to, &mut [], Branches::Compute)
            })?;
        }
        let head = self.slots[i].head.as_ref().expect("verified slot");
        let (d, n) = be.rel_l1(&ws.streams[0], &head.fc)?;
        let err = d / n.max(f32::MIN_POSITIVE);
        if err <= head.threshold {
            be.graph_run(&format!("{variant}/accept"), &mut || {
                if to < l {
                    model.run_blocks(be, ctx, ws, to..l, &mut [], Branches::Compute)?;
                }
                model.finish(be, ws)?;
                tail(be, ws)
            })?;
            return Ok(StepReport { plan, blocks_run: plan.blocks_run(l) + 1, probe });
        }
        // Fallback: a full step from `from`, storing this quantity.
        self.policy.fallback(step);
        let lowered = Lowered::Full { store: 1 << i };
        let new_valid = self.prepare_ladders(be, step, lowered)?;
        be.graph_run(&format!("{variant}/fallback"), &mut || {
            let head = self.slots[i].head.as_ref().expect("verified slot");
            for s in 0..model.live_streams(from) {
                be.copy(&head.save[s], &mut ws.streams[s])?;
            }
            self.run_full(be, model, ctx, ws, 1 << i, from)?;
            model.finish(be, ws)?;
            tail(be, ws)
        })?;
        self.note_full(step, lowered, new_valid);
        let generic = i.checked_sub(self.legacy.generic).map_or(0, |q| 1u32 << q);
        Ok(StepReport { plan: StepPlan::Compute { store: generic }, blocks_run: l + 1, probe })
    }

    /// A plan may only store what the policy declared and read what has been stored this run,
    /// over exactly the ranges it declared. Returns the plan in slot terms.
    fn check_plan(&self, step: usize, plan: &StepPlan) -> Result<Lowered> {
        let err = |msg: String| Err(plan_err(&*self.policy, step, plan, msg));
        let (n, lg) = (&self.needs, &self.legacy);
        let stored = |slot: Option<usize>| slot.is_some_and(|i| self.slots[i].stored);
        match *plan {
            StepPlan::Full { store_front, store_rear, store_branches, store_rest } => {
                let mut store = 0u64;
                for (asked, slot, what) in [
                    (store_front, lg.front, "Δ_front"),
                    (store_rear, lg.rear, "Δ_rear"),
                    (store_branches, lg.branches, "branch outputs"),
                    (store_rest, lg.rest, "First-Block-Cache's Δ"),
                ] {
                    match (asked, slot) {
                        (true, None) => {
                            return err(format!("stores {what}, which the policy's needs() did not declare"))
                        }
                        (true, Some(i)) => store |= 1 << i,
                        _ => {}
                    }
                }
                Ok(Lowered::Full { store })
            }
            StepPlan::CachedRear(k) | StepPlan::CachedFront(k) => {
                let (declared, slot, what) = match plan {
                    StepPlan::CachedRear(_) => (n.rear, lg.rear, "rear"),
                    _ => (n.front, lg.front, "front"),
                };
                match (declared, slot) {
                    (None, _) | (_, None) => err(format!("reads Δ_{what}, which needs() did not declare")),
                    (Some(d), _) if d != k => {
                        err(format!("skips {k} {what} blocks, but needs() declared the Δ_{what} of {d} blocks"))
                    }
                    (Some(_), Some(i)) if !self.slots[i].stored => {
                        err(format!("reads Δ_{what} before any full step of this run stored it"))
                    }
                    (Some(_), Some(i)) => Ok(Lowered::Reuse { slot: i }),
                }
            }
            StepPlan::ReuseBranches => match lg.branches {
                None => err("reuses branch outputs, which needs() did not declare".into()),
                Some(_) if !stored(lg.branches) => err("reuses branch outputs before any step stored them".into()),
                Some(i) => Ok(Lowered::Reuse { slot: i }),
            },
            StepPlan::CachedAfterFirst => match lg.rest {
                None => err("applies First-Block-Cache's Δ, which needs() did not declare".into()),
                Some(_) if !stored(lg.rest) => {
                    err("applies First-Block-Cache's Δ before any full step of this run stored it".into())
                }
                Some(i) => Ok(Lowered::Reuse { slot: i }),
            },
            StepPlan::Compute { store } => {
                let declared = self.slots.len() - lg.generic;
                if declared < 32 && store >> declared != 0 {
                    return err(format!(
                        "stores quantities {store:#b}; quantities() declared {declared} (bits 0..{declared})"
                    ));
                }
                Ok(Lowered::Full { store: u64::from(store) << lg.generic })
            }
            StepPlan::Reuse { quantity, from, to } => {
                let Some(slot) = self.slots.get(lg.generic + quantity).filter(|_| quantity < 32) else {
                    return err(format!(
                        "reuses quantity {quantity}; quantities() declared {}",
                        self.slots.len() - lg.generic
                    ));
                };
                let declared = slot.q.range(self.layers);
                if declared != (from, to) {
                    return err(format!(
                        "skips blocks {from}..{to}, but quantity {quantity} covers {}..{}",
                        declared.0, declared.1
                    ));
                }
                if !slot.stored {
                    return err(format!("reuses quantity {quantity} before any full step of this run stored it"));
                }
                Ok(Lowered::Reuse { slot: lg.generic + quantity })
            }
        }
    }

    fn read_probe(&mut self, be: &B) -> Result<Option<f32>> {
        let ratio = |(d, n): (f32, f32)| d / n.max(f32::MIN_POSITIVE);
        match (self.probe_kind, self.probe.as_mut(), self.front_probe.as_ref()) {
            (Probe::Block0InputChange, Some((cur, prev)), _) => {
                let v = if self.probe_has_prev { Some(ratio(be.rel_l1(cur, prev)?)) } else { None };
                be.copy(cur, prev)?;
                self.probe_has_prev = true;
                Ok(v)
            }
            (_, _, Some((cur, prev))) if self.front_probe_stored => Ok(Some(ratio(be.rel_l1(&cur[0], prev)?))),
            _ => Ok(None),
        }
    }

    /// A full step from block `start`, storing the slots of `store` (and the Δ's a verified one
    /// checks with), the ladders' updates, the probe's reference.
    fn run_full(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        store: u64,
        start: usize,
    ) -> Result<()> {
        let l = self.layers;
        let mut taps = Vec::new();
        let mut branches = Branches::Compute;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if store & (1 << i) == 0 {
                continue;
            }
            match (&mut slot.bufs, slot.q.site) {
                (SlotBufs::Delta(bufs), Site::Blocks { from, to }) => {
                    taps.push(DeltaTap { from, to, bufs });
                    if let Some(h) = slot.head.as_mut() {
                        taps.push(DeltaTap { from, to: to - 1, bufs: &mut h.bufs });
                    }
                }
                (SlotBufs::Branches(c), _) => branches = Branches::Store(c),
                _ => {}
            }
        }
        model.run_blocks(be, ctx, ws, start..l, &mut taps, branches)?;
        drop(taps);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if store & (1 << i) == 0 {
                continue;
            }
            if let (Some(Head { ladder: Some(ladder), bufs, .. }), Site::Blocks { to, .. }) =
                (slot.head.as_mut(), slot.q.site)
            {
                ladder.update(be, &bufs.iter().collect::<Vec<_>>(), model.live_streams(to - 1))?;
            }
            let Some(ladder) = slot.ladder.as_mut() else { continue };
            match (&slot.bufs, slot.q.site) {
                (SlotBufs::Delta(d0), Site::Blocks { to, .. }) => {
                    ladder.update(be, &d0.iter().collect::<Vec<_>>(), model.live_streams(to))?
                }
                (SlotBufs::Branches(c), _) => {
                    let d0: Vec<&Tensor<B>> = c.iter().flat_map(|b| &b.slots).collect();
                    ladder.update(be, &d0, d0.len())?
                }
                _ => {}
            }
        }
        if let Some((res, prev)) = self.front_probe.as_mut() {
            be.copy(&res[0], prev)?;
        }
        Ok(())
    }

    /// Runs a plan that [`Self::check_plan`] accepted: the buffers it uses exist.
    fn run_plan(
        &mut self,
        be: &B,
        model: &Transformer<B>,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        plan: Lowered,
    ) -> Result<()> {
        let l = self.layers;
        // The probe's blocks ran in phase A.
        let start = self.probe_kind.blocks();
        match plan {
            Lowered::Full { store } => self.run_full(be, model, ctx, ws, store, start),
            Lowered::Reuse { slot } => {
                let policy = self.policy.name().to_string();
                let slot = &mut self.slots[slot];
                match (&slot.bufs, slot.q.site) {
                    (SlotBufs::Delta(bufs), Site::Blocks { from, to }) => {
                        if start < from {
                            model.run_blocks(be, ctx, ws, start..from, &mut [], Branches::Compute)?;
                        }
                        match &slot.ladder {
                            Some(ladder) => ladder.apply(be, &mut ws.streams, bufs, model.live_streams(to))?,
                            None => model.apply_delta(be, ws, to, bufs)?,
                        }
                        if to < l {
                            model.run_blocks(be, ctx, ws, to..l, &mut [], Branches::Compute)?;
                        }
                        Ok(())
                    }
                    (SlotBufs::Branches(c), _) => {
                        // a calibrated reuse forecasts inside each gated residual (one pass)
                        let forecast = slot.ladder.as_ref().map(|l| (&l.lv[..], &l.coef));
                        model.run_blocks(be, ctx, ws, start..l, &mut [], Branches::Reuse(c, forecast))
                    }
                    _ => Err(Error::CachePlan {
                        policy,
                        step: 0,
                        plan: "reuse".into(),
                        msg: "a quantity's buffers do not match its site".into(),
                    }),
                }
            }
        }
    }
}
