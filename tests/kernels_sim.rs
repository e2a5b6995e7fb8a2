//! The memory-bound kernels (norm_modulate, delta, elementwise, scheduler, reduce .cu) run through
//! the SIMT shim (`Sim`) against the f32 CPU reference on the same dtype-rounded inputs, with
//! NaN-poisoned outputs. Shapes cover odd token counts, batch 1–3 with per-sample modulation, the
//! vector path (dim % 8 == 0), the scalar path (dim 36, 100, 1001), multi-warp rows and the loop
//! path for long rows. Run with `--nocapture` to see the measured errors.
#![cfg(deltadit_sim)]

mod common;

use common::{assert_close, poisoned, rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::sim::Sim;
use deltadit::backend::{Activation, CacheWrite, Cfg, SchedulerUpdate};
use deltadit::internals::sim::{set_warp_order, WarpOrder};
use deltadit::{Backend, DType, Error, Tensor};

const DTYPES: [DType; 2] = [DType::BF16, DType::F16];
/// ‖sim − cpu‖/‖cpu‖ bound for bf16/f16 outputs (bf16 lands near 1e-3).
const TOL: f64 = 1e-2;

fn sim(dt: DType) -> Sim {
    Sim::new(dt).expect("sim backend")
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

/// The same values on both backends: `dt` on the sim, f32 on the CPU.
struct Pair {
    s: Tensor<Sim>,
    c: Tensor<Cpu>,
}

fn pair(s: &Sim, v: Vec<f32>, shape: &[usize], dt: DType) -> Pair {
    Pair { s: s.upload(&v, shape, dt).unwrap(), c: Cpu::default().upload(&v, shape, DType::F32).unwrap() }
}

fn rand_pair(s: &Sim, rng: &mut Rng, shape: &[usize], dt: DType, std: f32, offset: f32) -> Pair {
    pair(s, data(rng, shape.iter().product(), std, offset, dt), shape, dt)
}

/// Poisoned output tensors on both backends.
fn outputs(s: &Sim, shape: &[usize], dt: DType) -> (Tensor<Sim>, Tensor<Cpu>) {
    (poisoned(s, shape, dt), poisoned(&Cpu::default(), shape, DType::F32))
}

#[track_caller]
fn check(what: &str, s: &Sim, got: &Tensor<Sim>, c: &Cpu, want: &Tensor<Cpu>, tol: f64) -> f64 {
    let (g, w) = (s.download(got).unwrap(), c.download(want).unwrap());
    assert_close(what, &g, &w, tol);
    let e = rel_l2(&g, &w);
    eprintln!("{what}: rel err {e:.2e}");
    e
}

// ---- norm_modulate -------------------------------------------------------------------------------

/// (batch, tokens, dim): streamed kernel, one warp a row (144, 1152), several warps a row (4096),
/// vector loop path (13000), scalar path (36, 100), scalar multi-warp (1001), scalar loop (4099).
const NORM_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1152),
    (2, 7, 144),
    (3, 257, 1152),
    (2, 7, 36),
    (3, 5, 100),
    (2, 3, 4096),
    (1, 3, 1001),
    (2, 2, 13000),
    (1, 2, 4099),
];

fn norm_modulate_case(dt: DType, (batch, tokens, dim): (usize, usize, usize), seed: u64) {
    let (s, c) = (sim(dt), Cpu::default());
    let mut rng = Rng::new(seed);
    let rows = batch * tokens;
    // An offset mean checks that the variance does not cancel; 6 modulation rows as in a block.
    let x = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.5, 3.0);
    let m = rand_pair(&s, &mut rng, &[batch, 6 * dim], dt, 0.5, 0.0);
    let (mut ys, mut yc) = outputs(&s, &[rows, dim], dt);
    s.norm_modulate(&x.s, &m.s, 3, 4, 1e-6, &mut ys).unwrap();
    c.norm_modulate(&x.c, &m.c, 3, 4, 1e-6, &mut yc).unwrap();
    check(&format!("norm_modulate {dt} [{batch}·{tokens}, {dim}]"), &s, &ys, &c, &yc, TOL);
}

