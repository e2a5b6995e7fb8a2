// A/B(/C) of the CPU linear layer on an AVX-512 machine, interleaved call by call, inputs rotating
// over 8 sets: the AVX-512 tiles (wide tiles forced on) against the AVX2 tiles (forced off), and
// with SIDES=3 the gemm crate's path (SIMD level capped at baseline: the crate dispatches on its
// own, to its AVX-512 kernels here). Args: m n k [rounds] [gelu 0/1]
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
    // (name, SIMD cap, wide tiles)
    let caps: Vec<(&str, Option<SimdLevel>, Option<bool>)> = match std::env::var("SIDES").as_deref() {
        Ok("3") => vec![("avx512-tiles", None, Some(true)), ("avx2-tiles", None, Some(false)), ("crate", Some(SimdLevel::Baseline), None)],
        _ => vec![("avx512-tiles", None, Some(true)), ("avx2-tiles", None, Some(false))],
    };
    let xs: Vec<Vec<f32>> = (0..sets).map(|s| (0..m * k).map(|i| (((i + s) * 7919) % 1000) as f32 * 1e-3 - 0.5).collect()).collect();
    let ws: Vec<Vec<f32>> = (0..sets).map(|s| (0..n * k).map(|i| (((i + s) * 104729) % 1000) as f32 * 1e-3 - 0.5).collect()).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1).collect();
    let mut outs: Vec<Vec<f32>> = (0..sets).map(|_| vec![0f32; m * n]).collect();
    let calls = (((4e9 / (2 * m * n * k) as f64) as usize).clamp(16, 4000) * rounds / 5).max(16);
    let mut t: Vec<Vec<f64>> = vec![vec![]; caps.len()];
    for r in 0..calls {
        for (v, (_, cap, wide)) in caps.iter().enumerate() {
            simd::set_cap(*cap);
            simd::set_wide_tiles(*wide);
            let s = (r * caps.len() + v) % sets;
            let (x, w, o) = (&xs[s], &ws[s], &mut outs[s]);
            let t0 = Instant::now();
            on_worker(&mut || linear_f32(x, w, Some(&b), act, o, m, n, k, threads));
            t[v].push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let flop = 2.0 * (m * n * k) as f64;
    let mut line = format!("{m}x{n}x{k}{}: p10", if act == Activation::None { "" } else { " gelu" });
    let mut p10s = vec![];
    for (v, (name, _, _)) in caps.iter().enumerate() {
        t[v].sort_by(|a, b| a.total_cmp(b));
        let p10 = t[v][t[v].len() / 10];
        p10s.push(p10);
        line += &format!("  {name} {p10:.1} us ({:.0} GF/s, med {:.1})", flop / p10 / 1e3, t[v][t[v].len() / 2]);
    }
    line += &format!("  {}/{}: {:.3}", caps[1].0, caps[0].0, p10s[1] / p10s[0]);
    println!("{line}");
}
