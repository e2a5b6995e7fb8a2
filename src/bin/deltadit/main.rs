//! The `deltadit` command line: parse, call the library, print. Errors become one line on stderr
//! and a non-zero exit.

mod bench_cmd;

use clap::{Args, Parser, Subcommand};
use deltadit::cache::CacheSpec;
use deltadit::device::{AnyBackend, Device};
use deltadit::internals::quality::{png_grid, require_pixel_space};
use deltadit::internals::{env, ForwardMacs};
use deltadit::io::{write_safetensors, HostTensor, Inputs};
use deltadit::model::{Checkpoint, Family, ModelConfig, Transformer};
use deltadit::pipeline::{forward, sample, sample_true_cfg, ForwardInputs, SampleConfig, SampleInputs};
use deltadit::sampler::{SchedulerConfig, SchedulerName};
use deltadit::{with_backend, DType, Error, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "deltadit",
    version,
    about = "Δ-DiT block caching on a DiT/PixArt runtime (CPU, CUDA, and the CUDA kernels emulated on the CPU)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One transformer forward from the tensors of the diffusers forward call; writes `sample`.
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        /// safetensors with hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
        /// resolution, aspect_ratio, class_labels (as the model needs)
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// A sampling loop with classifier-free guidance and a cache policy; writes `latents`,
    /// `timesteps` and `blocks_run`.
    Sample {
        #[command(flatten)]
        model: ModelArgs,
        /// safetensors with latents and cond_embeds/cond_mask/uncond_embeds/uncond_mask (PixArt),
        /// class_labels (DiT), cond_embeds/uncond_embeds/cond_pooled/uncond_pooled (SD3), packed
        /// latents [n, N, C] with cond_embeds/cond_pooled, the negative prompt's
        /// uncond_embeds/uncond_pooled for --true-cfg and optional img_ids (FLUX), noise (LCM)
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// dpm-solver++, ddim, lcm or flow-match-euler (default: the scheduler config's, else
        /// the family's: dpm-solver++ for PixArt, ddim for DiT, flow-match-euler for SD3)
        #[arg(long)]
        scheduler: Option<String>,
        /// a diffusers scheduler_config.json (default: the model folder's, or its pipeline's
        /// scheduler/scheduler_config.json when the model is a pipeline's transformer/)
        #[arg(long)]
        scheduler_config: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// CFG scale; guidance applies when > 1 (FLUX.1-dev: the embedded guidance scale, no CFG
        /// batch; default 3.5)
        #[arg(long)]
        guidance: Option<f32>,
        /// FLUX: FluxPipeline's true_cfg_scale; > 1 runs the negative prompt (uncond_embeds,
        /// uncond_pooled) as a second call each step, each call with its own cache state, and
        /// steps with neg + scale·(pos − neg); blocks_run counts both calls
        #[arg(long, default_value_t = 1.0)]
        true_cfg: f32,
        /// none | delta | delta:n=3,nc=23,b=12[,order=reverse][,calibrator=none|taylor1|taylor2] |
        /// delta-adaptive:threshold=0.12,warmup=2,max-cached=1,b=0 | fora:n=3,calibrator=taylor1 |
        /// first-block:threshold=0.2,max-cached=2|none,calibrator=taylor1 | dbcache:…
        #[arg(long, default_value = "none")]
        cache: String,
        /// also write `latents_per_step`
        #[arg(long)]
        per_step: bool,
        /// also write the samples as a PNG grid (pixel-space models; a latent model needs a VAE)
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Config, parameter count, weight dtype and MACs per forward.
    Info {
        #[arg(long)]
        model: PathBuf,
        /// latent height (default: the config's sample_size)
        #[arg(long)]
        height: Option<usize>,
        #[arg(long)]
        width: Option<usize>,
        /// batch incl. CFG copies
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// text tokens (PixArt)
        #[arg(long, default_value_t = 120)]
        text_len: usize,
    },
    /// End-to-end latency and quality of the cache policies side by side (default: the trained
    /// PixArt model of models/, 64 images, with the fewer-steps baselines).
    Bench(bench_cmd::BenchArgs),
    /// The speed/quality frontier of every policy's settings on one model, and the cheapest
    /// setting that keeps a target PSNR.
    Calibrate(bench_cmd::CalibrateArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// a diffusers transformer folder (config.json + safetensors)
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda or sim (the CUDA kernels on the CPU through the SIMT shim)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 (cpu), bf16 or f16 (cuda, sim); default: the device's
    #[arg(long)]
    dtype: Option<String>,
    /// CPU threads (default: all)
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Forward { model, inputs, output } => cmd_forward(&model, &inputs, &output),
        Cmd::Sample {
            model,
            inputs,
            output,
            scheduler,
            scheduler_config,
            steps,
            guidance,
            true_cfg,
            cache,
            per_step,
            image,
        } => {
            let sched = SchedulerArgs { name: scheduler, config: scheduler_config };
            let guidance = Guidance { scale: guidance, true_cfg };
            cmd_sample(&model, &inputs, &output, &sched, steps, guidance, &cache, per_step, image.as_deref())
        }
        Cmd::Info { model, height, width, batch, text_len } => cmd_info(&model, height, width, batch, text_len),
        Cmd::Bench(args) => bench_cmd::bench(args),
        Cmd::Calibrate(args) => bench_cmd::calibrate(args),
    }
}

fn backend(args: &ModelArgs) -> Result<AnyBackend> {
    let device: Device = args.device.parse()?;
    let dtype = args.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    configure_threads(args.threads)?;
    any_backend(device, dtype, args.threads)
}

/// The backend with the scripts' environment applied: DELTADIT_CUDA_* options,
/// DELTADIT_CPU_HUGE_PAGES, DELTADIT_CPU_SIMD and DELTADIT_ATTENTION (the library reads no environment variables).
pub(crate) fn any_backend(device: Device, dtype: Option<DType>, threads: Option<usize>) -> Result<AnyBackend> {
    let attention = env::attention_kernel()?;
    env::apply_cpu_options()?;
    let any = AnyBackend::with_options(device, dtype, threads, env::cuda_options())?;
    if let Some(k) = attention {
        if device != Device::Cpu {
            any.set_attention_kernel(k)?;
        }
    }
    Ok(any)
}

pub(crate) fn configure_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            return Err(Error::param("threads", 0, "≥ 1"));
        }
        // Ignore "already initialised": only the first call configures the global pool.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    Ok(())
}

