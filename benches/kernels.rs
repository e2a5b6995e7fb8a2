//! Kernel microbenchmarks at the real shapes of the presets: attention (self, and cross with the
//! text mask; on an H100/H200 also with each wgmma kernel, rows `attn-*-wgmma*`), norm_modulate,
//! qk_norm (at SD3.5-medium's and FLUX's shapes, rows `qk-norm/*`: no preset has Q/K norms yet),
//! qk_norm fused with FLUX's RoPE (rows `qk-norm-rope/*`), FLUX's single block around its one
//! fused projection (`gemm-single-fused`, `gelu-cols`, `copy-rows`, `gemm-proj-mlp-cols`),
//! the gated residual and its Δ store/apply variants, GELU + bias, a same-size copy, the
//! once-per-step kernels (patchify, position embedding, unpatchify, CFG combine, the DPM-Solver++ 2M
//! update) and the GEMMs through `Backend::linear` — plus the two roofline figures measured in the
//! same run (a large device copy; a large square GEMM).
//!
//!   cargo bench --bench kernels                 all presets of the device (see below)
//!   cargo bench --bench kernels -- --quick      quick: few iterations (GPU: pixart-alpha-1024 only)
//!   cargo bench --bench kernels -- attn-self    only cases whose name contains "attn-self"
//!
//! GPU (CUDA backend, bf16): every case rotates through enough input sets to exceed 3 × L2, is
//! captured as one CUDA graph of many launches (≥ 1 ms of device time), and is timed with CUDA
//! events around back-to-back graph launches after an untimed one; criterion's samples are those
//! timings. Presets: pixart-alpha-1024, pixart-alpha-512, dit-xl-2-256, dit-xl-2-512.
//! CPU (no GPU, f32 reference backend): the same cases on the wall clock at the shapes of
//! dit-xl-2-256 and pixart-cpu-small (+ pixart-alpha-512 in full mode); the 1024-px shapes would
//! take minutes per case there, and the output says so.
//!
//! Before a case is timed, its op runs once on the first input set and is checked against the CPU
//! backend (f32) on the same inputs (benches/common/kernel_ops.rs: outputs poisoned with NaN first,
//! relative L2 ≤ 1e-2 for bf16/f16); a case that fails is reported and not timed
//! (DELTADIT_BENCH_CHECK=0 skips the checks; the CPU backend, the reference itself, has none). In
//! test mode (`cargo test --benches`, CI) a second pass checks every case of pixart-cpu-small and
//! the qk-norm rows through the CUDA kernels on the SIMT shim (sim backend, bf16, each attention
//! kernel) the same way.
//!
//! Also writes <out>/kernels-<backend>.json (see benches/common/mod.rs for <out>): per case the
//! median time, TFLOP/s or GB/s, the fraction of the measured roofline and the check's error.

mod common;

use common::kernel_ops::{self, KernelOp, Residual};
use common::{median, min, replicate, sets_for, Launcher, Mode, Pool, Timed};
use criterion::{Criterion, Throughput};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::sim::Sim;
use deltadit::backend::AttentionKernel;
use deltadit::backend::{Activation, AttentionShape, Cfg, SchedulerKind, SchedulerUpdate};
use deltadit::internals::bench::Preset;
use deltadit::model::Family;
use deltadit::{DType, Result, Tensor};
use serde_json::{json, Value};

/// The op name of an attention case with `kernel` (None: the backend's default kernel), e.g.
/// `attn-self-wgmma-qregs`.
fn op_name(op: &'static str, kernel: Option<AttentionKernel>) -> String {
    match kernel {
        Some(k) if k != AttentionKernel::default() => format!("{op}-{k}"),
        _ => op.to_string(),
    }
}

/// What bounds a case: arithmetic (FLOP counted) or memory (bytes counted).
#[derive(Clone, Copy, PartialEq)]
enum Bound {
    Compute,
    Memory,
}

struct Case {
    name: String,
    op: String,
    preset: String,
    shape: String,
    bound: Bound,
    flop: f64,
    /// the fewest bytes the op must move (inputs read once, outputs written once)
    bytes: f64,
    /// checked against the CPU backend before it is timed (not the rooflines)
    checked: bool,
}

impl Case {
    /// Case `op` at the shapes of preset `p`, named `<op>/<preset>`.
    fn new(p: &Preset, op: &str, shape: String, bound: Bound, flop: f64, bytes: f64) -> Self {
        Case {
            name: format!("{op}/{}", p.name),
            op: op.to_string(),
            preset: p.name.to_string(),
            shape,
            bound,
            flop,
            bytes,
            checked: true,
        }
    }
}

/// The activation shapes of a preset's blocks with classifier-free guidance (batch 2).
struct Dims {
    heads: usize,
    head_dim: usize,
    /// heads × head_dim
    width: usize,
    batch: usize,
    tokens: usize,
    /// batch × tokens
    rows: usize,
}

impl Dims {
    fn of(p: &Preset) -> Self {
        let cfg = &p.config;
        let (heads, head_dim) = (cfg.num_attention_heads, cfg.attention_head_dim);
        let (batch, tokens) = (2, (p.latent / cfg.patch_size).pow(2));
        Dims { heads, head_dim, width: heads * head_dim, batch, tokens, rows: batch * tokens }
    }
}

