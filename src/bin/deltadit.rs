//! The `deltadit` command line: parse, call the library, print. Errors become one line on stderr
//! and a non-zero exit.

use clap::{Args, Parser, Subcommand};
use deltadit::backend::AttentionKernel;
use deltadit::cache::CacheSpec;
use deltadit::device::{AnyBackend, Device};
use deltadit::internals::bench::{self, BenchOptions, BenchReport};
use deltadit::internals::{env, ForwardMacs};
use deltadit::io::{write_safetensors, HostTensor, Inputs};
use deltadit::model::{Checkpoint, Family, ModelConfig, Transformer};
use deltadit::pipeline::{forward, sample, ForwardInputs, SampleConfig, SampleInputs};
use deltadit::sampler::SchedulerName;
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
        /// class_labels (DiT), noise (LCM)
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// dpm-solver++, ddim or lcm
        #[arg(long, default_value = "dpm-solver++")]
        scheduler: String,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// CFG scale; guidance applies when > 1
        #[arg(long)]
        guidance: Option<f32>,
        /// none | delta | delta:n=2,nc=21,b=12 | delta-adaptive:threshold=0.08,warmup=2,max-cached=2 |
        /// fora:n=3 | first-block:threshold=0.05
        #[arg(long, default_value = "none")]
        cache: String,
        /// also write `latents_per_step`
        #[arg(long)]
        per_step: bool,
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
    /// End-to-end latency of several cache policies side by side.
    Bench(BenchArgs),
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

#[derive(Args)]
struct BenchArgs {
    /// a preset built in memory with seeded random weights (see --list-presets)
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// a diffusers transformer folder instead of a preset
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda or sim; default: cuda when a GPU and the kernels are present, else cpu
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    /// cache specs separated by `;` (specs use commas), `none` first; default:
    /// "none;delta;delta-adaptive;fora;first-block"
    #[arg(long, value_delimiter = ';')]
    policies: Option<Vec<String>>,
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    guidance: Option<f32>,
    /// runs per policy after the warm-up (the median is reported)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    threads: Option<usize>,
    /// also write the table as JSON
    #[arg(long)]
    json: Option<PathBuf>,
    /// list the presets and exit
    #[arg(long)]
    list_presets: bool,
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
        Cmd::Sample { model, inputs, output, scheduler, steps, guidance, cache, per_step } => {
            cmd_sample(&model, &inputs, &output, &scheduler, steps, guidance, &cache, per_step)
        }
        Cmd::Info { model, height, width, batch, text_len } => cmd_info(&model, height, width, batch, text_len),
        Cmd::Bench(args) => cmd_bench(args),
    }
}

fn backend(args: &ModelArgs) -> Result<AnyBackend> {
    let device: Device = args.device.parse()?;
    let dtype = args.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    configure_threads(args.threads)?;
    any_backend(device, dtype, args.threads)
}

/// The backend with the scripts' environment applied: DELTADIT_CUDA_* options and
/// DELTADIT_ATTENTION (the library reads no environment variables).
fn any_backend(device: Device, dtype: Option<DType>, threads: Option<usize>) -> Result<AnyBackend> {
    let attention = env::attention_kernel()?;
    let any = AnyBackend::with_options(device, dtype, threads, env::cuda_options())?;
    if let Some(k) = attention {
        if device != Device::Cpu {
            any.set_attention_kernel(k)?;
        }
    }
    Ok(any)
}

