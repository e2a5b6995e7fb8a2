//! The op suite of the kernel backends: every op of the `Backend` trait on a backend `B` (the
//! SIMT shim's `Sim` in tests/ops_sim.rs, the GPU's `Cuda` in tests/gpu.rs) against the f32 CPU
//! reference on the same dtype-rounded random inputs (never zeros), with the outputs NaN-poisoned
//! before the op runs, so elements a kernel forgets to write show up.
//!
//! The shape tables below are the only ones: both backends run exactly these shapes. Each suite
//! function runs one op family at the backend's activation dtype (`be.act_dtype()`, bf16 or f16);
//! the callers run it for both. Tolerances:
//! - bf16/f16 outputs: ‖got − want‖/‖want‖ ≤ [`TOL`] (1e-2);
//! - attention: relative L2 ≤ 1e-2 and the largest element error ≤ 3% of the largest reference
//!   magnitude in bf16, 2e-3 and 0.5% in f16 ([`attention_bounds`]);
//! - f32 ops (cfg_combine, scheduler_step): bit-identical on the shim, ≤ 1e-6 on the GPU (nvcc
//!   contracts into FMAs) — [`Device::F32_BIT_EXACT`];
//! - rel_l1: 1e-5 on the shim, 1e-3 on the GPU — [`Device::REL_L1_TOL`];
//! - pure permutations (patchify, unpatchify), the Δ-cache writes and memory copies: exact.
//!
//! Run with `--nocapture` to see the measured errors.

use super::golden;
use super::{rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::cuda::Cuda;
use deltadit::backend::sim::Sim;
use deltadit::backend::{
    Activation, AttentionKernel, AttentionShape, CacheWrite, Cfg, ColSlice, Rope, SchedulerKind, SchedulerUpdate,
};
use deltadit::cache::{CacheSpec, StepPlan};
use deltadit::io::Inputs;
use deltadit::model::Transformer;
use deltadit::pipeline::{sample, SampleConfig, SampleInputs, SampleOutput};
use deltadit::{Backend, BackendErrorKind, DType, Error, Tensor};

/// The activation dtypes every suite function runs in.
pub const DTYPES: [DType; 2] = [DType::BF16, DType::F16];
/// ‖got − ref‖/‖ref‖ for ops with bf16/f16 outputs.
pub const TOL: f64 = 1e-2;

// ---- the backends ---------------------------------------------------------------------------------

/// What differs between the kernel backends in this suite.
pub trait Device: Backend {
    /// f32 element-wise ops (cfg_combine, scheduler_step) equal the CPU reference bit for bit
    /// (the shim is compiled without FMA contraction; nvcc contracts, so the GPU is held to 1e-6).
    const F32_BIT_EXACT: bool;
    /// Relative error bound of each of rel_l1's two sums.
    const REL_L1_TOL: f64;
    /// Makes `k` the attention kernel of head dim 72. False (after saying why, and checking the
    /// error names the requirement) where this device cannot run it.
    fn select_attention_kernel(&self, k: AttentionKernel) -> bool;
}

impl Device for Sim {
    const F32_BIT_EXACT: bool = true;
    const REL_L1_TOL: f64 = 1e-5;
    fn select_attention_kernel(&self, k: AttentionKernel) -> bool {
        // the shim emulates every kernel
        self.set_attention_kernel(k);
        true
    }
}

impl Device for Cuda {
    const F32_BIT_EXACT: bool = false;
    const REL_L1_TOL: f64 = 1e-3;
    fn select_attention_kernel(&self, k: AttentionKernel) -> bool {
        if !self.supports_attention_kernel(k) {
            let e = self.set_attention_kernel(k).unwrap_err().to_string();
            assert!(e.contains("compute capability 9.0"), "{e}");
            println!("skipped: {e}");
            return false;
        }
        self.set_attention_kernel(k).unwrap();
        true
    }
}

/// Puts the default attention kernel back when dropped (the GPU tests share one backend).
struct DefaultKernelOnDrop<'a, B: Device>(&'a B);

impl<B: Device> Drop for DefaultKernelOnDrop<'_, B> {
    fn drop(&mut self) {
        assert!(self.0.select_attention_kernel(AttentionKernel::Mma));
    }
}

// ---- inputs and checks ---------------------------------------------------------------------------

/// Random normal data `offset + std·N(0, 1)` rounded to `dt`, never exactly zero.
pub fn data(rng: &mut Rng, n: usize, std: f32, offset: f32, dt: DType) -> Vec<f32> {
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

/// The same values on both backends: `dt` on the backend under test, f32 on the CPU.
pub struct Pair<B: Backend> {
    pub d: Tensor<B>,
    pub c: Tensor<Cpu>,
}

/// A backend under test beside the CPU reference.
pub struct Ops<'a, B: Device> {
    pub be: &'a B,
    pub cpu: Cpu,
    /// the backend's activation dtype
    pub dt: DType,
}

impl<'a, B: Device> Ops<'a, B> {
    pub fn new(be: &'a B) -> Self {
        Ops { be, cpu: Cpu::default(), dt: be.act_dtype() }
    }

    pub fn pair(&self, v: Vec<f32>, shape: &[usize], dt: DType) -> Pair<B> {
        Pair { d: self.be.upload(&v, shape, dt).unwrap(), c: self.cpu.upload(&v, shape, DType::F32).unwrap() }
    }

    pub fn rand(&self, rng: &mut Rng, shape: &[usize], dt: DType, std: f32, offset: f32) -> Pair<B> {
        self.pair(data(rng, shape.iter().product(), std, offset, dt), shape, dt)
    }

    /// NaN-poisoned outputs on both backends.
    pub fn outputs(&self, shape: &[usize], dt: DType) -> (Tensor<B>, Tensor<Cpu>) {
        let mut d = self.be.alloc(shape, dt).unwrap();
        self.be.fill_bits(&mut d, dt.nan_bits()).unwrap();
        let mut c = self.cpu.alloc(shape, DType::F32).unwrap();
        self.cpu.fill_bits(&mut c, DType::F32.nan_bits()).unwrap();
        (d, c)
    }

    /// Asserts ‖got − want‖/‖want‖ ≤ tol with no NaN; returns the error.
    #[track_caller]
    pub fn check(&self, what: &str, got: &Tensor<B>, want: &Tensor<Cpu>, tol: f64) -> f64 {
        let (g, w) = (self.be.download(got).unwrap(), self.cpu.download(want).unwrap());
        close(what, &g, &w, tol)
    }

    /// f32 outputs of element-wise f32 ops: bit-identical where the backend promises it, else
    /// within 1e-6.
    #[track_caller]
    fn check_f32(&self, what: &str, got: &Tensor<B>, want: &Tensor<Cpu>) {
        let e = self.check(what, got, want, 1e-6);
        if B::F32_BIT_EXACT {
            assert_eq!(e, 0.0, "{what}: expected bit-identical to the reference");
            assert_eq!(self.be.download(got).unwrap(), self.cpu.download(want).unwrap(), "{what}: bits");
        }
    }
}

/// Asserts ‖got − want‖/‖want‖ ≤ tol and that `got` has no NaN; returns the error.
#[track_caller]
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or overflow)", got[i]);
    }
    let e = rel_l2(got, want);
    eprintln!("{what}: rel err {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
    e
}

// ---- the suite's tests ---------------------------------------------------------------------------

/// The op suite as tests: `crate::op_suite!(each_dtype);` in a backend's test file (tests/ops_sim.rs,
/// tests/gpu.rs) defines one `#[test]` per row below, `fn <test>() { each_dtype(ops::<function>) }`,
/// where `each_dtype` is that file's runner of a suite function on its backend in every dtype. A new
/// op's suite functions are registered here, once, for both backends.
#[macro_export]
macro_rules! op_suite {
    ($each_dtype:ident) => {
        $crate::op_suite!(@tests $each_dtype;
            memory_round_trips = memory_round_trips,
            linear_epilogues_shapes = linear_epilogues,
            linear_cols_strided_inputs = linear_cols_strided,
            activation_cols_in_place = activation_cols_in_place,
            copy_rows_blocks = copy_rows_blocks,
            norm_modulate_shapes = norm_modulate_shapes,
            norm_modulate_rejects_bad_shapes = norm_modulate_rejects_bad_shapes,
            qk_norm_shapes = qk_norm_shapes,
            qk_norm_rejects_bad_inputs = qk_norm_rejects_bad_inputs,
            qk_norm_rope_shapes = qk_norm_rope_shapes,
            qk_norm_rope_rejects_bad_inputs = qk_norm_rope_rejects_bad_inputs,
            residual_plain_and_gated = residual_plain_and_gated,
            residual_anchor_then_delta = residual_anchor_then_delta,
            forecast_apply_and_ladder = forecast_apply_and_ladder,
            forecast_rejects_bad_inputs = forecast_rejects_bad_inputs,
            residual_forecast_gated_with_taps = residual_forecast_gated_with_taps,
            ladder_update_levels = ladder_update_levels,
            activation_and_add_bcast = activation_and_add_bcast,
            timestep_embedding_variants = timestep_embedding_variants,
            patchify_unpatchify = patchify_unpatchify,
            cfg_combine_orders = cfg_combine_orders,
            scheduler_step_kinds = scheduler_step_kinds,
            rel_l1_probe = rel_l1_probe,
            attention_self_odd_lengths = attention_self_odd_lengths,
            attention_cross_and_masks = attention_cross_and_masks,
            attention_rejects_unsupported_inputs = attention_rejects_unsupported_inputs,
            /// Small attention grids for compute-sanitizer (racecheck is slow on large grids;
            /// scripts/gpu-run.sh runs racecheck on the `sanitize_` tests and the small op tests).
            sanitize_attention_small = sanitize_attention_small,
        );
    };
    (@tests $each_dtype:ident; $($(#[$doc:meta])* $test:ident = $f:ident,)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $test() {
                $each_dtype($crate::common::ops::$f);
            }
        )*
    };
}

// ---- memory --------------------------------------------------------------------------------------

/// Element counts of the memory round trips.
pub const MEMORY_SIZES: &[usize] = &[1, 7, 1000, 4099];

/// upload/download, write, copy, copy_range, poisoned alloc and fill_bits, exact, in the backend's
/// dtype and f32; size errors are errors.
pub fn memory_round_trips<B: Device>(be: &B) {
    for dt in [be.act_dtype(), DType::F32] {
        let mut rng = Rng::new(1);
        for &n in MEMORY_SIZES {
            let v = data(&mut rng, n, 3.0, 0.5, dt);
            let mut t = be.upload(&v, &[n], dt).unwrap();
            assert_eq!(be.download(&t).unwrap(), v, "upload/download {dt} n={n}");
            let w = data(&mut rng, n, 1.0, 0.0, dt);
            be.write(&mut t, &w).unwrap();
            assert_eq!(be.download(&t).unwrap(), w, "write {dt} n={n}");
            let mut u = be.alloc(&[n], dt).unwrap();
            be.copy(&t, &mut u).unwrap();
            assert_eq!(be.download(&u).unwrap(), w, "copy {dt} n={n}");
            if n > 3 {
                let mut z = be.upload(&v, &[n], dt).unwrap();
                be.copy_range(&t, 1, &mut z, 2, n - 3).unwrap();
                let mut want = v.clone();
                want[2..n - 1].copy_from_slice(&w[1..n - 2]);
                assert_eq!(be.download(&z).unwrap(), want, "copy_range {dt} n={n}");
            }
            let p = be.alloc(&[n], dt).unwrap();
            assert!(be.download(&p).unwrap().iter().all(|x| x.is_nan()), "alloc must poison {dt}");
            be.fill_bits(&mut u, 0).unwrap();
            assert!(be.download(&u).unwrap().iter().all(|&x| x == 0.0), "fill_bits 0 {dt}");
        }
        let mut t = be.alloc(&[4], dt).unwrap();
        assert!(be.write(&mut t, &[1.0; 5]).is_err(), "write of 5 values into 4");
        let mut u = be.alloc(&[5], dt).unwrap();
        assert!(be.copy(&t, &mut u).is_err(), "copy between sizes 4 and 5");
        assert!(be.copy_range(&t, 2, &mut u, 0, 3).is_err(), "copy_range past the source's end");
    }
}

