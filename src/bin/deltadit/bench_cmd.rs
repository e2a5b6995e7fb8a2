//! `deltadit bench` and `deltadit calibrate`: the backend, the model (a folder, the trained
//! reference model of models/ by default, or a preset with random weights), and the two runs of
//! the internals' bench module.

use super::{any_backend, configure_threads};
use clap::Args;
use deltadit::backend::AttentionKernel;
use deltadit::cache::CacheSpec;
use deltadit::device::{AnyBackend, Device};
use deltadit::internals::bench::{self, BenchOptions, BenchReport, CalibrateOptions, ModelKit, Preset};
use deltadit::internals::quality::{png_grid, require_pixel_space};
use deltadit::model::{Family, Transformer};
use deltadit::pipeline::SampleConfig;
use deltadit::sampler::{SchedulerConfig, SchedulerName};
use deltadit::{with_backend, Backend, DType, Error, Result};
use std::path::{Path, PathBuf};

/// The trained PixArt reference model of the repository, when the binary runs from a checkout.
fn default_model() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pixart-digits");
    dir.join("config.json").is_file().then_some(dir)
}

/// Where the model comes from and how it is run.
#[derive(Args)]
pub struct ModelChoice {
    /// a preset built in memory with seeded random weights (see --list-presets); default: the
    /// trained PixArt model of models/pixart-digits when present, else pixart-cpu-small
    /// (pixart-alpha-1024 on CUDA)
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// a diffusers transformer folder (with captions.safetensors and a classifier beside it, the
    /// samples are judged: PSNR, SSIM, accuracy)
    #[arg(long)]
    model: Option<PathBuf>,
    /// the classifier of the model's images (default: ../digits-classifier/ beside the model)
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// cpu, cuda or sim; default: cuda when a GPU and the kernels are present, else cpu
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    guidance: Option<f32>,
    /// images a run samples, in one batch (default: 64 for a judged model, else 1)
    #[arg(long)]
    images: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    threads: Option<usize>,
    /// also write the results as JSON
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    m: ModelChoice,
    /// cache specs separated by `;` (specs use commas), `none` first; default:
    /// "none;delta;delta-adaptive;fora;first-block;dbcache"
    #[arg(long, value_delimiter = ';')]
    policies: Option<Vec<String>>,
    /// runs per policy after the warm-up (the median is reported); default 3 for a judged model,
    /// else 5
    #[arg(long)]
    runs: Option<usize>,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// leave out the fewer-steps baselines (on by default for a judged model)
    #[arg(long)]
    no_baseline: bool,
    /// the fewer-steps baselines' step counts, comma-separated (e.g. 12,13: the runs at and just
    /// above a policy's compute); default: the count nearest each cache row's compute
    #[arg(long, value_delimiter = ',')]
    baseline_steps: Vec<usize>,
    /// list the presets and exit
    #[arg(long)]
    list_presets: bool,
    /// write each row's final samples as a PNG grid into this folder (pixel-space models):
    /// 01-none.png, 02-delta.png, …, fewer-steps-13.png
    #[arg(long)]
    grids: Option<PathBuf>,
}

#[derive(Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    m: ModelChoice,
    /// name the cheapest setting whose mean PSNR against the uncached run is at least this (dB)
    #[arg(long)]
    target_psnr: Option<f64>,
    /// name the best setting within this compute (block evaluations relative to uncached, 0..1)
    #[arg(long)]
    budget: Option<f64>,
    /// timed runs per setting
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// also draw the frontier as a PNG: compute against mean PSNR, one line per policy kind,
    /// fewer steps and the policies' defaults marked
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// What a run is made of, once the backend and model are chosen.
struct Setup {
    device: Device,
    dtype: DType,
    any: AnyBackend,
    machine: String,
    model_dir: Option<PathBuf>,
    preset: Option<Preset>,
}

