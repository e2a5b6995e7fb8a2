//! FLUX.1-1024's joint attention shape on every attention path, against an f64 naive reference:
//! 512 text + 4096 image tokens attending to each other (4608 queries × 4608 keys, no mask), head
//! dim 128, Q|K|V fused in one `[tokens, 3·width]` tensor as the FLUX blocks lay them out (Q at
//! column 0, K at `width`, V at `2·width`). The paths: the CPU attention (f32, two heads: the head
//! stride), and on the sim backend (the CUDA kernels through the SIMT shim) every attention
//! kernel with a head-dim-128 entry point, in bf16 and in f16, on one head — today the mma.sync
//! kernel's `attention_d128_{bf16,f16}`; the wgmma kernels have head dim 72 only and fall back to
//! the default kernel's entry point for other head dims (kernels/table.rs `attention_variant`),
//! so they add no path at 128. The inputs are exactly representable in f32, bf16 and f16, so one
//! f64 reference serves every path.
//!
//! Release mode: `cargo test --release --test attention_flux`.

mod common;

use common::{rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{AttentionShape, ColSlice};
use deltadit::{Backend, DType};
use std::sync::OnceLock;
use std::time::Instant;

const TEXT: usize = 512;
const IMAGE: usize = 4096;
const HEAD_DIM: usize = 128;

const HEADS: usize = 2;

/// Fused `[tokens, 3·2·128]` Q|K|V, Q and K with std 1.5 (scores of std ≈ 2.2 after the scale: a
/// softmax far from uniform), V with std 1; rounded to bf16, and 0 where that is not also an f16
/// value (magnitudes in f16's subnormal range), so f32, bf16 and f16 hold the same numbers.
fn fused_qkv() -> Vec<f32> {
    let mut rng = Rng::new(11);
    let (n, width) = (TEXT + IMAGE, HEADS * HEAD_DIM);
    let mut x = rng.normal_vec(n * 3 * width, 1.5);
    for r in 0..n {
        x[r * 3 * width + 2 * width..(r + 1) * 3 * width].iter_mut().for_each(|v| *v /= 1.5);
    }
    x.into_iter().map(|v| DType::BF16.round(v)).map(|v| if DType::F16.round(v) == v { v } else { 0.0 }).collect()
}

/// softmax(scale·Q·Kᵀ)·V per head in f64, query rows split over the threads: `[tokens, width]`.
fn naive_f64(qkv: &[f32]) -> Vec<f64> {
    let (n, width) = (TEXT + IMAGE, HEADS * HEAD_DIM);
    let stride = 3 * width;
    let scale = (HEAD_DIM as f64).powf(-0.5);
    // per head, [n, 128] f64 rows of Q, K, V
    let part = |h: usize, off: usize| -> Vec<f64> {
        (0..n).flat_map(|r| qkv[r * stride + off + h * HEAD_DIM..][..HEAD_DIM].iter().map(|&v| v as f64)).collect()
    };
    let heads: Vec<[Vec<f64>; 3]> = (0..HEADS).map(|h| [part(h, 0), part(h, width), part(h, 2 * width)]).collect();
    let heads = &heads;
    let mut out = vec![0.0f64; n * width];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).max(1);
    let rows_per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(rows_per * width).enumerate() {
            s.spawn(move || {
                let mut scores = vec![0.0f64; n];
                for (i, row) in chunk.chunks_mut(width).enumerate() {
                    let qi = t * rows_per + i;
                    for (h, [q, k, v]) in heads.iter().enumerate() {
                        let q = &q[qi * HEAD_DIM..][..HEAD_DIM];
                        let mut max = f64::NEG_INFINITY;
                        for (sc, kj) in scores.iter_mut().zip(k.chunks_exact(HEAD_DIM)) {
                            let mut acc = [0.0f64; 4];
                            for (a, b) in q.chunks_exact(4).zip(kj.chunks_exact(4)) {
                                for l in 0..4 {
                                    acc[l] += a[l] * b[l];
                                }
                            }
                            *sc = (acc[0] + acc[1] + acc[2] + acc[3]) * scale;
                            max = max.max(*sc);
                        }
                        let mut sum = 0.0;
                        for sc in scores.iter_mut() {
                            *sc = (*sc - max).exp();
                            sum += *sc;
                        }
                        let o = &mut row[h * HEAD_DIM..][..HEAD_DIM];
                        for (&p, vj) in scores.iter().zip(v.chunks_exact(HEAD_DIM)) {
                            for (oc, &vc) in o.iter_mut().zip(vj) {
                                *oc += p * vc;
                            }
                        }
                        o.iter_mut().for_each(|x| *x /= sum);
                    }
                }
            });
        }
    });
    out
}

