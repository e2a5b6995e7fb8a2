//! The end-to-end latency run: the same sampling under several cache policies, side by side in one
//! process, with the deviation of each from the uncached result. Models are real checkpoint folders
//! or presets built in memory with seeded random weights (latency does not depend on the values).

mod calibrate;
mod kit;
mod plot;

pub use calibrate::{calibrate, format_frontier, CalibrateOptions, Calibration, Setting};
pub use kit::{quality, ModelKit, Quality};
pub use plot::frontier_png;

use crate::cache::CacheSpec;
use crate::model::macs::ForwardMacs;
use crate::model::{Family, ModelConfig, RandomWeights, TextInput, Transformer};
use crate::pipeline::{sample, SampleConfig, SampleInputs};
use crate::rng::Rng;
use crate::sampler::{SchedulerConfig, SchedulerName};
use crate::{Backend, Error, Result};
use serde::Serialize;
use std::time::Duration;

/// A model size to benchmark without a checkpoint.
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub config: ModelConfig,
    /// latent height/width (FLUX: the pipeline's latent before packing, (latent/2)² tokens)
    pub latent: usize,
    /// text tokens (PixArt, SD3, FLUX)
    pub text_len: usize,
    pub scheduler: SchedulerName,
    pub steps: usize,
    pub guidance: f32,
    /// flow matching: the scheduler's static shift (the pipeline's scheduler_config.json)
    pub shift: f64,
    /// flow matching: the dynamic (μ from the image tokens) shift instead of the static one
    /// (FLUX.1-dev's scheduler_config.json)
    pub dynamic_shift: bool,
    pub about: &'static str,
}

fn pixart(
    layers: usize,
    heads: usize,
    head_dim: usize,
    sample_size: usize,
    caption: usize,
    micro: bool,
) -> ModelConfig {
    ModelConfig {
        family: Family::PixArt,
        num_attention_heads: heads,
        attention_head_dim: head_dim,
        in_channels: 4,
        out_channels: 8,
        num_layers: layers,
        patch_size: 2,
        sample_size,
        cross_attention_dim: Some(heads * head_dim),
        caption_channels: Some(caption),
        norm_eps: 1e-6,
        interpolation_scale: (sample_size / 64).max(1) as f64,
        use_additional_conditions: micro,
        num_embeds_ada_norm: 1000,
        attention_bias: true,
        joint_attention_dim: None,
        pooled_projection_dim: None,
        pos_embed_max_size: None,
        qk_norm: false,
        dual_attention_layers: Vec::new(),
        num_single_layers: 0,
        axes_dims_rope: Vec::new(),
        guidance_embeds: false,
    }
}

fn dit(layers: usize, heads: usize, head_dim: usize, sample_size: usize) -> ModelConfig {
    ModelConfig {
        family: Family::DiT,
        num_attention_heads: heads,
        attention_head_dim: head_dim,
        in_channels: 4,
        out_channels: 8,
        num_layers: layers,
        patch_size: 2,
        sample_size,
        cross_attention_dim: None,
        caption_channels: None,
        norm_eps: 1e-5,
        interpolation_scale: 1.0,
        use_additional_conditions: false,
        num_embeds_ada_norm: 1000,
        attention_bias: true,
        joint_attention_dim: None,
        pooled_projection_dim: None,
        pos_embed_max_size: None,
        qk_norm: false,
        dual_attention_layers: Vec::new(),
        num_single_layers: 0,
        axes_dims_rope: Vec::new(),
        guidance_embeds: false,
    }
}

