//! The sampling loop: timesteps, the classifier-free-guidance batch in each pipeline's order
//! (PixArt [uncond, cond], DiT [cond, null]), the cache policy per step, the learned-sigma split
//! and the fused scheduler update. Latents, Δ buffers and activations stay on the backend; the
//! host reads back only the final latents (and the policies' two-float probes).
//!
//! [`Denoiser`] is the step-by-step piece for callers with a sampling loop of their own.

mod denoiser;
mod inputs;

pub use denoiser::Denoiser;
pub use inputs::{ForwardInputs, SampleInputs};

use crate::backend::Cfg;
use crate::cache::{CachePolicy, StepPlan};
use crate::error::check_finite;
use crate::model::{Family, Transformer};
use crate::sampler::{Scheduler, SchedulerConfig, SchedulerName};
use crate::{Backend, DType, Error, Result};
use std::time::{Duration, Instant};

/// How to sample ([`SampleConfig::new`], then set the other fields).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SampleConfig {
    /// the solver
    pub scheduler: SchedulerName,
    /// solver steps
    pub steps: usize,
    /// classifier-free guidance scale; guidance applies when > 1 (as in diffusers)
    pub guidance: f32,
    /// FLUX's true CFG (`FluxPipeline`'s `true_cfg_scale`): > 1 runs the negative prompt
    /// (`uncond_embeds`, `uncond_pooled`) as a second call each step, each call with its own
    /// cache state, and combines neg + scale·(pos − neg) ([`sample_true_cfg`]); 1 (default): off
    pub true_cfg_scale: f32,
    /// keep every step's latents (tests, debugging)
    pub keep_per_step: bool,
    /// the scheduler's parameters (a diffusers `scheduler_config.json`; defaults otherwise)
    pub scheduler_config: SchedulerConfig,
}

impl SampleConfig {
    /// `steps` steps of `scheduler` with guidance `guidance`.
    pub fn new(scheduler: SchedulerName, steps: usize, guidance: f32) -> Self {
        SampleConfig {
            scheduler,
            steps,
            guidance,
            true_cfg_scale: 1.0,
            keep_per_step: false,
            scheduler_config: SchedulerConfig::default(),
        }
    }

    /// The guidance scale the diffusers pipelines default to: PixArt 4.5, DiT 4.0, SD3 7.0,
    /// FLUX 3.5 (dev's embedded guidance; schnell ignores it), none (0) for LCM, which is
    /// distilled without guidance.
    pub fn default_guidance(family: Family, scheduler: SchedulerName) -> f32 {
        match (family, scheduler) {
            (_, SchedulerName::Lcm) => 0.0,
            (Family::DiT, _) => 4.0,
            (Family::Sd3, _) => 7.0,
            (Family::Flux, _) => 3.5,
            _ => 4.5,
        }
    }

    /// The solver a family's pipeline uses by default: flow-match Euler for flow-matching
    /// models, DPM-Solver++ (PixArt) or DDIM (DiT) otherwise.
    pub fn default_scheduler(family: Family) -> SchedulerName {
        match family {
            Family::DiT => SchedulerName::Ddim,
            f if f.flow_matching() => SchedulerName::FlowMatchEuler,
            _ => SchedulerName::DpmSolverPP,
        }
    }

    /// Rejects settings that make no sense (a NaN or infinite guidance scale).
    pub fn validate(&self) -> Result<()> {
        if !self.guidance.is_finite() {
            return Err(Error::param("guidance", self.guidance, "a finite number (guidance applies when > 1)"));
        }
        if !self.true_cfg_scale.is_finite() {
            return Err(Error::param(
                "true_cfg_scale",
                self.true_cfg_scale,
                "a finite number (true CFG applies when > 1)",
            ));
        }
        Ok(())
    }
}

