//! Shared by benches/kernels.rs and benches/step.rs: backend choice (CUDA when a GPU and the
//! kernels are there, else the CPU — never an error for lack of a GPU), the run mode (quick/full),
//! shapes of the presets, timing (CUDA events around captured-graph launches on a GPU, the wall
//! clock on the CPU) and the JSON written next to criterion's output.
//!
//! Environment:
//!   DELTADIT_BENCH_DEVICE   auto (default) | cpu | cuda (cuda: an error when the GPU cannot start)
//!   DELTADIT_BENCH_QUICK=1  quick mode (also `-- --quick`): few iterations, one GPU preset
//!   DELTADIT_BENCH_PRESETS  comma-separated preset names instead of the mode's default
//!   DELTADIT_BENCH_OUT      folder for the JSON (default $CARGO_TARGET_DIR/deltadit-bench or
//!                           target/deltadit-bench)

#![allow(dead_code)]

pub mod kernel_ops;

use deltadit::backend::cpu::Cpu;
use deltadit::backend::cuda::Cuda;
use deltadit::backend::sim::Sim;
use deltadit::backend::AttentionKernel;
use deltadit::internals::bench::Preset;
use deltadit::{Backend, DType, Error, Result, Tensor};
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---- mode ---------------------------------------------------------------------------------------

pub struct Mode {
    /// `--quick` or DELTADIT_BENCH_QUICK=1
    pub quick: bool,
    /// run as `cargo bench` (`--bench`); otherwise criterion's test mode (`cargo test --benches`):
    /// each bench runs once and no JSON is written
    pub bench: bool,
    /// the first positional argument: only cases whose name contains it
    pub filter: Option<String>,
}

impl Mode {
    pub fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick") || env_flag("DELTADIT_BENCH_QUICK");
        let bench = args.iter().any(|a| a == "--bench");
        // criterion's options that take a value (their values are not filters)
        const VALUED: &[&str] = &[
            "--color",
            "-c",
            "--colour",
            "--save-baseline",
            "-s",
            "--baseline",
            "-b",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--plotting-backend",
            "--output-format",
            "--format",
        ];
        let mut filter = None;
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if VALUED.contains(&a.as_str()) {
                i += 2;
                continue;
            }
            if !a.starts_with('-') {
                filter = Some(a.clone());
                break;
            }
            i += 1;
        }
        Mode { quick, bench, filter }
    }

    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// criterion with this mode's defaults; the command line overrides them.
    pub fn criterion(&self, gpu: bool) -> criterion::Criterion {
        let (warm, meas, samples) = match (self.quick, gpu) {
            (true, _) => (Duration::from_millis(200), Duration::from_millis(600), 10),
            (false, true) => (Duration::from_millis(500), Duration::from_secs(2), 20),
            (false, false) => (Duration::from_millis(500), Duration::from_secs(2), 10),
        };
        criterion::Criterion::default()
            .warm_up_time(warm)
            .measurement_time(meas)
            .sample_size(samples)
            .nresamples(2_000)
            .without_plots()
            .configure_from_args()
    }
}

pub fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "off" | "no"))
}

/// Set to a false value ("0", "false", "off", "no"); unset or anything else: false.
pub fn env_off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"))
}

/// Presets to run: DELTADIT_BENCH_PRESETS, else `default`.
pub fn presets(default: &[&str]) -> Result<Vec<Preset>> {
    match std::env::var("DELTADIT_BENCH_PRESETS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|n| deltadit::internals::bench::preset(n.trim())).collect()
        }
        _ => default.iter().map(|n| deltadit::internals::bench::preset(n)).collect(),
    }
}

// ---- backend ------------------------------------------------------------------------------------

pub enum Dev {
    Cpu(Cpu),
    Cuda(Box<Cuda>),
}