fn cmd_forward(args: &ModelArgs, inputs: &Path, output: &Path) -> Result<()> {
    let any = backend(args)?;
    let inputs = Inputs::open(inputs)?;
    let (out, shape) = with_backend!(&any, |be| {
        let model = Transformer::load(be, &args.model)?;
        forward(be, &model, &ForwardInputs::from_inputs(&inputs, model.config())?)?
    });
    write_safetensors(output, &[("sample", HostTensor::F32(out, shape.to_vec()))])?;
    println!("wrote sample {:?} to {}", shape, output.display());
    Ok(())
}

/// `--scheduler` and `--scheduler-config`.
struct SchedulerArgs {
    name: Option<String>,
    config: Option<PathBuf>,
}

/// The scheduler config of a model folder: `--scheduler-config`, else `scheduler_config.json`
/// beside the model, else the pipeline's `../scheduler/scheduler_config.json`.
pub(crate) fn scheduler_config(model_dir: &Path, explicit: Option<&Path>) -> Result<SchedulerConfig> {
    if let Some(p) = explicit {
        return SchedulerConfig::from_file(p);
    }
    let beside = model_dir.join("scheduler_config.json");
    let pipeline = model_dir.join("..").join("scheduler").join("scheduler_config.json");
    match [beside, pipeline].into_iter().find(|p| p.is_file()) {
        Some(p) => SchedulerConfig::from_file(&p),
        None => Ok(SchedulerConfig::default()),
    }
}

/// The solver: `--scheduler`, else the one the scheduler config names, else the family's.
fn pick_scheduler(name: Option<&str>, cfg: &SchedulerConfig, family: Family) -> Result<SchedulerName> {
    match name {
        Some(n) => n.parse(),
        None => Ok(cfg.solver().unwrap_or(SampleConfig::default_scheduler(family))),
    }
}

/// `sample`'s guidance options: the CFG (FLUX: embedded) scale and FLUX's true-CFG scale.
struct Guidance {
    scale: Option<f32>,
    true_cfg: f32,
}