#[test]
fn norm_modulate_bf16_shapes() {
    for (i, &shape) in NORM_SHAPES.iter().enumerate() {
        norm_modulate_case(DType::BF16, shape, 100 + i as u64);
    }
}

#[test]
fn norm_modulate_f16_shapes() {
    for (i, &shape) in NORM_SHAPES.iter().enumerate() {
        norm_modulate_case(DType::F16, shape, 200 + i as u64);
    }
}

/// Multi-warp rows combine warps through shared memory behind a barrier, and the streamed kernel
/// relies on per-lane cp.async ordering: a missing barrier or wait shows up when the shim runs the
/// warps in another order.
#[test]
fn norm_modulate_any_warp_order() {
    for order in [WarpOrder::Reversed, WarpOrder::Shuffled(7)] {
        set_warp_order(order);
        norm_modulate_case(DType::BF16, (2, 3, 4096), 300);
        norm_modulate_case(DType::F16, (1, 3, 1001), 301);
        norm_modulate_case(DType::BF16, (3, 9, 1152), 302);
    }
    set_warp_order(WarpOrder::InOrder);
}

/// The streamed kernel with a grid far smaller than the launcher's: every warp loops over many
/// rows, refilling its shared-memory slot each time (the launcher gives each warp one row).
#[test]
fn norm_modulate_stream_small_grid() {
    use deltadit::internals::kernels::params::{NormModulateParams, NORM_STAGES, NORM_THREADS};
    use deltadit::internals::kernels::{family, KernelDevice, LaunchCfg};
    for dt in DTYPES {
        for &(batch, tokens, dim) in &[(3usize, 257usize, 1152usize), (2, 33, 144)] {
            let (s, c) = (sim(dt), Cpu::default());
            let mut rng = Rng::new(310);
            let rows = batch * tokens;
            let x = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.5, 3.0);
            let m = rand_pair(&s, &mut rng, &[batch, 6 * dim], dt, 0.5, 0.0);
            let (mut ys, mut yc) = outputs(&s, &[rows, dim], dt);
            c.norm_modulate(&x.c, &m.c, 3, 4, 1e-6, &mut yc).unwrap();
            let p = NormModulateParams {
                x: s.ptr(&x.s),
                modv: s.ptr(&m.s),
                y: s.ptr_mut(&mut ys),
                rows: rows as i64,
                tokens: tokens as i64,
                mod_batch_stride: 6 * dim as i64,
                dim: dim as i32,
                shift_row: 3,
                scale_row: 4,
                eps: 1e-6,
                row_threads: 32,
                _pad: 0,
            };
            let mut cfg = LaunchCfg::linear(3, NORM_THREADS).unwrap();
            cfg.smem = (NORM_THREADS / 32 * NORM_STAGES) * (dim * dt.size()) as u32;
            let kernel = family::NORM_MODULATE_STREAM.for_dtype(dt).unwrap();
            // SAFETY: x, ys [rows, dim] and m [batch, 6·dim] hold every element the kernel
            // touches for these params, of its dtype.
            unsafe { s.launch(kernel, &p, cfg) }.unwrap();
            check(&format!("norm_modulate_stream 3 CTAs {dt} [{batch}·{tokens}, {dim}]"), &s, &ys, &c, &yc, TOL);
        }
    }
}

