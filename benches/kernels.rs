//! Kernel microbenchmarks at the real shapes of the presets: attention (self, and cross with the
//! text mask; on an H100/H200 also with the wgmma kernel, rows `attn-*-wgmma`), norm_modulate, the gated residual and its Δ store/apply variants, GELU + bias, a
//! same-size copy, and the GEMMs through `Backend::linear` — plus the two roofline figures measured
//! in the same run (a large device copy; a large square GEMM).
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
//! Also writes <out>/kernels-<backend>.json (see benches/common/mod.rs for <out>): per case the
//! median time, TFLOP/s or GB/s, and the fraction of the measured roofline.

mod common;

use common::{median, min, replicate, sets_for, Launcher, Mode, Pool, Timed};
use criterion::{Criterion, Throughput};
use deltadit::backend::kernels::AttentionKernel;
use deltadit::backend::{Activation, AttentionShape, CacheWrite, ColSlice};
use deltadit::bench::Preset;
use deltadit::model::Family;
use deltadit::{DType, Result, Tensor};
use serde_json::{json, Value};

/// The op name of an attention case with `kernel` (None: the backend's default kernel).
fn op_name(op: &'static str, kernel: Option<AttentionKernel>) -> &'static str {
    let self_attn = op == "attn-self";
    let pick = |s: &'static str, c: &'static str| if self_attn { s } else { c };
    match kernel {
        None | Some(AttentionKernel::Mma) => op,
        Some(AttentionKernel::Wgmma) => pick("attn-self-wgmma", "attn-cross-wgmma"),
        Some(AttentionKernel::WgmmaQRegs) => pick("attn-self-wgmma-qregs", "attn-cross-wgmma-qregs"),
        Some(AttentionKernel::WgmmaQRegs3) => pick("attn-self-wgmma-qregs3", "attn-cross-wgmma-qregs3"),
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
    op: &'static str,
    preset: String,
    shape: String,
    bound: Bound,
    flop: f64,
    /// the fewest bytes the op must move (inputs read once, outputs written once)
    bytes: f64,
}

impl Case {
    /// Case `op` at the shapes of preset `p`, named `<op>/<preset>`.
    fn new(p: &Preset, op: &'static str, shape: String, bound: Bound, flop: f64, bytes: f64) -> Self {
        Case { name: format!("{op}/{}", p.name), op, preset: p.name.to_string(), shape, bound, flop, bytes }
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
}

struct Run<'c, B: Timed> {
    be: &'c B,
    mode: &'c Mode,
    c: &'c mut Criterion,
    pool: Pool,
    dt: DType,
    results: Vec<Measured>,
    errors: Vec<Value>,
}

impl<B: Timed> Run<'_, B> {
    /// Estimates, captures and times `op` (rotating over `sets` input sets) as criterion bench
    /// `case.name`, keeping its per-launch samples.
    fn time(&mut self, case: Case, sets: usize, op: Box<dyn FnMut(usize) -> Result<()> + '_>) {
        if !self.mode.wants(&case.name) {
            return;
        }
        let be = self.be;
        let mut op = op;
        let prepared = be.estimate(&mut *op, sets).and_then(|est| {
            let l = be.launcher(op, sets, est)?;
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
            let mut g = self.c.benchmark_group(case.op);
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
            self.results.push(Measured { case, samples, sets, per_unit });
        }
    }

    fn tensor(&self, shape: &[usize], shift: usize, scale: f32) -> Result<Tensor<B>> {
        self.pool.tensor(self.be, shape, self.dt, shift, scale)
    }

    fn sets(&self, set_bytes: f64) -> usize {
        sets_for(set_bytes as usize, self.be.cache_bytes())
    }

    // ---- the cases ------------------------------------------------------------------------------

    fn preset_cases(&mut self, p: &Preset) -> Result<()> {
        let Dims { width: d, batch, rows, .. } = Dims::of(p);
        let es = self.dt.size() as f64;
        let case = |op, shape, bound, flop, bytes| Case::new(p, op, shape, bound, flop, bytes);
        let be = self.be;

        self.attention_cases(p, None)?;

        // Memory-bound kernels on the residual stream [rows, D].
        let n = (rows * d) as f64;
        let act_shape = format!("[{rows}, {d}]");
        let modv = self.tensor(&[batch, 6 * d], 11, 0.5)?;
        let modv = &modv;
        {
            let sets = self.sets(2.0 * es * n);
            let x = replicate(be, self.tensor(&[rows, d], 13, 1.5)?, sets)?;
            let mut out: Vec<_> = (0..sets).map(|_| be.alloc(&[rows, d], self.dt)).collect::<Result<_>>()?;
            let c = case("norm-modulate", act_shape.clone(), Bound::Memory, 0.0, 2.0 * es * n);
            self.time(c, sets, Box::new(move |i| be.norm_modulate(&x[i % sets], modv, 0, 1, 1e-6, &mut out[i % sets])));
        }
        for (op, moved) in [("residual-gated", 3.0), ("residual-anchor", 4.0), ("residual-delta", 5.0), ("delta-apply", 3.0)] {
            let sets = self.sets(moved * es * n);
            let mut x = replicate(be, self.tensor(&[rows, d], 17, 1.0)?, sets)?;
            let y = replicate(be, self.tensor(&[rows, d], 19, 1.0)?, sets)?;
            let mut cache = if moved > 3.0 { replicate(be, self.tensor(&[rows, d], 23, 1.0)?, sets)? } else { Vec::new() };
            let what = match op {
                "residual-gated" => "x += gate ⊙ y",
                "residual-anchor" => "x += gate ⊙ y; cache = x",
                "residual-delta" => "x += gate ⊙ y; cache = x − cache",
                _ => "x += Δ",
            };
            let c = case(op, format!("{act_shape}: {what}"), Bound::Memory, 0.0, moved * es * n);
            self.time(
                c,
                sets,
                Box::new(move |i| {
                    let s = i % sets;
                    let gate = if op == "delta-apply" { None } else { Some((modv, 2)) };
                    let cw = match op {
                        "residual-anchor" => CacheWrite::Anchor(&mut cache[s]),
                        "residual-delta" => CacheWrite::Delta(&mut cache[s]),
                        _ => CacheWrite::None,
                    };
                    be.residual(&mut x[s], &y[s], gate, cw)
                }),
            );
        }
        {
            let nf = (rows * 4 * d) as f64;
            let sets = self.sets(2.0 * es * nf);
            let x = replicate(be, self.tensor(&[rows, 4 * d], 29, 1.0)?, sets)?;
            let bias = self.tensor(&[4 * d], 31, 0.1)?;
            let bias = &bias;
            let mut out: Vec<_> = (0..sets).map(|_| be.alloc(&[rows, 4 * d], self.dt)).collect::<Result<_>>()?;
            let c = case("gelu-bias", format!("[{rows}, {}]", 4 * d), Bound::Memory, 0.0, 2.0 * es * nf);
            self.time(c, sets, Box::new(move |i| be.activation(&x[i % sets], Some(bias), Activation::GeluTanh, &mut out[i % sets])));
        }
        {
            let sets = self.sets(2.0 * es * n);
            let x = replicate(be, self.tensor(&[rows, d], 37, 1.0)?, sets)?;
            let mut out: Vec<_> = (0..sets).map(|_| be.alloc(&[rows, d], self.dt)).collect::<Result<_>>()?;
            let c = case("copy", act_shape.clone(), Bound::Memory, 0.0, 2.0 * es * n);
            self.time(c, sets, Box::new(move |i| be.copy(&x[i % sets], &mut out[i % sets])));
        }

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

    /// Self-attention (Q, K, V column slices of one fused projection, as the model) and, for
    /// PixArt, cross-attention to the masked text, with attention kernel `kernel` (None: the
    /// backend's default).
    fn attention_cases(&mut self, p: &Preset, kernel: Option<AttentionKernel>) -> Result<()> {
        let Dims { heads: h, head_dim: hd, width: d, batch, tokens, rows } = Dims::of(p);
        let es = self.dt.size() as f64;
        let case = |op, shape, bound, flop, bytes| Case::new(p, op, shape, bound, flop, bytes);
        let be = self.be;
        let scale = (hd as f32).powf(-0.5);
        // Self-attention: Q, K, V read in place from one fused [rows, 3D] projection (as the model).
        {
            let n = (rows * 3 * d) as f64;
            let bytes = es * (n + (rows * d) as f64);
            let sets = self.sets(bytes);
            let qkv = replicate(be, self.tensor(&[rows, 3 * d], 1, 1.0)?, sets)?;
            let mut out: Vec<_> = (0..sets).map(|_| be.alloc(&[rows, d], self.dt)).collect::<Result<_>>()?;
            let shape = AttentionShape { batch, heads: h, head_dim: hd, nq: tokens, nk: tokens, scale };
            let flop = 4.0 * (batch * h * tokens * tokens * hd) as f64;
            let c = case(op_name("attn-self", kernel), format!("{batch}×{h}×{tokens}×{tokens}, d {hd}"), Bound::Compute, flop, bytes);
            self.time(
                c,
                sets,
                Box::new(move |i| {
                    let s = i % sets;
                    let q = &qkv[s];
                    be.attention(&shape, ColSlice::new(q, 0), ColSlice::new(q, d), ColSlice::new(q, 2 * d), None, &mut out[s])
                }),
            );
        }

        // Cross-attention to the text with its padding mask (PixArt): uncond keeps 1 token, cond 20.
        if p.config.family == Family::PixArt {
            let l = p.text_len.max(1);
            let bytes = es * (2.0 * (rows * d) as f64 + (batch * l * 2 * d) as f64) + 4.0 * (batch * l) as f64;
            let sets = self.sets(bytes);
            let q = replicate(be, self.tensor(&[rows, d], 3, 1.0)?, sets)?;
            let kv = replicate(be, self.tensor(&[batch * l, 2 * d], 5, 1.0)?, sets)?;
            let bias: Vec<f32> = (0..batch).flat_map(|b| (0..l).map(move |j| if j < [1, 20.min(l)][b] { 0.0 } else { -10000.0 })).collect();
            let bias = be.upload(&bias, &[batch, l], DType::F32)?;
            let mut out: Vec<_> = (0..sets).map(|_| be.alloc(&[rows, d], self.dt)).collect::<Result<_>>()?;
            let shape = AttentionShape { batch, heads: h, head_dim: hd, nq: tokens, nk: l, scale };
            let flop = 4.0 * (batch * h * tokens * l * hd) as f64;
            let c = case(op_name("attn-cross", kernel), format!("{batch}×{h}×{tokens}×{l} masked, d {hd}"), Bound::Compute, flop, bytes);
            let bias = &bias;
            self.time(
                c,
                sets,
                Box::new(move |i| {
                    let s = i % sets;
                    be.attention(&shape, ColSlice::new(&q[s], 0), ColSlice::new(&kv[s], 0), ColSlice::new(&kv[s], d), Some(bias), &mut out[s])
                }),
            );
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
        let be = self.be;
        let es = self.dt.size() as f64;
        c.flop = 2.0 * (m * n * k) as f64;
        c.bytes = es * ((m * k + n * k + m * n) as f64 + if bias { n as f64 } else { 0.0 });
        c.shape = format!("{m}×{n}×{k}{}{}", if bias { " +bias" } else { "" }, if act == Activation::GeluTanh { " +GELU" } else { "" });
        let sets = self.sets(c.bytes);
        let x = replicate(be, self.tensor(&[m, k], 41, 1.0)?, sets)?;
        let w = replicate(be, self.tensor(&[n, k], 43, (k as f32).powf(-0.5))?, sets)?;
        let b = if bias { Some(self.tensor(&[n], 47, 0.1)?) } else { None };
        let mut out: Vec<_> = (0..sets).map(|_| be.alloc(&[m, n], self.dt)).collect::<Result<_>>()?;
        let b = &b;
        self.time(c, sets, Box::new(move |i| be.linear(&x[i % sets], &w[i % sets], b.as_ref(), act, &mut out[i % sets])));
        Ok(())
    }

    /// The two ceilings, measured in this run: a large copy (bytes read + written) and a large
    /// square GEMM.
    fn roofline(&mut self, gpu: bool) -> Result<()> {
        let be = self.be;
        let es = self.dt.size();
        let elems = if gpu { 256 << 20 } else { 64 << 20 } / es;
        let x = self.tensor(&[elems], 53, 1.0)?;
        let mut y = be.alloc(&[elems], self.dt)?;
        let bytes = 2.0 * (elems * es) as f64;
        let c = Case {
            name: "roofline-copy".into(),
            op: "roofline-copy",
            preset: "-".into(),
            shape: format!("{} MiB → {} MiB", (elems * es) >> 20, (elems * es) >> 20),
            bound: Bound::Memory,
            flop: 0.0,
            bytes,
        };
        self.time(c, 1, Box::new(|_| be.copy(&x, &mut y)));
        let s = if gpu { 8192 } else { 1024 };
        let c = Case { name: "roofline-gemm".into(), op: "roofline-gemm", preset: "-".into(), shape: String::new(), bound: Bound::Compute, flop: 0.0, bytes: 0.0 };
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
    let mut c = mode.criterion(gpu);
    let mut r = Run { be, mode, c: &mut c, pool: Pool::new(7), dt, results: Vec::new(), errors: Vec::new() };
    r.roofline(gpu)?;
    for p in &presets {
        r.preset_cases(p)?;
    }
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
        "\n{:<32} {:<44} {:>10} {:>10} {:>9} {:>8}",
        "case",
        "shape",
        "median µs",
        "rate",
        "roofline",
        "vs copy"
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
            "{:<32} {:<44} {:>10.2} {:>6.2} {:<7} {:>8} {:>8}",
            c.name,
            c.shape,
            t * 1e6,
            rate,
            unit,
            frac.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
            vs_copy.map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
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
        }));
    }
    if let Some(bw) = copy_bw {
        println!("roofline: copy {:.0} GB/s (bytes read + written)", bw / 1e9);
    }
    if let Some(g) = gemm_rate {
        println!("roofline: {} GEMM {:.2} TFLOP/s", if gpu { "cuBLASLt bf16" } else { "CPU f32 (gemm crate)" }, g / 1e12);
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
            "roofline": {
                "copy_gbps": copy_bw.map(|b| b / 1e9),
                "gemm_tflops": gemm_rate.map(|g| g / 1e12),
                "gemm": if gpu { "cuBLASLt bf16 8192×8192×8192" } else { "gemm crate f32 1024×1024×1024" },
                "copy": if gpu { "device-to-device copy of 256 MiB" } else { "Backend::copy (memcpy) of 64 MiB" },
            },
            "results": rows,
            "errors": errors,
        });
        let path = common::write_json(&format!("kernels-{}.json", B::NAME), &report)?;
        println!("wrote {}", path.display());
    }
    if !errors.is_empty() {
        return Err(deltadit::Error::Unsupported(format!("{} benchmark case(s) failed (listed above)", errors.len())));
    }
    Ok(())
}

fn main() {
    let mode = Mode::from_env();
    common::bench_main(|cpu| run(cpu, &mode, false), |cuda| run(cuda, &mode, true));
}