/// An `SD3Transformer2DModel` config: `layers` blocks of `heads` × 64, 16 latent channels, the
/// text and pooled widths, the position table's side, qk norm and the dual-attention blocks.
#[allow(clippy::too_many_arguments)]
fn sd3(
    layers: usize,
    heads: usize,
    joint: usize,
    pooled: usize,
    pos_max: usize,
    sample_size: usize,
    qk_norm: bool,
    dual: std::ops::Range<usize>,
) -> ModelConfig {
    ModelConfig {
        family: Family::Sd3,
        num_attention_heads: heads,
        attention_head_dim: 64,
        in_channels: 16,
        out_channels: 16,
        num_layers: layers,
        patch_size: 2,
        sample_size,
        cross_attention_dim: None,
        caption_channels: None,
        norm_eps: 1e-6,
        interpolation_scale: 1.0,
        use_additional_conditions: false,
        num_embeds_ada_norm: 0,
        attention_bias: true,
        joint_attention_dim: Some(joint),
        pooled_projection_dim: Some(pooled),
        pos_embed_max_size: Some(pos_max),
        qk_norm,
        dual_attention_layers: dual.collect(),
        num_single_layers: 0,
        axes_dims_rope: Vec::new(),
        guidance_embeds: false,
    }
}

/// A `FluxTransformer2DModel` config: `double` double-stream and `single` single-stream blocks of
/// `heads` × 128, RoPE axes (16, 56, 56), 64 packed channels (16 latent channels × 2×2), the
/// text (T5) and pooled (CLIP) widths, and dev's guidance embedding.
fn flux(double: usize, single: usize, heads: usize, joint: usize, pooled: usize, guidance: bool) -> ModelConfig {
    ModelConfig {
        family: Family::Flux,
        num_attention_heads: heads,
        attention_head_dim: 128,
        in_channels: 64,
        out_channels: 64,
        num_layers: double,
        patch_size: 1,
        sample_size: 128,
        cross_attention_dim: None,
        caption_channels: None,
        norm_eps: 1e-6,
        interpolation_scale: 1.0,
        use_additional_conditions: false,
        num_embeds_ada_norm: 0,
        attention_bias: true,
        joint_attention_dim: Some(joint),
        pooled_projection_dim: Some(pooled),
        pos_embed_max_size: None,
        qk_norm: true,
        dual_attention_layers: Vec::new(),
        num_single_layers: single,
        axes_dims_rope: vec![16, 56, 56],
        guidance_embeds: guidance,
    }
}

