//! The CUDA backend on a GPU: the op suite of tests/common/ops.rs (every op of the `Backend`
//! trait against the f32 CPU reference on the same dtype-rounded random inputs, never zeros,
//! outputs NaN-poisoned first, in bf16 and f16, on exactly the shapes tests/ops_sim.rs runs
//! through the SIMT shim; each wgmma kernel at head dim 72 on compute capability 9.0), rel_l1's
//! and the adaptive cache policies' determinism, the golden cases of tests/data through the whole
//! model in bf16, CUDA graph replay, sanitizer-sized cases and the constructor's errors.
//!
//! Without a GPU (no driver, no device) every test prints `skipped: <reason>` and passes, unless
//! `DELTADIT_REQUIRE_GPU=1` (scripts/gpu-run.sh sets it): then a missing device fails them.
//! Tests share one backend per dtype and run one at a time (a mutex): there is one GPU.
//!
//! Test data: `$DELTADIT_TEST_DATA` when set (the GPU bundle of scripts/gpu-build.sh sets it),
//! else `tests/data` of the source tree. `DELTADIT_CUDA_SYNC=1` makes a failing kernel name
//! itself. `DELTADIT_WGMMA_KERNELS` confines the wgmma tests to the kernels it lists. Run with
//! `--nocapture` to see the measured errors.

mod common;

use common::ops::{self, WgmmaTable, DTYPES, TOL};
use common::{golden, rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::cuda::{self, Cuda, CudaOptions, DeviceInfo};
use deltadit::backend::{Activation, AttentionKernel};
use deltadit::{Backend, DType};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Whole-model runs in bf16 against diffusers' f32 output.
const GOLDEN_TOL: f64 = 2e-2;
/// Set to 1 (scripts/gpu-run.sh does), a missing GPU fails the tests instead of skipping them.
const REQUIRE_GPU: &str = "DELTADIT_REQUIRE_GPU";

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

/// No GPU: a failure under DELTADIT_REQUIRE_GPU=1, else a skip that says why.
fn no_gpu(reason: &str) {
    if deltadit::internals::env::flag(REQUIRE_GPU, false) {
        panic!("{REQUIRE_GPU} is set and there is no usable GPU: {reason}");
    }
    println!("skipped: {reason}");
}

/// The GPU, or None after printing why the test is skipped (a panic under DELTADIT_REQUIRE_GPU).
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
            no_gpu(reason);
            None
        }
    }
}

struct Gpu {
    _lock: MutexGuard<'static, ()>,
    be: &'static Cuda,
}

fn gpu(dt: DType) -> Option<Gpu> {
    probe()?;
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cell = if dt == DType::BF16 { &BF16 } else { &F16 };
    let be = cell.get_or_init(|| new_backend(dt, true));
    Some(Gpu { _lock: lock, be })
}

