//! The CPU backend's element-wise loops are compiled per SIMD level and dispatched at run time
//! (src/backend/cpu/simd.rs). Every level this CPU has must give the baseline's bits exactly, on
//! shapes with vector tails and several rayon tasks — except attention and the linear layer,
//! which AVX2 runs through their own tiles (compared at a tolerance). One test in its own binary:
//! the level cap is process-wide.

mod common;

use common::{poisoned, random, rel_l2, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{Activation, AttentionShape, Backend, CacheWrite, ColSlice};
use deltadit::internals::cpu::simd::{self, SimdLevel};
use deltadit::DType::F32;

/// Runs every multiversioned op once on fixed random inputs; returns the outputs in order.
fn outputs(be: &Cpu) -> Vec<(String, Vec<f32>)> {
    let mut rng = Rng::new(77);
    let mut out = Vec::new();
    let (batch, tokens, dim) = (2, 301, 147); // 147: a 16-lane loop leaves a tail of 3
    let rows = batch * tokens;
    let (x, _) = random(be, &mut rng, &[rows, dim], F32, 3.0);
    let (y, _) = random(be, &mut rng, &[rows, dim], F32, 1.0);
    let (m, _) = random(be, &mut rng, &[batch, 6 * dim], F32, 0.5);
    let (b, _) = random(be, &mut rng, &[dim], F32, 1.0);

    for act in [Activation::GeluTanh, Activation::Silu, Activation::None] {
        let mut o = poisoned(be, &[rows, dim], F32);
        be.activation(&x, Some(&b), act, &mut o).unwrap();
        out.push((format!("activation {act:?}"), be.download(&o).unwrap()));
        let (w, _) = random(be, &mut rng, &[200, dim], F32, 0.2);
        let mut o = poisoned(be, &[rows, 200], F32);
        be.linear(&x, &w, None, act, &mut o).unwrap();
        out.push((format!("linear {act:?}"), be.download(&o).unwrap()));
    }
    let mut o = poisoned(be, &[rows, dim], F32);
    be.norm_modulate(&x, &m, 0, 1, 1e-6, &mut o).unwrap();
    out.push(("norm_modulate".into(), be.download(&o).unwrap()));
    for mode in 0..3 {
        let mut xr = be.upload(&be.download(&x).unwrap(), &[rows, dim], F32).unwrap();
        let (mut cache, _) = random(be, &mut rng, &[rows, dim], F32, 1.0);
        let cw = match mode {
            0 => CacheWrite::None,
            1 => CacheWrite::Anchor(&mut cache),
            _ => CacheWrite::Delta(&mut cache),
        };
        be.residual(&mut xr, &y, Some((&m, 2)), cw).unwrap();
        out.push((format!("residual {mode}: x"), be.download(&xr).unwrap()));
        out.push((format!("residual {mode}: cache"), be.download(&cache).unwrap()));
    }
    // TaylorSeer: the forecast apply, the gated residual on a forecast, the ladder update
    let (c, _) = random(be, &mut rng, &[4], F32, 1.0);
    let mut xf = be.upload(&be.download(&x).unwrap(), &[rows, dim], F32).unwrap();
    be.forecast(&mut xf, &[&y, &x, &y], &c, 1, true).unwrap();
    out.push(("forecast".into(), be.download(&xf).unwrap()));
    be.residual_forecast(&mut xf, &[&x, &y], &c, Some((&m, 2)), CacheWrite::None).unwrap();
    out.push(("residual_forecast".into(), be.download(&xf).unwrap()));
    let (mut prev, _) = random(be, &mut rng, &[rows, dim], F32, 1.0);
    let (mut l1, _) = random(be, &mut rng, &[rows, dim], F32, 1.0);
    let (mut l2, _) = random(be, &mut rng, &[rows, dim], F32, 1.0);
    be.ladder_update(&y, &mut prev, &mut [&mut l1, &mut l2], &c, 0).unwrap();
    out.push(("ladder_update level 1".into(), be.download(&l1).unwrap()));
    out.push(("ladder_update level 2".into(), be.download(&l2).unwrap()));
    let mut xb = be.upload(&be.download(&x).unwrap(), &[rows, dim], F32).unwrap();
    be.add_bcast(&mut xb, &b).unwrap();
    out.push(("add_bcast".into(), be.download(&xb).unwrap()));
    // Q at 0 and K at 73 of the 147 columns: 2 heads of 36 (a tail of 4 after 8-wide sums) each
    let mut xq = be.upload(&be.download(&x).unwrap(), &[rows, dim], F32).unwrap();
    let (wq, _) = random(be, &mut rng, &[36], F32, 1.0);
    let (wk, _) = random(be, &mut rng, &[36], F32, 1.0);
    be.qk_norm(&mut xq, 0, 73, 2, 36, &wq, &wk, 1e-6).unwrap();
    out.push(("qk_norm".into(), be.download(&xq).unwrap()));

    let (heads, d, nk) = (2, 72, 37);
    let s = AttentionShape { batch, heads, head_dim: d, nq: tokens, nk, scale: (d as f32).powf(-0.5) };
    let (q, _) = random(be, &mut rng, &[rows, heads * d], F32, 1.0);
    let (kv, _) = random(be, &mut rng, &[batch * nk, 2 * heads * d], F32, 1.0);
    // sample 0 masks every third key, sample 1 keeps its first key only
    let bias_v: Vec<f32> = (0..batch * nk).map(|i| if i % 3 == 1 || i > nk { -10000.0 } else { 0.0 }).collect();
    let bias = be.upload(&bias_v, &[batch, nk], F32).unwrap();
    let mut o = poisoned(be, &[rows, heads * d], F32);
    be.attention(&s, ColSlice::new(&q, 0), ColSlice::new(&kv, 0), ColSlice::new(&kv, heads * d), Some(&bias), &mut o)
        .unwrap();
    out.push(("attention".into(), be.download(&o).unwrap()));
    // unmasked: on AVX2 the attention tiles run it (their own summation order), elsewhere the
    // gemm crate; both attention outputs are compared at a tolerance (TILES_TOL), not bitwise, as
    // the masked one's blocks whose masked keys cannot be proven negligible run the tiles too
    let mut o = poisoned(be, &[rows, heads * d], F32);
    be.attention(&s, ColSlice::new(&q, 0), ColSlice::new(&kv, 0), ColSlice::new(&kv, heads * d), None, &mut o).unwrap();
    out.push(("attention unmasked".into(), be.download(&o).unwrap()));
    out
}

/// Relative L2 tolerance for the outputs whose summation order depends on the level.
const TILES_TOL: f64 = 1e-6;

#[test]
fn every_simd_level_gives_the_baseline_bits() {
    let be = Cpu::new(2);
    simd::set_cap(Some(SimdLevel::Baseline));
    assert_eq!(simd::level(), SimdLevel::Baseline);
    let base = outputs(&be);
    let mut checked = vec![];
    for level in [SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|&l| l <= simd::detected()) {
        simd::set_cap(Some(level));
        assert_eq!(simd::level(), level);
        for ((name, want), (_, got)) in base.iter().zip(outputs(&be)) {
            assert!(got.iter().all(|v| v.is_finite()), "{name} at {level}: non-finite output");
            if name.starts_with("attention") || name.starts_with("linear") {
                let e = rel_l2(&got, want);
                assert!(e <= TILES_TOL, "{name} at {level}: relative error {e:.2e} to the baseline");
                continue;
            }
            if let Some(i) = (0..want.len()).find(|&i| want[i].to_bits() != got[i].to_bits()) {
                panic!("{name} at {level}: element {i} is {} (baseline {})", got[i], want[i]);
            }
        }
        checked.push(level);
    }
    simd::set_cap(None);
    assert_eq!(simd::level(), simd::detected());
    eprintln!("detected {}; compared with the baseline: {checked:?}", simd::detected());
}