/// What a sampling run produced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SampleOutput {
    /// the final latents
    pub latents: Vec<f32>,
    /// their shape `[n, C, H, W]` (FLUX: packed `[n, N, C]`)
    pub shape: Vec<usize>,
    /// the scheduler's timesteps (the model's `timestep` input at each step)
    pub timesteps: Vec<f32>,
    /// flow matching: the scheduler's σ of every step and a final 0
    pub sigmas: Option<Vec<f32>>,
    /// block evaluations per step
    pub blocks_run: Vec<usize>,
    /// the cache plan of each step
    pub plans: Vec<StepPlan>,
    /// the policy's probe at each step, where it has one
    pub probes: Vec<Option<f32>>,
    /// wall time of each step (the backend synchronised at the end of each)
    pub step_times: Vec<Duration>,
    /// every step's latents, with [`SampleConfig::keep_per_step`]
    pub latents_per_step: Vec<Vec<f32>>,
}

impl SampleOutput {
    /// The shape as `[n, C, H, W]`: an error for packed (FLUX) latents, which have no image grid
    /// to decode or judge without unpacking.
    pub fn spatial_shape(&self) -> Result<[usize; 4]> {
        <[usize; 4]>::try_from(self.shape.as_slice())
            .map_err(|_| Error::input("latents", format!("shape {:?} is packed, not [n, C, H, W]", self.shape)))
    }
}

/// The guidance of a config for a model family (DiT orders the batch [cond, null], PixArt
/// [uncond, cond]; FLUX embeds the scale in the model instead).
fn guidance(cfg: &SampleConfig, family: Family) -> Cfg {
    if cfg.guidance > 1.0 && !embedded_guidance(family) {
        Cfg::On { scale: cfg.guidance, cond_first: family.cond_first() }
    } else {
        Cfg::Off
    }
}

/// Whether the family's pipeline hands the guidance scale to the model (FluxPipeline) instead of
/// running a classifier-free guidance batch.
pub(crate) fn embedded_guidance(family: Family) -> bool {
    family == Family::Flux
}

/// Samples with `policy`, calling `on_step(i, steps)` after every step (progress bars). True CFG
/// (`cfg.true_cfg_scale` > 1) needs a cache state per branch: [`sample_true_cfg`].
pub fn sample<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    inp: &SampleInputs,
    cfg: &SampleConfig,
    policy: Box<dyn CachePolicy>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    if cfg.true_cfg_scale > 1.0 {
        return Err(Error::param(
            "true_cfg_scale",
            cfg.true_cfg_scale,
            "≤ 1 here: true CFG runs two calls a step, each with its own cache policy (pipeline::sample_true_cfg)",
        ));
    }
    sample_impl(be, model, inp, cfg, policy, None, on_step)
}

/// FluxPipeline's true CFG: each step runs the prompt (`cond_embeds`, `cond_pooled`) and the
/// negative prompt (`uncond_embeds`, `uncond_pooled`) as two calls, each with the embedded
/// guidance and its own cache state (`policies`: [cond, uncond], as diffusers'
/// `cache_context("cond")` / `cache_context("uncond")`), and steps the scheduler with
/// neg + `cfg.true_cfg_scale`·(pos − neg). `blocks_run` counts both calls; `plans` and `probes`
/// are the cond call's.
pub fn sample_true_cfg<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    inp: &SampleInputs,
    cfg: &SampleConfig,
    policies: [Box<dyn CachePolicy>; 2],
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    if !embedded_guidance(model.config.family) {
        return Err(Error::param(
            "true_cfg_scale",
            cfg.true_cfg_scale,
            format!("FLUX only (a {} pipeline guides with --guidance)", model.config.family.name()),
        ));
    }
    if cfg.true_cfg_scale <= 1.0 {
        return Err(Error::param("true_cfg_scale", cfg.true_cfg_scale, "> 1 (true CFG applies when > 1)"));
    }
    let [cond, uncond] = policies;
    sample_impl(be, model, inp, cfg, cond, Some(uncond), on_step)
}

