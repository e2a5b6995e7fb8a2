//! The CUDA backend on a GPU: every op of the `Backend` trait against the f32 CPU reference on
//! the same dtype-rounded random inputs (never zeros; outputs NaN-poisoned first) in bf16 and
//! f16, the attention op at head dims 64/72/128 with masks and cross-attention (and the wgmma
//! kernel at head dim 72 on compute capability 9.0), the golden cases
//! of tests/data through the whole model in bf16, and CUDA graph replay.
//!
//! Without a GPU (no driver, no device) every test prints `skipped: <reason>` and passes.
//! Tests share one backend per dtype and run one at a time (a mutex): there is one GPU.
//!
//! Test data: `$DELTADIT_TEST_DATA` when set (the GPU bundle of scripts/gpu-build.sh sets it),
//! else `tests/data` of the source tree. `DELTADIT_CUDA_SYNC=1` makes a failing kernel name
//! itself. Run with `--nocapture` to see the measured errors.

mod common;

use common::{golden, rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::cuda::{self, Cuda, CudaOptions, DeviceInfo};
use deltadit::backend::AttentionKernel;
use deltadit::backend::{Activation, AttentionShape, CacheWrite, Cfg, ColSlice, SchedulerUpdate};
use deltadit::{Backend, DType, Tensor};
use std::sync::{Mutex, MutexGuard, OnceLock};

const DTYPES: [DType; 2] = [DType::BF16, DType::F16];
/// ‖cuda − cpu‖/‖cpu‖ for ops with bf16/f16 outputs.
const TOL: f64 = 1e-2;
/// Whole-model runs in bf16 against diffusers' f32 output.
const GOLDEN_TOL: f64 = 2e-2;

// ---- setup ---------------------------------------------------------------------------------------

static LOCK: Mutex<()> = Mutex::new(());
static PROBE: OnceLock<Result<DeviceInfo, String>> = OnceLock::new();
static BF16: OnceLock<Cuda> = OnceLock::new();
static F16: OnceLock<Cuda> = OnceLock::new();

/// Options of the test backends: poisoned allocations, graphs on, the rest from the environment.
fn test_options(graphs: bool) -> CudaOptions {
    deltadit::internals::env::cuda_options().with_poison(true).with_graphs(graphs)
}

fn new_backend(dt: DType, graphs: bool) -> Cuda {
    Cuda::with_options(0, dt, test_options(graphs))
        .unwrap_or_else(|e| panic!("a GPU is present but the CUDA backend fails: {e}"))
}

/// The GPU, or None after printing why the test is skipped.
fn probe() -> Option<&'static DeviceInfo> {
    match PROBE.get_or_init(|| {
        let r = cuda::probe().map_err(|e| e.chain());
        if let Ok(info) = &r {
            eprintln!("{info}");
        }
        r
    }) {
        Ok(info) => Some(info),
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

struct Gpu {
    _lock: MutexGuard<'static, ()>,
    be: &'static Cuda,
    cpu: Cpu,
}

fn gpu(dt: DType) -> Option<Gpu> {
    probe()?;
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cell = if dt == DType::BF16 { &BF16 } else { &F16 };
    let be = cell.get_or_init(|| new_backend(dt, true));
    Some(Gpu { _lock: lock, be, cpu: Cpu::default() })
}

/// Exclusive use of the GPU without a shared backend (tests that build their own).
fn gpu_lock() -> Option<MutexGuard<'static, ()>> {
    probe()?;
    Some(LOCK.lock().unwrap_or_else(|e| e.into_inner()))
}

macro_rules! gpu_or_skip {
    ($dt:expr) => {
        match gpu($dt) {
            Some(g) => g,
            None => return,
        }
    };
}

/// Random normal data `offset + std·N(0, 1)` rounded to `dt`, never exactly zero.
fn data(rng: &mut Rng, n: usize, std: f32, offset: f32, dt: DType) -> Vec<f32> {
    rng.normal_vec(n, std)
        .into_iter()
        .map(|v| {
            let r = dt.round(offset + v);
            if r == 0.0 {
                dt.round(std * 0.5)
            } else {
                r
            }
        })
        .collect()
}

/// The same values on both backends: `dt` on the GPU, f32 on the CPU.
struct Pair {
    g: Tensor<Cuda>,
    c: Tensor<Cpu>,
}

impl Gpu {
    fn pair(&self, v: Vec<f32>, shape: &[usize], dt: DType) -> Pair {
        Pair { g: self.be.upload(&v, shape, dt).unwrap(), c: self.cpu.upload(&v, shape, DType::F32).unwrap() }
    }

    fn rand(&self, rng: &mut Rng, shape: &[usize], dt: DType, std: f32, offset: f32) -> Pair {
        self.pair(data(rng, shape.iter().product(), std, offset, dt), shape, dt)
    }

    /// NaN-poisoned outputs on both backends.
    fn outputs(&self, shape: &[usize], dt: DType) -> (Tensor<Cuda>, Tensor<Cpu>) {
        let mut g = self.be.alloc(shape, dt).unwrap();
        self.be.fill_bits(&mut g, dt.nan_bits()).unwrap();
        let mut c = self.cpu.alloc(shape, DType::F32).unwrap();
        self.cpu.fill_bits(&mut c, DType::F32.nan_bits()).unwrap();
        (g, c)
    }

    /// Asserts ‖got − want‖/‖want‖ ≤ tol with no NaN; returns the error.
    #[track_caller]
    fn check(&self, what: &str, got: &Tensor<Cuda>, want: &Tensor<Cpu>, tol: f64) -> f64 {
        let (g, w) = (self.be.download(got).unwrap(), self.cpu.download(want).unwrap());
        close(what, &g, &w, tol)
    }
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or overflow)", got[i]);
    }
    let e = rel_l2(got, want);
    eprintln!("{what}: rel err {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
    e
}