// ---- linear --------------------------------------------------------------------------------------

/// (m, n, k): timestep MLP, adaLN, fused QKV, MLP up/down, output projection, patch embedding,
/// small and unaligned sizes, one large GEMM.
pub const LINEAR_SHAPES: &[(usize, usize, usize)] = &[
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

/// `linear` with and without bias, with each epilogue activation.
pub fn linear_epilogues<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(m, n, k)) in LINEAR_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(100 + i as u64);
        let x = o.rand(&mut rng, &[m, k], dt, 1.0, 0.0);
        let w = o.rand(&mut rng, &[n, k], dt, 1.0 / (k as f32).sqrt(), 0.0);
        let b = o.rand(&mut rng, &[n], dt, 0.5, 0.0);
        for act in [Activation::None, Activation::GeluTanh, Activation::Silu] {
            for with_bias in [true, false] {
                let (mut od, mut oc) = o.outputs(&[m, n], dt);
                let (bd, bc) = if with_bias { (Some(&b.d), Some(&b.c)) } else { (None, None) };
                be.linear(&x.d, &w.d, bd, act, &mut od)
                    .unwrap_or_else(|e| panic!("linear [{m}, {k}]·[{n}, {k}]ᵀ {act:?}: {e}"));
                o.cpu.linear(&x.c, &w.c, bc, act, &mut oc).unwrap();
                o.check(&format!("linear {dt} [{m},{k}]x[{n},{k}]T {act:?} bias={with_bias}"), &od, &oc, TOL);
            }
        }
    }
}

/// (m, n, k, width, col): `linear_cols` reads x's columns [col, col + k) of rows `width` apart —
/// FLUX's single block (proj_out's MLP half on the MLP columns of [T, 3D + 4D], D = 32 and 48),
/// odd strides and offsets, the whole row (col 0, width k), one row.
pub const LINEAR_COLS_SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (7, 32, 128, 224, 96),
    (130, 48, 192, 336, 144),
    (5, 33, 17, 37, 11),
    (3, 40, 24, 31, 7),
    (9, 16, 24, 24, 0),
    (1, 144, 144, 433, 289),
];

/// `linear_cols` against the CPU reference with each activation, with and without bias; the CPU
/// reference itself against `linear` on the gathered contiguous columns.
pub fn linear_cols_strided<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(m, n, k, width, col)) in LINEAR_COLS_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(150 + i as u64);
        let xv = data(&mut rng, m * width, 1.0, 0.0, dt);
        let x = o.pair(xv.clone(), &[m, width], dt);
        let packed: Vec<f32> = xv.chunks(width).flat_map(|r| r[col..col + k].to_vec()).collect();
        let xp = o.cpu.upload(&packed, &[m, k], DType::F32).unwrap();
        let w = o.rand(&mut rng, &[n, k], dt, 1.0 / (k as f32).sqrt(), 0.0);
        let b = o.rand(&mut rng, &[n], dt, 0.5, 0.0);
        for act in [Activation::None, Activation::GeluTanh, Activation::Silu] {
            for with_bias in [true, false] {
                let what = format!(
                    "linear_cols {dt} [{m},{width}] cols {col}..{} x[{n},{k}]T {act:?} bias={with_bias}",
                    col + k
                );
                let (mut od, mut oc) = o.outputs(&[m, n], dt);
                let (bd, bc) = if with_bias { (Some(&b.d), Some(&b.c)) } else { (None, None) };
                be.linear_cols(ColSlice::new(&x.d, col), &w.d, bd, act, &mut od)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                o.cpu.linear_cols(ColSlice::new(&x.c, col), &w.c, bc, act, &mut oc).unwrap();
                o.check(&what, &od, &oc, TOL);
                let (_, mut op) = o.outputs(&[m, n], dt);
                o.cpu.linear(&xp, &w.c, bc, act, &mut op).unwrap();
                let (a, r) = (o.cpu.download(&oc).unwrap(), o.cpu.download(&op).unwrap());
                close(&format!("{what}: CPU strided vs packed"), &a, &r, 1e-6);
            }
        }
    }
    // the columns must fit the row
    let x = o.rand(&mut Rng::new(1), &[4, 20], dt, 1.0, 0.0);
    let w = o.rand(&mut Rng::new(2), &[8, 16], dt, 1.0, 0.0);
    let (mut od, _) = o.outputs(&[4, 8], dt);
    assert!(be.linear_cols(ColSlice::new(&x.d, 5), &w.d, None, Activation::None, &mut od).is_err());
    assert!(be.linear_cols(ColSlice::new(&x.d, 4), &w.d, None, Activation::None, &mut od).is_ok());
}

/// (rows, width, col, cols): the MLP columns of FLUX's fused projection (D = 32, 48), odd
/// widths and offsets (scalar path), the whole row, one column.
pub const ACTIVATION_COLS_SHAPES: &[(usize, usize, usize, usize)] =
    &[(7, 224, 96, 128), (257, 336, 144, 192), (5, 37, 11, 19), (3, 100, 0, 100), (9, 13, 12, 1), (4, 40, 8, 24)];

/// `activation_cols` in place: the columns in range activated as the reference does, the others
/// bit-identical to the input.
pub fn activation_cols_in_place<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(rows, width, col, cols)) in ACTIVATION_COLS_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(650 + i as u64);
        let v = data(&mut rng, rows * width, 2.0, 0.0, dt);
        for act in [Activation::GeluTanh, Activation::Silu] {
            let mut x = o.pair(v.clone(), &[rows, width], dt);
            be.activation_cols(&mut x.d, col, cols, act).unwrap();
            o.cpu.activation_cols(&mut x.c, col, cols, act).unwrap();
            let what = format!("activation_cols {act:?} {dt} [{rows}, {width}] cols {col}..{}", col + cols);
            o.check(&what, &x.d, &x.c, TOL);
            let (g, c) = (be.download(&x.d).unwrap(), o.cpu.download(&x.c).unwrap());
            for (r, (gr, cr)) in g.chunks(width).zip(c.chunks(width)).enumerate() {
                let outside = |row: &[f32]| [&row[..col], &row[col + cols..]].concat();
                let want = outside(&v[r * width..(r + 1) * width]);
                assert_eq!(outside(gr), want, "{what}: row {r} outside the range changed");
                assert_eq!(outside(cr), want, "{what}: CPU row {r} outside the range changed");
            }
        }
    }
    let mut x = o.rand(&mut Rng::new(3), &[2, 10], dt, 1.0, 0.0);
    assert!(be.activation_cols(&mut x.d, 4, 7, Activation::GeluTanh).is_err(), "columns past the row");
}

/// (src [rows, width], dst [rows, width], src (row, col), dst (row, col), (rows, cols)): FLUX's
/// joint gather of the Q|K|V columns out of [T, 3D + 4D] (D = 32) at a sample's row offset,
/// odd widths and offsets, a whole poisoned destination.
#[allow(clippy::type_complexity)]
pub const COPY_ROWS_CASES: &[((usize, usize), (usize, usize), (usize, usize), (usize, usize), (usize, usize))] = &[
    ((9, 224), (14, 96), (0, 0), (5, 0), (9, 96)),
    ((20, 37), (11, 23), (7, 3), (1, 5), (9, 17)),
    ((5, 7), (5, 7), (0, 0), (0, 0), (5, 7)),
    ((300, 13), (301, 5), (1, 8), (0, 0), (299, 5)),
];

/// `copy_rows` in the backend's dtype and f32: the block exact, the rest of `dst` untouched;
/// blocks outside either tensor are errors.
pub fn copy_rows_blocks<B: Device>(be: &B) {
    for dt in [be.act_dtype(), DType::F32] {
        for (i, &(ss, ds, sa, da, (rows, cols))) in COPY_ROWS_CASES.iter().enumerate() {
            let mut rng = Rng::new(900 + i as u64);
            let sv = data(&mut rng, ss.0 * ss.1, 1.0, 0.0, dt);
            let src = be.upload(&sv, &[ss.0, ss.1], dt).unwrap();
            let src_c = Cpu::default().upload(&sv, &[ss.0, ss.1], DType::F32).unwrap();
            // a destination the block covers is poisoned; otherwise random (untouched elements show)
            let whole = (rows, cols) == ds;
            let dv = if whole { vec![f32::NAN; ds.0 * ds.1] } else { data(&mut rng, ds.0 * ds.1, 1.0, 5.0, dt) };
            let mut dst = be.upload(&dv, &[ds.0, ds.1], dt).unwrap();
            if whole {
                be.fill_bits(&mut dst, dt.nan_bits()).unwrap();
            }
            let cpu = Cpu::default();
            let mut dst_c = cpu.upload(&dv, &[ds.0, ds.1], DType::F32).unwrap();
            be.copy_rows(&src, sa, &mut dst, da, (rows, cols)).unwrap();
            cpu.copy_rows(&src_c, sa, &mut dst_c, da, (rows, cols)).unwrap();
            let mut want = dv.clone();
            for r in 0..rows {
                for c in 0..cols {
                    want[(da.0 + r) * ds.1 + da.1 + c] = sv[(sa.0 + r) * ss.1 + sa.1 + c];
                }
            }
            let what = format!("copy_rows {dt} case {i}");
            assert_eq!(be.download(&dst).unwrap(), want, "{what}");
            assert_eq!(cpu.download(&dst_c).unwrap(), want, "{what}: CPU");
            eprintln!("{what}: exact");
        }
        let src = be.alloc(&[4, 6], dt).unwrap();
        let mut dst = be.alloc(&[4, 6], dt).unwrap();
        assert!(be.copy_rows(&src, (1, 0), &mut dst, (0, 0), (4, 6)).is_err(), "rows past src");
        assert!(be.copy_rows(&src, (0, 0), &mut dst, (0, 1), (4, 6)).is_err(), "columns past dst");
    }
}

// ---- norm_modulate -------------------------------------------------------------------------------