impl Dev {
    /// CUDA when a GPU and the compiled kernels are present (DELTADIT_BENCH_DEVICE=auto), else the
    /// CPU with the reason printed.
    pub fn pick() -> Result<Self> {
        let want = std::env::var("DELTADIT_BENCH_DEVICE").unwrap_or_else(|_| "auto".into());
        deltadit::internals::env::apply_cpu_options()?;
        let cpu = || Dev::Cpu(Cpu::new(rayon::current_num_threads()));
        match want.as_str() {
            "cpu" => Ok(cpu()),
            "cuda" | "gpu" => Ok(Dev::Cuda(Box::new(Cuda::new(0, DType::BF16)?))),
            "auto" | "" => {
                let (device, why) = deltadit::device::AnyBackend::auto();
                if device != deltadit::device::Device::Cuda {
                    println!("note: no usable GPU ({why}): benchmarking the CPU backend");
                    return Ok(cpu());
                }
                match Cuda::new(0, DType::BF16) {
                    Ok(c) => Ok(Dev::Cuda(Box::new(c))),
                    Err(e) => {
                        println!("note: a GPU is present but the CUDA backend did not start ({e}): benchmarking the CPU backend");
                        Ok(cpu())
                    }
                }
            }
            other => Err(Error::param("DELTADIT_BENCH_DEVICE", other, "auto, cpu or cuda")),
        }
    }
}

/// A bench binary's `main`: picks the device and runs the bench on it (`on_cpu` or `on_cuda`, the
/// same generic function instantiated twice); an error is one line and exit code 1.
pub fn bench_main(on_cpu: impl FnOnce(&Cpu) -> Result<()>, on_cuda: impl FnOnce(&Cuda) -> Result<()>) {
    let r = Dev::pick().and_then(|dev| match &dev {
        Dev::Cpu(cpu) => on_cpu(cpu),
        Dev::Cuda(cuda) => on_cuda(cuda),
    });
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// What the benches need beyond [`Backend`]: how to time a batch of launches.
pub trait Timed: Backend {
    fn machine(&self) -> String;
    /// The last-level cache that rotating inputs must exceed (GPU L2, CPU L3).
    fn cache_bytes(&self) -> usize;
    /// Prepares back-to-back launches of `op(i)` (i counts launches; the op picks its input set
    /// as i % sets). `est` is one launch's time, measured by [`Timed::estimate`].
    fn launcher<'a>(
        &'a self,
        op: Box<dyn FnMut(usize) -> Result<()> + Send + 'a>,
        sets: usize,
        est: f64,
    ) -> Result<Box<dyn Launcher + 'a>>;
    /// Seconds one launch of `op(i)` takes, after a warm-up (rough; sizes the timed batches).
    fn estimate(&self, op: &mut dyn FnMut(usize) -> Result<()>, sets: usize) -> Result<f64>;
    /// "events" or "wall clock"
    fn clock(&self) -> &'static str;
    /// Attention kernels benchmarked besides the default one, as extra rows (`<op>-<kernel>`):
    /// the CUDA backend's wgmma kernel where the GPU has sm_90a.
    fn extra_attention_kernels(&self) -> Vec<AttentionKernel> {
        Vec::new()
    }
    /// Selects the attention kernel for the following launches (no-op where there is no choice).
    fn use_attention_kernel(&self, _k: AttentionKernel) -> Result<()> {
        Ok(())
    }
}

pub trait Launcher {
    /// Launches per unit (one graph on a GPU, one call on the CPU).
    fn per_unit(&self) -> usize;
    /// Seconds that `units` units take, launched back to back after an untimed one.
    fn time_units(&mut self, units: usize) -> Result<f64>;
}

impl Timed for Cpu {
    fn machine(&self) -> String {
        deltadit::internals::bench::cpu_description(rayon::current_num_threads())
    }

    fn cache_bytes(&self) -> usize {
        deltadit::internals::cpu::last_level_cache_bytes()
    }

    fn launcher<'a>(
        &'a self,
        op: Box<dyn FnMut(usize) -> Result<()> + Send + 'a>,
        _sets: usize,
        _est: f64,
    ) -> Result<Box<dyn Launcher + 'a>> {
        Ok(Box::new(CpuLauncher { op, next: 0 }))
    }

    fn estimate(&self, op: &mut dyn FnMut(usize) -> Result<()>, sets: usize) -> Result<f64> {
        op(0)?;
        let n = sets.clamp(1, 3);
        let t = Instant::now();
        for i in 0..n {
            op(i)?;
        }
        Ok(t.elapsed().as_secs_f64() / n as f64)
    }

    fn clock(&self) -> &'static str {
        "wall clock"
    }
}