// ---- detection and errors -----------------------------------------------------------------------

#[test]
fn probe_and_constructor_errors() {
    // Runs with or without a GPU: never panics, and the errors say why.
    let msg = Cuda::new(0, DType::F32).unwrap_err().to_string();
    assert!(msg.contains("bf16 or f16"), "{msg}");
    match cuda::probe() {
        Err(reason) => {
            let msg = Cuda::new(0, DType::BF16).unwrap_err().to_string();
            assert!(msg.contains("no CUDA"), "constructor error `{msg}` (probe: {reason})");
            assert!(!cuda::available());
            println!("skipped: {reason} (constructor says: {msg})");
        }
        Ok(info) => {
            assert!(info.compute_capability.0 >= 8, "{info}");
            let _lock = gpu_lock();
            let n = cuda::device_count().unwrap();
            let msg = Cuda::new(n, DType::BF16).unwrap_err().to_string();
            assert!(msg.contains(&format!("no CUDA device {n}")), "{msg}");
            assert!(cuda::kernels_built(), "the GPU test binary was built without nvcc: kernels missing");
            assert!(cuda::available());
        }
    }
}

#[test]
fn memory_round_trips() {
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let g = gpu_or_skip!(if dt == DType::F16 { DType::F16 } else { DType::BF16 });
        let mut rng = Rng::new(1);
        for n in [1usize, 7, 1000, 4099] {
            let v = data(&mut rng, n, 3.0, 0.5, dt);
            let mut t = g.be.upload(&v, &[n], dt).unwrap();
            assert_eq!(g.be.download(&t).unwrap(), v, "upload/download {dt} n={n}");
            let w = data(&mut rng, n, 1.0, 0.0, dt);
            g.be.write(&mut t, &w).unwrap();
            assert_eq!(g.be.download(&t).unwrap(), w, "write {dt} n={n}");
            // copy and copy_range
            let mut u = g.be.alloc(&[n], dt).unwrap();
            g.be.copy(&t, &mut u).unwrap();
            assert_eq!(g.be.download(&u).unwrap(), w, "copy {dt} n={n}");
            if n > 3 {
                let mut z = g.be.upload(&v, &[n], dt).unwrap();
                g.be.copy_range(&t, 1, &mut z, 2, n - 3).unwrap();
                let mut want = v.clone();
                want[2..n - 1].copy_from_slice(&w[1..n - 2]);
                assert_eq!(g.be.download(&z).unwrap(), want, "copy_range {dt} n={n}");
            }
            // poisoned allocations and fill_bits
            let p = g.be.alloc(&[n], dt).unwrap();
            assert!(g.be.download(&p).unwrap().iter().all(|x| x.is_nan()), "alloc must poison {dt}");
            g.be.fill_bits(&mut u, 0).unwrap();
            assert!(g.be.download(&u).unwrap().iter().all(|&x| x == 0.0), "fill_bits 0 {dt}");
        }
        // Errors, not panics, for wrong sizes.
        let mut t = g.be.alloc(&[4], dt).unwrap();
        assert!(g.be.write(&mut t, &[1.0; 5]).is_err());
        let mut u = g.be.alloc(&[5], dt).unwrap();
        assert!(g.be.copy(&t, &mut u).is_err());
        assert!(g.be.copy_range(&t, 2, &mut u, 0, 3).is_err());
    }
}

// ---- linear (cuBLASLt) --------------------------------------------------------------------------

/// (m, n, k): timestep MLP, adaLN, fused QKV, MLP up/down, output projection, patch embedding,
/// small and unaligned sizes, one large GEMM.
const LINEAR_SHAPES: &[(usize, usize, usize)] = &[
    (1, 256, 256),
    (2, 864, 144),
    (7, 144, 144),
    (257, 432, 144),
    (130, 576, 144),
    (33, 144, 576),
    (5, 32, 144),
    (512, 1152, 16),
    (3, 40, 24),
    (5, 33, 17),
    (1024, 1152, 1152),
];