/// (batch, tokens, dim): streamed kernel, one warp a row (144, 1152), several warps a row (4096),
/// vector loop path (13000), scalar path (36, 100), scalar multi-warp (1001), scalar loop (4099).
pub const NORM_SHAPES: &[(usize, usize, usize)] = &[
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

/// One norm_modulate case: LayerNorm of rows with an offset mean (the variance must not cancel),
/// modulated by rows 3 (shift) and 4 (scale) of 6 per sample.
pub fn norm_modulate_case<B: Device>(be: &B, (batch, tokens, dim): (usize, usize, usize), seed: u64) -> f64 {
    let o = Ops::new(be);
    let dt = o.dt;
    let mut rng = Rng::new(seed);
    let rows = batch * tokens;
    let x = o.rand(&mut rng, &[rows, dim], dt, 1.5, 3.0);
    let m = o.rand(&mut rng, &[batch, 6 * dim], dt, 0.5, 0.0);
    let (mut yd, mut yc) = o.outputs(&[rows, dim], dt);
    be.norm_modulate(&x.d, &m.d, 3, 4, 1e-6, &mut yd).unwrap();
    o.cpu.norm_modulate(&x.c, &m.c, 3, 4, 1e-6, &mut yc).unwrap();
    o.check(&format!("norm_modulate {dt} [{batch}·{tokens}, {dim}]"), &yd, &yc, TOL)
}

pub fn norm_modulate_shapes<B: Device>(be: &B) {
    for (i, &shape) in NORM_SHAPES.iter().enumerate() {
        norm_modulate_case(be, shape, 200 + i as u64);
    }
}

/// Shape errors name the op and the tensor.
pub fn norm_modulate_rejects_bad_shapes<B: Device>(be: &B) {
    let dt = be.act_dtype();
    let x = be.alloc(&[4, 64], dt).unwrap();
    let m = be.alloc(&[3, 6 * 64], dt).unwrap(); // batch 3 does not divide 4 rows
    let mut y = be.alloc(&[4, 64], dt).unwrap();
    match be.norm_modulate(&x, &m, 0, 1, 1e-6, &mut y) {
        Err(Error::Shape { op: "norm_modulate", tensor: "modv", .. }) => {}
        r => panic!("expected a modv shape error, got {r:?}"),
    }
    let m = be.alloc(&[2, 6 * 64], dt).unwrap();
    let mut y = be.alloc(&[4, 32], dt).unwrap();
    match be.norm_modulate(&x, &m, 0, 1, 1e-6, &mut y) {
        Err(Error::Shape { op: "norm_modulate", tensor: "out", .. }) => {}
        r => panic!("expected an out shape error, got {r:?}"),
    }
}

// ---- qk_norm -------------------------------------------------------------------------------------

/// Where Q and K sit in the rows of a qk_norm case's x (D = heads·head_dim).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QkLayout {
    /// The fused QKV projection output `[rows, 3D]`: Q at 0, K at D (V after them, untouched).
    Fused,
    /// `[rows, 3D + 16]`, K before Q: K at 8, Q at D + 16 (offsets and a row stride ≠ 3D).
    Offset,
    /// `[rows, 3D + 3]`: Q at 1, K at D + 2 (heads off 16-byte boundaries: the looped path).
    Unaligned,
}

impl QkLayout {
    /// (width, q_col, k_col)
    pub fn columns(self, d: usize) -> (usize, usize, usize) {
        match self {
            QkLayout::Fused => (3 * d, 0, d),
            QkLayout::Offset => (3 * d + 16, d + 16, 8),
            QkLayout::Unaligned => (3 * d + 3, 1, d + 2),
        }
    }
}

/// (rows, heads, head_dim, layout, eps): SD3.5-medium (24 × 64) and FLUX (24 × 128) heads on 4096
/// image + 333 context tokens; small odd cases of each vector-path group width (head dim 8: one
/// lane a head, 64: 8 lanes, 72: 9 chunks in 16 lanes, 128: 16, 256: 32) and of the looped path
/// (head dims 100 and 320, unaligned columns); eps inside the square root (0.5).
pub const QK_NORM_CASES: &[(usize, usize, usize, QkLayout, f32)] = &[
    (4096 + 333, 24, 64, QkLayout::Fused, 1e-6),
    (4096 + 333, 24, 128, QkLayout::Fused, 1e-6),
    (1, 1, 64, QkLayout::Fused, 1e-6),
    (7, 3, 128, QkLayout::Offset, 1e-6),
    (33, 5, 64, QkLayout::Offset, 1e-6),
    (5, 2, 72, QkLayout::Fused, 1e-6),
    (3, 3, 256, QkLayout::Offset, 1e-6),
    (9, 2, 100, QkLayout::Fused, 1e-6),
    (3, 1, 320, QkLayout::Fused, 1e-6),
    (11, 3, 64, QkLayout::Unaligned, 1e-6),
    (5, 3, 8, QkLayout::Fused, 0.5),
];

/// The columns `[col, col + len)` of every row of a `[rows, width]` matrix.
pub fn columns(v: &[f32], width: usize, col: usize, len: usize) -> Vec<f32> {
    v.chunks_exact(width).flat_map(|r| r[col..col + len].iter().copied()).collect()
}

/// One qk_norm case on `be` and the CPU reference: Q and K within TOL and each element within
/// half a storage ulp (plus 4e-6 relative) of the f32 reference, what one rounding of the f32
/// result allows (diffusers' second rounding would not pass); every other column unchanged, bit
/// for bit (they hold NaN). Returns the worst relative error of Q and K.
pub fn qk_norm_case<B: Device>(
    be: &B,
    (rows, heads, head_dim, layout, eps): (usize, usize, usize, QkLayout, f32),
    seed: u64,
) -> f64 {
    let o = Ops::new(be);
    let dt = o.dt;
    let d = heads * head_dim;
    let (width, q_col, k_col) = layout.columns(d);
    let mut rng = Rng::new(seed);
    let mut untouched = vec![true; width];
    for col in [q_col, k_col] {
        untouched[col..col + d].iter_mut().for_each(|u| *u = false);
    }
    // Q and K random; V and the gaps NaN: the op must neither read nor write them
    let mut v = data(&mut rng, rows * width, 2.0, 0.5, dt);
    v.iter_mut().enumerate().filter(|(i, _)| untouched[i % width]).for_each(|(_, x)| *x = f32::NAN);
    let mut x = o.pair(v, &[rows, width], dt);
    let wq = o.rand(&mut rng, &[head_dim], dt, 0.5, 0.8);
    let wk = o.rand(&mut rng, &[head_dim], dt, 0.5, 0.8);
    let before = be.download(&x.d).unwrap();
    be.qk_norm(&mut x.d, q_col, k_col, heads, head_dim, &wq.d, &wk.d, eps).unwrap();
    o.cpu.qk_norm(&mut x.c, q_col, k_col, heads, head_dim, &wq.c, &wk.c, eps).unwrap();
    let (got, want) = (be.download(&x.d).unwrap(), o.cpu.download(&x.c).unwrap());
    let what = format!("qk_norm {dt} [{rows}, {width}] {heads}×{head_dim} {layout:?} eps {eps}");
    // |got − want| ≤ half an ulp of the storage type at |want| (one rounding of a value within 4e-6
    // of the reference), or half f16's subnormal step
    let mantissa = if dt == DType::BF16 { 8 } else { 11 };
    let half_ulp = |w: f32| {
        let e = ((w.abs() * (1.0 + 1e-5)).to_bits() >> 23) as i32 - 127;
        2f32.powi(e - mantissa).max(if dt == DType::F16 { 2f32.powi(-25) } else { 0.0 })
    };
    let mut worst = 0.0f64;
    for (name, col) in [("Q", q_col), ("K", k_col)] {
        let (g, w) = (columns(&got, width, col, d), columns(&want, width, col, d));
        worst = worst.max(close(&format!("{what} {name}"), &g, &w, TOL));
        let mut worst_ulps = 0.0f32;
        for (i, (&g, &w)) in g.iter().zip(&w).enumerate() {
            let bound = half_ulp(w) + 4e-6 * w.abs();
            assert!(
                (g - w).abs() <= bound,
                "{what} {name} element {i}: {g} vs the f32 reference {w} (bound {bound:e})"
            );
            worst_ulps = worst_ulps.max((g - w).abs() / (2.0 * half_ulp(w)));
        }
        eprintln!("{what} {name}: max error {worst_ulps:.3} ulp of the f32 reference");
    }
    for (i, (&g, &b)) in got.iter().zip(&before).enumerate() {
        if untouched[i % width] {
            assert_eq!(g.to_bits(), b.to_bits(), "{what}: row {} column {} is outside Q and K", i / width, i % width);
        }
    }
    worst
}

pub fn qk_norm_shapes<B: Device>(be: &B) {
    for (i, &case) in QK_NORM_CASES.iter().enumerate() {
        qk_norm_case(be, case, 1300 + i as u64);
    }
}

/// Bad columns, sizes, weights, dtypes and eps are errors naming the op and the tensor or
/// parameter (never a panic or a launch), and leave x as it was. Any backend (the CPU's too).
pub fn qk_norm_rejects_bad_inputs<B: Backend>(be: &B) {
    let dt = be.act_dtype();
    let (rows, heads, hd) = (5, 2, 64);
    let d = heads * hd;
    let vals: Vec<f32> = (0..rows * 3 * d).map(|i| dt.round(1.0 + (i % 7) as f32 * 0.25)).collect();
    let mut x = be.upload(&vals, &[rows, 3 * d], dt).unwrap();
    let w = be.upload(&vec![1.0; hd], &[hd], dt).unwrap();
    let short = be.upload(&vec![1.0; hd / 2], &[hd / 2], dt).unwrap();
    let two_d = be.upload(&vec![1.0; hd], &[1, hd], dt).unwrap();
    let expect_shape = |r: deltadit::Result<()>, tensor: &str, what: &str| match r {
        Err(Error::Shape { op: "qk_norm", tensor: t, .. }) if t == tensor => {}
        r => panic!("qk_norm {what}: expected a shape error on {tensor}, got {r:?}"),
    };
    let expect_param = |r: deltadit::Result<()>, name: &str, what: &str| match r {
        Err(Error::Param { name: n, .. }) if n.starts_with("qk_norm") && n.contains(name) => {}
        r => panic!("qk_norm {what}: expected a parameter error on {name}, got {r:?}"),
    };
    expect_shape(be.qk_norm(&mut x, 2 * d + 1, 0, heads, hd, &w, &w, 1e-6), "x", "Q past the row's end");
    expect_shape(be.qk_norm(&mut x, 0, 2 * d + 8, heads, hd, &w, &w, 1e-6), "x", "K past the row's end");
    expect_shape(be.qk_norm(&mut x, 0, usize::MAX - 4, heads, hd, &w, &w, 1e-6), "x", "k_col overflowing");
    expect_shape(be.qk_norm(&mut x, 0, d, usize::MAX / 2, hd, &w, &w, 1e-6), "x", "heads × head_dim overflowing");
    expect_shape(be.qk_norm(&mut x, 0, d, heads, hd, &short, &w, 1e-6), "wq", "wq of half a head");
    expect_shape(be.qk_norm(&mut x, 0, d, heads, hd, &w, &two_d, 1e-6), "wk", "wk of shape [1, head_dim]");
    expect_param(be.qk_norm(&mut x, 0, d / 2, heads, hd, &w, &w, 1e-6), "k_col", "K overlapping Q");
    expect_param(be.qk_norm(&mut x, d / 2, 0, heads, hd, &w, &w, 1e-6), "k_col", "Q overlapping K");
    expect_param(be.qk_norm(&mut x, 0, d, 0, hd, &w, &w, 1e-6), "heads", "no heads");
    expect_param(be.qk_norm(&mut x, 0, d, heads, 0, &w, &w, 1e-6), "head_dim", "head_dim 0");
    for eps in [f32::NAN, -1e-6, f32::INFINITY] {
        expect_param(be.qk_norm(&mut x, 0, d, heads, hd, &w, &w, eps), "eps", "a bad eps");
    }
    let mut x3 = be.upload(&vals, &[1, rows, 3 * d], dt).unwrap();
    expect_shape(be.qk_norm(&mut x3, 0, d, heads, hd, &w, &w, 1e-6), "x", "a 3-D x");
    if dt != DType::F32 {
        // weights of another dtype; x in f32 (the kernels take bf16 and f16 only)
        let wf = be.upload(&vec![1.0; hd], &[hd], DType::F32).unwrap();
        match be.qk_norm(&mut x, 0, d, heads, hd, &w, &wf, 1e-6) {
            Err(Error::DType { op: "qk_norm", tensor: "wk", .. }) => {}
            r => panic!("qk_norm: expected a dtype error on wk, got {r:?}"),
        }
        let mut xf = be.upload(&vals, &[rows, 3 * d], DType::F32).unwrap();
        let e = be.qk_norm(&mut xf, 0, d, heads, hd, &wf, &wf, 1e-6).unwrap_err();
        assert!(matches!(e.backend_kind(), Some(BackendErrorKind::UnsupportedDType { .. })), "{e:?}");
        assert!(e.to_string().contains("qk_norm"), "{e}");
    }
    assert_eq!(be.download(&x).unwrap(), vals, "a rejected qk_norm changed x");
}

