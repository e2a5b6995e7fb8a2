//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod golden;
pub mod ops;

use deltadit::backend::SchedulerKind;
use deltadit::backend::{Activation, AttentionShape};
pub use deltadit::internals::{rel_l2, Rng};
use deltadit::{Backend, DType, Tensor};

/// (kind, with x0_prev, with noise): the scheduler-update variants every backend's test runs.
pub const SCHEDULER_CASES: &[(SchedulerKind, bool, bool)] = &[
    (SchedulerKind::Dpm1, true, false),
    (SchedulerKind::Dpm1, false, false),
    (SchedulerKind::Dpm2, true, false),
    (SchedulerKind::Ddim, false, false),
    (SchedulerKind::Ddim, true, false),
    (SchedulerKind::Lcm, true, true),
    (SchedulerKind::Lcm, false, false),
    (SchedulerKind::FlowEuler, true, false),
    (SchedulerKind::FlowEuler, false, false),
];

/// Uploads random normal data (never zeros) and returns the tensor with its f32 values as stored
/// (rounded to `dtype`).
pub fn random<B: Backend>(b: &B, rng: &mut Rng, shape: &[usize], dtype: DType, std: f32) -> (Tensor<B>, Vec<f32>) {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = rng.normal_vec(n, std).into_iter().map(|v| dtype.round(v)).collect();
    (b.upload(&data, shape, dtype).unwrap(), data)
}

/// A tensor poisoned with NaN so elements a kernel forgets to write show up.
pub fn poisoned<B: Backend>(b: &B, shape: &[usize], dtype: DType) -> Tensor<B> {
    let mut t = b.alloc(shape, dtype).unwrap();
    b.fill_bits(&mut t, dtype.nan_bits()).unwrap();
    t
}

/// Asserts ‖a − b‖/‖b‖ ≤ tol and that `a` has no NaN.
#[track_caller]
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or overflow)", a[i]);
    }
    let e = rel_l2(a, b);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
}

/// `act(x)` in f64: GELU with PyTorch's tanh approximation, SiLU, or x itself.
pub fn activation64(act: Activation, x: f64) -> f64 {
    match act {
        Activation::None => x,
        Activation::GeluTanh => {
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// Caps the CPU backend's SIMD level at AVX2 (process-wide), so the hand-written AVX2 tiles run
/// on AVX-512 machines too; false, with a line on stderr, where the CPU has no AVX2 + FMA.
pub fn cap_simd_at_avx2() -> bool {
    use deltadit::internals::cpu::simd::{self, SimdLevel};
    if simd::detected() < SimdLevel::Avx2 {
        eprintln!("no AVX2 + FMA on this CPU: the tiles cannot run here (the gemm path is cpu_ops.rs's)");
        return false;
    }
    simd::set_cap(Some(SimdLevel::Avx2));
    true
}

/// softmax(q·kᵀ·scale + bias)·v per (batch, head), in f64.
pub fn attention64(
    s: &AttentionShape,
    q: (&[f32], usize, usize),
    k: (&[f32], usize, usize),
    v: (&[f32], usize, usize),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (d, width) = (s.head_dim, s.heads * s.head_dim);
    let mut out = vec![0.0f32; s.batch * s.nq * width];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.nq {
                let qi = |c: usize| q.0[(b * s.nq + i) * q.2 + q.1 + h * d + c] as f64;
                let scores: Vec<f64> = (0..s.nk)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|c| qi(c) * k.0[(b * s.nk + j) * k.2 + k.1 + h * d + c] as f64).sum();
                        dot * s.scale as f64 + bias.map_or(0.0, |bb| bb[b * s.nk + j] as f64)
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 =
                        (0..s.nk).map(|j| e[j] / sum * v.0[(b * s.nk + j) * v.2 + v.1 + h * d + c] as f64).sum();
                    out[(b * s.nq + i) * width + h * d + c] = o as f32;
                }
            }
        }
    }
    out
}