#[test]
fn linear_epilogues_shapes() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, &(m, n, k)) in LINEAR_SHAPES.iter().enumerate() {
            let mut rng = Rng::new(100 + i as u64);
            let x = g.rand(&mut rng, &[m, k], dt, 1.0, 0.0);
            let w = g.rand(&mut rng, &[n, k], dt, 1.0 / (k as f32).sqrt(), 0.0);
            let b = g.rand(&mut rng, &[n], dt, 0.5, 0.0);
            for act in [Activation::None, Activation::GeluTanh, Activation::Silu] {
                for with_bias in [true, false] {
                    let (mut og, mut oc) = g.outputs(&[m, n], dt);
                    let (bg, bc) = if with_bias { (Some(&b.g), Some(&b.c)) } else { (None, None) };
                    g.be.linear(&x.g, &w.g, bg, act, &mut og)
                        .unwrap_or_else(|e| panic!("linear [{m}, {k}]·[{n}, {k}]ᵀ {act:?}: {e}"));
                    g.cpu.linear(&x.c, &w.c, bc, act, &mut oc).unwrap();
                    g.check(&format!("linear {dt} [{m},{k}]x[{n},{k}]T {act:?} bias={with_bias}"), &og, &oc, TOL);
                }
            }
        }
    }
}

#[test]
fn linear_rejects_bad_operands() {
    let g = gpu_or_skip!(DType::BF16);
    let x = g.be.alloc(&[4, 16], DType::BF16).unwrap();
    let w = g.be.alloc(&[8, 12], DType::BF16).unwrap();
    let mut o = g.be.alloc(&[4, 8], DType::BF16).unwrap();
    assert!(g.be.linear(&x, &w, None, Activation::None, &mut o).is_err());
    let w = g.be.alloc(&[8, 16], DType::BF16).unwrap();
    let b = g.be.alloc(&[8], DType::F32).unwrap();
    assert!(g.be.linear(&x, &w, Some(&b), Activation::None, &mut o).is_err(), "bias dtype must match");
    let xf = g.be.alloc(&[4, 16], DType::F32).unwrap();
    let wf = g.be.alloc(&[8, 16], DType::F32).unwrap();
    let mut of = g.be.alloc(&[4, 8], DType::F32).unwrap();
    assert!(g.be.linear(&xf, &wf, None, Activation::None, &mut of).is_err(), "f32 GEMMs are not supported");
}

// ---- norm_modulate, residual, element-wise -------------------------------------------------------

const NORM_SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1152), (2, 7, 144), (3, 257, 1152), (2, 7, 36), (3, 5, 100), (2, 3, 4096), (1, 3, 1001), (2, 2, 13000)];

#[test]
fn norm_modulate_shapes() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, &(batch, tokens, dim)) in NORM_SHAPES.iter().enumerate() {
            let mut rng = Rng::new(200 + i as u64);
            let rows = batch * tokens;
            let x = g.rand(&mut rng, &[rows, dim], dt, 1.5, 3.0);
            let m = g.rand(&mut rng, &[batch, 6 * dim], dt, 0.5, 0.0);
            let (mut og, mut oc) = g.outputs(&[rows, dim], dt);
            g.be.norm_modulate(&x.g, &m.g, 3, 4, 1e-6, &mut og).unwrap();
            g.cpu.norm_modulate(&x.c, &m.c, 3, 4, 1e-6, &mut oc).unwrap();
            g.check(&format!("norm_modulate {dt} [{batch}·{tokens}, {dim}]"), &og, &oc, TOL);
        }
    }
}

const RESIDUAL_SHAPES: &[(usize, usize, usize)] = &[(1, 1, 1152), (2, 7, 144), (3, 257, 1152), (2, 7, 36), (3, 5, 100)];

#[test]
fn residual_gates_and_cache_writes() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
            let mut rng = Rng::new(300 + i as u64);
            let rows = batch * tokens;
            let what = format!("{dt} [{batch}·{tokens}, {dim}]");
            let mut x = g.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y1 = g.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y2 = g.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y3 = g.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let m = g.rand(&mut rng, &[batch, 6 * dim], dt, 1.0, 0.0);
            let (mut cg, mut cc) = g.outputs(&[rows, dim], dt);

            g.be.residual(&mut x.g, &y1.g, Some((&m.g, 2)), CacheWrite::None).unwrap();
            g.cpu.residual(&mut x.c, &y1.c, Some((&m.c, 2)), CacheWrite::None).unwrap();
            g.check(&format!("residual gated {what}"), &x.g, &x.c, TOL);

            g.be.residual(&mut x.g, &y2.g, Some((&m.g, 5)), CacheWrite::Anchor(&mut cg)).unwrap();
            g.cpu.residual(&mut x.c, &y2.c, Some((&m.c, 5)), CacheWrite::Anchor(&mut cc)).unwrap();
            g.check(&format!("residual anchor x {what}"), &x.g, &x.c, TOL);
            let x1 = g.be.download(&x.g).unwrap();
            assert_eq!(g.be.download(&cg).unwrap(), x1, "anchor: cache = stored x_out, bit for bit ({what})");

            g.be.residual(&mut x.g, &y3.g, None, CacheWrite::Delta(&mut cg)).unwrap();
            g.cpu.residual(&mut x.c, &y3.c, None, CacheWrite::Delta(&mut cc)).unwrap();
            g.check(&format!("residual delta x {what}"), &x.g, &x.c, TOL);
            let x2 = g.be.download(&x.g).unwrap();
            let want: Vec<f32> = x2.iter().zip(&x1).map(|(a, b)| dt.round(a - b)).collect();
            assert_eq!(g.be.download(&cg).unwrap(), want, "delta: cache = round(x_out − anchor) ({what})");
        }
    }
}