// ---- qk_norm_rope ----------------------------------------------------------------------------------

/// (rows, heads, head_dim, layout, tokens, offset): FLUX's heads (24 × 128, 2 samples of the
/// image part at offset 44), the golden cases' 2 × 64 with the image after 7 text tokens, odd
/// sample lengths and offsets, the looped path (72 unaligned, 100), 256 and the smallest head.
pub const QK_NORM_ROPE_CASES: &[(usize, usize, usize, QkLayout, usize, usize)] = &[
    (600, 24, 128, QkLayout::Fused, 300, 44),
    (128, 2, 64, QkLayout::Fused, 64, 7),
    (46, 3, 128, QkLayout::Fused, 23, 0),
    (15, 3, 64, QkLayout::Offset, 5, 2),
    (7, 2, 72, QkLayout::Unaligned, 7, 0),
    (9, 2, 100, QkLayout::Fused, 3, 1),
    (4, 1, 256, QkLayout::Offset, 2, 5),
    (1, 1, 8, QkLayout::Fused, 1, 0),
];

/// A random RoPE table `[positions, head_dim]`: (cos, sin) of an angle per pair, as FluxPosEmbed's
/// f64 values rounded to f32.
pub fn rope_table(rng: &mut Rng, positions: usize, head_dim: usize) -> Vec<f32> {
    (0..positions * head_dim / 2)
        .flat_map(|_| {
            let a = (rng.uniform() as f64 - 0.5) * 200.0;
            [a.cos() as f32, a.sin() as f32]
        })
        .collect()
}

/// One qk_norm_rope case on `be` and the CPU reference (x's other columns NaN and untouched):
/// each element of Q and K within half a storage ulp of the f32 reference plus 4e-6 of its pair's
/// norm (the rotation may cancel an element, never the pair). Returns the worst relative error.
pub fn qk_norm_rope_case<B: Device>(
    be: &B,
    (rows, heads, head_dim, layout, tokens, offset): (usize, usize, usize, QkLayout, usize, usize),
    seed: u64,
) -> f64 {
    let o = Ops::new(be);
    let dt = o.dt;
    let d = heads * head_dim;
    let (width, q_col, k_col) = layout.columns(d);
    let mut rng = Rng::new(seed);
    let mut untouched = vec![true; width];
    for col in [q_col, k_col] {
        untouched[col..col + d].iter_mut().for_each(|u| *u = false);
    }
    let mut v = data(&mut rng, rows * width, 2.0, 0.5, dt);
    v.iter_mut().enumerate().filter(|(i, _)| untouched[i % width]).for_each(|(_, x)| *x = f32::NAN);
    let mut x = o.pair(v, &[rows, width], dt);
    let wq = o.rand(&mut rng, &[head_dim], dt, 0.5, 0.8);
    let wk = o.rand(&mut rng, &[head_dim], dt, 0.5, 0.8);
    let positions = offset + tokens + 3;
    let table = rope_table(&mut rng, positions, head_dim);
    let t = o.pair(table, &[positions, head_dim], DType::F32);
    let before = be.download(&x.d).unwrap();
    let rope = |table| Rope { table, tokens, offset };
    be.qk_norm_rope(&mut x.d, q_col, k_col, heads, head_dim, &wq.d, &wk.d, 1e-6, rope(&t.d)).unwrap();
    o.cpu
        .qk_norm_rope(&mut x.c, q_col, k_col, heads, head_dim, &wq.c, &wk.c, 1e-6, Rope { table: &t.c, tokens, offset })
        .unwrap();
    let (got, want) = (be.download(&x.d).unwrap(), o.cpu.download(&x.c).unwrap());
    let what =
        format!("qk_norm_rope {dt} [{rows}, {width}] {heads}×{head_dim} {layout:?} tokens {tokens} offset {offset}");
    let mantissa = if dt == DType::BF16 { 8 } else { 11 };
    let half_ulp = |w: f32| {
        let e = ((w.abs() * (1.0 + 1e-5)).to_bits() >> 23) as i32 - 127;
        2f32.powi(e - mantissa).max(if dt == DType::F16 { 2f32.powi(-25) } else { 0.0 })
    };
    let mut worst = 0.0f64;
    for (name, col) in [("Q", q_col), ("K", k_col)] {
        let (g, w) = (columns(&got, width, col, d), columns(&want, width, col, d));
        worst = worst.max(close(&format!("{what} {name}"), &g, &w, TOL));
        for (i, (gp, wp)) in g.chunks_exact(2).zip(w.chunks_exact(2)).enumerate() {
            let norm = (wp[0] * wp[0] + wp[1] * wp[1]).sqrt();
            for k in 0..2 {
                let bound = half_ulp(wp[k]) + 4e-6 * norm;
                assert!(
                    (gp[k] - wp[k]).abs() <= bound,
                    "{what} {name} element {}: {} vs the f32 reference {} (bound {bound:e})",
                    2 * i + k,
                    gp[k],
                    wp[k]
                );
            }
        }
    }
    for (i, (&g, &b)) in got.iter().zip(&before).enumerate() {
        if untouched[i % width] {
            assert_eq!(g.to_bits(), b.to_bits(), "{what}: row {} column {} is outside Q and K", i / width, i % width);
        }
    }
    eprintln!("{what}: rel err {worst:.3e}");
    worst
}

pub fn qk_norm_rope_shapes<B: Device>(be: &B) {
    for (i, &case) in QK_NORM_ROPE_CASES.iter().enumerate() {
        qk_norm_rope_case(be, case, 1400 + i as u64);
    }
}

/// A table of the wrong dtype, width or length, tokens not dividing the rows, an odd head dim:
/// errors (never a launch), x unchanged. Any backend.
pub fn qk_norm_rope_rejects_bad_inputs<B: Backend>(be: &B) {
    let dt = be.act_dtype();
    let (rows, heads, hd) = (6, 2, 64);
    let d = heads * hd;
    let vals: Vec<f32> = (0..rows * 3 * d).map(|i| dt.round(1.0 + (i % 7) as f32 * 0.25)).collect();
    let mut x = be.upload(&vals, &[rows, 3 * d], dt).unwrap();
    let w = be.upload(&vec![1.0; hd], &[hd], dt).unwrap();
    let table = be.upload(&vec![0.5; 8 * hd], &[8, hd], DType::F32).unwrap();
    let narrow = be.upload(&vec![0.5; 8 * 32], &[8, 32], DType::F32).unwrap();
    let act = be.upload(&vec![0.5; 8 * hd], &[8, hd], dt).unwrap();
    let table_err = |r: deltadit::Result<()>, what: &str| match r {
        Err(Error::Shape { tensor: "table", .. }) => {}
        r => panic!("qk_norm_rope {what}: expected a shape error on the table, got {r:?}"),
    };
    let param_err = |r: deltadit::Result<()>, name: &str, what: &str| match r {
        Err(Error::Param { name: n, .. }) if n.contains(name) => {}
        r => panic!("qk_norm_rope {what}: expected a parameter error on {name}, got {r:?}"),
    };
    let run = |x: &mut Tensor<B>, t, tokens, offset, hd: usize, heads: usize| {
        be.qk_norm_rope(x, 0, heads * hd, heads, hd, &w, &w, 1e-6, Rope { table: t, tokens, offset })
    };
    table_err(run(&mut x, &table, 3, 6, hd, heads), "positions past the table");
    table_err(run(&mut x, &narrow, 3, 0, hd, heads), "a table of another head dim");
    if dt != DType::F32 {
        table_err(run(&mut x, &act, 3, 0, hd, heads), "a table in the activation dtype");
    }
    param_err(run(&mut x, &table, 4, 0, hd, heads), "tokens", "tokens not dividing the rows");
    param_err(run(&mut x, &table, 0, 0, hd, heads), "tokens", "no tokens");
    let w_odd = be.upload(&vec![1.0; 63], &[63], dt).unwrap();
    let r = be.qk_norm_rope(&mut x, 0, 126, 2, 63, &w_odd, &w_odd, 1e-6, Rope { table: &table, tokens: 3, offset: 0 });
    param_err(r, "head_dim", "an odd head dim");
    assert_eq!(be.download(&x).unwrap(), vals, "a rejected qk_norm_rope changed x");
}

// ---- residual ------------------------------------------------------------------------------------

/// (batch, tokens, dim); (2, 9, 1152) is the Δ apply of a cached PixArt-α step.
pub const RESIDUAL_SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1152), (2, 7, 144), (3, 257, 1152), (2, 7, 36), (3, 5, 100), (2, 9, 1152)];

/// `x += gate ⊙ y` (gate row 2) and `x += y` without a gate (the Δ apply of a cached step), no
/// cache write.
pub fn residual_plain_and_gated<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
        for gated in [true, false] {
            let mut rng = Rng::new(400 + 50 * gated as u64 + i as u64);
            let rows = batch * tokens;
            let mut x = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let m = o.rand(&mut rng, &[batch, 6 * dim], dt, 1.0, 0.0);
            let (gd, gc) = if gated { (Some((&m.d, 2)), Some((&m.c, 2))) } else { (None, None) };
            be.residual(&mut x.d, &y.d, gd, CacheWrite::None).unwrap();
            o.cpu.residual(&mut x.c, &y.c, gc, CacheWrite::None).unwrap();
            let what = if gated { "residual gated" } else { "residual ungated (Δ apply)" };
            o.check(&format!("{what} {dt} [{batch}·{tokens}, {dim}]"), &x.d, &x.c, TOL);
        }
    }
}

/// The calibrated Δ apply `x += Σ c_i·t_i` (1–3 snapshots, TaylorSeer's 1, e, e²/2) and the ladder
/// update `x = c_0·t_0 + c_1·t_1` (1/w, −1/w), with the coefficients read from an f32 device
/// buffer at an offset, at every residual shape.
pub fn forecast_apply_and_ladder<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
        let rows = batch * tokens;
        for (terms, accumulate, coefs) in [
            (1, true, [0.0, 1.0, 0.0, 0.0]),
            (2, true, [0.0, 1.0, 3.0, 0.0]),
            (3, true, [0.0, 1.0, 2.0, 2.0]),
            (2, false, [0.0, 0.5, -0.5, 0.0]),
            (3, false, [0.0, -1.25, 0.75, 0.3]),
        ] {
            let mut rng = Rng::new(2600 + 10 * i as u64 + terms as u64 + 5 * accumulate as u64);
            let mut x = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let ts: Vec<_> = (0..terms).map(|_| o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0)).collect();
            let cd = be.upload(&coefs, &[4], DType::F32).unwrap();
            let cc = o.cpu.upload(&coefs, &[4], DType::F32).unwrap();
            let td: Vec<&Tensor<B>> = ts.iter().map(|t| &t.d).collect();
            let tc: Vec<&Tensor<Cpu>> = ts.iter().map(|t| &t.c).collect();
            be.forecast(&mut x.d, &td, &cd, 1, accumulate).unwrap();
            o.cpu.forecast(&mut x.c, &tc, &cc, 1, accumulate).unwrap();
            let what = if accumulate { "apply" } else { "ladder" };
            o.check(&format!("forecast {what} {terms} terms {dt} [{batch}·{tokens}, {dim}]"), &x.d, &x.c, TOL);
        }
    }
}