pub fn presets() -> Vec<Preset> {
    use SchedulerName::*;
    vec![
        Preset {
            name: "pixart-alpha-1024",
            config: pixart(28, 16, 72, 128, 4096, true),
            latent: 128,
            text_len: 120,
            scheduler: DpmSolverPP,
            steps: 20,
            guidance: 4.5,
            shift: 1.0,
            dynamic_shift: false,
            about: "PixArt-XL-2-1024-MS: 28 × 1152, 4096 tokens, 120 text tokens",
        },
        Preset {
            name: "pixart-alpha-512",
            config: pixart(28, 16, 72, 64, 4096, false),
            latent: 64,
            text_len: 120,
            scheduler: DpmSolverPP,
            steps: 20,
            guidance: 4.5,
            shift: 1.0,
            dynamic_shift: false,
            about: "PixArt-XL-2-512x512: 28 × 1152, 1024 tokens",
        },
        Preset {
            name: "pixart-sigma-1024",
            config: pixart(28, 16, 72, 128, 4096, false),
            latent: 128,
            text_len: 300,
            scheduler: DpmSolverPP,
            steps: 20,
            guidance: 4.5,
            shift: 1.0,
            dynamic_shift: false,
            about: "PixArt-Σ-XL-2-1024-MS: 28 × 1152, 4096 tokens, 300 text tokens",
        },
        Preset {
            name: "dit-xl-2-256",
            config: dit(28, 16, 72, 32),
            latent: 32,
            text_len: 0,
            scheduler: Ddim,
            steps: 50,
            guidance: 4.0,
            shift: 1.0,
            dynamic_shift: false,
            about: "DiT-XL/2 256: 28 × 1152, 256 tokens",
        },
        Preset {
            name: "dit-xl-2-512",
            config: dit(28, 16, 72, 64),
            latent: 64,
            text_len: 0,
            scheduler: Ddim,
            steps: 50,
            guidance: 4.0,
            shift: 1.0,
            dynamic_shift: false,
            about: "DiT-XL/2 512: 28 × 1152, 1024 tokens",
        },
        Preset {
            name: "pixart-cpu-small",
            config: pixart(28, 4, 72, 32, 256, false),
            latent: 16,
            text_len: 32,
            scheduler: DpmSolverPP,
            steps: 20,
            guidance: 4.5,
            shift: 1.0,
            dynamic_shift: false,
            about: "PixArt layout at CPU size: 28 × 288, 64 tokens, 32 text tokens",
        },
        Preset {
            name: "dit-cpu-small",
            config: dit(28, 4, 72, 32),
            latent: 16,
            text_len: 0,
            scheduler: Ddim,
            steps: 20,
            guidance: 4.0,
            shift: 1.0,
            dynamic_shift: false,
            about: "DiT layout at CPU size: 28 × 288, 64 tokens",
        },
        Preset {
            name: "sd3-medium-1024",
            config: sd3(24, 24, 4096, 2048, 192, 128, false, 0..0),
            latent: 128,
            text_len: 333,
            scheduler: FlowMatchEuler,
            steps: 28,
            guidance: 7.0,
            shift: 3.0,
            dynamic_shift: false,
            about: "SD3-medium: 24 × 1536, 4096 image + 333 text tokens, FlowMatch Euler shift 3",
        },
        Preset {
            name: "sd35-medium-1024",
            config: sd3(24, 24, 4096, 2048, 384, 128, true, 0..13),
            latent: 128,
            text_len: 333,
            scheduler: FlowMatchEuler,
            steps: 40,
            guidance: 4.5,
            shift: 3.0,
            dynamic_shift: false,
            about: "SD3.5-medium: 24 × 1536, RMS qk norm, dual attention in blocks 0-12, 4096 + 333 tokens",
        },
        Preset {
            name: "sd35-large-1024",
            config: sd3(38, 38, 4096, 2048, 192, 128, true, 0..0),
            latent: 128,
            text_len: 333,
            scheduler: FlowMatchEuler,
            steps: 28,
            guidance: 3.5,
            shift: 3.0,
            dynamic_shift: false,
            about: "SD3.5-large: 38 × 2432, RMS qk norm, 4096 + 333 tokens",
        },
        Preset {
            name: "sd35-cpu-small",
            config: sd3(24, 4, 256, 128, 32, 32, true, 0..13),
            latent: 16,
            text_len: 32,
            scheduler: FlowMatchEuler,
            steps: 20,
            guidance: 4.5,
            shift: 3.0,
            dynamic_shift: false,
            about: "SD3.5-medium layout at CPU size: 24 × 256, dual attention in blocks 0-12, 64 + 32 tokens",
        },
        Preset {
            name: "flux-dev-1024",
            config: flux(19, 38, 24, 4096, 768, true),
            latent: 128,
            text_len: 512,
            scheduler: FlowMatchEuler,
            steps: 28,
            guidance: 3.5,
            shift: 3.0,
            dynamic_shift: true,
            about: "FLUX.1-dev: 19 double + 38 single blocks × 3072 (24 × 128), 4096 image + 512 text tokens, 28 steps, embedded guidance 3.5",
        },
        Preset {
            name: "flux-schnell-1024",
            config: flux(19, 38, 24, 4096, 768, false),
            latent: 128,
            text_len: 256,
            scheduler: FlowMatchEuler,
            steps: 4,
            guidance: 0.0,
            shift: 1.0,
            dynamic_shift: false,
            about: "FLUX.1-schnell: 19 double + 38 single blocks × 3072, 4096 image + 256 text tokens, 4 steps, no guidance",
        },
        Preset {
            name: "flux-cpu-small",
            config: flux(4, 8, 2, 256, 128, true),
            latent: 16,
            text_len: 32,
            scheduler: FlowMatchEuler,
            steps: 20,
            guidance: 3.5,
            shift: 3.0,
            dynamic_shift: true,
            about: "FLUX.1-dev layout at CPU size: 4 double + 8 single blocks × 256 (2 × 128), 64 image + 32 text tokens",
        },
    ]
}

