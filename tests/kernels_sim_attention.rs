//! kernels/attention.cu and kernels/attention_sm90a.cu (wgmma, head dim 72) through the SIMT shim
//! (`Sim`) against the f32 CPU reference (`Cpu`), on the same dtype-rounded random inputs, with
//! NaN-poisoned outputs.
//!
//! Covers head dims 64/72/128, ragged lengths (not multiples of the 128-query / 64- or 32-key
//! tiles), cross-attention, key-bias masks (including masks that keep a single token), batch ×
//! heads grids, Q/K/V as column slices of one fused tensor, bf16 and f16, and one case under
//! reversed and shuffled warp orders (missing barriers). The warp order is process-wide, so that
//! test takes the write side of `ORDER`; every other test holds the read side.
#![cfg(deltadit_sim)]

mod common;

use common::{poisoned, random, rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::sim::Sim;
use deltadit::backend::AttentionKernel;
use deltadit::backend::{AttentionShape, ColSlice};
use deltadit::internals::kernels::attention_supported_head_dim;
use deltadit::internals::sim::{set_warp_order, WarpOrder};
use deltadit::{Backend, BackendErrorKind, DType, Tensor};
use std::sync::RwLock;

static ORDER: RwLock<()> = RwLock::new(());

/// Key bias of a case: one `[batch, nk]` f32 row per sample.
#[derive(Clone, Copy, Debug)]
enum Bias {
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
enum Layout {
    /// One fused `[batch·n, 3·width + 16]` tensor (self-attention only): Q at column 8, K at
    /// width + 8, V at 2·width + 16 — non-zero column offsets and a row stride ≠ width.
    FusedQkv,
    /// Q `[batch·nq, width]`, K and V column slices of one `[batch·nk, 2·width]` tensor (the
    /// cross-attention K/V projection of PixArt).
    SeparateQ,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    dtype: DType,
    head_dim: usize,
    batch: usize,
    heads: usize,
    nq: usize,
    nk: usize,
    bias: Bias,
    layout: Layout,
    kernel: AttentionKernel,
}

impl Case {
    fn new(head_dim: usize, nq: usize, nk: usize) -> Self {
        let layout = if nq == nk { Layout::FusedQkv } else { Layout::SeparateQ };
        Case {
            dtype: DType::BF16,
            head_dim,
            batch: 1,
            heads: 1,
            nq,
            nk,
            bias: Bias::None,
            layout,
            kernel: AttentionKernel::Mma,
        }
    }
    fn bh(self, batch: usize, heads: usize) -> Self {
        Case { batch, heads, ..self }
    }
    fn bias(self, bias: Bias) -> Self {
        Case { bias, ..self }
    }
    fn dtype(self, dtype: DType) -> Self {
        Case { dtype, ..self }
    }
    fn layout(self, layout: Layout) -> Self {
        Case { layout, ..self }
    }
    fn kernel(self, kernel: AttentionKernel) -> Self {
        Case { kernel, ..self }
    }
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

fn upload<B: Backend>(
    be: &B,
    dtype: DType,
    q: &(Vec<f32>, Vec<usize>),
    kv: &Option<(Vec<f32>, Vec<usize>)>,
    cols: [usize; 3],
    bias: &Option<Vec<f32>>,
    c: &Case,
) -> Operands<B> {
    Operands {
        q: be.upload(&q.0, &q.1, dtype).unwrap(),
        kv: kv.as_ref().map(|(d, s)| be.upload(d, s, dtype).unwrap()),
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

/// Runs a case on the shim and the CPU reference; returns (relative L2 error, max abs error / max |ref|).
fn run(c: Case, seed: u64) -> (f64, f64) {
    let _guard = ORDER.read().unwrap_or_else(|e| e.into_inner());
    run_unguarded(c, seed)
}

fn run_unguarded(c: Case, seed: u64) -> (f64, f64) {
    let mut rng = Rng::new(seed);
    let sim = Sim::new(c.dtype).unwrap();
    sim.set_attention_kernel(c.kernel);
    let cpu = Cpu::new(2);
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
            let d = d.into_iter().map(|x| c.dtype.round(x)).collect();
            ((d, vec![rows, cols]), None, [8, width + 8, 2 * width + 16])
        }
        Layout::SeparateQ => {
            let q: Vec<f32> =
                rng.normal_vec(c.batch * c.nq * width, 1.5).into_iter().map(|x| c.dtype.round(x)).collect();
            let mut kv = rng.normal_vec(c.batch * c.nk * 2 * width, 1.0);
            for r in 0..c.batch * c.nk {
                kv[r * 2 * width..r * 2 * width + width].iter_mut().for_each(|x| *x *= 1.5);
            }
            let kv = kv.into_iter().map(|x| c.dtype.round(x)).collect();
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

    let so = upload(&sim, c.dtype, &q, &kv, cols, &bias, &c);
    let mut out = poisoned(&sim, &[c.batch * c.nq, width], c.dtype);
    attend(&sim, &shape, &so, &mut out).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let got = sim.download(&out).unwrap();

    let co = upload(&cpu, DType::F32, &q, &kv, cols, &bias, &c);
    let mut rout = cpu.alloc(&[c.batch * c.nq, width], DType::F32).unwrap();
    attend(&cpu, &shape, &co, &mut rout).unwrap();
    let want = cpu.download(&rout).unwrap();

    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        let (row, col) = (i / width, i % width);
        panic!("{c:?}: out[{row}, {col}] = {} (unwritten or NaN)", got[i]);
    }
    let max_ref = want.iter().fold(0.0f32, |m, &x| m.max(x.abs())) as f64;
    let max_err = got.iter().zip(&want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    (rel_l2(&got, &want), max_err / max_ref)
}

/// Tolerances: relative L2 ≤ 1e-2 (bf16; expect ~3e-3) and the largest element error ≤ 3% of the
/// largest reference magnitude (catches a single wrong row or column the L2 norm would dilute).
#[track_caller]
fn check(c: Case, seed: u64) -> f64 {
    let (rel, max) = run(c, seed);
    let (tol_rel, tol_max) = if c.dtype == DType::BF16 { (1e-2, 3e-2) } else { (2e-3, 5e-3) };
    assert!(
        rel <= tol_rel && max <= tol_max,
        "{c:?}: relative error {rel:.3e} (≤ {tol_rel:.0e}), max error {max:.3e} of max |ref| (≤ {tol_max:.0e})"
    );
    rel
}

const LENGTHS: [usize; 7] = [1, 5, 63, 64, 65, 130, 257];

#[test]
fn self_attention_odd_lengths_all_head_dims() {
    let mut worst = 0.0f64;
    for (i, d) in [64, 72, 128].into_iter().enumerate() {
        for (j, n) in LENGTHS.into_iter().enumerate() {
            worst = worst.max(check(Case::new(d, n, n), (i * 10 + j) as u64));
        }
    }
    eprintln!("self-attention bf16, worst relative error {worst:.3e}");
}

#[test]
fn cross_attention_query_key_length_grid() {
    let mut worst = 0.0f64;
    for (i, nq) in [1, 65, 257].into_iter().enumerate() {
        for (j, nk) in LENGTHS.into_iter().filter(|&n| n != nq).enumerate() {
            let d = [72, 64, 128][(i + j) % 3];
            worst = worst.max(check(Case::new(d, nq, nk), 100 + (i * 10 + j) as u64));
        }
    }
    eprintln!("cross-attention bf16, worst relative error {worst:.3e}");
}

#[test]
fn cross_attention_text_tokens() {
    // PixArt: 4096 queries × 120 text tokens (here 1024 × 120) with the padding mask, and a
    // single text token (the mask of the empty negative prompt keeps only EOS).
    let e1 = check(Case::new(72, 1024, 120).bh(2, 2).bias(Bias::RandomMask(0.3)), 200);
    let e2 = check(Case::new(72, 130, 1).bh(2, 1), 201);
    let e3 = check(Case::new(72, 257, 120).bh(3, 1).bias(Bias::KeepOne), 202);
    eprintln!("text cross-attention: 1024×120 masked {e1:.3e}, 130×1 {e2:.3e}, 257×120 keep-one {e3:.3e}");
}

#[test]
fn key_bias_masks() {
    let mut worst = 0.0f64;
    for (i, d) in [64, 72, 128].into_iter().enumerate() {
        for (j, nk) in [1, 5, 65, 130].into_iter().enumerate() {
            let seed = 300 + (i * 10 + j) as u64;
            worst = worst.max(check(Case::new(d, 65, nk).bh(3, 1).bias(Bias::KeepOne), seed));
            worst = worst.max(check(Case::new(d, 65, nk).bh(2, 2).bias(Bias::RandomMask(0.5)), seed + 50));
        }
        worst = worst.max(check(Case::new(d, 130, 130).bh(2, 1).bias(Bias::Real), 390 + i as u64));
        worst = worst.max(check(Case::new(d, 64, 64).bias(Bias::RandomMask(0.2)), 395 + i as u64));
    }
    eprintln!("key bias, worst relative error {worst:.3e}");
}

#[test]
fn batch_and_heads() {
    let mut worst = 0.0f64;
    for batch in 1..=3 {
        for heads in 1..=3 {
            let d = [64, 72, 128][(batch + heads) % 3];
            let c = Case::new(d, 70, 70).bh(batch, heads).bias(Bias::RandomMask(0.7));
            worst = worst.max(check(c, 400 + (batch * 3 + heads) as u64));
            let c = Case::new(d, 33, 97).bh(batch, heads);
            worst = worst.max(check(c, 450 + (batch * 3 + heads) as u64));
        }
    }
    eprintln!("batch × heads, worst relative error {worst:.3e}");
}

#[test]
fn f16_inputs() {
    let mut worst = 0.0f64;
    for (i, d) in [64, 72, 128].into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        worst = worst.max(check(Case::new(d, 130, 130).bh(2, 2).dtype(DType::F16), seed));
        worst =
            worst.max(check(Case::new(d, 65, 120).bh(2, 1).bias(Bias::RandomMask(0.4)).dtype(DType::F16), seed + 1));
        worst = worst.max(check(Case::new(d, 257, 5).bias(Bias::KeepOne).dtype(DType::F16), seed + 2));
        worst = worst.max(check(Case::new(d, 63, 63).layout(Layout::SeparateQ).dtype(DType::F16), seed + 3));
    }
    eprintln!("f16, worst relative error {worst:.3e}");
}

// ---- kernels/attention_sm90a.cu (wgmma, head dim 72), all three tile shapes ----------------------
// Lengths around their 128- and 192-query / 64-key tiles, cross-attention with masks, batch ×
// heads, f16.

#[test]
fn wgmma_self_and_cross_lengths() {
    for k in AttentionKernel::wgmma_kernels() {
        let mut worst = 0.0f64;
        for (j, n) in LENGTHS.into_iter().chain([128, 191, 192, 193, 385]).enumerate() {
            worst = worst.max(check(Case::new(72, n, n).kernel(k), 800 + j as u64));
        }
        for (i, nq) in [1, 129, 257].into_iter().enumerate() {
            for (j, nk) in [1, 5, 63, 64, 65, 130].into_iter().enumerate() {
                worst = worst.max(check(Case::new(72, nq, nk).kernel(k), 810 + (i * 10 + j) as u64));
            }
        }
        eprintln!("{} self/cross bf16, worst relative error {worst:.3e}", k.name());
    }
}

#[test]
fn wgmma_masks_batch_heads_f16() {
    for k in AttentionKernel::wgmma_kernels() {
        wgmma_masks_batch_heads_f16_with(k);
    }
}

fn wgmma_masks_batch_heads_f16_with(k: AttentionKernel) {
    let mut worst = 0.0f64;
    worst = worst.max(check(Case::new(72, 300, 120).bh(2, 2).bias(Bias::RandomMask(0.3)).kernel(k), 850));
    worst = worst.max(check(Case::new(72, 257, 120).bh(3, 1).bias(Bias::KeepOne).kernel(k), 851));
    worst = worst.max(check(Case::new(72, 130, 130).bh(2, 1).bias(Bias::Real).kernel(k), 852));
    worst = worst.max(check(Case::new(72, 70, 70).bh(3, 2).bias(Bias::RandomMask(0.7)).kernel(k), 853));
    worst = worst.max(check(Case::new(72, 33, 97).bh(2, 3).kernel(k), 854));
    worst = worst.max(check(Case::new(72, 63, 63).layout(Layout::SeparateQ).kernel(k), 855));
    // 16 key tiles: the three V stages rotate five times over
    worst = worst.max(check(Case::new(72, 1024, 1024).bh(1, 2).bias(Bias::RandomMask(0.9)).kernel(k), 856));
    eprintln!("{} masks / batch × heads bf16, worst relative error {worst:.3e}", k.name());
    let mut worst = 0.0f64;
    worst = worst.max(check(Case::new(72, 130, 130).bh(2, 2).dtype(DType::F16).kernel(k), 860));
    worst =
        worst.max(check(Case::new(72, 65, 120).bh(2, 1).bias(Bias::RandomMask(0.4)).dtype(DType::F16).kernel(k), 861));
    worst = worst.max(check(Case::new(72, 257, 5).bias(Bias::KeepOne).dtype(DType::F16).kernel(k), 862));
    eprintln!("{} f16, worst relative error {worst:.3e}", k.name());
}

#[test]
fn warp_orders_expose_no_missing_barrier() {
    // Process-wide setting: exclusive against every other test of this file.
    let _guard = ORDER.write().unwrap_or_else(|e| e.into_inner());
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            set_warp_order(WarpOrder::InOrder);
        }
    }
    let _restore = Restore;
    let cases = [
        Case::new(72, 257, 257).bh(1, 2).bias(Bias::RandomMask(0.8)),
        Case::new(128, 130, 100).bh(2, 1),
        Case::new(64, 65, 200).bias(Bias::KeepOne),
        Case::new(72, 200, 200).bh(1, 2).bias(Bias::RandomMask(0.8)).kernel(AttentionKernel::Wgmma),
        Case::new(72, 200, 200).bh(1, 1).bias(Bias::RandomMask(0.8)).kernel(AttentionKernel::WgmmaQRegs),
        Case::new(72, 200, 200).bh(1, 1).kernel(AttentionKernel::WgmmaQRegs3),
    ];
    for order in [WarpOrder::Reversed, WarpOrder::Shuffled(7), WarpOrder::Shuffled(1234)] {
        set_warp_order(order);
        for (i, &c) in cases.iter().enumerate() {
            let (rel, max) = run_unguarded(c, 600 + i as u64);
            assert!(rel <= 1e-2 && max <= 3e-2, "{order:?} {c:?}: relative error {rel:.3e}, max {max:.3e}");
        }
    }
}

#[test]
fn rejects_unsupported_inputs() {
    let _guard = ORDER.read().unwrap_or_else(|e| e.into_inner());
    let sim = Sim::new(DType::BF16).unwrap();
    let mut rng = Rng::new(700);
    let shape = |head_dim: usize| AttentionShape { batch: 1, heads: 2, head_dim, nq: 16, nk: 16, scale: 0.125 };

    assert!(!attention_supported_head_dim(80) && attention_supported_head_dim(72));
    let (t, _) = random(&sim, &mut rng, &[16, 3 * 160], DType::BF16, 1.0);
    let mut out = poisoned(&sim, &[16, 160], DType::BF16);
    let err = sim
        .attention(&shape(80), ColSlice::new(&t, 0), ColSlice::new(&t, 160), ColSlice::new(&t, 320), None, &mut out)
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.backend_kind(), Some(&BackendErrorKind::UnsupportedHeadDim { head_dim: 80 }), "{msg}");
    assert!(msg.contains("64, 72, 128"), "{msg}");

    // Column offset 4: rows no longer start on 16-byte boundaries.
    let (t, _) = random(&sim, &mut rng, &[16, 3 * 144 + 8], DType::BF16, 1.0);
    let mut out = poisoned(&sim, &[16, 144], DType::BF16);
    let msg = sim
        .attention(&shape(72), ColSlice::new(&t, 4), ColSlice::new(&t, 148), ColSlice::new(&t, 292), None, &mut out)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("16-byte") && msg.contains("column offset 4"), "{msg}");

    // Row stride 3·144 + 4 is not a multiple of 8 elements.
    let (t, _) = random(&sim, &mut rng, &[16, 3 * 144 + 4], DType::BF16, 1.0);
    let msg = sim
        .attention(&shape(72), ColSlice::new(&t, 0), ColSlice::new(&t, 144), ColSlice::new(&t, 288), None, &mut out)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("16-byte") && msg.contains("row stride 436"), "{msg}");
}