/// The gated residual on a forecast branch output, `x += gate ⊙ Σ c_i·t_i` (FORA with
/// TaylorSeer), 1–3 terms, gated or not, with and without the fused Δ write, at every residual
/// shape; a bad term is an error that leaves x unchanged.
pub fn residual_forecast_gated_with_taps<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
        let rows = batch * tokens;
        for (terms, gated, delta, coefs) in [
            (1, true, false, [1.0, 0.0, 0.0]),
            (2, true, true, [1.0, 3.0, 0.0]),
            (3, false, false, [1.0, 2.0, 2.0]),
            (3, true, true, [1.0, -1.5, 0.5]),
        ] {
            let mut rng = Rng::new(2700 + 10 * i as u64 + terms as u64 + 5 * gated as u64);
            let mut x = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let ts: Vec<_> = (0..terms).map(|_| o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0)).collect();
            let m = o.rand(&mut rng, &[batch, 6 * dim], dt, 1.0, 0.0);
            let mut cache = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let cd = be.upload(&coefs, &[3], DType::F32).unwrap();
            let cc = o.cpu.upload(&coefs, &[3], DType::F32).unwrap();
            let td: Vec<&Tensor<B>> = ts.iter().map(|t| &t.d).collect();
            let tc: Vec<&Tensor<Cpu>> = ts.iter().map(|t| &t.c).collect();
            let (gd, gc) = if gated { (Some((&m.d, 4)), Some((&m.c, 4))) } else { (None, None) };
            let (wd, wc) = match delta {
                true => (CacheWrite::Delta(&mut cache.d), CacheWrite::Delta(&mut cache.c)),
                false => (CacheWrite::None, CacheWrite::None),
            };
            be.residual_forecast(&mut x.d, &td, &cd, gd, wd).unwrap();
            o.cpu.residual_forecast(&mut x.c, &tc, &cc, gc, wc).unwrap();
            let what = format!("residual forecast {terms} terms gated={gated} {dt} [{batch}·{tokens}, {dim}]");
            o.check(&format!("{what}: x"), &x.d, &x.c, TOL);
            if delta {
                o.check(&format!("{what}: Δ"), &cache.d, &cache.c, TOL);
            }
        }
    }
    let mut rng = Rng::new(2799);
    let x = o.rand(&mut rng, &[4, 16], dt, 1.0, 0.0);
    let before = be.download(&x.d).unwrap();
    let mut xd = x.d;
    let t = o.rand(&mut rng, &[4, 16], dt, 1.0, 0.0);
    let narrow = o.rand(&mut rng, &[4, 8], dt, 1.0, 0.0);
    let coef = be.upload(&[1.0, 2.0], &[2], DType::F32).unwrap();
    assert!(be.residual_forecast(&mut xd, &[], &coef, None, CacheWrite::None).is_err(), "no terms");
    assert!(be.residual_forecast(&mut xd, &[&t.d, &narrow.d], &coef, None, CacheWrite::None).is_err(), "narrow term");
    assert!(
        be.residual_forecast(&mut xd, &[&t.d, &t.d, &t.d], &coef, None, CacheWrite::None).is_err(),
        "coef too short"
    );
    assert_eq!(be.download(&xd).unwrap(), before, "a rejected residual_forecast changed x");
}

/// The TaylorSeer ladder update in one pass, 1 and 2 levels, a level becoming defined (1/w, −1/w)
/// or not (0, 0), coefficients at an offset, at every residual shape: `prev` becomes d0 bit for
/// bit, the levels close to the CPU's; bad inputs are errors.
pub fn ladder_update_levels<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
        let rows = batch * tokens;
        for (levels, coefs) in
            [(1, [0.0, 0.5, -0.5, 0.0, 0.0]), (2, [0.0, 0.25, -0.25, 0.25, -0.25]), (2, [0.0, 1.0, -1.0, 0.0, 0.0])]
        {
            let mut rng = Rng::new(2900 + 10 * i as u64 + levels as u64 + (coefs[3] == 0.0) as u64);
            let d0 = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let mut prev = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let mut lv: Vec<_> = (0..levels).map(|_| o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0)).collect();
            let cd = be.upload(&coefs, &[5], DType::F32).unwrap();
            let cc = o.cpu.upload(&coefs, &[5], DType::F32).unwrap();
            {
                let mut ld: Vec<&mut Tensor<B>> = lv.iter_mut().map(|t| &mut t.d).collect();
                be.ladder_update(&d0.d, &mut prev.d, &mut ld, &cd, 1).unwrap();
            }
            {
                let mut lc: Vec<&mut Tensor<Cpu>> = lv.iter_mut().map(|t| &mut t.c).collect();
                o.cpu.ladder_update(&d0.c, &mut prev.c, &mut lc, &cc, 1).unwrap();
            }
            let what = format!("ladder update {levels} levels {coefs:?} {dt} [{batch}·{tokens}, {dim}]");
            assert_eq!(be.download(&prev.d).unwrap(), be.download(&d0.d).unwrap(), "{what}: prev = d0");
            for (l, t) in lv.iter().enumerate() {
                if coefs[1 + 2 * l] == 0.0 {
                    assert!(be.download(&t.d).unwrap().iter().all(|&v| v == 0.0), "{what}: undefined level {l} not 0");
                } else {
                    o.check(&format!("{what}: level {}", l + 1), &t.d, &t.c, TOL);
                }
            }
        }
    }
    let mut rng = Rng::new(2999);
    let d0 = o.rand(&mut rng, &[4, 16], dt, 1.0, 0.0);
    let mut prev = o.rand(&mut rng, &[4, 16], dt, 1.0, 0.0);
    let mut l1 = o.rand(&mut rng, &[4, 16], dt, 1.0, 0.0);
    let mut narrow = o.rand(&mut rng, &[4, 8], dt, 1.0, 0.0);
    let coef = be.upload(&[1.0, -1.0, 1.0], &[3], DType::F32).unwrap();
    assert!(be.ladder_update(&d0.d, &mut prev.d, &mut [], &coef, 0).is_err(), "no levels");
    assert!(be.ladder_update(&d0.d, &mut prev.d, &mut [&mut narrow.d], &coef, 0).is_err(), "narrow level");
    assert!(be.ladder_update(&d0.d, &mut prev.d, &mut [&mut l1.d], &coef, 2).is_err(), "coef past its end");
}

/// No terms, four terms, a term of another shape, coefficients of the activation dtype or too
/// few of them: errors (never a launch), x unchanged. Any backend.
pub fn forecast_rejects_bad_inputs<B: Backend>(be: &B) {
    let dt = be.act_dtype();
    let vals: Vec<f32> = (0..4 * 16).map(|i| dt.round(1.0 + (i % 5) as f32 * 0.5)).collect();
    let mut x = be.upload(&vals, &[4, 16], dt).unwrap();
    let t = be.upload(&vals, &[4, 16], dt).unwrap();
    let narrow = be.upload(&vals[..32], &[4, 8], dt).unwrap();
    let coef = be.upload(&[1.0, 2.0, 3.0], &[3], DType::F32).unwrap();
    let coef_act = be.upload(&[1.0, 2.0, 3.0], &[3], dt).unwrap();
    assert!(be.forecast(&mut x, &[], &coef, 0, true).is_err(), "no terms");
    assert!(be.forecast(&mut x, &[&t, &t, &t, &t], &coef, 0, true).is_err(), "four terms");
    assert!(be.forecast(&mut x, &[&t, &narrow], &coef, 0, true).is_err(), "a term of another shape");
    assert!(be.forecast(&mut x, &[&t, &t], &coef, 2, true).is_err(), "coefficients past the buffer");
    if dt != DType::F32 {
        assert!(be.forecast(&mut x, &[&t], &coef_act, 0, true).is_err(), "coefficients not f32");
    }
    assert_eq!(be.download(&x).unwrap(), vals, "a rejected forecast changed x");
}

/// Anchor then delta, gated and not: the cache first holds the range input x1 as stored (bit for
/// bit), then Δ = round(x2 − x1) exactly, and close to the CPU's f32 Δ.
pub fn residual_anchor_then_delta<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(batch, tokens, dim)) in RESIDUAL_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(500 + i as u64);
        let rows = batch * tokens;
        let what = format!("{dt} [{batch}·{tokens}, {dim}]");
        let mut x = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
        let m = o.rand(&mut rng, &[batch, 6 * dim], dt, 1.0, 0.0);
        let (mut cd, mut cc) = o.outputs(&[rows, dim], dt);
        // (anchor gate, delta gate): gated anchor then ungated delta, then the other way round
        for (round, (ga, gd)) in [(Some(5), None), (None, Some(2)), (Some(2), Some(5))].into_iter().enumerate() {
            let y1 = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let y2 = o.rand(&mut rng, &[rows, dim], dt, 1.0, 0.0);
            let w = format!("{what} round {round} gates {ga:?}/{gd:?}");
            be.residual(&mut x.d, &y1.d, ga.map(|r| (&m.d, r)), CacheWrite::Anchor(&mut cd)).unwrap();
            o.cpu.residual(&mut x.c, &y1.c, ga.map(|r| (&m.c, r)), CacheWrite::Anchor(&mut cc)).unwrap();
            o.check(&format!("residual anchor x {w}"), &x.d, &x.c, TOL);
            let x1 = be.download(&x.d).unwrap();
            assert_eq!(be.download(&cd).unwrap(), x1, "anchor: cache = stored x_out, bit for bit ({w})");

            be.residual(&mut x.d, &y2.d, gd.map(|r| (&m.d, r)), CacheWrite::Delta(&mut cd)).unwrap();
            o.cpu.residual(&mut x.c, &y2.c, gd.map(|r| (&m.c, r)), CacheWrite::Delta(&mut cc)).unwrap();
            o.check(&format!("residual delta x {w}"), &x.d, &x.c, TOL);
            o.check(&format!("residual delta cache {w}"), &cd, &cc, TOL);
            let x2 = be.download(&x.d).unwrap();
            let want: Vec<f32> = x2.iter().zip(&x1).map(|(a, b)| dt.round(a - b)).collect();
            assert_eq!(be.download(&cd).unwrap(), want, "delta: cache = round(x_out − anchor) ({w})");
        }
    }
}

// ---- activation, add_bcast -----------------------------------------------------------------------

/// (rows, cols)
pub const EW_SHAPES: &[(usize, usize)] = &[(1, 1152), (7, 144), (257, 1152), (7, 36), (5, 100), (3, 4608)];

/// `act(x + bias)` for each activation with and without bias, and `x[r, :] += y`.
pub fn activation_and_add_bcast<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(rows, cols)) in EW_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(600 + i as u64);
        let x = o.rand(&mut rng, &[rows, cols], dt, 2.0, 0.0);
        let b = o.rand(&mut rng, &[cols], dt, 1.0, 0.0);
        for act in [Activation::GeluTanh, Activation::Silu, Activation::None] {
            for with_bias in [true, false] {
                let (mut od, mut oc) = o.outputs(&[rows, cols], dt);
                let (bd, bc) = if with_bias { (Some(&b.d), Some(&b.c)) } else { (None, None) };
                be.activation(&x.d, bd, act, &mut od).unwrap();
                o.cpu.activation(&x.c, bc, act, &mut oc).unwrap();
                o.check(&format!("activation {act:?} {dt} bias={with_bias} [{rows}, {cols}]"), &od, &oc, TOL);
            }
        }
        let mut y = o.rand(&mut rng, &[rows, cols], dt, 1.0, 0.0);
        be.add_bcast(&mut y.d, &b.d).unwrap();
        o.cpu.add_bcast(&mut y.c, &b.c).unwrap();
        o.check(&format!("add_bcast {dt} [{rows}, {cols}]"), &y.d, &y.c, TOL);
    }
}