struct Measured {
    case: Case,
    samples: Vec<f64>,
    sets: usize,
    per_unit: usize,
    /// the check's ‖ours − CPU‖/‖CPU‖ (None: not checked: the CPU backend itself, or a roofline)
    check: Option<f64>,
}

/// A tensor of one input set.
enum Arg<'a> {
    /// random values from the pool (shift, scale) in the run's dtype
    Rand(&'a [usize], usize, f32),
    /// an output (its contents unspecified)
    Out(&'a [usize]),
    /// these f32 values, stored as f32 (the key bias)
    F32(&'a [f32], &'a [usize]),
    /// random values from the pool (shift, scale), stored as f32 (latents, model output, ε)
    RandF32(&'a [usize], usize, f32),
    /// an f32 output
    OutF32(&'a [usize]),
}

struct Run<'c, B: Timed> {
    be: &'c B,
    mode: &'c Mode,
    c: &'c mut Criterion,
    pool: Pool,
    dt: DType,
    /// the reference every case is checked against before it is timed (None on the CPU backend)
    reference: Option<Cpu>,
    /// check the cases only, time none (test mode's pass over the CUDA kernels on the sim backend)
    check_only: bool,
    results: Vec<Measured>,
    /// (case, check) of a check-only pass
    checked: Vec<(String, f64)>,
    errors: Vec<Value>,
}

impl<B: Timed> Run<'_, B> {
    /// Checks `op` on the first input set against the CPU backend, then (unless check-only)
    /// captures and times it, rotating over the input sets, as criterion bench `case.name`,
    /// keeping its per-launch samples. A case that fails its check is not timed.
    fn time(&mut self, case: Case, op: KernelOp, mut sets: Vec<Vec<Tensor<B>>>) {
        if !self.mode.wants(&case.name) {
            return;
        }
        let mut checked = None;
        if let (Some(cpu), true) = (&self.reference, case.checked) {
            let tol = kernel_ops::tolerance(self.dt);
            match kernel_ops::check(self.be, cpu, op, &mut sets[0]) {
                Ok(e) if e <= tol => checked = Some(e),
                r => {
                    let why = match r {
                        Ok(e) => format!("the check against the CPU backend failed: relative L2 {e:.3e} > {tol:.0e}"),
                        Err(e) => format!("the check against the CPU backend could not run: {e}"),
                    };
                    println!("{}: FAILED: {why}", case.name);
                    self.errors.push(json!({ "name": case.name, "error": why }));
                    return;
                }
            }
        }
        if self.check_only {
            if let Some(e) = checked {
                self.checked.push((case.name, e));
            }
            return;
        }
        let be = self.be;
        let n_sets = sets.len();
        let mut op: Box<dyn FnMut(usize) -> Result<()> + Send + '_> =
            Box::new(move |i| op.apply(be, &mut sets[i % n_sets]));
        let prepared = be.estimate(&mut *op, n_sets).and_then(|est| {
            let l = be.launcher(op, n_sets, est)?;
            Ok(l)
        });
        let mut launcher: Box<dyn Launcher + '_> = match prepared {
            Ok(l) => l,
            Err(e) => {
                println!("{}: FAILED to prepare: {e}", case.name);
                self.errors.push(json!({ "name": case.name, "error": e.to_string() }));
                return;
            }
        };
        let per_unit = launcher.per_unit();
        let mut samples = Vec::new();
        let mut failed = None;
        {
            let mut g = self.c.benchmark_group(case.op.as_str());
            g.throughput(match case.bound {
                Bound::Compute => Throughput::Elements(case.flop as u64),
                Bound::Memory => Throughput::Bytes(case.bytes as u64),
            });
            g.bench_function(&case.preset, |b| {
                b.iter_custom(|iters| {
                    if failed.is_some() {
                        return std::time::Duration::from_nanos(iters);
                    }
                    let units = (iters as usize).div_ceil(per_unit).max(1);
                    match launcher.time_units(units) {
                        Ok(secs) => {
                            let per = secs / (units * per_unit) as f64;
                            samples.push(per);
                            std::time::Duration::from_secs_f64(per * iters as f64)
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            std::time::Duration::from_nanos(iters)
                        }
                    }
                })
            });
            g.finish();
        }
        drop(launcher);
        if let Some(e) = failed {
            println!("{}: FAILED: {e}", case.name);
            self.errors.push(json!({ "name": case.name, "error": e }));
            return;
        }
        if !samples.is_empty() {
            self.results.push(Measured { case, samples, sets: n_sets, per_unit, check: checked });
        }
    }

    fn tensor(&self, shape: &[usize], shift: usize, scale: f32) -> Result<Tensor<B>> {
        self.pool.tensor(self.be, shape, self.dt, shift, scale)
    }

    /// Input sets whose `set_bytes` each together exceed 3 × the last-level cache (one to check).
    fn sets(&self, set_bytes: f64) -> usize {
        if self.check_only {
            return 1;
        }
        sets_for(set_bytes as usize, self.be.cache_bytes())
    }

    /// `sets` input sets of tensors `args` (each set at its own addresses, same values).
    fn sets_of(&self, args: &[Arg<'_>], sets: usize) -> Result<Vec<Vec<Tensor<B>>>> {
        let mut out: Vec<Vec<Tensor<B>>> = (0..sets).map(|_| Vec::with_capacity(args.len())).collect();
        for a in args {
            let copies = match a {
                Arg::Rand(shape, shift, scale) => replicate(self.be, self.tensor(shape, *shift, *scale)?, sets)?,
                Arg::Out(shape) => (0..sets).map(|_| self.be.alloc(shape, self.dt)).collect::<Result<_>>()?,
                Arg::F32(data, shape) => replicate(self.be, self.be.upload(data, shape, DType::F32)?, sets)?,
                Arg::RandF32(shape, shift, scale) => {
                    replicate(self.be, self.pool.tensor(self.be, shape, DType::F32, *shift, *scale)?, sets)?
                }
                Arg::OutF32(shape) => (0..sets).map(|_| self.be.alloc(shape, DType::F32)).collect::<Result<_>>()?,
            };
            for (set, t) in out.iter_mut().zip(copies) {
                set.push(t);
            }
        }
        Ok(out)
    }

    // ---- the cases ------------------------------------------------------------------------------

    fn preset_cases(&mut self, p: &Preset) -> Result<()> {
        let Dims { width: d, batch, rows, .. } = Dims::of(p);
        let es = self.dt.size() as f64;
        let case = |op: &str, shape, bound, flop, bytes| Case::new(p, op, shape, bound, flop, bytes);

        self.attention_cases(p, None)?;

        // Memory-bound kernels on the residual stream [rows, D].
        let n = (rows * d) as f64;
        let act = [rows, d];
        let act_shape = format!("[{rows}, {d}]");
        let modv = Arg::Rand(&[batch, 6 * d], 11, 0.5);
        {
            let sets = self.sets(2.0 * es * n);
            let io = self.sets_of(&[Arg::Rand(&act, 13, 1.5), modv, Arg::Out(&act)], sets)?;
            let c = case("norm-modulate", act_shape.clone(), Bound::Memory, 0.0, 2.0 * es * n);
            self.time(c, KernelOp::NormModulate, io);
        }
        for (op, kind, moved) in [
            ("residual-gated", Residual::Gated, 3.0),
            ("residual-anchor", Residual::Anchor, 4.0),
            ("residual-delta", Residual::Delta, 5.0),
            ("delta-apply", Residual::Apply, 3.0),
        ] {
            let sets = self.sets(moved * es * n);
            let modv = Arg::Rand(&[batch, 6 * d], 11, 0.5);
            let mut args = vec![Arg::Rand(&act, 17, 1.0), Arg::Rand(&act, 19, 1.0), modv];
            if moved > 3.0 {
                args.push(Arg::Rand(&act, 23, 1.0));
            }
            let io = self.sets_of(&args, sets)?;
            let what = match kind {
                Residual::Gated => "x += gate ⊙ y",
                Residual::Anchor => "x += gate ⊙ y; cache = x",
                Residual::Delta => "x += gate ⊙ y; cache = x − cache",
                Residual::Apply => "x += Δ",
            };
            self.time(
                case(op, format!("{act_shape}: {what}"), Bound::Memory, 0.0, moved * es * n),
                KernelOp::Residual(kind),
                io,
            );
        }
        // The TaylorSeer forecasts (order 2): a cached step's calibrated Δ apply, FORA's forecast
        // branch output in its gated residual, and a full step's ladder update; each one pass.
        {
            let coef = [1.0f32, 0.5, 0.125];
            let sets = self.sets(5.0 * es * n);
            let mut args = vec![Arg::Rand(&act, 61, 1.0), Arg::Rand(&act, 63, 1.0)];
            args.extend([Arg::Rand(&act, 65, 0.1), Arg::Rand(&act, 67, 0.01), Arg::F32(&coef, &[3])]);
            let io = self.sets_of(&args, sets)?;
            let c = case(
                "forecast-apply",
                format!("{act_shape}: x += Δ + e·d₁ + e²/2·d₂"),
                Bound::Memory,
                0.0,
                5.0 * es * n,
            );
            self.time(c, KernelOp::ForecastApply, io);
            let mut args = vec![Arg::Rand(&act, 61, 1.0), Arg::Rand(&act, 63, 1.0)];
            let modv = Arg::Rand(&[batch, 6 * d], 11, 0.5);
            args.extend([Arg::Rand(&act, 65, 0.1), Arg::Rand(&act, 67, 0.01), modv, Arg::F32(&coef, &[3])]);
            let io = self.sets_of(&args, sets)?;
            let what = format!("{act_shape}: x += gate ⊙ (y + e·d₁ + e²/2·d₂)");
            self.time(
                case("residual-forecast", what, Bound::Memory, 0.0, 5.0 * es * n),
                KernelOp::ResidualForecast,
                io,
            );
            let ladder = [0.5f32, -0.5, 0.5, -0.5];
            let sets = self.sets(7.0 * es * n);
            let mut args = vec![Arg::Rand(&act, 71, 1.0), Arg::Rand(&act, 73, 1.0)];
            args.extend([Arg::Rand(&act, 75, 0.1), Arg::Rand(&act, 77, 0.01), Arg::F32(&ladder, &[4])]);
            let io = self.sets_of(&args, sets)?;
            let what = format!("{act_shape}: d₁, d₂ and the previous Δ updated");
            self.time(case("ladder-update", what, Bound::Memory, 0.0, 7.0 * es * n), KernelOp::LadderUpdate, io);
        }
        {
            let ff = [rows, 4 * d];
            let nf = (rows * 4 * d) as f64;
            let sets = self.sets(2.0 * es * nf);
            let io = self.sets_of(&[Arg::Rand(&ff, 29, 1.0), Arg::Rand(&[4 * d], 31, 0.1), Arg::Out(&ff)], sets)?;
            let c = case("gelu-bias", format!("[{rows}, {}]", 4 * d), Bound::Memory, 0.0, 2.0 * es * nf);
            self.time(c, KernelOp::GeluBias, io);
        }
        {
            let sets = self.sets(2.0 * es * n);
            let io = self.sets_of(&[Arg::Rand(&act, 37, 1.0), Arg::Out(&act)], sets)?;
            self.time(case("copy", act_shape.clone(), Bound::Memory, 0.0, 2.0 * es * n), KernelOp::Copy, io);
        }

        self.step_cases(p)?;

        // GEMMs of a block through Backend::linear (bias, and the GELU epilogue of ff1).
        let gemms: [(&'static str, usize, usize, Activation); 4] = [
            ("gemm-qkv", 3 * d, d, Activation::None),
            ("gemm-proj", d, d, Activation::None),
            ("gemm-ff1-gelu", 4 * d, d, Activation::GeluTanh),
            ("gemm-ff2", d, 4 * d, Activation::None),
        ];
        for (op, nout, k, act) in gemms {
            self.gemm(case(op, String::new(), Bound::Compute, 0.0, 0.0), rows, nout, k, true, act)?;
        }
        Ok(())
    }

    /// RMSNorm of Q's and K's heads in place in the fused QKV projection output `[rows, 3D]` (batch
    /// 1, 1024² images): SD3.5-medium, 24 heads × 64, on its 4096 image tokens and on its 333
    /// context tokens (each stream has its own projection and norms); FLUX, 24 × 128, on the 4096 +
    /// 512 tokens of a single-stream block. Bytes: Q and K read and written once.
    fn qk_norm_cases(&mut self) -> Result<()> {
        let es = self.dt.size() as f64;
        for (preset, rows, heads, head_dim) in [
            ("sd35-medium-1024-image", 4096, 24, 64),
            ("sd35-medium-1024-context", 333, 24, 64),
            ("flux-1024", 4096 + 512, 24, 128),
        ] {
            let d = heads * head_dim;
            let bytes = es * 4.0 * (rows * d) as f64;
            let args = [
                Arg::Rand(&[rows, 3 * d], 97, 1.5),
                Arg::Rand(&[head_dim], 101, 0.5),
                Arg::Rand(&[head_dim], 103, 0.5),
            ];
            let io = self.sets_of(&args, self.sets(bytes / 2.0))?;
            let c = Case {
                name: format!("qk-norm/{preset}"),
                op: "qk-norm".into(),
                preset: preset.into(),
                shape: format!("[{rows}, {}]: Q, K {heads}×{head_dim}", 3 * d),
                bound: Bound::Memory,
                flop: 0.0,
                bytes,
                checked: true,
            };
            self.time(c, KernelOp::QkNorm { heads, head_dim }, io);
        }
        // FLUX's Q/K preparation: the norm fused with RoPE, on a double block's image stream (its
        // 4096 tokens after the 512 text positions of the table) and its context stream. Bytes: Q
        // and K read and written once, the table's rows read once.
        for (preset, rows, offset) in [("flux-1024-image", 4096, 512), ("flux-1024-context", 512, 0)] {
            let (heads, head_dim) = (24, 128);
            let d = heads * head_dim;
            let bytes = es * 4.0 * (rows * d) as f64 + 4.0 * (rows * head_dim) as f64;
            let table = [4096 + 512, head_dim];
            let args = [
                Arg::Rand(&[rows, 3 * d], 97, 1.5),
                Arg::Rand(&[head_dim], 101, 0.5),
                Arg::Rand(&[head_dim], 103, 0.5),
                Arg::RandF32(&table, 107, 0.7),
            ];
            let io = self.sets_of(&args, self.sets(bytes / 2.0))?;
            let c = Case {
                name: format!("qk-norm-rope/{preset}"),
                op: "qk-norm-rope".into(),
                preset: preset.into(),
                shape: format!("[{rows}, {}]: Q, K {heads}×{head_dim}, RoPE at {offset}..", 3 * d),
                bound: Bound::Memory,
                flop: 0.0,
                bytes,
                checked: true,
            };
            self.time(c, KernelOp::QkNormRope { heads, head_dim, offset }, io);
        }
        Ok(())
    }

    /// FLUX's single-stream block around its one fused projection `[rows, 3D + 4D]` (to_q, to_k,
    /// to_v and proj_mlp stacked): the GEMM itself, the GELU in place on the MLP columns, the
    /// joint attention's gather of the Q|K|V columns (`copy_rows`), and the output projection's
    /// MLP half reading the MLP columns in place (`linear_cols`). FLUX.1 at 1024² (4096 + 512
    /// tokens, D 3072) on a GPU, `flux-cpu-small` (64 + 32 tokens, D 256) on the CPU.
    fn flux_single_cases(&mut self, gpu: bool) -> Result<()> {
        let p = deltadit::internals::bench::preset(if gpu { "flux-dev-1024" } else { "flux-cpu-small" })?;
        let d = p.config.num_attention_heads * p.config.attention_head_dim;
        let rows = (p.latent / 2) * (p.latent / 2) + p.text_len;
        let (wide, mlp) = (7 * d, 4 * d);
        let es = self.dt.size() as f64;
        let preset = p.name;
        let case = |op: &str, shape: String, bound, flop, bytes| Case {
            name: format!("{op}/{preset}"),
            op: op.into(),
            preset: preset.into(),
            shape,
            bound,
            flop,
            bytes,
            checked: true,
        };
        self.gemm(
            case("gemm-single-fused", String::new(), Bound::Compute, 0.0, 0.0),
            rows,
            wide,
            d,
            true,
            Activation::None,
        )?;
        {
            let bytes = es * 2.0 * (rows * mlp) as f64;
            let io = self.sets_of(&[Arg::Rand(&[rows, wide], 109, 1.0)], self.sets(bytes))?;
            let c = case("gelu-cols", format!("[{rows}, {wide}] cols {}..{wide}", 3 * d), Bound::Memory, 0.0, bytes);
            self.time(c, KernelOp::GeluCols { col: 3 * d, cols: mlp }, io);
        }
        {
            let bytes = es * 2.0 * (rows * 3 * d) as f64;
            let io = self.sets_of(&[Arg::Rand(&[rows, wide], 113, 1.0), Arg::Out(&[rows, 3 * d])], self.sets(bytes))?;
            let c = case("copy-rows", format!("[{rows}, {wide}] → [{rows}, {}]", 3 * d), Bound::Memory, 0.0, bytes);
            self.time(c, KernelOp::CopyRows, io);
        }
        {
            let flop = 2.0 * (rows * d * mlp) as f64;
            let bytes = es * ((rows * mlp + d * mlp + rows * d + d) as f64);
            let args = [
                Arg::Rand(&[rows, wide], 127, 1.0),
                Arg::Rand(&[d, mlp], 131, (mlp as f32).powf(-0.5)),
                Arg::Rand(&[d], 137, 0.1),
                Arg::Out(&[rows, d]),
            ];
            let io = self.sets_of(&args, self.sets(bytes))?;
            let shape = format!("{rows}×{d}×{mlp} +bias, input cols {}.. of {wide}", 3 * d);
            self.time(
                case("gemm-proj-mlp-cols", shape, Bound::Compute, flop, bytes),
                KernelOp::LinearCols { col: 3 * d },
                io,
            );
        }
        Ok(())
    }

    /// The once-per-step kernels around the blocks, in the order a step runs them: patchify and the
    /// position embedding (into the first block), unpatchify, the CFG combine and the fused
    /// DPM-Solver++ 2M update (after the last). (The cache policies' rel-L1 probe reads its two
    /// sums back to the host, so it cannot be captured into a graph and timed alone.)
    fn step_cases(&mut self, p: &Preset) -> Result<()> {
        let Dims { width: d, batch, tokens, rows, .. } = Dims::of(p);
        let cfg = &p.config;
        let (pa, c_in, c_out, hw) = (cfg.patch_size, cfg.in_channels, cfg.out_channels, p.latent * p.latent);
        let es = self.dt.size() as f64;
        let case = |op, shape, bytes| Case::new(p, op, shape, Bound::Memory, 0.0, bytes);
        let (lat, patches) = ([batch, c_in, p.latent, p.latent], [rows, c_in * pa * pa]);
        {
            let bytes = (batch * c_in * hw) as f64 * (4.0 + es);
            let io = self.sets_of(&[Arg::RandF32(&lat, 59, 1.0), Arg::Out(&patches)], self.sets(bytes))?;
            self.time(case("patchify", format!("{lat:?} f32 → {patches:?}"), bytes), KernelOp::Patchify(pa), io);
        }
        {
            let (x, pos) = ([batch, tokens * d], [tokens * d]);
            let bytes = es * (2.0 * (rows * d) as f64 + (tokens * d) as f64);
            let io = self.sets_of(&[Arg::Rand(&x, 61, 1.0), Arg::Rand(&pos, 67, 0.5)], self.sets(bytes))?;
            self.time(case("pos-embed", format!("[{rows}, {d}] += [{tokens}, {d}]"), bytes), KernelOp::PosEmbed, io);
        }
        let out = [batch, c_out, p.latent, p.latent];
        {
            let toks = [rows, pa * pa * c_out];
            let bytes = (batch * c_out * hw) as f64 * (es + 4.0);
            let io = self.sets_of(&[Arg::Rand(&toks, 71, 1.0), Arg::OutF32(&out)], self.sets(bytes))?;
            self.time(case("unpatchify", format!("{toks:?} → {out:?} f32"), bytes), KernelOp::Unpatchify(pa), io);
        }
        let lat1 = [batch / 2, c_in, p.latent, p.latent];
        let n1 = (batch / 2 * c_in * hw) as f64;
        {
            // reads the first C channels of both halves, writes ε
            let bytes = 4.0 * 3.0 * n1;
            let guide = Cfg::On { scale: 4.5, cond_first: cfg.family.cond_first() };
            let io = self.sets_of(&[Arg::RandF32(&out, 73, 1.0), Arg::OutF32(&lat1)], self.sets(bytes))?;
            self.time(case("cfg-combine", format!("{out:?} → {lat1:?} f32"), bytes), KernelOp::CfgCombine(guide), io);
        }
        {
            // x and x0_prev read and written, ε read
            let bytes = 4.0 * 5.0 * n1;
            let update = SchedulerUpdate { kind: SchedulerKind::Dpm2, c: [0.6, 0.8, 0.9, 0.3, 2.0, 0.15] };
            let args = [Arg::RandF32(&lat1, 79, 1.0), Arg::RandF32(&lat1, 83, 1.0), Arg::RandF32(&lat1, 89, 1.0)];
            let io = self.sets_of(&args, self.sets(bytes))?;
            self.time(
                case("scheduler-dpm2", format!("{lat1:?} f32: x, ε, x0_prev"), bytes),
                KernelOp::SchedulerStep(update),
                io,
            );
        }
        Ok(())
    }

    /// Self-attention (Q, K, V column slices of one fused projection, as the model) and, for
    /// PixArt, cross-attention to the masked text, with attention kernel `kernel` (None: the
    /// backend's default).
    fn attention_cases(&mut self, p: &Preset, kernel: Option<AttentionKernel>) -> Result<()> {
        let Dims { heads: h, head_dim: hd, width: d, batch, tokens, rows } = Dims::of(p);
        let es = self.dt.size() as f64;
        let case = |op: &str, shape, bound, flop, bytes| Case::new(p, op, shape, bound, flop, bytes);
        let scale = (hd as f32).powf(-0.5);
        // Self-attention: Q, K, V read in place from one fused [rows, 3D] projection (as the model).
        {
            let n = (rows * 3 * d) as f64;
            let bytes = es * (n + (rows * d) as f64);
            let sets = self.sets(bytes);
            let io = self.sets_of(&[Arg::Rand(&[rows, 3 * d], 1, 1.0), Arg::Out(&[rows, d])], sets)?;
            let shape = AttentionShape { batch, heads: h, head_dim: hd, nq: tokens, nk: tokens, scale };
            let flop = 4.0 * (batch * h * tokens * tokens * hd) as f64;
            let c = case(
                &op_name("attn-self", kernel),
                format!("{batch}×{h}×{tokens}×{tokens}, d {hd}"),
                Bound::Compute,
                flop,
                bytes,
            );
            self.time(c, KernelOp::SelfAttention(shape), io);
        }

        // Cross-attention to the text with its padding mask (PixArt): uncond keeps 1 token, cond 20.
        if p.config.family == Family::PixArt {
            let l = p.text_len.max(1);
            let bytes = es * (2.0 * (rows * d) as f64 + (batch * l * 2 * d) as f64) + 4.0 * (batch * l) as f64;
            let sets = self.sets(bytes);
            let bias: Vec<f32> = (0..batch)
                .flat_map(|b| (0..l).map(move |j| if j < [1, 20.min(l)][b] { 0.0 } else { -10000.0 }))
                .collect();
            let io = self.sets_of(
                &[
                    Arg::Rand(&[rows, d], 3, 1.0),
                    Arg::Rand(&[batch * l, 2 * d], 5, 1.0),
                    Arg::F32(&bias, &[batch, l]),
                    Arg::Out(&[rows, d]),
                ],
                sets,
            )?;
            let shape = AttentionShape { batch, heads: h, head_dim: hd, nq: tokens, nk: l, scale };
            let flop = 4.0 * (batch * h * tokens * l * hd) as f64;
            let c = case(
                &op_name("attn-cross", kernel),
                format!("{batch}×{h}×{tokens}×{l} masked, d {hd}"),
                Bound::Compute,
                flop,
                bytes,
            );
            self.time(c, KernelOp::CrossAttention(shape), io);
        }
        Ok(())
    }

    /// The attention cases with each of the backend's extra kernels (rows `<op>-<kernel>`): run after
    /// every preset's other cases, so that a kernel never run on this hardware before cannot take
    /// their rows with it.
    fn extra_kernel_cases(&mut self, p: &Preset) -> Result<()> {
        for k in self.be.extra_attention_kernels() {
            self.be.use_attention_kernel(k)?;
            let r = self.attention_cases(p, Some(k));
            self.be.use_attention_kernel(AttentionKernel::Mma)?;
            r?;
        }
        Ok(())
    }

    /// `out[m, n] = act(x[m, k]·w[n, k]ᵀ + b)`, weights rotating with the inputs.
    fn gemm(&mut self, mut c: Case, m: usize, n: usize, k: usize, bias: bool, act: Activation) -> Result<()> {
        let es = self.dt.size() as f64;
        c.flop = 2.0 * (m * n * k) as f64;
        c.bytes = es * ((m * k + n * k + m * n) as f64 + if bias { n as f64 } else { 0.0 });
        c.shape = format!(
            "{m}×{n}×{k}{}{}",
            if bias { " +bias" } else { "" },
            if act == Activation::GeluTanh { " +GELU" } else { "" }
        );
        let sets = self.sets(c.bytes);
        let (xs, ws, bs, os) = ([m, k], [n, k], [n], [m, n]);
        let mut args = vec![Arg::Rand(&xs, 41, 1.0), Arg::Rand(&ws, 43, (k as f32).powf(-0.5))];
        if bias {
            args.push(Arg::Rand(&bs, 47, 0.1));
        }
        args.push(Arg::Out(&os));
        let io = self.sets_of(&args, sets)?;
        self.time(c, KernelOp::Linear(act), io);
        Ok(())
    }

    /// The two ceilings, measured in this run: a large copy (bytes read + written) and a large
    /// square GEMM. Not checked: neither is a kernel of ours (a device copy; cuBLASLt).
    fn roofline(&mut self, gpu: bool) -> Result<()> {
        let es = self.dt.size();
        let elems = if gpu { 256 << 20 } else { 64 << 20 } / es;
        let io = self.sets_of(&[Arg::Rand(&[elems], 53, 1.0), Arg::Out(&[elems])], 1)?;
        let bytes = 2.0 * (elems * es) as f64;
        let c = Case {
            name: "roofline-copy".into(),
            op: "roofline-copy".into(),
            preset: "-".into(),
            shape: format!("{} MiB → {} MiB", (elems * es) >> 20, (elems * es) >> 20),
            bound: Bound::Memory,
            flop: 0.0,
            bytes,
            checked: false,
        };
        self.time(c, KernelOp::Copy, io);
        let s = if gpu { 8192 } else { 1024 };
        let c = Case {
            name: "roofline-gemm".into(),
            op: "roofline-gemm".into(),
            preset: "-".into(),
            shape: String::new(),
            bound: Bound::Compute,
            flop: 0.0,
            bytes: 0.0,
            checked: false,
        };
        self.gemm(c, s, s, s, false, Activation::None)
    }
}

fn run<B: Timed>(be: &B, mode: &Mode, gpu: bool) -> Result<()> {
    let presets: Vec<&str> = match (gpu, mode.quick) {
        (true, true) => vec!["pixart-alpha-1024"],
        (true, false) => vec!["pixart-alpha-1024", "pixart-alpha-512", "dit-xl-2-256", "dit-xl-2-512"],
        (false, _) if !mode.bench => vec!["pixart-cpu-small"],
        (false, true) => vec!["pixart-cpu-small", "dit-xl-2-256"],
        (false, false) => vec!["pixart-cpu-small", "dit-xl-2-256", "pixart-alpha-512"],
    };
    let presets = common::presets(&presets)?;
    let dt = be.act_dtype();
    let note = if gpu {
        String::new()
    } else {
        format!(
            "CPU backend (f32, wall clock): presets {}; the PixArt-α 1024{} shapes are not run on the CPU (minutes per case)",
            presets.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
            if mode.quick { " / 512 and DiT-XL/2 512" } else { " and DiT-XL/2 512" }
        )
    };
    println!("deltadit kernels: {} backend ({dt}) on {}; timing: {}", B::NAME, be.machine(), be.clock());
    if !note.is_empty() {
        println!("note: {note}");
    }
    let reference =
        (B::NAME != "cpu" && !common::env_off("DELTADIT_BENCH_CHECK")).then(|| Cpu::new(rayon::current_num_threads()));
    let check = match (&reference, B::NAME) {
        (Some(_), _) => "each case against the CPU backend (f32) on its first input set, before it is timed",
        (None, "cpu") => "none: the CPU backend is the reference",
        (None, _) => "none (DELTADIT_BENCH_CHECK=0)",
    };
    println!("check: {check}");
    let mut c = mode.criterion(gpu);
    let mut r = Run {
        be,
        mode,
        c: &mut c,
        pool: Pool::new(7),
        dt,
        reference,
        check_only: false,
        results: Vec::new(),
        checked: Vec::new(),
        errors: Vec::new(),
    };
    r.roofline(gpu)?;
    for p in &presets {
        r.preset_cases(p)?;
    }
    r.qk_norm_cases()?;
    r.flux_single_cases(gpu)?;
    for p in &presets {
        r.extra_kernel_cases(p)?;
    }
    let (results, errors) = (std::mem::take(&mut r.results), std::mem::take(&mut r.errors));
    drop(r);
    c.final_summary();

    // Per case: median over criterion's samples (each the mean of ≥ one unit of launches).
    let med = |name: &str| results.iter().find(|m| m.case.name == name).map(|m| median(&m.samples));
    let case_of = |name: &str| results.iter().find(|m| m.case.name == name).map(|m| &m.case);
    let copy_bw = med("roofline-copy").zip(case_of("roofline-copy")).map(|(t, c)| c.bytes / t);
    let gemm_rate = med("roofline-gemm").zip(case_of("roofline-gemm")).map(|(t, c)| c.flop / t);
    let mut rows = Vec::new();
    println!(
        "\n{:<32} {:<44} {:>10} {:>10} {:>9} {:>8} {:>9}",
        "case", "shape", "median µs", "rate", "roofline", "vs copy", "check"
    );
    for m in &results {
        let t = median(&m.samples);
        let c = &m.case;
        let (rate, unit, frac) = match c.bound {
            Bound::Compute => (c.flop / t / 1e12, "TFLOP/s", gemm_rate.map(|g| c.flop / t / g)),
            Bound::Memory => (c.bytes / t / 1e9, "GB/s", copy_bw.map(|bw| c.bytes / t / bw)),
        };
        // memory-bound kernels also against the copy of the same tensor size (same preset)
        let vs_copy = if c.bound == Bound::Memory && c.op != "copy" && c.op != "roofline-copy" {
            results
                .iter()
                .find(|o| o.case.op == "copy" && o.case.preset == c.preset)
                .map(|o| (c.bytes / t) / (o.case.bytes / median(&o.samples)))
        } else {
            None
        };
        println!(
            "{:<32} {:<44} {:>10.2} {:>6.2} {:<7} {:>8} {:>8} {:>9}",
            c.name,
            c.shape,
            t * 1e6,
            rate,
            unit,
            frac.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
            vs_copy.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
            m.check.map_or("-".into(), |e| format!("{e:.1e}")),
        );
        rows.push(json!({
            "name": c.name,
            "op": c.op,
            "preset": c.preset,
            "shape": c.shape,
            "bound": if c.bound == Bound::Compute { "compute" } else { "memory" },
            "median_us": t * 1e6,
            "min_us": min(&m.samples) * 1e6,
            "samples": m.samples.len(),
            "flop": c.flop,
            "bytes": c.bytes,
            "tflops": if c.bound == Bound::Compute { Some(c.flop / t / 1e12) } else { None },
            "gbps": c.bytes / t / 1e9,
            "roofline_frac": frac,
            "copy_frac": vs_copy,
            "input_sets": m.sets,
            "launches_per_unit": m.per_unit,
            "check_rel_l2": m.check,
        }));
    }
    if let Some(bw) = copy_bw {
        println!("roofline: copy {:.0} GB/s (bytes read + written)", bw / 1e9);
    }
    if let Some(g) = gemm_rate {
        println!(
            "roofline: {} GEMM {:.2} TFLOP/s",
            if gpu { "cuBLASLt bf16" } else { "CPU f32 (Backend::linear)" },
            g / 1e12
        );
    }
    for e in &errors {
        println!("error: {e}");
    }
    if mode.bench {
        let report = json!({
            "kind": "deltadit-kernels",
            "backend": B::NAME,
            "dtype": dt.to_string(),
            "machine": be.machine(),
            "threads": rayon::current_num_threads(),
            "date": common::utc_now(),
            "commit": common::commit(),
            "quick": mode.quick,
            "timing": be.clock(),
            "cache_bytes": be.cache_bytes(),
            "note": note,
            "check": check,
            "check_tolerance": kernel_ops::tolerance(dt),
            "roofline": {
                "copy_gbps": copy_bw.map(|b| b / 1e9),
                "gemm_tflops": gemm_rate.map(|g| g / 1e12),
                "gemm": if gpu { "cuBLASLt bf16 8192×8192×8192" } else { "Backend::linear f32 1024×1024×1024" },
                "copy": if gpu { "device-to-device copy of 256 MiB" } else { "Backend::copy of 64 MiB (streaming stores: above the last-level cache)" },
            },
            "results": rows,
            "errors": errors,
        });
        let path = common::write_json(&format!("kernels-{}.json", B::NAME), &report)?;
        println!("wrote {}", path.display());
    }
    if !errors.is_empty() {
        return Err(deltadit::Error::param("benchmark cases failed (listed above)", errors.len(), "0"));
    }
    Ok(())
}

/// Test mode's second pass (`cargo test --benches`, so CI): the cases of pixart-cpu-small and the
/// qk-norm rows through the CUDA kernels on the SIMT shim (the sim backend, bf16, with each
/// attention kernel), checked
/// against the CPU backend as a GPU run checks them before timing; none is timed.
fn check_pass(mode: &Mode) -> Result<()> {
    let sim = match Sim::new(DType::BF16) {
        Ok(sim) => sim,
        Err(e) if !common::env_flag("DELTADIT_REQUIRE_KERNELS") => {
            println!("note: no check pass through the sim backend ({e})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let p = deltadit::internals::bench::preset("pixart-cpu-small")?;
    let mut c = mode.criterion(false);
    let mut r = Run {
        be: &sim,
        mode,
        c: &mut c,
        pool: Pool::new(7),
        dt: DType::BF16,
        reference: Some(Cpu::new(rayon::current_num_threads())),
        check_only: true,
        results: Vec::new(),
        checked: Vec::new(),
        errors: Vec::new(),
    };
    r.preset_cases(&p)?;
    r.qk_norm_cases()?;
    r.flux_single_cases(false)?;
    r.extra_kernel_cases(&p)?;
    println!("\ncheck pass: the CUDA kernels on the sim backend (bf16) against the CPU backend (f32), {}", p.name);
    for (name, e) in &r.checked {
        println!("{name:<40} relative L2 {e:.2e}");
    }
    if !r.errors.is_empty() {
        return Err(deltadit::Error::param(
            "cases failing the check through the sim backend (listed above)",
            r.errors.len(),
            "0",
        ));
    }
    Ok(())
}

fn main() {
    let mode = Mode::from_env();
    common::bench_main(
        |cpu| {
            run(cpu, &mode, false)?;
            if !mode.bench {
                check_pass(&mode)?;
            }
            Ok(())
        },
        |cuda| run(cuda, &mode, true),
    );
}