const EW_SHAPES: &[(usize, usize)] = &[(1, 1152), (7, 144), (257, 1152), (7, 36), (5, 100), (3, 4608)];

#[test]
fn activation_and_add_bcast() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, &(rows, cols)) in EW_SHAPES.iter().enumerate() {
            let mut rng = Rng::new(400 + i as u64);
            let x = g.rand(&mut rng, &[rows, cols], dt, 2.0, 0.0);
            let b = g.rand(&mut rng, &[cols], dt, 1.0, 0.0);
            for act in [Activation::GeluTanh, Activation::Silu, Activation::None] {
                for with_bias in [true, false] {
                    let (mut og, mut oc) = g.outputs(&[rows, cols], dt);
                    let (bg, bc) = if with_bias { (Some(&b.g), Some(&b.c)) } else { (None, None) };
                    g.be.activation(&x.g, bg, act, &mut og).unwrap();
                    g.cpu.activation(&x.c, bc, act, &mut oc).unwrap();
                    g.check(&format!("activation {act:?} {dt} bias={with_bias} [{rows}, {cols}]"), &og, &oc, TOL);
                }
            }
            let mut y = g.rand(&mut rng, &[rows, cols], dt, 1.0, 0.0);
            g.be.add_bcast(&mut y.g, &b.g).unwrap();
            g.cpu.add_bcast(&mut y.c, &b.c).unwrap();
            g.check(&format!("add_bcast {dt} [{rows}, {cols}]"), &y.g, &y.c, TOL);
        }
    }
}

#[test]
fn timestep_embedding_variants() {
    let ts = [0.0f32, 1.0, 500.0, 999.0];
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (flip, shift, dim) in [(true, 0.0f32, 256usize), (true, 1.0, 256), (false, 0.0, 64)] {
            let t = g.pair(ts.to_vec(), &[ts.len()], DType::F32);
            let (mut og, mut oc) = g.outputs(&[ts.len(), dim], dt);
            g.be.timestep_embedding(&t.g, flip, shift, &mut og).unwrap();
            g.cpu.timestep_embedding(&t.c, flip, shift, &mut oc).unwrap();
            g.check(&format!("timestep_embedding {dt} flip={flip} shift={shift} dim={dim}"), &og, &oc, TOL);
        }
    }
}

#[test]
fn patchify_unpatchify() {
    const SHAPES: &[(usize, usize, usize, usize, usize)] =
        &[(2, 4, 8, 12, 2), (1, 3, 6, 4, 2), (3, 4, 4, 4, 1), (1, 2, 8, 4, 4), (2, 4, 64, 64, 2)];
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, &(b, ch, h, w, p)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(500 + i as u64);
            let lat = g.rand(&mut rng, &[b, ch, h, w], DType::F32, 1.0, 0.0);
            let tokens = b * (h / p) * (w / p);
            let (mut pg, mut pc) = g.outputs(&[tokens, ch * p * p], dt);
            g.be.patchify(&lat.g, p, &mut pg).unwrap();
            g.cpu.patchify(&lat.c, p, &mut pc).unwrap();
            let want: Vec<f32> = g.cpu.download(&pc).unwrap().iter().map(|&v| dt.round(v)).collect();
            assert_eq!(g.be.download(&pg).unwrap(), want, "patchify {dt} {:?}", (b, ch, h, w, p));

            let tok = g.rand(&mut rng, &[tokens, ch * p * p], dt, 1.0, 0.0);
            let (mut ug, mut uc) = g.outputs(&[b, ch, h, w], DType::F32);
            g.be.unpatchify(&tok.g, p, &mut ug).unwrap();
            g.cpu.unpatchify(&tok.c, p, &mut uc).unwrap();
            assert_eq!(
                g.be.download(&ug).unwrap(),
                g.cpu.download(&uc).unwrap(),
                "unpatchify {dt} {:?}",
                (b, ch, h, w, p)
            );
        }
    }
}