// ---- timestep embedding --------------------------------------------------------------------------

pub const TIMESTEPS: [f32; 4] = [0.0, 1.0, 500.0, 999.0];
/// (flip_sin_to_cos, downscale_freq_shift, dim): PixArt, DiT, and the unflipped order.
pub const TIMESTEP_VARIANTS: &[(bool, f32, usize)] = &[(true, 0.0, 256), (true, 1.0, 256), (false, 0.0, 64)];

/// Within TOL, and element-wise within one storage ulp (2^-8 for bf16, 2^-11 for f16, of values in
/// [−1, 1]): the kernel uses accurate expf/sincosf (arguments reach ~1000 rad).
pub fn timestep_embedding_variants<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for &(flip, shift, dim) in TIMESTEP_VARIANTS {
        let t = o.pair(TIMESTEPS.to_vec(), &[TIMESTEPS.len()], DType::F32);
        let (mut od, mut oc) = o.outputs(&[TIMESTEPS.len(), dim], dt);
        be.timestep_embedding(&t.d, flip, shift, &mut od).unwrap();
        o.cpu.timestep_embedding(&t.c, flip, shift, &mut oc).unwrap();
        let what = format!("timestep_embedding {dt} flip={flip} shift={shift} dim={dim}");
        o.check(&what, &od, &oc, TOL);
        let ulp = if dt == DType::BF16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
        let (g, w) = (be.download(&od).unwrap(), o.cpu.download(&oc).unwrap());
        let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= ulp, "{what}: max abs error {worst} > {ulp}");
    }
}

// ---- patchify / unpatchify -----------------------------------------------------------------------

/// (B, C, H, W, p), square and not, up to PixArt-512's latents.
pub const PATCH_SHAPES: &[(usize, usize, usize, usize, usize)] =
    &[(2, 4, 8, 12, 2), (1, 3, 6, 4, 2), (3, 4, 4, 4, 1), (1, 2, 8, 4, 4), (2, 4, 64, 64, 2)];

/// Pure permutations: exactly the (rounded) reference.
pub fn patchify_unpatchify<B: Device>(be: &B) {
    let o = Ops::new(be);
    let dt = o.dt;
    for (i, &(b, ch, h, w, p)) in PATCH_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(800 + i as u64);
        let lat = o.rand(&mut rng, &[b, ch, h, w], DType::F32, 1.0, 0.0);
        let tokens = b * (h / p) * (w / p);
        let (mut pd, mut pc) = o.outputs(&[tokens, ch * p * p], dt);
        be.patchify(&lat.d, p, &mut pd).unwrap();
        o.cpu.patchify(&lat.c, p, &mut pc).unwrap();
        let want: Vec<f32> = o.cpu.download(&pc).unwrap().iter().map(|&v| dt.round(v)).collect();
        assert_eq!(be.download(&pd).unwrap(), want, "patchify {dt} {:?}", (b, ch, h, w, p));

        let tok = o.rand(&mut rng, &[tokens, ch * p * p], dt, 1.0, 0.0);
        let (mut ud, mut uc) = o.outputs(&[b, ch, h, w], DType::F32);
        be.unpatchify(&tok.d, p, &mut ud).unwrap();
        o.cpu.unpatchify(&tok.c, p, &mut uc).unwrap();
        assert_eq!(be.download(&ud).unwrap(), o.cpu.download(&uc).unwrap(), "unpatchify {dt} {:?}", (b, ch, h, w, p));
    }
}

// ---- cfg_combine ---------------------------------------------------------------------------------

/// (batch, C, C_out, H, W): learned-sigma output (C_out = 2·C).
pub const CFG_SHAPE: (usize, usize, usize, usize, usize) = (2, 4, 8, 6, 10);
pub const CFG_MODES: [Cfg; 3] =
    [Cfg::Off, Cfg::On { scale: 4.5, cond_first: true }, Cfg::On { scale: 7.0, cond_first: false }];

pub fn cfg_combine_orders<B: Device>(be: &B) {
    let o = Ops::new(be);
    let (batch, ch, ch_out, h, w) = CFG_SHAPE;
    for cfg in CFG_MODES {
        let n = if cfg == Cfg::Off { batch } else { 2 * batch };
        let mut rng = Rng::new(900);
        let out = o.rand(&mut rng, &[n, ch_out, h, w], DType::F32, 1.0, 0.0);
        let (mut ed, mut ec) = o.outputs(&[batch, ch, h, w], DType::F32);
        be.cfg_combine(&out.d, cfg, &mut ed).unwrap();
        o.cpu.cfg_combine(&out.c, cfg, &mut ec).unwrap();
        o.check_f32(&format!("cfg_combine {cfg:?}"), &ed, &ec);
    }
}

// ---- scheduler_step ------------------------------------------------------------------------------

/// Latent sizes: float4 path, vectors + scalar tail, PixArt-1024's CFG batch of latents.
pub const SCHEDULER_SIZES: &[usize] = &[576, 1001, 2 * 4 * 128 * 128];

/// Every variant of [`super::SCHEDULER_CASES`] at every size; x0_prev (where given) too.
pub fn scheduler_step_kinds<B: Device>(be: &B) {
    let o = Ops::new(be);
    let coeffs = [0.83f32, 0.57, 1.07, 0.31, 0.62, 0.5];
    // flow matching: c0 = σ_next − σ < 0, c1 = σ (a step of SD3's shifted 28-step schedule)
    let flow = [-0.0437f32, 0.8125, 0.0, 0.0, 0.0, 0.0];
    for &n in SCHEDULER_SIZES {
        for &(kind, with_prev, with_noise) in super::SCHEDULER_CASES {
            let mut rng = Rng::new(1000 + n as u64);
            let u = SchedulerUpdate { kind, c: if kind == SchedulerKind::FlowEuler { flow } else { coeffs } };
            let mut x = o.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let eps = o.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let mut prev = o.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let noise = o.rand(&mut rng, &[n], DType::F32, 1.0, 0.0);
            let (pd, pc) = if with_prev { (Some(&mut prev.d), Some(&mut prev.c)) } else { (None, None) };
            let (nd, nc) = if with_noise { (Some(&noise.d), Some(&noise.c)) } else { (None, None) };
            be.scheduler_step(&u, &mut x.d, &eps.d, pd, nd).unwrap();
            o.cpu.scheduler_step(&u, &mut x.c, &eps.c, pc, nc).unwrap();
            let what = format!("scheduler_step {kind:?} n={n} prev={with_prev} noise={with_noise}");
            o.check_f32(&what, &x.d, &x.c);
            if with_prev {
                o.check_f32(&format!("{what} x0_prev"), &prev.d, &prev.c);
            }
        }
    }
    // every formula is covered
    for kind in SchedulerKind::ALL {
        assert!(super::SCHEDULER_CASES.iter().any(|c| c.0 == kind), "{kind:?} untested");
    }
}

// ---- rel_l1 --------------------------------------------------------------------------------------

/// Element counts: one element, odd tails, one block, a few hundred blocks (PixArt-α 256's hidden
/// state), the block cap (REL_L1_MAX_BLOCKS = 1024 blocks of 256 threads) with every thread
/// looping.
pub const REL_L1_SIZES: &[usize] = &[1, 7, 9, 1000, 1001, 257 * 1152, 2 * 4096 * 144 + 3];
/// The determinism sizes: 577 blocks (bf16/f16, 8 elements a thread) or the 1024-block cap (f32),
/// and the cap with each thread looping 2–4 times.
pub const REL_L1_MANY_BLOCKS: &[usize] = &[2 * 4096 * 144 + 3, 4 * 1024 * 1024 + 5];

/// (Σ|a − b|, Σ|b|) of the backend's dtype and f32 against the CPU's.
pub fn rel_l1_probe<B: Device>(be: &B) {
    let o = Ops::new(be);
    for (i, &n) in REL_L1_SIZES.iter().enumerate() {
        for tdt in [o.dt, DType::F32] {
            let mut rng = Rng::new(1100 + i as u64);
            let a = o.rand(&mut rng, &[n], tdt, 1.0, 0.0);
            let b = o.rand(&mut rng, &[n], tdt, 1.0, 0.0);
            let (gd, gn) = be.rel_l1(&a.d, &b.d).unwrap();
            let (wd, wn) = o.cpu.rel_l1(&a.c, &b.c).unwrap();
            let (ed, en) = (((gd - wd) / wd).abs() as f64, ((gn - wn) / wn).abs() as f64);
            eprintln!("rel_l1 {tdt} n={n}: rel err {ed:.2e}, {en:.2e}");
            assert!(
                ed <= B::REL_L1_TOL && en <= B::REL_L1_TOL,
                "rel_l1 {tdt} n={n}: ({gd}, {gn}) vs ({wd}, {wn}), bound {:.0e}",
                B::REL_L1_TOL
            );
        }
    }
}

/// The operands of the determinism checks (backend dtype and f32, each size of
/// [`REL_L1_MANY_BLOCKS`]), uploaded once.
pub fn rel_l1_many_block_operands<B: Device>(be: &B) -> Vec<(String, Tensor<B>, Tensor<B>)> {
    let mut v = Vec::new();
    for (i, &n) in REL_L1_MANY_BLOCKS.iter().enumerate() {
        for tdt in [be.act_dtype(), DType::F32] {
            let mut rng = Rng::new(1200 + i as u64);
            // b close to a, as in a cache probe: the difference sum is small against the norm
            let a = data(&mut rng, n, 1.0, 0.0, tdt);
            let b: Vec<f32> = a.iter().map(|&x| tdt.round(x + 0.05 * rng.normal())).collect();
            v.push((
                format!("rel_l1 {tdt} n={n}"),
                be.upload(&a, &[n], tdt).unwrap(),
                be.upload(&b, &[n], tdt).unwrap(),
            ));
        }
    }
    v
}

/// A determinism case: what it is, its operands a and b, and their sums (Σ|a − b|, Σ|b|).
pub type RelL1Sums<B> = (String, Tensor<B>, Tensor<B>, (f32, f32));

/// The sums' bits: equal means bit-identical.
pub fn bits((d, n): (f32, f32)) -> (u32, u32) {
    (d.to_bits(), n.to_bits())
}

/// rel_l1 gives bit-identical sums on repeated calls at sizes that use many blocks (the cache
/// policies compare its ratio against a threshold: a sum that depends on the order blocks finish
/// could flip a decision between two identical runs). Returns the operands and their sums.
pub fn rel_l1_repeatable<B: Device>(be: &B) -> Vec<RelL1Sums<B>> {
    rel_l1_many_block_operands(be)
        .into_iter()
        .map(|(what, a, b)| {
            let first = be.rel_l1(&a, &b).unwrap();
            for call in 1..4 {
                let again = be.rel_l1(&a, &b).unwrap();
                assert_eq!(bits(again), bits(first), "{what}: call {call} gave {again:?}, call 0 {first:?}");
            }
            eprintln!("{what}: {first:?} on 4 calls");
            (what, a, b, first)
        })
        .collect()
}

// ---- attention -----------------------------------------------------------------------------------

/// Key bias of a case: one `[batch, nk]` f32 row per sample.
#[derive(Clone, Copy, Debug)]
pub enum Bias {
    None,
    /// The text padding mask: 0 for kept keys, −10000 for dropped ones; keeps each key with
    /// probability `keep` (at least one).
    RandomMask(f32),
    /// A mask keeping exactly one key, at a different position per sample (first, last, middle).
    KeepOne,
    /// Arbitrary real-valued bias N(0, 2²) (checks the bias is scaled into the log2 domain).
    Real,
}