/// Exclusive use of the GPU without a shared backend (tests that build their own).
fn gpu_lock() -> Option<MutexGuard<'static, ()>> {
    probe()?;
    Some(LOCK.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Runs a suite function on the GPU's bf16 and f16 backends (or skips).
fn each_dtype(f: impl Fn(&Cuda)) {
    for dt in DTYPES {
        let Some(g) = gpu(dt) else { return };
        f(g.be);
    }
}

// ---- detection and errors -----------------------------------------------------------------------

#[test]
fn probe_and_constructor_errors() {
    // Never panics, and the errors say why.
    let msg = Cuda::new(0, DType::F32).unwrap_err().to_string();
    assert!(msg.contains("bf16 or f16"), "{msg}");
    match cuda::probe() {
        Err(reason) => {
            let msg = Cuda::new(0, DType::BF16).unwrap_err().to_string();
            assert!(msg.contains("no CUDA"), "constructor error `{msg}` (probe: {reason})");
            assert!(!cuda::available());
            no_gpu(&format!("{reason} (constructor says: {msg})"));
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

/// This binary run again on one GPU test with the GPUs hidden (CUDA_VISIBLE_DEVICES=-1, so it
/// checks the same on a machine with or without one): without DELTADIT_REQUIRE_GPU (or with 0) the
/// test passes with `skipped: <reason>`, with DELTADIT_REQUIRE_GPU=1 it fails naming the variable.
#[test]
fn require_gpu_turns_a_missing_device_into_a_failure() {
    let exe = std::env::current_exe().unwrap();
    let run = |test: &str, require: Option<&str>| {
        let mut c = std::process::Command::new(&exe);
        c.args(["--exact", test, "--test-threads=1", "--nocapture"]).env("CUDA_VISIBLE_DEVICES", "-1");
        match require {
            Some(v) => c.env(REQUIRE_GPU, v),
            None => c.env_remove(REQUIRE_GPU),
        };
        let out = c.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    for test in ["memory_round_trips", "probe_and_constructor_errors", "golden_forward_pixart_tiny"] {
        for require in [None, Some("0")] {
            let (ok, text) = run(test, require);
            assert!(
                ok && text.contains("skipped: ") && text.contains("1 passed"),
                "{test}, {REQUIRE_GPU}={require:?}:\n{text}"
            );
        }
        let (ok, text) = run(test, Some("1"));
        assert!(
            !ok && text.contains(&format!("{REQUIRE_GPU} is set")) && text.contains("1 failed"),
            "{test}, {REQUIRE_GPU}=1:\n{text}"
        );
    }
}

#[test]
fn linear_rejects_bad_operands() {
    let Some(g) = gpu(DType::BF16) else { return };
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

// ---- the op suite (tests/common/ops.rs) ----------------------------------------------------------

// One #[test] per suite function of tests/common/ops.rs (`op_suite!`), named as listed there.
crate::op_suite!(each_dtype);

/// The wgmma kernels of the wgmma tests: every one, or those DELTADIT_WGMMA_KERNELS lists
/// (scripts/gpu-run.sh runs each kernel in a process of its own).
fn wgmma_kernels() -> Vec<AttentionKernel> {
    deltadit::internals::env::wgmma_kernels("DELTADIT_WGMMA_KERNELS").unwrap()
}

/// kernels/attention_sm90a.cu at head dim 72: skipped (saying why) on GPUs without sm_90a, where
/// choosing it must fail with an error naming the requirement.
#[test]
fn attention_wgmma_d72() {
    each_dtype(|be| {
        ops::attention_wgmma_d72(be, &wgmma_kernels(), &[WgmmaTable::Ops, WgmmaTable::Tokens4096]);
    });
}

/// Small wgmma grids for compute-sanitizer (memcheck and racecheck run the `sanitize_` tests).
#[test]
fn sanitize_attention_wgmma_small() {
    each_dtype(|be| {
        ops::attention_wgmma_d72(be, &wgmma_kernels(), &[WgmmaTable::Sanitize]);
    });
}

// ---- determinism ---------------------------------------------------------------------------------

/// rel_l1 at sizes of hundreds to 1024 blocks: bit-identical sums on repeated calls (the kernel
/// writes per-block partials, the launcher adds them in block order; float atomics would add
/// them in whatever order the blocks finish).
#[test]
fn rel_l1_bit_identical_repeated_calls() {
    each_dtype(|be| {
        ops::rel_l1_repeatable(be);
    });
}

/// Two identical sampling runs with delta-adaptive and first-block plan the same steps from
/// bit-identical probes.
#[test]
fn adaptive_policies_plan_identically_twice() {
    let Some(g) = gpu(DType::BF16) else { return };
    ops::plan_sequences_repeat(g.be);
}

// ---- golden cases through the whole model ---------------------------------------------------------

fn forward_case(name: &str) {
    let Some(g) = gpu(DType::BF16) else { return };
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
    let mut xs: Vec<Vec<f32>> = (0..3).map(|_| ops::data(&mut rng, rows * cols, 2.0, 0.0, dt)).collect();
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
        ops::close(&format!("graph unit call {call} -> out {o}"), &got, &reference(&xs[0]), TOL);
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