#[test]
fn norm_modulate_rejects_bad_shapes() {
    let s = sim(DType::BF16);
    let x = s.alloc(&[4, 64], DType::BF16).unwrap();
    let m = s.alloc(&[3, 6 * 64], DType::BF16).unwrap(); // batch 3 does not divide 4 rows
    let mut y = s.alloc(&[4, 64], DType::BF16).unwrap();
    match s.norm_modulate(&x, &m, 0, 1, 1e-6, &mut y) {
        Err(Error::Shape { op: "norm_modulate", tensor: "modv", .. }) => {}
        r => panic!("expected a modv shape error, got {r:?}"),
    }
    let m = s.alloc(&[2, 6 * 64], DType::BF16).unwrap();
    let mut y = s.alloc(&[4, 32], DType::BF16).unwrap();
    match s.norm_modulate(&x, &m, 0, 1, 1e-6, &mut y) {
        Err(Error::Shape { op: "norm_modulate", tensor: "out", .. }) => {}
        r => panic!("expected an out shape error, got {r:?}"),
    }
}

// ---- residual ------------------------------------------------------------------------------------

/// (batch, tokens, dim)
const RESIDUAL_SHAPES: &[(usize, usize, usize)] = &[(1, 1, 1152), (2, 7, 144), (3, 257, 1152), (2, 7, 36), (3, 5, 100)];

fn residual_case(dt: DType, (batch, tokens, dim): (usize, usize, usize), gated: bool, seed: u64) {
    let (s, c) = (sim(dt), Cpu::default());
    let mut rng = Rng::new(seed);
    let rows = batch * tokens;
    let mut x = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.0, 0.0);
    let y = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.0, 0.0);
    let m = rand_pair(&s, &mut rng, &[batch, 6 * dim], dt, 1.0, 0.0);
    let (gs, gc) = if gated { (Some((&m.s, 2)), Some((&m.c, 2))) } else { (None, None) };
    s.residual(&mut x.s, &y.s, gs, CacheWrite::None).unwrap();
    c.residual(&mut x.c, &y.c, gc, CacheWrite::None).unwrap();
    check(&format!("residual {dt} gated={gated} [{batch}·{tokens}, {dim}]"), &s, &x.s, &c, &x.c, TOL);
}

#[test]
fn residual_plain_shapes() {
    for dt in DTYPES {
        for (i, &shape) in RESIDUAL_SHAPES.iter().enumerate() {
            residual_case(dt, shape, true, 400 + i as u64);
            residual_case(dt, shape, false, 450 + i as u64);
        }
    }
}

/// Anchor then delta: the cache first holds the range input x1 (as stored), then Δ = x2 − x1.
#[test]
fn residual_anchor_then_delta() {
    for dt in DTYPES {
        for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
            let (s, c) = (sim(dt), Cpu::default());
            let mut rng = Rng::new(500 + i as u64);
            let rows = batch * tokens;
            let mut x = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y1 = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y2 = rand_pair(&s, &mut rng, &[rows, dim], dt, 1.0, 0.0);
            let m = rand_pair(&s, &mut rng, &[batch, 6 * dim], dt, 1.0, 0.0);
            let (mut cs, mut cc) = outputs(&s, &[rows, dim], dt);
            let what = format!("{dt} [{batch}·{tokens}, {dim}]");

            s.residual(&mut x.s, &y1.s, Some((&m.s, 2)), CacheWrite::Anchor(&mut cs)).unwrap();
            c.residual(&mut x.c, &y1.c, Some((&m.c, 2)), CacheWrite::Anchor(&mut cc)).unwrap();
            check(&format!("residual_anchor x {what}"), &s, &x.s, &c, &x.c, TOL);
            let x1 = s.download(&x.s).unwrap();
            assert_eq!(s.download(&cs).unwrap(), x1, "anchor: cache must equal the stored x_out bit for bit");

            s.residual(&mut x.s, &y2.s, Some((&m.s, 5)), CacheWrite::Delta(&mut cs)).unwrap();
            c.residual(&mut x.c, &y2.c, Some((&m.c, 5)), CacheWrite::Delta(&mut cc)).unwrap();
            check(&format!("residual_delta x {what}"), &s, &x.s, &c, &x.c, TOL);
            // Δ against the CPU's f32 Δ, and exactly the rounded difference of the stored values.
            check(&format!("residual_delta cache {what}"), &s, &cs, &c, &cc, TOL);
            let x2 = s.download(&x.s).unwrap();
            let want: Vec<f32> = x2.iter().zip(&x1).map(|(a, b)| dt.round(a - b)).collect();
            assert_eq!(s.download(&cs).unwrap(), want, "delta: cache must be round(x_out − anchor)");
        }
    }
}