#[test]
fn cfg_combine_orders() {
    let g = gpu_or_skip!(DType::BF16);
    let (batch, ch, ch_out, h, w) = (2, 4, 8, 6, 10);
    for cfg in [Cfg::Off, Cfg::On { scale: 4.5, cond_first: true }, Cfg::On { scale: 7.0, cond_first: false }] {
        let n = if cfg == Cfg::Off { batch } else { 2 * batch };
        let mut rng = Rng::new(600);
        let out = g.rand(&mut rng, &[n, ch_out, h, w], DType::F32, 1.0, 0.0);
        let (mut eg, mut ec) = g.outputs(&[batch, ch, h, w], DType::F32);
        g.be.cfg_combine(&out.g, cfg, &mut eg).unwrap();
        g.cpu.cfg_combine(&out.c, cfg, &mut ec).unwrap();
        // f32 arithmetic; the GPU may contract into FMAs.
        g.check(&format!("cfg_combine {cfg:?}"), &eg, &ec, 1e-6);
    }
}

#[test]
fn scheduler_step_kinds() {
    let g = gpu_or_skip!(DType::BF16);
    let coeffs = [0.83f32, 0.57, 1.07, 0.31, 0.62, 0.5];
    for n in [576usize, 1001, 2 * 4 * 128 * 128] {
        for &(kind, with_prev, with_noise) in common::SCHEDULER_CASES {
            let mut rng = Rng::new(700 + n as u64);
            let u = SchedulerUpdate { kind, c: coeffs };
            let mut x = g.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let eps = g.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let mut prev = g.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let noise = g.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let (pg, pc) = if with_prev { (Some(&mut prev.g), Some(&mut prev.c)) } else { (None, None) };
            let (ng, nc) = if with_noise { (Some(&noise.g), Some(&noise.c)) } else { (None, None) };
            g.be.scheduler_step(&u, &mut x.g, &eps.g, pg, ng).unwrap();
            g.cpu.scheduler_step(&u, &mut x.c, &eps.c, pc, nc).unwrap();
            let what = format!("scheduler_step {kind:?} n={n} prev={with_prev} noise={with_noise}");
            g.check(&what, &x.g, &x.c, 1e-6);
            if with_prev {
                g.check(&format!("{what} x0_prev"), &prev.g, &prev.c, 1e-6);
            }
        }
    }
}

#[test]
fn rel_l1_probe() {
    for dt in [DType::BF16, DType::F16] {
        let g = gpu_or_skip!(dt);
        for (i, &n) in [1usize, 9, 1000, 2 * 4096 * 144 + 3].iter().enumerate() {
            let mut rng = Rng::new(800 + i as u64);
            for tdt in [dt, DType::F32] {
                let a = g.rand(&mut rng, &[n], tdt, 1.0, 0.0);
                let b = g.rand(&mut rng, &[n], tdt, 1.0, 0.0);
                let (dg, ng) = g.be.rel_l1(&a.g, &b.g).unwrap();
                let (dc, nc) = g.cpu.rel_l1(&a.c, &b.c).unwrap();
                let what = format!("rel_l1 {tdt} n={n}");
                assert!(
                    ((dg - dc) / dc).abs() <= 1e-3 && ((ng - nc) / nc).abs() <= 1e-3,
                    "{what}: ({dg}, {ng}) vs ({dc}, {nc})"
                );
            }
        }
    }
}

// ---- attention -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Mask {
    None,
    /// keeps each key with probability p (at least one per sample)
    Random(f32),
    /// keeps exactly one key per sample (first, last, middle)
    KeepOne,
}

#[derive(Clone, Copy, Debug)]
struct AttnCase {
    dt: DType,
    d: usize,
    batch: usize,
    heads: usize,
    nq: usize,
    nk: usize,
    mask: Mask,
}

fn attn(dt: DType, d: usize, batch: usize, heads: usize, nq: usize, nk: usize, mask: Mask) -> AttnCase {
    AttnCase { dt, d, batch, heads, nq, nk, mask }
}

