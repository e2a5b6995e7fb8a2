// A/B of the CPU backend's attention on an AVX-512 machine, interleaved call by call, inputs
// rotating over 4 sets: the AVX2 attention tiles (wide tiles off: the tiles' level is AVX2) against
// the gemm crate's AVX-512 path (wide tiles on: no 512-bit attention tiles exist, so the crate).
// Args: batch heads nq nk [masked 0/1] [rounds]
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{AttentionShape, Backend, ColSlice};
use deltadit::internals::cpu::simd;
use deltadit::internals::cpu::on_worker;
use deltadit::DType::F32;
use std::time::Instant;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (batch, heads, nq, nk) = (a[0], a[1], a[2], a[3]);
    let masked = a.get(4).copied().unwrap_or(0) == 1;
    let rounds = a.get(5).copied().unwrap_or(5);
    let d = 72;
    let be = Cpu::new(rayon::current_num_threads());
    let s = AttentionShape { batch, heads, head_dim: d, nq, nk, scale: (d as f32).powf(-0.5) };
    let w = heads * d;
    let rnd = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| (((i + seed) * 7919) % 1000) as f32 * 2e-3 - 1.0).collect() };
    let sets: Vec<_> = (0..4)
        .map(|k| {
            let q = be.upload(&rnd(batch * nq * w, 3 * k), &[batch * nq, w], F32).unwrap();
            let kk = be.upload(&rnd(batch * nk * w, 3 * k + 1), &[batch * nk, w], F32).unwrap();
            let v = be.upload(&rnd(batch * nk * w, 3 * k + 2), &[batch * nk, w], F32).unwrap();
            (q, kk, v)
        })
        .collect();
    // keep the first ~2/3 of each sample's keys (a text padding mask)
    let bias: Vec<f32> = (0..batch * nk).map(|i| if i % nk < (2 * nk / 3).max(1) { 0.0 } else { -10000.0 }).collect();
    let bias = be.upload(&bias, &[batch, nk], F32).unwrap();
    let mut out = be.alloc(&[batch * nq, w], F32).unwrap();
    let flop = 4.0 * (batch * heads * nq * nk * d) as f64;
    let calls = ((2e9 / flop) as usize).clamp(20, 5000) * rounds / 5;
    let mut t = [vec![], vec![]];
    for r in 0..calls {
        for (side, wide) in [false, true].into_iter().enumerate() {
            simd::set_wide_tiles(Some(wide));
            let (q, k, v) = &sets[(2 * r + side) % 4];
            let t0 = Instant::now();
            on_worker(&mut || {
                be.attention(&s, ColSlice::new(q, 0), ColSlice::new(k, 0), ColSlice::new(v, 0), masked.then_some(&bias), &mut out).unwrap()
            });
            t[side].push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let p = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 10], v[v.len() / 2])
    };
    let (a, b) = (p(&mut t[0]), p(&mut t[1]));
    println!(
        "{batch}x{heads}x{nq}x{nk}{} d {d}: p10 avx2-tiles {:.1} us (med {:.1})  crate-avx512 {:.1} us (med {:.1})  crate/tiles p10 {:.3} med {:.3}",
        if masked { " masked" } else { "" },
        a.0, a.1, b.0, b.1, b.0 / a.0, b.1 / a.1
    );
}