/// The Δ apply of a cached step: residual_plain with y = Δ and no gate.
#[test]
fn residual_delta_apply_ungated() {
    for dt in DTYPES {
        residual_case(dt, (2, 9, 1152), false, 550);
    }
}

// ---- activation / add_bcast ----------------------------------------------------------------------

/// (rows, cols)
const EW_SHAPES: &[(usize, usize)] = &[(1, 1152), (7, 144), (257, 1152), (7, 36), (5, 100), (3, 4608)];

#[test]
fn activation_gelu_silu_none() {
    for dt in DTYPES {
        for (i, &(rows, cols)) in EW_SHAPES.iter().enumerate() {
            for act in [Activation::GeluTanh, Activation::Silu, Activation::None] {
                for with_bias in [true, false] {
                    let (s, c) = (sim(dt), Cpu::default());
                    let mut rng = Rng::new(600 + i as u64);
                    let x = rand_pair(&s, &mut rng, &[rows, cols], dt, 2.0, 0.0);
                    let b = rand_pair(&s, &mut rng, &[cols], dt, 1.0, 0.0);
                    let (mut os, mut oc) = outputs(&s, &[rows, cols], dt);
                    let (bs, bc) = if with_bias { (Some(&b.s), Some(&b.c)) } else { (None, None) };
                    s.activation(&x.s, bs, act, &mut os).unwrap();
                    c.activation(&x.c, bc, act, &mut oc).unwrap();
                    check(&format!("activation {act:?} {dt} bias={with_bias} [{rows}, {cols}]"), &s, &os, &c, &oc, TOL);
                }
            }
        }
    }
}

/// In place (x and y the same buffer) through the kernel directly: the op API cannot alias them.
#[test]
fn activation_in_place() {
    use deltadit::internals::kernels::params::{ActivationParams, EW_THREADS};
    use deltadit::internals::kernels::{family, KernelDevice, LaunchCfg};
    for dt in DTYPES {
        for &(rows, cols) in &[(7usize, 1152usize), (5, 100)] {
            let (s, c) = (sim(dt), Cpu::default());
            let mut rng = Rng::new(650);
            let mut x = rand_pair(&s, &mut rng, &[rows, cols], dt, 2.0, 0.0);
            let b = rand_pair(&s, &mut rng, &[cols], dt, 1.0, 0.0);
            let (_, mut oc) = outputs(&s, &[rows, cols], dt);
            c.activation(&x.c, Some(&b.c), Activation::GeluTanh, &mut oc).unwrap();
            let xp = s.ptr_mut(&mut x.s);
            let p = ActivationParams { x: xp, y: xp, bias: s.ptr(&b.s), n: (rows * cols) as i64, cols: cols as i64 };
            let kernel = family::ACTIVATION_GELU_TANH.for_dtype(dt).unwrap();
            // SAFETY: x [rows, cols] (read and written in place) and b [cols] of the kernel's dtype.
            unsafe { s.launch(kernel, &p, LaunchCfg::linear(3, EW_THREADS).unwrap()) }.unwrap();
            check(&format!("activation in place {dt} [{rows}, {cols}]"), &s, &x.s, &c, &oc, TOL);
        }
    }
}