/// Runs a case on the GPU and the CPU reference; self-attention (nq = nk) reads Q, K, V as column
/// slices of one fused `[rows, 3·width + 16]` tensor (offsets 8, width + 8, 2·width + 16),
/// cross-attention reads K and V from one `[rows, 2·width]` tensor.
fn attention_case(g: &Gpu, c: AttnCase, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let width = c.heads * c.d;
    let shape = AttentionShape {
        batch: c.batch,
        heads: c.heads,
        head_dim: c.d,
        nq: c.nq,
        nk: c.nk,
        scale: (c.d as f32).powf(-0.5),
    };
    let bias = match c.mask {
        Mask::None => None,
        Mask::Random(p) => {
            let mut rows = vec![0.0f32; c.batch * c.nk];
            for row in rows.chunks_mut(c.nk) {
                row.iter_mut().for_each(|x| *x = if rng.uniform() < p { 0.0 } else { -10000.0 });
                if row.iter().all(|&x| x != 0.0) {
                    row[rng.below(c.nk)] = 0.0;
                }
            }
            Some(rows)
        }
        Mask::KeepOne => {
            let mut rows = vec![-10000.0f32; c.batch * c.nk];
            for (b, row) in rows.chunks_mut(c.nk).enumerate() {
                row[[0, c.nk - 1, c.nk / 2][b % 3]] = 0.0;
            }
            Some(rows)
        }
    };
    let bias = bias.map(|b| g.pair(b, &[c.batch, c.nk], DType::F32));
    let (mut og, mut oc) = g.outputs(&[c.batch * c.nq, width], c.dt);
    let what = format!("{c:?}");
    if c.nq == c.nk {
        let cols = 3 * width + 16;
        let qkv = g.rand(&mut rng, &[c.batch * c.nq, cols], c.dt, 1.5, 0.0);
        let [q, k, v] = [8, width + 8, 2 * width + 16];
        g.be.attention(
            &shape,
            ColSlice::new(&qkv.g, q),
            ColSlice::new(&qkv.g, k),
            ColSlice::new(&qkv.g, v),
            bias.as_ref().map(|b| &b.g),
            &mut og,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        g.cpu
            .attention(
                &shape,
                ColSlice::new(&qkv.c, q),
                ColSlice::new(&qkv.c, k),
                ColSlice::new(&qkv.c, v),
                bias.as_ref().map(|b| &b.c),
                &mut oc,
            )
            .unwrap();
    } else {
        let qt = g.rand(&mut rng, &[c.batch * c.nq, width], c.dt, 1.5, 0.0);
        let kv = g.rand(&mut rng, &[c.batch * c.nk, 2 * width], c.dt, 1.2, 0.0);
        g.be.attention(
            &shape,
            ColSlice::new(&qt.g, 0),
            ColSlice::new(&kv.g, 0),
            ColSlice::new(&kv.g, width),
            bias.as_ref().map(|b| &b.g),
            &mut og,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        g.cpu
            .attention(
                &shape,
                ColSlice::new(&qt.c, 0),
                ColSlice::new(&kv.c, 0),
                ColSlice::new(&kv.c, width),
                bias.as_ref().map(|b| &b.c),
                &mut oc,
            )
            .unwrap();
    }
    g.check(&format!("attention {what}"), &og, &oc, TOL)
}

#[test]
fn attention_self_odd_lengths() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, d) in [64, 72, 128].into_iter().enumerate() {
            for (j, n) in [1usize, 5, 63, 64, 65, 130, 257, 1024].into_iter().enumerate() {
                attention_case(&g, attn(dt, d, 1, 2, n, n, Mask::None), (i * 10 + j) as u64);
            }
            attention_case(&g, attn(dt, d, 1, 2, 2048, 2048, Mask::None), 90 + i as u64);
        }
    }
}

#[test]
fn attention_cross_and_masks() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, d) in [64, 72, 128].into_iter().enumerate() {
            let s = 100 + 20 * i as u64;
            // one key (the empty negative prompt), 120 text tokens with padding, keep-one masks
            attention_case(&g, attn(dt, d, 2, 2, 130, 1, Mask::None), s);
            attention_case(&g, attn(dt, d, 2, 2, 1024, 120, Mask::Random(0.3)), s + 1);
            attention_case(&g, attn(dt, d, 3, 1, 257, 120, Mask::KeepOne), s + 2);
            attention_case(&g, attn(dt, d, 3, 2, 65, 1, Mask::KeepOne), s + 3);
            attention_case(&g, attn(dt, d, 2, 1, 1, 120, Mask::Random(0.5)), s + 4);
            attention_case(&g, attn(dt, d, 3, 3, 70, 70, Mask::Random(0.7)), s + 5);
            attention_case(&g, attn(dt, d, 3, 1, 65, 65, Mask::KeepOne), s + 6);
        }
    }
}

/// Small attention grids for compute-sanitizer (racecheck is slow on large grids; scripts/gpu-run.sh
/// runs racecheck on the `sanitize_` tests and the small op tests).
#[test]
fn sanitize_attention_small() {
    for dt in DTYPES {
        let g = gpu_or_skip!(dt);
        for (i, d) in [64, 72, 128].into_iter().enumerate() {
            let s = 150 + 10 * i as u64;
            attention_case(&g, attn(dt, d, 1, 1, 65, 65, Mask::None), s);
            attention_case(&g, attn(dt, d, 2, 1, 33, 120, Mask::KeepOne), s + 1);
            attention_case(&g, attn(dt, d, 1, 2, 130, 130, Mask::Random(0.5)), s + 2);
        }
    }
}

// ---- attention on wgmma (kernels/attention_sm90a.cu, head dim 72, compute capability 9.0) ----------

/// Switches the shared backend to the wgmma kernel for the guard's lifetime; None (after saying
/// why) on GPUs without sm_90a, where choosing it must fail with an error naming the requirement.
struct WgmmaOn<'a>(&'a Cuda);

impl Drop for WgmmaOn<'_> {
    fn drop(&mut self) {
        self.0.set_attention_kernel(AttentionKernel::Mma).unwrap();
    }
}