struct CpuLauncher<'a> {
    op: Box<dyn FnMut(usize) -> Result<()> + Send + 'a>,
    next: usize,
}

impl Launcher for CpuLauncher<'_> {
    fn per_unit(&self) -> usize {
        1
    }
    /// The launches run on a rayon worker, as the ops of a forward do inside `graph_run`.
    fn time_units(&mut self, units: usize) -> Result<f64> {
        deltadit::internals::cpu::on_worker(&mut || {
            (self.op)(self.next)?; // untimed, like the GPU's queue fill
            self.next += 1;
            let t = Instant::now();
            for _ in 0..units {
                (self.op)(self.next)?;
                self.next += 1;
            }
            Ok(t.elapsed().as_secs_f64())
        })
    }
}

/// Device time a captured graph should hold at least (its launch overhead stays small).
const GPU_UNIT_SECONDS: f64 = 1e-3;

impl Timed for Cuda {
    fn extra_attention_kernels(&self) -> Vec<AttentionKernel> {
        // DELTADIT_BENCH_ATTENTION_KERNELS narrows them (the GPU run: those whose tests passed).
        let ks = deltadit::internals::env::wgmma_kernels("DELTADIT_BENCH_ATTENTION_KERNELS").unwrap_or_else(|e| {
            eprintln!("{e}; benchmarking no extra attention kernel");
            Vec::new()
        });
        ks.into_iter().filter(|&k| self.supports_attention_kernel(k)).collect()
    }

    fn use_attention_kernel(&self, k: AttentionKernel) -> Result<()> {
        self.set_attention_kernel(k)
    }

    fn machine(&self) -> String {
        let l2 = self.l2_cache_bytes().map(|b| format!(", L2 {} MB", b >> 20)).unwrap_or_default();
        format!("{}{l2}", self.info())
    }

    fn cache_bytes(&self) -> usize {
        self.l2_cache_bytes().unwrap_or(50 << 20).max(50 << 20)
    }

    fn launcher<'a>(
        &'a self,
        mut op: Box<dyn FnMut(usize) -> Result<()> + Send + 'a>,
        sets: usize,
        est: f64,
    ) -> Result<Box<dyn Launcher + 'a>> {
        // A whole number of passes over the input sets, at least GPU_UNIT_SECONDS of device time.
        let want = (GPU_UNIT_SECONDS / est.max(1e-7)).ceil() as usize;
        let passes = want.div_ceil(sets).clamp(1, (512 / sets).max(1));
        let per_unit = passes * sets;
        let graph = self.capture_graph(&mut || {
            for i in 0..per_unit {
                op(i)?;
            }
            Ok(())
        })?;
        Ok(Box::new(CudaLauncher { cuda: self, graph, per_unit, _op: op }))
    }

    fn estimate(&self, op: &mut dyn FnMut(usize) -> Result<()>, sets: usize) -> Result<f64> {
        op(0)?; // loads the kernel, makes the cuBLASLt plan
        self.synchronize()?;
        let n = sets.clamp(2, 4);
        let ms = self.time_ms(&mut || {
            for i in 0..n {
                op(i)?;
            }
            Ok(())
        })?;
        Ok(ms * 1e-3 / n as f64)
    }

    fn clock(&self) -> &'static str {
        "CUDA events around CUDA-graph launches"
    }
}

struct CudaLauncher<'a> {
    cuda: &'a Cuda,
    graph: deltadit::internals::cuda_timing::BenchGraph,
    per_unit: usize,
    /// keeps the tensors the graph replays borrowed (alive) as long as the graph
    _op: Box<dyn FnMut(usize) -> Result<()> + Send + 'a>,
}

impl Launcher for CudaLauncher<'_> {
    fn per_unit(&self) -> usize {
        self.per_unit
    }
    fn time_units(&mut self, units: usize) -> Result<f64> {
        // SAFETY: the graph's tensors are borrowed by `_op`, which lives as long as `self`.
        unsafe {
            self.graph.launch(self.cuda)?; // fills the queue: the timed launches start back to back
            let start = self.cuda.record_event()?;
            for _ in 0..units {
                self.graph.launch(self.cuda)?;
            }
            let end = self.cuda.record_event()?;
            Ok(start.elapsed_ms(&end)? * 1e-3)
        }
    }
}