fn configure_threads(threads: Option<usize>) -> Result<()> {
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

#[allow(clippy::too_many_arguments)]
fn cmd_sample(
    args: &ModelArgs,
    inputs: &Path,
    output: &Path,
    scheduler: &str,
    steps: usize,
    guidance: Option<f32>,
    cache: &str,
    per_step: bool,
) -> Result<()> {
    let scheduler: SchedulerName = scheduler.parse()?;
    let cache: CacheSpec = cache.parse()?;
    let any = backend(args)?;
    let inputs = Inputs::open(inputs)?;
    let start = Instant::now();
    let out = with_backend!(&any, |be| {
        let model = Transformer::load(be, &args.model)?;
        let family = model.config().family;
        let guidance = guidance.unwrap_or(SampleConfig::default_guidance(family, scheduler));
        let si = SampleInputs::from_inputs(&inputs, model.config())?;
        let policy = cache.build(family, model.num_blocks(), steps)?;
        let cfg = SampleConfig { scheduler, steps, guidance, keep_per_step: per_step };
        sample(be, &model, &si, &cfg, policy, &mut |_, _| {})?
    });
    let steps_done = out.timesteps.len();
    let mut tensors = vec![
        ("latents", HostTensor::F32(out.latents.clone(), out.shape.to_vec())),
        ("timesteps", HostTensor::I64(out.timesteps.clone(), vec![steps_done])),
        ("blocks_run", HostTensor::I64(out.blocks_run.iter().map(|&b| b as i64).collect(), vec![steps_done])),
    ];
    if per_step {
        let flat: Vec<f32> = out.latents_per_step.concat();
        let mut shape = vec![steps_done];
        shape.extend(out.shape);
        tensors.push(("latents_per_step", HostTensor::F32(flat, shape)));
    }
    write_safetensors(output, &tensors)?;
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
    let text_len = if cfg.family == Family::PixArt { text_len } else { 0 };
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

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.list_presets {
        for p in bench::presets() {
            println!("{:<20} {}", p.name, p.about);
        }
        return Ok(());
    }
    configure_threads(a.threads)?;
    let (device, why) = match &a.device {
        Some(d) => (d.parse::<Device>()?, String::new()),
        None => AnyBackend::auto(),
    };
    if !why.is_empty() && device == Device::Cpu {
        eprintln!("note: using the CPU backend ({why})");
    }
    let dtype = a.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    let any = any_backend(device, dtype, a.threads)?;
    let dtype = dtype.unwrap_or(device.default_dtype());
    let preset_name = a
        .preset
        .clone()
        .unwrap_or_else(|| if device == Device::Cuda { "pixart-alpha-1024" } else { "pixart-cpu-small" }.to_string());
    let preset = bench::preset(&preset_name)?;
    let policies = parse_policies(a.policies.as_deref())?;
    let machine = match &any {
        AnyBackend::Cuda(c) => c.info().to_string(),
        _ => bench::cpu_description(rayon::current_num_threads()),
    };
    let (rows, batch, tokens, model_name, layers, sched, steps, guidance) = with_backend!(&any, |be| {
        let (model, name, latent, text_len) = match &a.model {
            Some(dir) => {
                let m = Transformer::load(be, dir)?;
                let s = m.config().sample_size;
                (m, dir.display().to_string(), (s, s), 120)
            }
            None => {
                (preset.build(be, a.seed)?, preset.name.to_string(), (preset.latent, preset.latent), preset.text_len)
            }
        };
        let family = model.config().family;
        let scheduler: SchedulerName = match &a.scheduler {
            Some(s) => s.parse()?,
            None if a.model.is_some() => {
                if family == Family::DiT {
                    SchedulerName::Ddim
                } else {
                    SchedulerName::DpmSolverPP
                }
            }
            None => preset.scheduler,
        };
        let steps = a.steps.unwrap_or(if a.model.is_some() { 20 } else { preset.steps });
        let guidance = a.guidance.unwrap_or(SampleConfig::default_guidance(family, scheduler));
        let opts = BenchOptions {
            policies: policies.clone(),
            scheduler,
            steps,
            guidance,
            latent,
            text_len,
            warmup: a.warmup,
            runs: a.runs.max(1),
            seed: a.seed,
        };
        let total = policies.len() * (opts.warmup + opts.runs) * steps;
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} steps ({eta} left)",
            )
            .unwrap(),
        );
        let (rows, batch, tokens) = bench::run(be, &model, &opts, &mut |done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        (rows, batch, tokens, name, model.num_blocks(), scheduler, steps, guidance)
    });
    let report = BenchReport {
        model: model_name,
        // Labelled by a non-default attention kernel, so that joined tables keep such runs apart.
        backend: match any.attention_kernel() {
            Some(k) if k != AttentionKernel::default() => format!("{device:?} ({} attention)", k.name()).to_lowercase(),
            _ => format!("{device:?}").to_lowercase(),
        },
        machine,
        dtype: dtype.to_string(),
        scheduler: sched.name().to_string(),
        steps,
        guidance,
        batch,
        tokens,
        layers,
        warmup: a.warmup,
        runs: a.runs.max(1),
        rows,
    };
    print!("{}", bench::format_table(&report));
    if let Some(path) = &a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Io { path: path.clone(), source: e.into() })?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `--policies "none;delta:n=2,nc=21,b=12;fora:n=3"` (specs separated by `;`, since specs use commas).
fn parse_policies(list: Option<&[String]>) -> Result<Vec<CacheSpec>> {
    match list {
        None => Ok(bench::default_policies()),
        Some(l) => l.iter().map(|s| s.trim().parse()).collect(),
    }
}