fn wgmma_on<'a>(g: &'a Gpu, k: AttentionKernel) -> Option<WgmmaOn<'a>> {
    if !g.be.supports_attention_kernel(k) {
        let e = g.be.set_attention_kernel(k).unwrap_err().to_string();
        assert!(e.contains("compute capability 9.0"), "{e}");
        println!("skipped: {e}");
        return None;
    }
    g.be.set_attention_kernel(k).unwrap();
    println!("attention kernel {}", k.name());
    Some(WgmmaOn(g.be))
}

/// (dtype, kernel) pairs of the wgmma tests: every wgmma kernel, or those DELTADIT_WGMMA_KERNELS
/// lists (scripts/gpu-run.sh runs each kernel in a process of its own).
fn wgmma_cases() -> Vec<(DType, AttentionKernel)> {
    let ks = deltadit::internals::env::wgmma_kernels("DELTADIT_WGMMA_KERNELS").unwrap();
    DTYPES.into_iter().flat_map(|dt| ks.iter().map(move |&k| (dt, k))).collect()
}

#[test]
fn attention_wgmma_d72() {
    for (dt, k) in wgmma_cases() {
        let g = gpu_or_skip!(dt);
        let Some(_on) = wgmma_on(&g, k) else { return };
        for (j, n) in [1usize, 5, 63, 64, 65, 127, 128, 129, 257, 1024, 2048].into_iter().enumerate() {
            attention_case(&g, attn(dt, 72, 1, 2, n, n, Mask::None), 700 + j as u64);
        }
        attention_case(&g, attn(dt, 72, 2, 3, 4096, 4096, Mask::None), 720);
        attention_case(&g, attn(dt, 72, 2, 2, 130, 1, Mask::None), 721);
        attention_case(&g, attn(dt, 72, 2, 2, 1024, 120, Mask::Random(0.3)), 722);
        attention_case(&g, attn(dt, 72, 3, 1, 257, 120, Mask::KeepOne), 723);
        attention_case(&g, attn(dt, 72, 2, 1, 1, 120, Mask::Random(0.5)), 724);
        attention_case(&g, attn(dt, 72, 3, 3, 70, 70, Mask::Random(0.7)), 725);
        attention_case(&g, attn(dt, 72, 1, 2, 200, 333, Mask::None), 726);
        attention_case(&g, attn(dt, 72, 2, 1, 385, 385, Mask::None), 727); // 192-query tiles: 2 full + 1 row
    }
}

/// Small wgmma grids for compute-sanitizer (memcheck and racecheck run the `sanitize_` tests).
#[test]
fn sanitize_attention_wgmma_small() {
    for (dt, k) in wgmma_cases() {
        let g = gpu_or_skip!(dt);
        let Some(_on) = wgmma_on(&g, k) else { return };
        attention_case(&g, attn(dt, 72, 1, 1, 65, 65, Mask::None), 750);
        attention_case(&g, attn(dt, 72, 2, 1, 33, 120, Mask::KeepOne), 751);
        attention_case(&g, attn(dt, 72, 1, 2, 130, 130, Mask::Random(0.5)), 752);
    }
}

// ---- golden cases through the whole model ---------------------------------------------------------

fn forward_case(name: &str) {
    let g = gpu_or_skip!(DType::BF16);
    let e = golden::forward_case(g.be, name);
    assert!(e <= GOLDEN_TOL, "forward {name} bf16: rel err {e:.3e} > {GOLDEN_TOL:.0e}");
}

#[test]
fn golden_forward_pixart_tiny() {
    forward_case("pixart-tiny");
}

#[test]
fn golden_forward_pixart_nonsquare_micro_conditions() {
    forward_case("pixart-tiny-nonsquare-ar");
}

#[test]
fn golden_forward_pixart_bf16_weights() {
    forward_case("pixart-tiny-bf16-weights");
}

#[test]
fn golden_forward_dit_tiny() {
    forward_case("dit-tiny");
}

/// A sampling case in bf16 (timesteps and, where the case has them, `blocks_run` are checked).
fn sampling_case(name: &str) {
    let Some(g) = gpu(DType::BF16) else { return };
    let (e, _) = golden::sampling_case(g.be, name);
    assert!(e <= GOLDEN_TOL, "sampling {name} bf16: final latents rel err {e:.3e} > {GOLDEN_TOL:.0e}");
}

#[test]
fn golden_sampling_pixart_dpm_solver_20_cfg() {
    sampling_case("pixart-tiny-dpmpp20-cfg");
}

#[test]
fn golden_sampling_dit_ddim_10_cfg() {
    sampling_case("dit-tiny-ddim10-cfg");
}

#[test]
fn golden_sampling_pixart_lcm_4_injected_noise() {
    sampling_case("pixart-tiny-lcm4");
}

#[test]
fn golden_sampling_pixart_delta_dit_n2_nc4_b12() {
    sampling_case("pixart-tiny-delta-n2-nc4-b12");
}