/// The sim backend runs the CUDA kernels on the SIMT shim: a correctness tool, never benchmarked;
/// benches/kernels.rs's test-mode check pass uses it (so its clock is the CPU's wall clock).
impl Timed for Sim {
    fn machine(&self) -> String {
        format!("SIMT shim on {}", deltadit::internals::bench::cpu_description(rayon::current_num_threads()))
    }

    fn cache_bytes(&self) -> usize {
        Cpu::new(1).cache_bytes()
    }

    fn launcher<'a>(
        &'a self,
        op: Box<dyn FnMut(usize) -> Result<()> + Send + 'a>,
        _sets: usize,
        _est: f64,
    ) -> Result<Box<dyn Launcher + 'a>> {
        Ok(Box::new(CpuLauncher { op, next: 0 }))
    }

    fn estimate(&self, op: &mut dyn FnMut(usize) -> Result<()>, sets: usize) -> Result<f64> {
        Cpu::new(1).estimate(op, sets)
    }

    fn clock(&self) -> &'static str {
        "wall clock (the SIMT shim: not a speed of the kernels)"
    }

    fn extra_attention_kernels(&self) -> Vec<AttentionKernel> {
        AttentionKernel::wgmma_kernels() // the shim emulates them all
    }

    fn use_attention_kernel(&self, k: AttentionKernel) -> Result<()> {
        self.set_attention_kernel(k);
        Ok(())
    }
}

// ---- data ---------------------------------------------------------------------------------------

/// Random normal values (never zeros) for uploads: a fixed pool repeated with a shift.
pub struct Pool(Vec<f32>);

impl Pool {
    pub fn new(seed: u64) -> Self {
        Pool(deltadit::internals::Rng::new(seed).normal_vec((1 << 20) + 7, 1.0))
    }

    pub fn values(&self, n: usize, shift: usize, scale: f32) -> Vec<f32> {
        let p = &self.0;
        (0..n).map(|i| p[(i + shift) % p.len()] * scale).collect()
    }

    pub fn tensor<B: Backend>(
        &self,
        be: &B,
        shape: &[usize],
        dtype: DType,
        shift: usize,
        scale: f32,
    ) -> Result<Tensor<B>> {
        let n = shape.iter().product();
        be.upload(&self.values(n, shift, scale), shape, dtype)
    }
}

/// Copies of `t` (the first is `t`): input sets that hold the same values at other addresses.
pub fn replicate<B: Backend>(be: &B, t: Tensor<B>, sets: usize) -> Result<Vec<Tensor<B>>> {
    let mut v = Vec::with_capacity(sets);
    for _ in 1..sets {
        let mut c = be.alloc(t.shape(), t.dtype())?;
        be.copy(&t, &mut c)?;
        v.push(c);
    }
    v.insert(0, t);
    Ok(v)
}

/// Input sets needed so that `set_bytes` each exceed 3 × the cache (at most 256, at least 1).
pub fn sets_for(set_bytes: usize, cache: usize) -> usize {
    (3 * cache).div_ceil(set_bytes.max(1)).clamp(1, 256)
}

// ---- statistics and output ----------------------------------------------------------------------

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Where the JSON goes (see the module doc).
pub fn out_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DELTADIT_BENCH_OUT") {
        return PathBuf::from(d);
    }
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(t) => PathBuf::from(t).join("deltadit-bench"),
        Err(_) => PathBuf::from("target").join("deltadit-bench"),
    }
}

pub fn write_json(name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::io(&path, e.into()))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// UTC date and time from the system clock, `YYYY-MM-DDTHH:MM:SSZ` (no date crate needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The commit the binary was built from when DELTADIT_BENCH_COMMIT says so (scripts set it from
/// git or the bundle's manifest), else "unknown".
pub fn commit() -> String {
    std::env::var("DELTADIT_BENCH_COMMIT").unwrap_or_else(|_| "unknown".into())
}