/// How Q, K and V are laid out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// One fused `[batch·n, 3·width + 16]` tensor (self-attention only): Q at column 8, K at
    /// width + 8, V at 2·width + 16 — non-zero column offsets and a row stride ≠ width.
    FusedQkv,
    /// Q `[batch·nq, width]`, K and V column slices of one `[batch·nk, 2·width]` tensor (the
    /// cross-attention K/V projection of PixArt).
    SeparateQ,
}

/// One attention call; the dtype is the backend's.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub head_dim: usize,
    pub batch: usize,
    pub heads: usize,
    pub nq: usize,
    pub nk: usize,
    pub bias: Bias,
    pub layout: Layout,
    pub kernel: AttentionKernel,
}

impl Case {
    /// batch 1, 1 head, no bias, fused QKV for self-attention (nq = nk), the default kernel.
    pub fn new(head_dim: usize, nq: usize, nk: usize) -> Self {
        let layout = if nq == nk { Layout::FusedQkv } else { Layout::SeparateQ };
        Case { head_dim, batch: 1, heads: 1, nq, nk, bias: Bias::None, layout, kernel: AttentionKernel::Mma }
    }
    pub fn bh(self, batch: usize, heads: usize) -> Self {
        Case { batch, heads, ..self }
    }
    pub fn bias(self, bias: Bias) -> Self {
        Case { bias, ..self }
    }
    pub fn layout(self, layout: Layout) -> Self {
        Case { layout, ..self }
    }
    pub fn kernel(self, kernel: AttentionKernel) -> Self {
        Case { kernel, ..self }
    }
}

pub const HEAD_DIMS: [usize; 3] = [64, 72, 128];
/// Lengths around the 128-query / 64- or 32-key tiles.
pub const LENGTHS: [usize; 7] = [1, 5, 63, 64, 65, 130, 257];

/// Self-attention at every head dim: ragged lengths (1 head), and ragged to long lengths (2 heads).
pub fn self_attention_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for d in HEAD_DIMS {
        v.extend(LENGTHS.map(|n| Case::new(d, n, n)));
        v.extend(LENGTHS.into_iter().chain([1024, 2048]).map(|n| Case::new(d, n, n).bh(1, 2)));
    }
    v
}

/// Cross-attention: a query × key length grid, PixArt's text cross-attention (120 text tokens with
/// the padding mask; one key, the empty negative prompt's EOS), masks that keep one key, real
/// biases, batch × heads grids.
pub fn cross_attention_and_mask_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, nq) in [1, 65, 257].into_iter().enumerate() {
        for (j, nk) in LENGTHS.into_iter().filter(|&n| n != nq).enumerate() {
            v.push(Case::new([72, 64, 128][(i + j) % 3], nq, nk));
        }
    }
    for d in HEAD_DIMS {
        v.push(Case::new(d, 130, 1).bh(2, 2));
        v.push(Case::new(d, 130, 1).bh(2, 1));
        v.push(Case::new(d, 1024, 120).bh(2, 2).bias(Bias::RandomMask(0.3)));
        v.push(Case::new(d, 257, 120).bh(3, 1).bias(Bias::KeepOne));
        v.push(Case::new(d, 65, 1).bh(3, 2).bias(Bias::KeepOne));
        v.push(Case::new(d, 1, 120).bh(2, 1).bias(Bias::RandomMask(0.5)));
        v.push(Case::new(d, 70, 70).bh(3, 3).bias(Bias::RandomMask(0.7)));
        v.push(Case::new(d, 65, 65).bh(3, 1).bias(Bias::KeepOne));
        for nk in [1, 5, 65, 130] {
            v.push(Case::new(d, 65, nk).bh(3, 1).bias(Bias::KeepOne));
            v.push(Case::new(d, 65, nk).bh(2, 2).bias(Bias::RandomMask(0.5)));
        }
        v.push(Case::new(d, 130, 130).bh(2, 1).bias(Bias::Real));
        v.push(Case::new(d, 64, 64).bias(Bias::RandomMask(0.2)));
        // f16-shaped cases (any dtype here): separate Q for self-attention, 5 keys of 257 queries
        v.push(Case::new(d, 130, 130).bh(2, 2));
        v.push(Case::new(d, 65, 120).bh(2, 1).bias(Bias::RandomMask(0.4)));
        v.push(Case::new(d, 257, 5).bias(Bias::KeepOne));
        v.push(Case::new(d, 63, 63).layout(Layout::SeparateQ));
    }
    for batch in 1..=3 {
        for heads in 1..=3 {
            let d = HEAD_DIMS[(batch + heads) % 3];
            v.push(Case::new(d, 70, 70).bh(batch, heads).bias(Bias::RandomMask(0.7)));
            v.push(Case::new(d, 33, 97).bh(batch, heads));
        }
    }
    v
}

/// Small grids for compute-sanitizer (racecheck is slow on large grids).
pub fn sanitize_cases() -> Vec<Case> {
    HEAD_DIMS
        .into_iter()
        .flat_map(|d| {
            [
                Case::new(d, 65, 65),
                Case::new(d, 33, 120).bh(2, 1).bias(Bias::KeepOne),
                Case::new(d, 130, 130).bh(1, 2).bias(Bias::RandomMask(0.5)),
            ]
        })
        .collect()
}

/// kernels/attention_sm90a.cu (head dim 72) with kernel `k`: lengths around its 128- and
/// 192-query / 64-key tiles, cross-attention with masks, batch × heads, separate Q, 16 key tiles
/// (the three V stages rotate five times over), PixArt-α 1024's 4096 tokens.
pub fn wgmma_cases(k: AttentionKernel) -> Vec<Case> {
    let mut v = Vec::new();
    for n in LENGTHS.into_iter().chain([128, 191, 192, 193, 385]) {
        v.push(Case::new(72, n, n));
    }
    for n in [1, 5, 63, 64, 65, 127, 128, 129, 257, 1024, 2048] {
        v.push(Case::new(72, n, n).bh(1, 2));
    }
    for nq in [1, 129, 257] {
        for nk in [1, 5, 63, 64, 65, 130] {
            v.push(Case::new(72, nq, nk));
        }
    }
    v.extend([
        Case::new(72, 130, 1).bh(2, 2),
        Case::new(72, 1024, 120).bh(2, 2).bias(Bias::RandomMask(0.3)),
        Case::new(72, 300, 120).bh(2, 2).bias(Bias::RandomMask(0.3)),
        Case::new(72, 257, 120).bh(3, 1).bias(Bias::KeepOne),
        Case::new(72, 1, 120).bh(2, 1).bias(Bias::RandomMask(0.5)),
        Case::new(72, 70, 70).bh(3, 3).bias(Bias::RandomMask(0.7)),
        Case::new(72, 70, 70).bh(3, 2).bias(Bias::RandomMask(0.7)),
        Case::new(72, 200, 333).bh(1, 2),
        Case::new(72, 385, 385).bh(2, 1), // 192-query tiles: 2 full + 1 row
        Case::new(72, 130, 130).bh(2, 1).bias(Bias::Real),
        Case::new(72, 33, 97).bh(2, 3),
        Case::new(72, 63, 63).layout(Layout::SeparateQ),
        Case::new(72, 1024, 1024).bh(1, 2).bias(Bias::RandomMask(0.9)),
        Case::new(72, 130, 130).bh(2, 2),
        Case::new(72, 65, 120).bh(2, 1).bias(Bias::RandomMask(0.4)),
        Case::new(72, 257, 5).bias(Bias::KeepOne),
    ]);
    v.into_iter().map(|c| c.kernel(k)).collect()
}

/// PixArt-α 1024's self-attention (4096 tokens, CFG batch 2, 3 heads) on wgmma kernel `k`: 64
/// key tiles a CTA, 32 query tiles (the longest case, a test of its own on the shim).
pub fn wgmma_4096_cases(k: AttentionKernel) -> Vec<Case> {
    vec![Case::new(72, 4096, 4096).bh(2, 3).kernel(k)]
}

/// Small wgmma grids for compute-sanitizer.
pub fn sanitize_wgmma_cases(k: AttentionKernel) -> Vec<Case> {
    [
        Case::new(72, 65, 65),
        Case::new(72, 33, 120).bh(2, 1).bias(Bias::KeepOne),
        Case::new(72, 130, 130).bh(1, 2).bias(Bias::RandomMask(0.5)),
    ]
    .into_iter()
    .map(|c| c.kernel(k))
    .collect()
}

fn bias_rows(rng: &mut Rng, bias: Bias, batch: usize, nk: usize) -> Option<Vec<f32>> {
    let mut rows = vec![0.0f32; batch * nk];
    match bias {
        Bias::None => return None,
        Bias::RandomMask(keep) => {
            for row in rows.chunks_mut(nk) {
                row.iter_mut().for_each(|x| *x = if rng.uniform() < keep { 0.0 } else { -10000.0 });
                if row.iter().all(|&x| x != 0.0) {
                    row[rng.below(nk)] = 0.0;
                }
            }
        }
        Bias::KeepOne => {
            for (b, row) in rows.chunks_mut(nk).enumerate() {
                row.iter_mut().for_each(|x| *x = -10000.0);
                row[[0, nk - 1, nk / 2][b % 3]] = 0.0;
            }
        }
        Bias::Real => rows = rng.normal_vec(batch * nk, 2.0),
    }
    Some(rows)
}

/// Operands of one case on one backend.
struct Operands<B: Backend> {
    q: Tensor<B>,
    kv: Option<Tensor<B>>,
    cols: [usize; 3],
    bias: Option<Tensor<B>>,
}

type Host = (Vec<f32>, Vec<usize>);

fn operands<B: Backend>(
    be: &B,
    dt: DType,
    q: &Host,
    kv: &Option<Host>,
    cols: [usize; 3],
    bias: &Option<Vec<f32>>,
    c: &Case,
) -> Operands<B> {
    Operands {
        q: be.upload(&q.0, &q.1, dt).unwrap(),
        kv: kv.as_ref().map(|(d, s)| be.upload(d, s, dt).unwrap()),
        cols,
        bias: bias.as_ref().map(|b| be.upload(b, &[c.batch, c.nk], DType::F32).unwrap()),
    }
}

fn attend<B: Backend>(be: &B, shape: &AttentionShape, ops: &Operands<B>, out: &mut Tensor<B>) -> deltadit::Result<()> {
    let kv = ops.kv.as_ref().unwrap_or(&ops.q);
    be.attention(
        shape,
        ColSlice::new(&ops.q, ops.cols[0]),
        ColSlice::new(kv, ops.cols[1]),
        ColSlice::new(kv, ops.cols[2]),
        ops.bias.as_ref(),
        out,
    )
}