/// The sampling loop; `negative`: true CFG's second call a step with this policy.
fn sample_impl<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    inp: &SampleInputs,
    cfg: &SampleConfig,
    policy: Box<dyn CachePolicy>,
    negative: Option<Box<dyn CachePolicy>>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    cfg.validate()?;
    let mc = &model.config;
    let (n, h, w) = inp.size()?;
    let c = inp.channels();
    if c != mc.in_channels {
        return Err(Error::input(
            "latents",
            format!("expected {} channels, found shape {:?}", mc.in_channels, inp.shape),
        ));
    }
    let sample_numel = inp.numel().filter(|&v| v == inp.latents.len() && n > 0).ok_or_else(|| {
        Error::input("latents", format!("{} values for shape {:?} (n ≥ 1)", inp.latents.len(), inp.shape))
    })?;
    check_finite("latents", &inp.latents)?;
    if (cfg.scheduler == SchedulerName::FlowMatchEuler) != mc.family.flow_matching() {
        let want = if mc.family.flow_matching() { "flow-match-euler" } else { "dpm-solver++, ddim or lcm" };
        return Err(Error::param(
            "scheduler",
            cfg.scheduler.name(),
            format!("{want} for a {} (its training objective)", mc.family.name()),
        ));
    }
    let tokens = (h / mc.patch_size.max(1)) * (w / mc.patch_size.max(1));
    // FluxPipeline hands set_timesteps σ = linspace(1, 1/n, n) itself.
    let scheduler = if embedded_guidance(mc.family) {
        Scheduler::flow_match_linear(cfg.steps, &cfg.scheduler_config.flow_match, tokens)?
    } else {
        Scheduler::with_config(cfg.scheduler, cfg.steps, &cfg.scheduler_config, tokens)?
    };
    let timesteps = scheduler.timesteps();
    let guided = cfg.guidance > 1.0 && !embedded_guidance(mc.family);
    let mut cond = inp.conditioning(mc.family, mc.num_embeds_ada_norm, guided)?;
    if embedded_guidance(mc.family) && mc.guidance_embeds {
        cond.guidance = Some(vec![cfg.guidance; cond.batch]);
    }
    match &inp.noise {
        Some(noise) => {
            if cfg.steps.saturating_sub(1).checked_mul(sample_numel) != Some(noise.len()) {
                return Err(Error::input(
                    "noise",
                    format!("expected [{}, {n}, {c}, {h}, {w}]", cfg.steps.saturating_sub(1)),
                ));
            }
            check_finite("noise", noise)?;
        }
        None if scheduler.needs_noise(0) => {
            return Err(Error::input(
                "noise",
                "LCM needs the injected noise [steps − 1, n, C, H, W] (runs are reproducible only with it)",
            ));
        }
        None => {}
    }

    let mut denoiser = Denoiser::new(be, model, &cond, policy)?;
    // True CFG: the negative prompt's denoiser (its own cache state) and the two outputs side by
    // side, [uncond, cond], for the guidance combine.
    let mut negative = match negative {
        Some(p) => {
            let mut neg = inp.clone();
            neg.cond = Some(inp.uncond.clone().ok_or_else(|| {
                Error::input("uncond_embeds", "missing (true CFG needs the negative prompt's embeddings)")
            })?);
            neg.pooled = Some(inp.uncond_pooled.clone().ok_or_else(|| {
                Error::input("uncond_pooled", "missing (true CFG needs the negative prompt's pooled embeddings)")
            })?);
            let mut nc = neg.conditioning(mc.family, mc.num_embeds_ada_norm, false)?;
            nc.guidance = cond.guidance.clone();
            let d = Denoiser::new(be, model, &nc, p)?;
            Some((d, be.alloc(&[2 * n, 1, sample_numel / n, 1], DType::F32)?))
        }
        None => None,
    };
    let mut latents = be.upload(&inp.latents, &inp.shape, DType::F32)?;
    // (true CFG: eps as cfg_combine's [n, 1, elements, 1] view of the latents)
    let eps_shape = if negative.is_some() { vec![n, 1, sample_numel / n, 1] } else { inp.shape.clone() };
    let mut eps = be.alloc(&eps_shape, DType::F32)?;
    let mut x0_prev = if scheduler.needs_x0_prev() { Some(be.alloc(&inp.shape, DType::F32)?) } else { None };
    let mut noise_buf = if inp.noise.is_some() { Some(be.alloc(&inp.shape, DType::F32)?) } else { None };
    let guidance = guidance(cfg, mc.family);
    let packed = mc.family.packed_latents();
    let batch = denoiser.batch();

    let mut out = SampleOutput {
        latents: Vec::new(),
        shape: inp.shape.clone(),
        timesteps: timesteps.clone(),
        sigmas: scheduler.sigmas().map(<[f32]>::to_vec),
        blocks_run: Vec::new(),
        plans: Vec::new(),
        probes: Vec::new(),
        step_times: Vec::new(),
        latents_per_step: Vec::new(),
    };
    for (i, &t) in timesteps.iter().enumerate() {
        let start = Instant::now();
        // Model input: the latents, twice under CFG (both halves see the same sample).
        for copy in 0..batch / n {
            be.copy_range(&latents, 0, denoiser.input_mut(), copy * sample_numel, sample_numel)?;
        }
        // The model's timestep input: FluxPipeline passes timestep / 1000 (the model multiplies
        // by 1000 again); the others pass the scheduler's timestep.
        let t_in = if embedded_guidance(mc.family) { t / 1000.0 } else { t };
        be.write(denoiser.timesteps_mut(), &model.model_timesteps(&vec![t_in; batch]))?;
        // Packed latents (FLUX) have no CFG batch and no learned-sigma channels: v is the output.
        let report = match negative.as_mut() {
            None => denoiser.forward_written_then(be, i, cfg.steps, &mut |be, out| {
                if packed {
                    be.copy(out, &mut eps)
                } else {
                    be.cfg_combine(out, guidance, &mut eps)
                }
            })?,
            Some((neg, pair)) => {
                // FluxPipeline's true CFG: the cond call, then the uncond call on the same latents
                // and timestep; noise_pred = neg + scale·(pos − neg)
                let r = denoiser.forward_written_then(be, i, cfg.steps, &mut |be, out| {
                    be.copy_range(out, 0, pair, sample_numel, sample_numel)
                })?;
                be.copy_range(&latents, 0, neg.input_mut(), 0, sample_numel)?;
                be.write(neg.timesteps_mut(), &model.model_timesteps(&vec![t_in; batch]))?;
                let combine = Cfg::On { scale: cfg.true_cfg_scale, cond_first: false };
                let rn = neg.forward_written_then(be, i, cfg.steps, &mut |be, out| {
                    be.copy_range(out, 0, pair, 0, sample_numel)?;
                    be.cfg_combine(pair, combine, &mut eps)
                })?;
                crate::cache::StepReport { blocks_run: r.blocks_run + rn.blocks_run, ..r }
            }
        };
        let noise = match (&inp.noise, noise_buf.as_mut()) {
            (Some(noise), Some(buf)) if scheduler.needs_noise(i) => {
                be.write(buf, &noise[i * sample_numel..(i + 1) * sample_numel])?;
                Some(&*buf)
            }
            _ => None,
        };
        be.scheduler_step(&scheduler.update(i), &mut latents, &eps, x0_prev.as_mut(), noise)?;
        be.synchronize()?;
        out.step_times.push(start.elapsed());
        out.blocks_run.push(report.blocks_run);
        out.plans.push(report.plan);
        out.probes.push(report.probe);
        if cfg.keep_per_step {
            out.latents_per_step.push(be.download(&latents)?);
        }
        on_step(i + 1, cfg.steps);
    }
    out.latents = be.download(&latents)?;
    Ok(out)
}

/// One transformer forward, as the diffusers forward call computes it; returns `sample`
/// `[B, C_out, H, W]` (FLUX: packed `[B, N, C_out]`) and its shape.
pub fn forward<B: Backend>(be: &B, model: &Transformer<B>, inp: &ForwardInputs) -> Result<(Vec<f32>, Vec<usize>)> {
    inp.validate()?;
    let mut d = Denoiser::uncached(be, model, &inp.cond)?;
    d.forward(be, &inp.hidden_states, &inp.timestep, 0, 1)?;
    Ok((be.download(d.output())?, d.output_shape()))
}