fn setup(m: &ModelChoice) -> Result<Setup> {
    configure_threads(m.threads)?;
    let (device, why) = match &m.device {
        Some(d) => (d.parse::<Device>()?, String::new()),
        None => AnyBackend::auto(),
    };
    if !why.is_empty() && device == Device::Cpu {
        eprintln!("note: using the CPU backend ({why})");
    }
    let dtype = m.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    let any = any_backend(device, dtype, m.threads)?;
    let machine = match &any {
        AnyBackend::Cuda(c) => c.info().to_string(),
        _ => bench::cpu_description(rayon::current_num_threads()),
    };
    let (model_dir, preset) = match (&m.model, &m.preset) {
        (Some(d), _) => (Some(d.clone()), None),
        (None, Some(p)) => (None, Some(bench::preset(p)?)),
        (None, None) => match default_model() {
            Some(d) => (Some(d), None),
            None => {
                let p = if device == Device::Cuda { "pixart-alpha-1024" } else { "pixart-cpu-small" };
                (None, Some(bench::preset(p)?))
            }
        },
    };
    Ok(Setup { device, dtype: dtype.unwrap_or(device.default_dtype()), any, machine, model_dir, preset })
}

/// A loaded model: the model, its kit (a judged model folder), its name, latent size and text
/// length.
type Loaded<B> = (Transformer<B>, Option<ModelKit>, String, (usize, usize), usize);

fn load<B: Backend>(be: &B, s: &Setup, m: &ModelChoice) -> Result<Loaded<B>> {
    match (&s.model_dir, &s.preset) {
        (Some(dir), _) => {
            let model = Transformer::load(be, dir)?;
            let kit = ModelKit::open(dir, m.classifier.as_deref())?;
            let size = kit.latent_size();
            Ok((model, Some(kit), dir.display().to_string(), size, 120))
        }
        (None, Some(p)) => Ok((p.build(be, m.seed)?, None, p.name.to_string(), (p.latent, p.latent), p.text_len)),
        (None, None) => Err(Error::param("model", "none", "--model DIR or --preset NAME")),
    }
}

/// Scheduler, steps and guidance: the options, else the preset's, else each pipeline's defaults
/// (PixArt DPM-Solver++, DiT DDIM; 20 steps).
fn schedule(m: &ModelChoice, s: &Setup, family: Family) -> Result<(SchedulerName, usize, f32, SchedulerConfig)> {
    let preset = s.preset.as_ref();
    let config = match (preset, &s.model_dir) {
        (Some(p), _) => p.scheduler_config(),
        (None, Some(dir)) => super::scheduler_config(dir, None)?,
        (None, None) => SchedulerConfig::default(),
    };
    let scheduler: SchedulerName = match (&m.scheduler, preset) {
        (Some(s), _) => s.parse()?,
        (None, Some(p)) => p.scheduler,
        (None, None) => config.solver().unwrap_or(SampleConfig::default_scheduler(family)),
    };
    let steps = m.steps.unwrap_or(preset.map_or(20, |p| p.steps));
    let guidance =
        m.guidance.or(preset.map(|p| p.guidance)).unwrap_or(SampleConfig::default_guidance(family, scheduler));
    Ok((scheduler, steps, guidance, config))
}

fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} steps ({eta} left)")
    {
        bar.set_style(style);
    }
    bar
}