// ---- CUDA graphs ---------------------------------------------------------------------------------

/// Whole sampling runs with graphs on and off give the same latents, and the graphs were used.
#[test]
fn graph_replay_matches_eager_sampling() {
    let Some(_lock) = gpu_lock() else { return };
    for name in ["pixart-tiny-delta-n2-nc4-b12", "dit-tiny-ddim10-cfg"] {
        let on = new_backend(DType::BF16, true);
        let off = new_backend(DType::BF16, false);
        let a = golden::sampling_case(&on, name).1;
        let b = golden::sampling_case(&off, name).1;
        let stats = on.graph_stats();
        eprintln!("{name}: graph stats {stats:?}");
        assert!(stats.captures > 0 && stats.replays > 0, "{name}: graphs were not used: {stats:?}");
        assert_eq!(stats.failed_captures, 0, "{name}: {stats:?}");
        assert_eq!(off.graph_stats().captures, 0);
        for (i, (x, y)) in a.latents_per_step.iter().zip(&b.latents_per_step).enumerate() {
            let e = rel_l2(x, y);
            assert!(e <= 1e-3, "{name} step {i}: graphs on vs off differ by {e:.3e}");
        }
        let same = a.latents.iter().zip(&b.latents).filter(|(x, y)| x == y).count();
        eprintln!("{name}: {same}/{} final latents bit-identical with graphs on and off", a.latents.len());
        assert_eq!(a.blocks_run, b.blocks_run);
    }
}

/// A replayed graph follows the unit when its buffers change (a stale graph never runs), sees
/// host writes made between replays, and units with host operations stay eager.
#[test]
fn graph_units_checked_replay() {
    let Some(_lock) = gpu_lock() else { return };
    let be = new_backend(DType::BF16, true);
    let cpu = Cpu::default();
    let dt = DType::BF16;
    let (rows, cols) = (33, 144);
    let mut rng = Rng::new(900);
    let mut xs: Vec<Vec<f32>> = (0..3).map(|_| data(&mut rng, rows * cols, 2.0, 0.0, dt)).collect();
    let mut x = be.upload(&xs[0], &[rows, cols], dt).unwrap();
    let mut outs = [be.alloc(&[rows, cols], dt).unwrap(), be.alloc(&[rows, cols], dt).unwrap()];
    let reference = |v: &[f32]| {
        let xc = cpu.upload(v, &[rows, cols], DType::F32).unwrap();
        let mut oc = cpu.alloc(&[rows, cols], DType::F32).unwrap();
        cpu.activation(&xc, None, Activation::GeluTanh, &mut oc).unwrap();
        cpu.download(&oc).unwrap()
    };
    // calls 0–3 write outs[0] (warm-up, capture, replays), a host write of new input data between
    // calls 2 and 3, then calls 4–5 write outs[1]: the stored graph is stale and must not run.
    for call in 0..6 {
        if call == 3 {
            xs[0] = xs[1].clone();
            be.write(&mut x, &xs[0]).unwrap();
        }
        let o = if call < 4 { 0 } else { 1 };
        be.fill_bits(&mut outs[o], dt.nan_bits()).unwrap();
        let out = &mut outs[o];
        be.graph_run("unit", &mut || be.activation(&x, None, Activation::GeluTanh, out)).unwrap();
        let got = be.download(&outs[o]).unwrap();
        close(&format!("graph unit call {call} -> out {o}"), &got, &reference(&xs[0]), TOL);
    }
    let s = be.graph_stats();
    eprintln!("unit stats {s:?}");
    assert!(s.captures >= 2 && s.replays >= 2 && s.stale >= 1, "{s:?}");

    // A unit with a host operation (rel_l1 reads two floats back) stays eager and stays right.
    let y = be.upload(&xs[2], &[rows, cols], dt).unwrap();
    for _ in 0..3 {
        let mut r = (0.0, 0.0);
        be.graph_run("probe", &mut || {
            r = be.rel_l1(&x, &y)?;
            Ok(())
        })
        .unwrap();
        let (xc, yc) = (
            cpu.upload(&xs[0], &[rows, cols], DType::F32).unwrap(),
            cpu.upload(&xs[2], &[rows, cols], DType::F32).unwrap(),
        );
        let want = cpu.rel_l1(&xc, &yc).unwrap();
        assert!(((r.0 - want.0) / want.0).abs() < 1e-3, "probe unit: {r:?} vs {want:?}");
    }
    let s2 = be.graph_stats();
    assert!(s2.eager >= 2 && s2.captures == s.captures, "{s2:?}");

    // A unit that fails returns its error every time and leaves the stream usable.
    let bad = be.alloc(&[rows, cols + 8], dt).unwrap();
    for _ in 0..3 {
        let out = &mut outs[0];
        assert!(be.graph_run("bad", &mut || be.activation(&bad, None, Activation::Silu, out)).is_err());
    }
    be.synchronize().unwrap();
}