/// The inputs and their f64 reference, computed once for the tests of this file.
fn case() -> &'static (Vec<f32>, Vec<f64>) {
    static CASE: OnceLock<(Vec<f32>, Vec<f64>)> = OnceLock::new();
    CASE.get_or_init(|| {
        let qkv = fused_qkv();
        let t = Instant::now();
        let want = naive_f64(&qkv);
        println!("f64 reference: {:.1} s", t.elapsed().as_secs_f64());
        (qkv, want)
    })
}

/// Head 0 alone: its Q|K|V as a fused `[tokens, 3·128]` tensor and its reference `[tokens, 128]`.
fn head0() -> (Vec<f32>, Vec<f64>) {
    let (qkv, want) = case();
    let (n, width) = (TEXT + IMAGE, HEADS * HEAD_DIM);
    let mut x = Vec::with_capacity(n * 3 * HEAD_DIM);
    for r in 0..n {
        for off in [0, width, 2 * width] {
            x.extend_from_slice(&qkv[r * 3 * width + off..][..HEAD_DIM]);
        }
    }
    let w = (0..n).flat_map(|r| want[r * width..][..HEAD_DIM].iter().copied()).collect();
    (x, w)
}

/// One attention call of the shape on `be` in `dt` (output poisoned with NaN first).
fn attend<B: Backend>(be: &B, qkv: &[f32], heads: usize, dt: DType) -> deltadit::Result<Vec<f32>> {
    let (n, width) = (TEXT + IMAGE, heads * HEAD_DIM);
    let t = be.upload(qkv, &[n, 3 * width], dt)?;
    let mut out = be.alloc(&[n, width], dt)?;
    be.fill_bits(&mut out, dt.nan_bits())?;
    let shape =
        AttentionShape { batch: 1, heads, head_dim: HEAD_DIM, nq: n, nk: n, scale: (HEAD_DIM as f32).powf(-0.5) };
    be.attention(&shape, ColSlice::new(&t, 0), ColSlice::new(&t, width), ColSlice::new(&t, 2 * width), None, &mut out)?;
    be.download(&out)
}

/// (relative L2, max |error| / max |reference|) of `got` against the f64 reference; every
/// element written and finite.
fn errors(what: &str, got: &[f32], want: &[f64]) -> (f64, f64) {
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: out[{}] = {} (unwritten or NaN)", i, got[i]);
    }
    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let max_ref = want.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
    let max_err = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
    (rel_l2(got, &want32), max_err / max_ref)
}

#[test]
fn flux_1024_joint_attention_on_the_cpu_matches_f64() {
    let (qkv, want) = case();
    let t = Instant::now();
    let got = attend(&Cpu::default(), qkv, HEADS, DType::F32).unwrap();
    let (rel, max) = errors("cpu f32", &got, want);
    println!(
        "cpu f32, {HEADS} heads × {TEXT} + {IMAGE} tokens, d {HEAD_DIM}: rel L2 {rel:.2e}, max {max:.2e} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    assert!(rel <= 1e-5 && max <= 1e-4, "cpu f32: rel L2 {rel:.3e}, max {max:.3e}");
}

/// Every kernel with a head-dim-128 entry point, through the shim in `dt`, within the op suite's
/// attention bounds (tests/common/ops.rs `attention_bounds`: bf16 1e-2 / 3e-2, f16 2e-3 / 5e-3).
#[cfg(deltadit_sim)]
fn on_the_shim(dt: DType, (tol_rel, tol_max): (f64, f64)) {
    use deltadit::backend::sim::Sim;
    use deltadit::backend::AttentionKernel;

    let be = Sim::new(dt).unwrap();
    let (qkv, want) = head0();
    let kernels: Vec<AttentionKernel> =
        AttentionKernel::ALL.into_iter().filter(|k| k.head_dims().any(|d| d == HEAD_DIM)).collect();
    assert!(kernels.contains(&AttentionKernel::Mma), "the default kernel has a head-dim-128 entry point");
    for k in kernels {
        be.set_attention_kernel(k);
        let t = Instant::now();
        let got = attend(&be, &qkv, 1, dt);
        be.set_attention_kernel(AttentionKernel::default());
        let got = got.unwrap_or_else(|e| panic!("sim {dt} {k}: {e}"));
        let (rel, max) = errors(&format!("sim {dt} {k}"), &got, &want);
        println!(
            "sim {dt} {k}: 1 head × {TEXT} + {IMAGE} tokens, d {HEAD_DIM}: rel L2 {rel:.2e}, max {max:.2e} ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        assert!(rel <= tol_rel && max <= tol_max, "sim {dt} {k}: rel L2 {rel:.3e}, max {max:.3e}");
    }
}

#[cfg(deltadit_sim)]
#[test]
fn flux_1024_joint_attention_bf16_kernels_match_f64() {
    on_the_shim(DType::BF16, (1e-2, 3e-2));
}

#[cfg(deltadit_sim)]
#[test]
fn flux_1024_joint_attention_f16_kernels_match_f64() {
    on_the_shim(DType::F16, (2e-3, 5e-3));
}