fn write_json<T: serde::Serialize>(path: Option<&Path>, value: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Io { path: path.to_path_buf(), source: e.into() })?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.list_presets {
        for p in bench::presets() {
            println!("{:<20} {}", p.name, p.about);
        }
        return Ok(());
    }
    let s = setup(&a.m)?;
    let policies = match a.policies.as_deref() {
        None => bench::default_policies(),
        Some(l) => l.iter().map(|x| x.trim().parse()).collect::<Result<Vec<CacheSpec>>>()?,
    };
    let (rows, batch, tokens, name, layers, sched, steps, guidance, images, runs) = with_backend!(&s.any, |be| {
        let (model, kit, name, latent, text_len) = load(be, &s, &a.m)?;
        let judged = kit.as_ref().is_some_and(|k| k.judges_images());
        let (scheduler, steps, guidance, scheduler_config) = schedule(&a.m, &s, model.config().family)?;
        let images = a.m.images.unwrap_or(if judged { 64 } else { 1 });
        let runs = a.runs.unwrap_or(if judged { 3 } else { 5 }).max(1);
        let opts = BenchOptions {
            policies: policies.clone(),
            scheduler,
            steps,
            guidance,
            latent,
            text_len,
            warmup: a.warmup,
            runs,
            seed: a.m.seed,
            images,
            fewer_steps: judged && !a.no_baseline,
            baseline_steps: a.baseline_steps.clone(),
            scheduler_config,
        };
        let bar = progress_bar(1);
        let (rows, batch, tokens) = bench::run(be, &model, kit.as_ref(), &opts, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        (rows, batch, tokens, name, model.num_blocks(), scheduler, steps, guidance, images, runs)
    });
    let report = BenchReport {
        model: name,
        // Labelled by a non-default attention kernel, so that joined tables keep such runs apart.
        backend: match s.any.attention_kernel() {
            Some(k) if k != AttentionKernel::default() => format!("{:?} ({k} attention)", s.device).to_lowercase(),
            _ => format!("{:?}", s.device).to_lowercase(),
        },
        machine: s.machine.clone(),
        dtype: s.dtype.to_string(),
        scheduler: sched.name().to_string(),
        steps,
        guidance,
        batch,
        images,
        tokens,
        layers,
        warmup: a.warmup,
        runs,
        rows,
    };
    print!("{}", bench::format_table(&report));
    if let Some(dir) = &a.grids {
        write_grids(dir, &report)?;
    }
    write_json(a.m.json.as_deref(), &report)
}

/// One PNG grid per row of `report`, 8 images a row, each pixel 4×4.
fn write_grids(dir: &Path, report: &BenchReport) -> Result<()> {
    require_pixel_space("grids", report.rows.first().map_or(0, |r| r.shape[1]))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (i, row) in report.rows.iter().enumerate() {
        let name = match row.policy.as_str() {
            "fewer-steps" => format!("fewer-steps-{}.png", row.steps),
            p => format!("{:02}-{p}.png", i + 1),
        };
        let path = dir.join(name);
        std::fs::write(&path, png_grid(&row.latents, row.shape, 8, 4)?).map_err(|e| Error::io(&path, e))?;
    }
    println!("wrote {} PNG grids to {}", report.rows.len(), dir.display());
    Ok(())
}

pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    if let Some(b) = a.budget {
        if !(b > 0.0 && b <= 1.0) {
            return Err(Error::param("budget", b, "a compute fraction in (0, 1]"));
        }
    }
    if let Some(t) = a.target_psnr {
        if !t.is_finite() {
            return Err(Error::param("target-psnr", t, "a finite number of dB"));
        }
    }
    let s = setup(&a.m)?;
    let (settings, opts) = with_backend!(&s.any, |be| {
        let (model, kit, name, latent, text_len) = load(be, &s, &a.m)?;
        let (scheduler, steps, guidance, scheduler_config) = schedule(&a.m, &s, model.config().family)?;
        let judged = kit.as_ref().is_some_and(|k| k.judges_images());
        let opts = CalibrateOptions {
            scheduler,
            steps,
            guidance,
            latent,
            text_len,
            images: a.m.images.unwrap_or(if judged { 16 } else { 1 }),
            seed: a.m.seed,
            target_psnr: a.target_psnr,
            budget: a.budget,
            runs: a.runs,
            scheduler_config,
        };
        println!(
            "calibrating {name} on {} ({}, {}), {} {} steps, guidance {}",
            s.machine,
            format!("{:?}", s.device).to_lowercase(),
            s.dtype,
            scheduler.name(),
            steps,
            guidance
        );
        let bar = progress_bar(1);
        let settings = bench::calibrate(be, &model, kit.as_ref(), &opts, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        (settings, opts)
    });
    print!("{}", bench::format_frontier(&settings, &opts));
    if let Some(path) = &a.plot {
        let name = s
            .model_dir
            .as_ref()
            .and_then(|d| d.file_name())
            .map_or_else(|| "preset".to_string(), |n| n.to_string_lossy().into_owned());
        let title = format!("{name}: {} images, {} steps", opts.images, opts.steps);
        std::fs::write(path, bench::frontier_png(&settings, &title)).map_err(|e| Error::io(path, e))?;
        println!("wrote the frontier plot to {}", path.display());
    }
    write_json(a.m.json.as_deref(), &bench::Calibration::new(&settings, &opts))
}