#[allow(clippy::too_many_arguments)]
fn cmd_sample(
    args: &ModelArgs,
    inputs: &Path,
    output: &Path,
    sched: &SchedulerArgs,
    steps: usize,
    guidance: Guidance,
    cache: &str,
    per_step: bool,
    image: Option<&Path>,
) -> Result<()> {
    let cache: CacheSpec = cache.parse()?;
    let model_cfg = ModelConfig::from_file(&args.model.join("config.json"))?;
    let mut scheduler_config = scheduler_config(&args.model, sched.config.as_deref())?;
    if model_cfg.family == Family::Flux && scheduler_config.class_name.is_none() {
        // no scheduler_config.json: FLUX.1's (dynamic shifting, μ from the image tokens)
        scheduler_config.flow_match.use_dynamic_shifting = true;
        scheduler_config.flow_match.shift = 3.0;
    }
    let scheduler = pick_scheduler(sched.name.as_deref(), &scheduler_config, model_cfg.family)?;
    let any = backend(args)?;
    let inputs = Inputs::open(inputs)?;
    let start = Instant::now();
    let channels = model_cfg.in_channels;
    if image.is_some() {
        require_pixel_space("image", channels)?;
    }
    let out = with_backend!(&any, |be| {
        let model = Transformer::load(be, &args.model)?;
        let family = model.config().family;
        let scale = guidance.scale.unwrap_or(SampleConfig::default_guidance(family, scheduler));
        let si = SampleInputs::from_inputs(&inputs, model.config())?;
        let policy = cache.build(family, model.num_blocks(), steps)?;
        let mut cfg = SampleConfig::new(scheduler, steps, scale);
        cfg.keep_per_step = per_step;
        cfg.scheduler_config = scheduler_config.clone();
        cfg.true_cfg_scale = guidance.true_cfg;
        if guidance.true_cfg > 1.0 {
            // one cache state per branch, as diffusers' cache_context("cond") / ("uncond")
            let uncond = cache.build(family, model.num_blocks(), steps)?;
            sample_true_cfg(be, &model, &si, &cfg, [policy, uncond], &mut |_, _| {})?
        } else {
            sample(be, &model, &si, &cfg, policy, &mut |_, _| {})?
        }
    });
    let steps_done = out.timesteps.len();
    let mut tensors = vec![
        ("latents", HostTensor::F32(out.latents.clone(), out.shape.to_vec())),
        ("timesteps", HostTensor::F32(out.timesteps.clone(), vec![steps_done])),
        ("blocks_run", HostTensor::I64(out.blocks_run.iter().map(|&b| b as i64).collect(), vec![steps_done])),
    ];
    if let Some(sigmas) = &out.sigmas {
        tensors.push(("sigmas", HostTensor::F32(sigmas.clone(), vec![sigmas.len()])));
    }
    if per_step {
        let flat: Vec<f32> = out.latents_per_step.concat();
        let mut shape = vec![steps_done];
        shape.extend(&out.shape);
        tensors.push(("latents_per_step", HostTensor::F32(flat, shape)));
    }
    write_safetensors(output, &tensors)?;
    if let Some(path) = image {
        let cols = (out.shape[0] as f64).sqrt().ceil() as usize;
        let png = png_grid(&out.latents, out.spatial_shape()?, cols, 4)?;
        std::fs::write(path, png).map_err(|e| Error::io(path, e))?;
        println!("wrote {} samples as a PNG grid to {}", out.shape[0], path.display());
    }
    println!(
        "sampled {} steps in {:.3} s ({} block evaluations); wrote latents {:?} to {}",
        steps_done,
        start.elapsed().as_secs_f64(),
        out.blocks_run.iter().sum::<usize>(),
        out.shape,
        output.display()
    );
    Ok(())
}

fn cmd_info(dir: &Path, height: Option<usize>, width: Option<usize>, batch: usize, text_len: usize) -> Result<()> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open_dir(dir)?;
    let h = height.unwrap_or(cfg.sample_size);
    let w = width.unwrap_or(h);
    let text_len = if cfg.family == Family::DiT { 0 } else { text_len };
    let macs = ForwardMacs::new(&cfg, batch, h, w, text_len);
    println!("model      {}", dir.display());
    println!("class      {}", cfg.family.name());
    println!("config     {}", serde_json::to_string(&cfg.to_json()).unwrap_or_default());
    println!(
        "blocks     {} × hidden {} ({} heads × {})",
        cfg.num_layers,
        cfg.inner_dim(),
        cfg.num_attention_heads,
        cfg.attention_head_dim
    );
    println!(
        "weights    {} tensors, {} parameters, {}",
        ckpt.num_tensors(),
        ckpt.num_parameters(),
        ckpt.describe_dtypes()
    );
    let tokens = (h / cfg.patch_size) * (w / cfg.patch_size);
    println!(
        "forward    latent {h}×{w} ({tokens} tokens), batch {batch}{}",
        if text_len > 0 { format!(", {text_len} text tokens") } else { String::new() }
    );
    println!("  MACs     {:.3} G per forward: {:.3} G per block × {}, {:.3} G outside the blocks; {:.3} G once per run (text K/V)",
        macs.step(cfg.num_layers) / 1e9, macs.per_block / 1e9, cfg.num_layers, macs.outside_blocks / 1e9, macs.per_run / 1e9);
    Ok(())
}
