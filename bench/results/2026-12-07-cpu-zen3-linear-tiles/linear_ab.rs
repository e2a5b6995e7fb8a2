// A/B of the CPU linear layer: the gemm crate's path (SIMD level capped at baseline: the crate
// dispatches on its own) against the AVX2 tiles (level uncapped), interleaved, min over rounds,
// inputs rotating over 8 sets as the benches do. Args: m n k [rounds] [gelu 0/1]
use deltadit::backend::Activation;
use deltadit::internals::cpu::simd::{self, SimdLevel};
use deltadit::internals::cpu::{linear_f32, on_worker};
use std::time::Instant;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (m, n, k) = (a[0], a[1], a[2]);
    let rounds = a.get(3).copied().unwrap_or(5);
    let act = if a.get(4).copied().unwrap_or(0) == 1 { Activation::GeluTanh } else { Activation::None };
    let threads = rayon::current_num_threads();
    let sets: usize = std::env::var("SETS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let xs: Vec<Vec<f32>> = (0..sets).map(|s| (0..m * k).map(|i| (((i + s) * 7919) % 1000) as f32 * 1e-3 - 0.5).collect()).collect();
    let ws: Vec<Vec<f32>> = (0..sets).map(|s| (0..n * k).map(|i| (((i + s) * 104729) % 1000) as f32 * 1e-3 - 0.5).collect()).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1).collect();
    let mut outs: Vec<Vec<f32>> = (0..sets).map(|_| vec![0f32; m * n]).collect();
    let calls = (((4e9 / (2 * m * n * k) as f64) as usize).clamp(16, 4000) * rounds / 5).max(16);
    let mut t: [Vec<f64>; 2] = [vec![], vec![]];
    for r in 0..calls {
        for (v, cap) in [Some(SimdLevel::Baseline), None].into_iter().enumerate() {
            simd::set_cap(cap);
            let s = r % sets;
            let (x, w, o) = (&xs[s], &ws[s], &mut outs[s]);
            let t0 = Instant::now();
            on_worker(&mut || linear_f32(x, w, Some(&b), act, o, m, n, k, threads));
            t[v].push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let stat = |v: &mut Vec<f64>| { v.sort_by(|a, b| a.total_cmp(b)); (v[0], v[v.len() / 10], v[v.len() / 2]) };
    let (a, b2) = (stat(&mut t[0]), stat(&mut t[1]));
    let best = [a.1, b2.1];
    println!("  min {:.1} / {:.1}, p10 {:.1} / {:.1}, median {:.1} / {:.1}; median ratio {:.3}", a.0, b2.0, a.1, b2.1, a.2, b2.2, a.2 / b2.2);
    println!("{m}x{n}x{k}{}: p10: crate {:.1} us  tiles {:.1} us  crate/tiles {:.3}", if act == Activation::None { "" } else { " gelu" }, best[0], best[1], best[0] / best[1]);
}