/// Runs a case with its kernel on `be` and on the CPU reference; returns (relative L2 error, max
/// abs error / max |ref|). Panics on NaN or unwritten outputs, and where `be` cannot run the
/// case's kernel (callers check [`Device::select_attention_kernel`] first).
pub fn attention_errors<B: Device>(be: &B, c: &Case, seed: u64) -> (f64, f64) {
    let dt = be.act_dtype();
    assert!(be.select_attention_kernel(c.kernel), "{c:?}: kernel not available");
    let _restore = DefaultKernelOnDrop(be);
    let mut rng = Rng::new(seed);
    let width = c.heads * c.head_dim;
    // Q and K with std 1.5: scores of std ≈ 2.2 after scaling, so the softmax is far from uniform.
    let (q, kv, cols) = match c.layout {
        Layout::FusedQkv => {
            assert_eq!(c.nq, c.nk);
            let (cols, rows) = (3 * width + 16, c.batch * c.nq);
            let mut d = rng.normal_vec(rows * cols, 1.5);
            // V (and the unused padding columns) with std 1.
            for r in 0..rows {
                d[r * cols + 2 * width + 16..(r + 1) * cols].iter_mut().for_each(|x| *x /= 1.5);
            }
            let d = d.into_iter().map(|x| dt.round(x)).collect();
            ((d, vec![rows, cols]), None, [8, width + 8, 2 * width + 16])
        }
        Layout::SeparateQ => {
            let q: Vec<f32> = rng.normal_vec(c.batch * c.nq * width, 1.5).into_iter().map(|x| dt.round(x)).collect();
            let mut kv = rng.normal_vec(c.batch * c.nk * 2 * width, 1.0);
            for r in 0..c.batch * c.nk {
                kv[r * 2 * width..r * 2 * width + width].iter_mut().for_each(|x| *x *= 1.5);
            }
            let kv = kv.into_iter().map(|x| dt.round(x)).collect();
            ((q, vec![c.batch * c.nq, width]), Some((kv, vec![c.batch * c.nk, 2 * width])), [0, 0, width])
        }
    };
    let bias = bias_rows(&mut rng, c.bias, c.batch, c.nk);
    let shape = AttentionShape {
        batch: c.batch,
        heads: c.heads,
        head_dim: c.head_dim,
        nq: c.nq,
        nk: c.nk,
        scale: (c.head_dim as f32).powf(-0.5),
    };

    let dops = operands(be, dt, &q, &kv, cols, &bias, c);
    let mut out = be.alloc(&[c.batch * c.nq, width], dt).unwrap();
    be.fill_bits(&mut out, dt.nan_bits()).unwrap();
    attend(be, &shape, &dops, &mut out).unwrap_or_else(|e| panic!("{dt} {c:?}: {e}"));
    let got = be.download(&out).unwrap();

    let cpu = Cpu::default();
    let cops = operands(&cpu, DType::F32, &q, &kv, cols, &bias, c);
    let mut rout = cpu.alloc(&[c.batch * c.nq, width], DType::F32).unwrap();
    attend(&cpu, &shape, &cops, &mut rout).unwrap();
    let want = cpu.download(&rout).unwrap();

    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        let (row, col) = (i / width, i % width);
        panic!("{dt} {c:?}: out[{row}, {col}] = {} (unwritten or NaN)", got[i]);
    }
    let max_ref = want.iter().fold(0.0f32, |m, &x| m.max(x.abs())) as f64;
    let max_err = got.iter().zip(&want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    (rel_l2(&got, &want), max_err / max_ref)
}

/// (relative L2, max error / max |ref|) bounds of attention: bf16 expects ~3e-3; the max bound
/// catches a single wrong row or column the L2 norm would dilute.
pub fn attention_bounds(dt: DType) -> (f64, f64) {
    if dt == DType::BF16 {
        (1e-2, 3e-2)
    } else {
        (2e-3, 5e-3)
    }
}

/// One case within [`attention_bounds`]; returns its relative error.
#[track_caller]
pub fn attention_check<B: Device>(be: &B, c: &Case, seed: u64) -> f64 {
    let dt = be.act_dtype();
    let (rel, max) = attention_errors(be, c, seed);
    let (tol_rel, tol_max) = attention_bounds(dt);
    assert!(
        rel <= tol_rel && max <= tol_max,
        "{dt} {c:?}: relative error {rel:.3e} (≤ {tol_rel:.0e}), max error {max:.3e} of max |ref| (≤ {tol_max:.0e})"
    );
    rel
}

/// Every case of a table (seeds `seed0 + i`); prints the worst error.
pub fn attention_cases<B: Device>(be: &B, what: &str, cases: &[Case], seed0: u64) {
    let start = std::time::Instant::now();
    let (mut worst, mut slowest) = (0.0f64, (0.0f64, 0usize));
    for (i, c) in cases.iter().enumerate() {
        let t = std::time::Instant::now();
        worst = worst.max(attention_check(be, c, seed0 + i as u64));
        let secs = t.elapsed().as_secs_f64();
        if secs > slowest.0 {
            slowest = (secs, i);
        }
    }
    eprintln!(
        "{what} {} ({} cases, {:.1} s; slowest {:.2} s: {:?}), worst relative error {worst:.3e}",
        be.act_dtype(),
        cases.len(),
        start.elapsed().as_secs_f64(),
        slowest.0,
        cases[slowest.1]
    );
}

pub fn attention_self_odd_lengths<B: Device>(be: &B) {
    attention_cases(be, "self-attention", &self_attention_cases(), 0);
}

pub fn attention_cross_and_masks<B: Device>(be: &B) {
    attention_cases(be, "cross-attention and masks", &cross_attention_and_mask_cases(), 100);
}

pub fn sanitize_attention_small<B: Device>(be: &B) {
    attention_cases(be, "sanitizer-sized attention", &sanitize_cases(), 150);
}

/// Which table of wgmma cases [`attention_wgmma_d72`] runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WgmmaTable {
    /// [`wgmma_cases`]
    Ops,
    /// [`wgmma_4096_cases`]
    Tokens4096,
    /// [`sanitize_wgmma_cases`]
    Sanitize,
}

/// The wgmma kernels `ks` at head dim 72 on the cases of `tables`, where the backend has them:
/// false (after saying why) where it has none of them.
pub fn attention_wgmma_d72<B: Device>(be: &B, ks: &[AttentionKernel], tables: &[WgmmaTable]) -> bool {
    for &k in ks {
        if !be.select_attention_kernel(k) {
            return false;
        }
        // scripts/gpu-run.sh reads this line to tell which kernels passed
        println!("attention kernel {}", k.name());
        let _restore = DefaultKernelOnDrop(be);
        for &t in tables {
            match t {
                WgmmaTable::Ops => attention_cases(be, k.name(), &wgmma_cases(k), 700),
                WgmmaTable::Tokens4096 => {
                    attention_cases(be, &format!("{} 4096 tokens", k.name()), &wgmma_4096_cases(k), 720)
                }
                WgmmaTable::Sanitize => {
                    attention_cases(be, &format!("{} sanitizer-sized", k.name()), &sanitize_wgmma_cases(k), 750)
                }
            }
        }
    }
    true
}

/// Head dim 80 has no kernel (an error of kind UnsupportedHeadDim naming the supported ones); rows
/// that do not start on 16-byte boundaries are errors naming the column offset or row stride.
pub fn attention_rejects_unsupported_inputs<B: Device>(be: &B) {
    let dt = be.act_dtype();
    let mut rng = Rng::new(700);
    let shape = |head_dim: usize| AttentionShape { batch: 1, heads: 2, head_dim, nq: 16, nk: 16, scale: 0.125 };
    let poisoned = |shape: &[usize]| {
        let mut t = be.alloc(shape, dt).unwrap();
        be.fill_bits(&mut t, dt.nan_bits()).unwrap();
        t
    };
    let random = |rng: &mut Rng, shape: &[usize]| {
        be.upload(&data(rng, shape.iter().product(), 1.0, 0.0, dt), shape, dt).unwrap()
    };

    assert!(!deltadit::internals::kernels::attention_supported_head_dim(80));
    assert!(deltadit::internals::kernels::attention_supported_head_dim(72));
    let t = random(&mut rng, &[16, 3 * 160]);
    let mut out = poisoned(&[16, 160]);
    let err = be
        .attention(&shape(80), ColSlice::new(&t, 0), ColSlice::new(&t, 160), ColSlice::new(&t, 320), None, &mut out)
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.backend_kind(), Some(&BackendErrorKind::UnsupportedHeadDim { head_dim: 80 }), "{msg}");
    assert!(msg.contains("64, 72, 128"), "{msg}");

    // Column offset 4: rows no longer start on 16-byte boundaries.
    let t = random(&mut rng, &[16, 3 * 144 + 8]);
    let mut out = poisoned(&[16, 144]);
    let msg = be
        .attention(&shape(72), ColSlice::new(&t, 4), ColSlice::new(&t, 148), ColSlice::new(&t, 292), None, &mut out)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("16-byte") && msg.contains("column offset 4"), "{msg}");

    // Row stride 3·144 + 4 is not a multiple of 8 elements.
    let t = random(&mut rng, &[16, 3 * 144 + 4]);
    let msg = be
        .attention(&shape(72), ColSlice::new(&t, 0), ColSlice::new(&t, 144), ColSlice::new(&t, 288), None, &mut out)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("16-byte") && msg.contains("row stride 436"), "{msg}");
}

// ---- cache decisions -----------------------------------------------------------------------------

/// The golden case whose model and inputs the plan-sequence checks sample (PixArt, 6 blocks, 20
/// DPM-Solver++ steps with CFG).
pub const PLAN_CASE: &str = "pixart-tiny-delta-n2-nc4-b12";
/// The adaptive policies with thresholds that cache some steps and refresh others on that case
/// (its probes: see `plan_sequences_repeat` with `--nocapture`).
pub const ADAPTIVE_SPECS: &[&str] = &[
    "delta-adaptive:threshold=0.5,warmup=2,max-cached=3",
    "first-block:threshold=0.3,max-cached=3",
    "dbcache:fn=1,bn=1,threshold=0.3,warmup=2,max-continuous=3,calibrator=taylor2",
];

/// Samples [`PLAN_CASE`] with `spec` on `be`.
pub fn sample_plan_case<B: Backend>(be: &B, model: &Transformer<B>, spec: &str) -> SampleOutput {
    let dir = golden::case_dir(PLAN_CASE);
    let case = golden::read_case(PLAN_CASE);
    let inputs =
        SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    let cfg = SampleConfig::new(case.scheduler, case.steps, case.guidance);
    let policy =
        spec.parse::<CacheSpec>().unwrap().build(model.config().family, model.num_blocks(), case.steps).unwrap();
    sample(be, model, &inputs, &cfg, policy, &mut |_, _| {}).unwrap()
}

/// Two identical sampling runs with each adaptive policy of [`ADAPTIVE_SPECS`] make the same
/// decisions: the same plan at every step and bit-identical probes. Each run must cache some
/// steps and run others in full, or the check would not test a decision.
pub fn plan_sequences_repeat<B: Backend>(be: &B) {
    let model = Transformer::load(be, &golden::model_dir(PLAN_CASE)).unwrap();
    for spec in ADAPTIVE_SPECS {
        let a = sample_plan_case(be, &model, spec);
        let b = sample_plan_case(be, &model, spec);
        let probes: Vec<String> = a.probes.iter().map(|p| p.map_or("-".into(), |v| format!("{v:.4}"))).collect();
        eprintln!("{spec} on {}: blocks_run {:?}, probes [{}]", B::NAME, a.blocks_run, probes.join(", "));
        let full = a.plans.iter().filter(|p| matches!(p, StepPlan::Full { .. } | StepPlan::Compute { .. })).count();
        assert!(
            full > 0 && full < a.plans.len(),
            "{spec}: {full} of {} steps full: no decision is tested",
            a.plans.len()
        );
        assert!(a.probes.iter().filter(|p| p.is_some()).count() >= a.plans.len() - 1, "{spec}: probes {:?}", a.probes);
        assert_eq!(a.plans, b.plans, "{spec} on {}: two identical runs planned differently", B::NAME);
        assert_eq!(a.blocks_run, b.blocks_run, "{spec}: blocks_run");
        let pa: Vec<Option<u32>> = a.probes.iter().map(|p| p.map(f32::to_bits)).collect();
        let pb: Vec<Option<u32>> = b.probes.iter().map(|p| p.map(f32::to_bits)).collect();
        assert_eq!(
            pa,
            pb,
            "{spec} on {}: probes differ between two identical runs: {:?} vs {:?}",
            B::NAME,
            a.probes,
            b.probes
        );
    }
}