#[test]
fn add_bcast_shapes() {
    for dt in DTYPES {
        for (i, &(rows, cols)) in EW_SHAPES.iter().enumerate() {
            let (s, c) = (sim(dt), Cpu::default());
            let mut rng = Rng::new(700 + i as u64);
            let mut x = rand_pair(&s, &mut rng, &[rows, cols], dt, 1.0, 0.0);
            let y = rand_pair(&s, &mut rng, &[cols], dt, 1.0, 0.0);
            s.add_bcast(&mut x.s, &y.s).unwrap();
            c.add_bcast(&mut x.c, &y.c).unwrap();
            check(&format!("add_bcast {dt} [{rows}, {cols}]"), &s, &x.s, &c, &x.c, TOL);
        }
    }
}

// ---- timestep embedding --------------------------------------------------------------------------

#[test]
fn timestep_embedding_pixart_dit() {
    let ts = [0.0f32, 1.0, 500.0, 999.0];
    // (flip, shift, dim): PixArt, DiT, and the unflipped order.
    for (flip, shift, dim) in [(true, 0.0f32, 256usize), (true, 1.0, 256), (false, 0.0, 64)] {
        for dt in DTYPES {
            let (s, c) = (sim(dt), Cpu::default());
            let t = pair(&s, ts.to_vec(), &[ts.len()], DType::F32);
            let (mut os, mut oc) = outputs(&s, &[ts.len(), dim], dt);
            s.timestep_embedding(&t.s, flip, shift, &mut os).unwrap();
            c.timestep_embedding(&t.c, flip, shift, &mut oc).unwrap();
            check(&format!("timestep_embedding {dt} flip={flip} shift={shift}"), &s, &os, &c, &oc, TOL);
            // Element-wise: within one storage ulp (2^-8 for bf16, 2^-11 for f16, values in [−1, 1]).
            let ulp = if dt == DType::BF16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
            let (g, w) = (s.download(&os).unwrap(), c.download(&oc).unwrap());
            let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= ulp, "timestep_embedding {dt}: max abs error {worst} > {ulp}");
        }
    }
}

// ---- patchify / unpatchify -----------------------------------------------------------------------

/// (B, C, H, W, p), square and not.
const PATCH_SHAPES: &[(usize, usize, usize, usize, usize)] =
    &[(2, 4, 8, 12, 2), (1, 3, 6, 4, 2), (3, 4, 4, 4, 1), (1, 2, 8, 4, 4)];

#[test]
fn patchify_unpatchify_shapes() {
    for dt in DTYPES {
        for (i, &(b, ch, h, w, p)) in PATCH_SHAPES.iter().enumerate() {
            let (s, c) = (sim(dt), Cpu::default());
            let mut rng = Rng::new(800 + i as u64);
            let lat = rand_pair(&s, &mut rng, &[b, ch, h, w], DType::F32, 1.0, 0.0);
            let tokens = b * (h / p) * (w / p);
            let (mut ps, mut pc) = outputs(&s, &[tokens, ch * p * p], dt);
            s.patchify(&lat.s, p, &mut ps).unwrap();
            c.patchify(&lat.c, p, &mut pc).unwrap();
            // A pure permutation: exactly the rounded reference.
            let want: Vec<f32> = c.download(&pc).unwrap().iter().map(|&v| dt.round(v)).collect();
            assert_eq!(s.download(&ps).unwrap(), want, "patchify {dt} {:?}", (b, ch, h, w, p));

            let tok = rand_pair(&s, &mut rng, &[tokens, ch * p * p], dt, 1.0, 0.0);
            let (mut us, mut uc) = outputs(&s, &[b, ch, h, w], DType::F32);
            s.unpatchify(&tok.s, p, &mut us).unwrap();
            c.unpatchify(&tok.c, p, &mut uc).unwrap();
            assert_eq!(s.download(&us).unwrap(), c.download(&uc).unwrap(), "unpatchify {dt} {:?}", (b, ch, h, w, p));
        }
    }
}

// ---- cfg_combine ---------------------------------------------------------------------------------