pub fn preset(name: &str) -> Result<Preset> {
    presets().into_iter().find(|p| p.name == name).ok_or_else(|| {
        Error::param(
            "preset",
            name,
            format!("one of {}", presets().iter().map(|p| p.name).collect::<Vec<_>>().join(", ")),
        )
    })
}

impl Preset {
    /// The scheduler config of the preset's pipeline.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        let mut c = SchedulerConfig::default();
        c.flow_match.shift = self.shift;
        c.flow_match.use_dynamic_shifting = self.dynamic_shift;
        c
    }

    pub fn build<B: Backend>(&self, be: &B, seed: u64) -> Result<Transformer<B>> {
        Transformer::from_source(be, self.config.clone(), &RandomWeights { seed })
    }
}

/// The latent size in the units of the model's input grid: FLUX's packed tokens are 2×2 patches
/// of the latent (FluxPipeline's `_pack_latents`), the others take the latent as it is.
pub fn model_grid(cfg: &ModelConfig, (latent_h, latent_w): (usize, usize)) -> (usize, usize) {
    if cfg.family.packed_latents() {
        (latent_h / 2, latent_w / 2)
    } else {
        (latent_h, latent_w)
    }
}

/// Seeded sampling inputs for a model: one prompt (PixArt: a 20-token prompt and an
/// EOS-only negative prompt, as diffusers' empty negative prompt), or class 207 (DiT); FLUX
/// packed `[1, (H/2)·(W/2), C]` latents.
pub fn random_inputs(
    cfg: &ModelConfig,
    latent_h: usize,
    latent_w: usize,
    text_len: usize,
    steps: usize,
    seed: u64,
) -> SampleInputs {
    let mut rng = Rng::new(seed);
    let shape: Vec<usize> = if cfg.family.packed_latents() {
        let (gh, gw) = model_grid(cfg, (latent_h, latent_w));
        vec![1, gh * gw, cfg.in_channels]
    } else {
        vec![1, cfg.in_channels, latent_h, latent_w]
    };
    let latents = rng.normal_vec(shape.iter().product(), 1.0);
    let mut si = SampleInputs::new(latents, shape.clone());
    match cfg.family {
        Family::PixArt => {
            let feat = cfg.caption_channels.or(cfg.cross_attention_dim).unwrap_or(cfg.inner_dim());
            let l = text_len.max(1);
            let keep = |k: usize| (0..l).map(|i| if i < k { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
            si.cond = Some(TextInput { embeds: rng.normal_vec(l * feat, 0.2), mask: Some(keep(20.min(l))), len: l });
            si.uncond = Some(TextInput { embeds: rng.normal_vec(l * feat, 0.2), mask: Some(keep(1)), len: l });
        }
        Family::DiT => si.class_labels = Some(vec![207]),
        _ => {
            // SD3: text and pooled text for both halves of the guided batch, no mask
            let feat = cfg.joint_attention_dim.unwrap_or(cfg.inner_dim());
            let pf = cfg.pooled_projection_dim.unwrap_or(1);
            let l = text_len.max(1);
            si.cond = Some(TextInput { embeds: rng.normal_vec(l * feat, 0.2), mask: None, len: l });
            si.uncond = Some(TextInput { embeds: rng.normal_vec(l * feat, 0.2), mask: None, len: l });
            si.pooled = Some(rng.normal_vec(pf, 0.5));
            si.uncond_pooled = Some(rng.normal_vec(pf, 0.5));
        }
    }
    si.noise = Some(rng.normal_vec(steps.saturating_sub(1) * shape.iter().product::<usize>(), 1.0));
    si
}

/// One policy's row of the latency table.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub policy: String,
    pub params: String,
    /// solver steps of the row (fewer-steps rows run fewer)
    pub steps: usize,
    /// median total time of a sampling run, seconds
    pub total_s: f64,
    pub per_step_ms: f64,
    /// all runs' totals, seconds
    pub runs_s: Vec<f64>,
    pub blocks: usize,
    pub blocks_per_step: Vec<usize>,
    /// Σ blocks / (steps·L) of the uncached run
    pub block_ratio: f64,
    pub macs: f64,
    pub mac_ratio: f64,
    /// steps·L / Σ blocks
    pub theoretical_speedup: f64,
    /// time(none) / time(policy)
    pub measured_speedup: f64,
    /// measured / theoretical
    pub efficiency: f64,
    /// ‖x − x_none‖ / ‖x_none‖ on the final latents
    pub rel_l2: f64,
    /// 20·log10(range(x_none) / RMSE), ∞ when identical
    pub psnr_db: f64,
    /// per-image quality against the uncached run from the same noise (pixel-space models with
    /// prompts or classes)
    pub quality: Option<Quality>,
    /// the final latents of the last run (FLUX: unpacked), for the PNG grids; not in the JSON
    #[serde(skip)]
    pub latents: Vec<f32>,
    /// their shape [n, C, H, W]
    #[serde(skip)]
    pub shape: [usize; 4],
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    pub machine: String,
    pub dtype: String,
    pub scheduler: String,
    pub steps: usize,
    pub guidance: f32,
    /// model batch (images × the CFG copies)
    pub batch: usize,
    /// images a run samples
    pub images: usize,
    pub tokens: usize,
    pub layers: usize,
    pub warmup: usize,
    pub runs: usize,
    pub rows: Vec<BenchRow>,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub policies: Vec<CacheSpec>,
    pub scheduler: SchedulerName,
    pub steps: usize,
    pub guidance: f32,
    pub latent: (usize, usize),
    pub text_len: usize,
    pub warmup: usize,
    pub runs: usize,
    pub seed: u64,
    /// images a run samples (one batch)
    pub images: usize,
    /// add the fewer-steps baseline of each cache row: uncached sampling with as many steps as
    /// the row's compute pays for
    pub fewer_steps: bool,
    /// the fewer-steps baselines' step counts, when `fewer_steps`; empty: the count nearest each
    /// cache row's compute
    pub baseline_steps: Vec<usize>,
    /// the scheduler's parameters
    pub scheduler_config: SchedulerConfig,
}

impl BenchOptions {
    /// The sampling config of `steps` steps.
    pub fn sample_config(&self, steps: usize) -> SampleConfig {
        let mut c = SampleConfig::new(self.scheduler, steps, self.guidance);
        c.scheduler_config = self.scheduler_config.clone();
        c
    }
}

pub fn default_policies() -> Vec<CacheSpec> {
    ["none", "delta", "delta-adaptive", "fora", "first-block", "dbcache"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

fn psnr(x: &[f32], reference: &[f32]) -> f64 {
    let (lo, hi) = reference.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let mse =
        x.iter().zip(reference).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        20.0 * ((hi - lo) as f64 / mse.sqrt()).log10()
    }
}

/// The sampling inputs of a bench: the kit's prompts or classes when it has them, else seeded
/// random ones; the classes asked for (empty without a kit).
pub fn bench_inputs(
    cfg: &ModelConfig,
    kit: Option<&ModelKit>,
    opts: &BenchOptions,
    steps: usize,
) -> Result<(SampleInputs, Vec<usize>)> {
    match kit {
        Some(k) if k.classes().is_some() => k.inputs(opts.images.max(1), opts.latent, steps, opts.seed),
        _ => {
            let (lh, lw) = opts.latent;
            let mut si = random_inputs(cfg, lh, lw, opts.text_len, steps, opts.seed);
            let n = opts.images.max(1);
            if n > 1 {
                // n copies of the prompt, each with its own noise
                let mut rng = Rng::new(opts.seed ^ 0xba7c4);
                si.shape[0] = n;
                si.latents = rng.normal_vec(si.shape.iter().product(), 1.0);
                let rep = |t: &TextInput| TextInput {
                    embeds: t.embeds.repeat(n),
                    mask: t.mask.as_ref().map(|m| m.repeat(n)),
                    len: t.len,
                };
                si.cond = si.cond.as_ref().map(rep);
                si.uncond = si.uncond.as_ref().map(rep);
                si.class_labels = si.class_labels.map(|l| l.repeat(n));
                si.noise = Some(rng.normal_vec(steps.saturating_sub(1) * si.shape.iter().product::<usize>(), 1.0));
            }
            Ok((si, Vec::new()))
        }
    }
}

/// One measured setting: `warmup + runs` sampling runs of `inputs` under `spec` with `steps`
/// steps; the median time and the last run's output.
pub(crate) fn measure<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    inputs: &SampleInputs,
    spec: &CacheSpec,
    sc: &SampleConfig,
    (warmup, runs): (usize, usize),
    progress: &mut dyn FnMut(usize),
) -> Result<(f64, Vec<f64>, crate::pipeline::SampleOutput, String)> {
    let cfg = model.config();
    let mut times = Vec::new();
    let mut last = None;
    let mut params = String::new();
    for run in 0..warmup + runs.max(1) {
        let policy = spec.build(cfg.family, model.num_blocks(), sc.steps)?;
        params = policy.params();
        let out = sample(be, model, inputs, sc, policy, &mut |_, _| progress(1))?;
        if run >= warmup {
            times.push(out.step_times.iter().map(Duration::as_secs_f64).sum::<f64>());
        }
        last = Some(out);
    }
    let out = last.ok_or_else(|| Error::param("runs", runs, "≥ 1"))?;
    Ok((median(&times), times, out, params))
}

/// Runs every policy `warmup + runs` times (then the fewer-steps baselines); `progress(done_steps,
/// total_steps)`. Returns the rows, the model batch and the tokens.
pub fn run<B: Backend>(
    be: &B,
    model: &Transformer<B>,
    kit: Option<&ModelKit>,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<BenchRow>, usize, usize)> {
    let cfg = model.config();
    let (lh, lw) = opts.latent;
    let (inputs, asked) = bench_inputs(cfg, kit, opts, opts.steps)?;
    let images = inputs.shape[0];
    let sc = opts.sample_config(opts.steps);
    sc.validate()?;
    // FLUX embeds the guidance scale: no CFG batch
    let guided = opts.guidance > 1.0 && !crate::pipeline::embedded_guidance(cfg.family);
    let batch = if guided { 2 * images } else { images };
    let text_len = inputs.cond.as_ref().map_or(0, |t| t.len);
    let (gh, gw) = model_grid(cfg, (lh, lw));
    let macs = ForwardMacs::new(cfg, batch, gh, gw, if cfg.family == Family::DiT { 0 } else { text_len.max(1) });
    let layers = model.num_blocks();
    let judged = kit.is_some_and(|k| k.judges_images());
    let classifier = kit.and_then(|k| k.classifier.as_ref());
    let total_steps =
        opts.policies.len() * (opts.warmup + opts.runs.max(1)) * opts.steps * if opts.fewer_steps { 2 } else { 1 };
    let mut done = 0;
    let mut tick = |k: usize| {
        done += k;
        progress(done, total_steps);
    };
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut reference: Option<(Vec<f32>, f64)> = None;
    let full_blocks = (opts.steps * layers) as f64;
    let full_macs = opts.steps as f64 * macs.step(layers);
    let row_of = |policy: String,
                  params: String,
                  sc: &SampleConfig,
                  out: &crate::pipeline::SampleOutput,
                  total: f64,
                  times: Vec<f64>,
                  reference: &Option<(Vec<f32>, f64)>|
     -> Result<BenchRow> {
        let blocks: usize = out.blocks_run.iter().sum();
        let step_macs: f64 = out.blocks_run.iter().map(|&b| macs.step(b)).sum();
        // FLUX's packed tokens unpacked to [n, C, H, W] (PSNR and rel L2 do not see the order)
        let (images, shape) = kit::images(cfg, &out.latents, &out.shape, (lh, lw))?;
        let (rel, ps, none_time, refl) = match reference {
            None => (0.0, f64::INFINITY, total, &images),
            Some((r, t)) => (crate::rng::rel_l2(&images, r), psnr(&images, r), *t, r),
        };
        let quality = if judged { Some(kit::quality(&images, refl, shape, classifier, &asked)?) } else { None };
        let theoretical = full_blocks / blocks.max(1) as f64;
        let measured = none_time / total;
        Ok(BenchRow {
            policy,
            params,
            steps: sc.steps,
            total_s: total,
            per_step_ms: 1e3 * total / sc.steps as f64,
            runs_s: times,
            blocks,
            blocks_per_step: out.blocks_run.clone(),
            block_ratio: blocks as f64 / full_blocks,
            macs: step_macs,
            mac_ratio: step_macs / full_macs,
            theoretical_speedup: theoretical,
            measured_speedup: measured,
            efficiency: measured / theoretical,
            rel_l2: rel,
            psnr_db: ps,
            quality,
            latents: images.clone(),
            shape,
        })
    };
    for spec in &opts.policies {
        if reference.is_none() && spec.policy() != "none" {
            return Err(Error::param("policies", spec, "the first policy must be `none` (the reference)"));
        }
        let (total, times, out, params) = measure(be, model, &inputs, spec, &sc, (opts.warmup, opts.runs), &mut tick)?;
        let row = row_of(spec.policy().to_string(), params, &sc, &out, total, times, &reference)?;
        if reference.is_none() {
            reference = Some((row.latents.clone(), total));
        }
        rows.push(row);
    }
    if opts.fewer_steps {
        let mut seen = vec![opts.steps];
        let targets: Vec<usize> = if opts.baseline_steps.is_empty() {
            rows.iter().map(|r| ((r.block_ratio * opts.steps as f64).round() as usize).max(1)).collect()
        } else {
            opts.baseline_steps.iter().map(|&k| k.max(1)).collect()
        };
        for k in targets {
            if seen.contains(&k) {
                continue;
            }
            seen.push(k);
            let (inp, _) = bench_inputs(cfg, kit, opts, k)?;
            let sck = opts.sample_config(k);
            let (total, times, out, _) =
                measure(be, model, &inp, &CacheSpec::none(), &sck, (opts.warmup, opts.runs), &mut tick)?;
            rows.push(row_of("fewer-steps".into(), format!("steps={k}"), &sck, &out, total, times, &reference)?);
        }
    }
    Ok((rows, batch, (gh / cfg.patch_size) * (gw / cfg.patch_size)))
}

/// `x` with 1 decimal, or `-`.
fn opt1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The latency (and quality) table, fixed-width.
pub fn format_table(r: &BenchReport) -> String {
    let mut s = format!(
        "model {} | {} ({}) on {} | {} {} steps, guidance {}, {} image(s): batch {} × {} tokens, {} blocks | median of {} runs after {} warm-up\n",
        r.model, r.backend, r.dtype, r.machine, r.scheduler, r.steps, r.guidance, r.images, r.batch, r.tokens, r.layers, r.runs, r.warmup
    );
    let quality = r.rows.iter().any(|row| row.quality.is_some());
    // columns as wide as their longest entry: a long spec keeps its row in line
    let pw = r.rows.iter().map(|row| row.policy.chars().count()).chain([6]).max().unwrap_or(6);
    let aw = r.rows.iter().map(|row| row.params.chars().count()).chain([10]).max().unwrap_or(10);
    s += &format!(
        "{:<pw$} {:<aw$} {:>5} {:>9} {:>8} {:>6} {:>7} {:>8} {:>9}",
        "policy", "parameters", "steps", "total s", "ms/step", "blk %", "MACs %", "theory×", "measured×"
    );
    if quality {
        s += &format!(" {:>9} {:>9} {:>8} {:>8} {:>6}\n", "PSNR dB", "worst dB", "SSIM", "worst", "acc %");
    } else {
        s += &format!(" {:>6} {:>10} {:>8}\n", "eff", "rel L2", "PSNR dB");
    }
    for row in &r.rows {
        s += &format!(
            "{:<pw$} {:<aw$} {:>5} {:>9.3} {:>8.2} {:>5.1}% {:>6.1}% {:>8.2} {:>9.2}",
            row.policy,
            if row.params.is_empty() { "-" } else { &row.params },
            row.steps,
            row.total_s,
            row.per_step_ms,
            100.0 * row.block_ratio,
            100.0 * row.mac_ratio,
            row.theoretical_speedup,
            row.measured_speedup,
        );
        match &row.quality {
            Some(q) => {
                s += &format!(
                    " {:>9.1} {:>9.1} {:>8.4} {:>8.4} {:>6}\n",
                    q.psnr_mean,
                    q.psnr_worst,
                    q.ssim_mean,
                    q.ssim_worst,
                    opt1(q.accuracy.map(|a| 100.0 * a))
                );
            }
            None => s += &format!(" {:>5.0}% {:>10.2e} {:>8.1}\n", 100.0 * row.efficiency, row.rel_l2, row.psnr_db),
        }
    }
    if quality {
        s += "PSNR/SSIM: each image against the uncached run from the same noise (100 dB: identical); acc: the classifier reads the class asked for\n";
    }
    s
}

/// "CPU model name (family F model M), SIMD level, N threads" from /proc/cpuinfo and the CPU
/// backend's level: hosts report a bare "AMD EPYC" for Zen 3, 4 and 5 alike, and the level (the
/// detected one, or `DELTADIT_CPU_SIMD`'s cap) and the tiles' levels, where they differ,
/// pick the backend's code paths.
pub fn cpu_description(threads: usize) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let family = match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!(" (family {f} model {m})"),
        _ => String::new(),
    };
    use crate::backend::cpu::simd;
    let mut levels = simd::level().to_string();
    for (op, tiles) in [("linear", simd::linear_tile_level()), ("attention", simd::attention_tile_level())] {
        if tiles != simd::level() {
            levels += &format!(" ({op}: {tiles} tiles)");
        }
    }
    format!("{model}{family}, {levels}, {threads} threads")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FLUX presets have FLUX.1's published shapes: 19 double + 38 single blocks of 24 × 128
    /// (3072 wide), T5 4096 and CLIP-pooled 768 text features, 64 packed channels; 1024² is a
    /// latent of 128 → 4096 image tokens; dev 512 text tokens, 28 steps, embedded guidance 3.5,
    /// dynamic shifting; schnell 256 text tokens (max_sequence_length 256), 4 steps, no guidance
    /// embedding, static shift 1.
    #[test]
    fn flux_presets_have_flux1_shapes() {
        let dev = preset("flux-dev-1024").unwrap();
        let schnell = preset("flux-schnell-1024").unwrap();
        for p in [&dev, &schnell] {
            let c = &p.config;
            assert_eq!((c.family, c.num_layers, c.num_single_layers), (Family::Flux, 19, 38));
            assert_eq!((c.num_attention_heads, c.attention_head_dim, c.inner_dim()), (24, 128, 3072));
            assert_eq!((c.joint_attention_dim, c.pooled_projection_dim, c.in_channels), (Some(4096), Some(768), 64));
            let (gh, gw) = model_grid(c, (p.latent, p.latent));
            assert_eq!(gh * gw, 4096);
            let si = random_inputs(c, p.latent, p.latent, p.text_len, p.steps, 0);
            assert_eq!(si.shape, vec![1, 4096, 64]);
            assert_eq!(si.cond.as_ref().map(|t| t.len), Some(p.text_len));
        }
        assert_eq!((dev.text_len, dev.steps, dev.guidance, dev.config.guidance_embeds), (512, 28, 3.5, true));
        assert!(dev.scheduler_config().flow_match.use_dynamic_shifting);
        assert_eq!((schnell.text_len, schnell.steps, schnell.config.guidance_embeds), (256, 4, false));
        assert!(!schnell.scheduler_config().flow_match.use_dynamic_shifting);
        assert_eq!(schnell.scheduler_config().flow_match.shift, 1.0);
        // the CPU-sized preset keeps the layout: double then single blocks, head dim 128
        let small = preset("flux-cpu-small").unwrap();
        assert!(small.config.num_layers > 0 && small.config.num_single_layers > small.config.num_layers);
        assert_eq!(small.config.attention_head_dim, 128);
    }
}