#[test]
fn cfg_combine_orders() {
    let s = sim(DType::BF16);
    let c = Cpu::default();
    let (batch, ch, ch_out, h, w) = (2, 4, 8, 6, 10);
    for cfg in [Cfg::Off, Cfg::On { scale: 4.5, cond_first: true }, Cfg::On { scale: 7.0, cond_first: false }] {
        let n = if cfg == Cfg::Off { batch } else { 2 * batch };
        let mut rng = Rng::new(900);
        let out = rand_pair(&s, &mut rng, &[n, ch_out, h, w], DType::F32, 1.0, 0.0);
        let (mut es, mut ec) = outputs(&s, &[batch, ch, h, w], DType::F32);
        s.cfg_combine(&out.s, cfg, &mut es).unwrap();
        c.cfg_combine(&out.c, cfg, &mut ec).unwrap();
        // Same roundings in the same order: bit-identical.
        assert_eq!(s.download(&es).unwrap(), c.download(&ec).unwrap(), "cfg_combine {cfg:?}");
    }
}

// ---- scheduler_step ------------------------------------------------------------------------------

#[test]
fn scheduler_step_kinds() {
    let s = sim(DType::BF16);
    let c = Cpu::default();
    let coeffs = [0.83f32, 0.57, 1.07, 0.31, 0.62, 0.5];
    // n = 576 (float4 path) and 1001 (vectors + scalar tail).
    for n in [576usize, 1001] {
        for &(kind, with_prev, with_noise) in common::SCHEDULER_CASES {
            let mut rng = Rng::new(1000 + n as u64);
            let u = SchedulerUpdate { kind, c: coeffs };
            let mut x = rand_pair(&s, &mut rng, &[n], DType::F32, 1.0, 0.0);
            let eps = rand_pair(&s, &mut rng, &[n], DType::F32, 1.0, 0.0);
            let mut prev = rand_pair(&s, &mut rng, &[n], DType::F32, 1.0, 0.0);
            let noise = rand_pair(&s, &mut rng, &[n], DType::F32, 1.0, 0.0);
            let (ps, pc) = if with_prev { (Some(&mut prev.s), Some(&mut prev.c)) } else { (None, None) };
            let (ns, nc) = if with_noise { (Some(&noise.s), Some(&noise.c)) } else { (None, None) };
            s.scheduler_step(&u, &mut x.s, &eps.s, ps, ns).unwrap();
            c.scheduler_step(&u, &mut x.c, &eps.c, pc, nc).unwrap();
            let what = format!("scheduler_step {kind:?} n={n} prev={with_prev} noise={with_noise}");
            let e = check(&what, &s, &x.s, &c, &x.c, 1e-6);
            assert_eq!(e, 0.0, "{what}: expected bit-identical to the reference");
            if with_prev {
                assert_eq!(s.download(&prev.s).unwrap(), c.download(&prev.c).unwrap(), "{what}: x0_prev");
            }
        }
    }
}

// ---- rel_l1 --------------------------------------------------------------------------------------

#[test]
fn rel_l1_dtypes() {
    for dt in [DType::BF16, DType::F16, DType::F32] {
        for (i, &n) in [1usize, 7, 1001, 257 * 1152].iter().enumerate() {
            let s = sim(if dt == DType::F32 { DType::BF16 } else { dt });
            let c = Cpu::default();
            let mut rng = Rng::new(1100 + i as u64);
            let a = rand_pair(&s, &mut rng, &[n], dt, 1.0, 0.0);
            let b = rand_pair(&s, &mut rng, &[n], dt, 1.0, 0.0);
            let (gd, gn) = s.rel_l1(&a.s, &b.s).unwrap();
            let (wd, wn) = c.rel_l1(&a.c, &b.c).unwrap();
            let (ed, en) = (((gd - wd) / wd).abs(), ((gn - wn) / wn).abs());
            eprintln!("rel_l1 {dt} n={n}: rel err {ed:.2e}, {en:.2e}");
            assert!(ed < 1e-5 && en < 1e-5, "rel_l1 {dt} n={n}: ({gd}, {gn}) vs ({wd}, {wn})");
        }
    }
}
