// A/B of the CPU backend's tensors on 4 KiB pages against tensors advised onto transparent huge
// pages (deltadit::internals::cpu::set_huge_pages), through the Backend API at the
// pixart-alpha-512 shapes (2048 rows of 1152): the same op alternating call by call between two
// groups of tensors allocated with the switch off and on, inputs rotating over 4 sets each as
// the benches do. Prints the 10th percentile and median per side. Args: [rounds]
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{Activation, Backend, CacheWrite};
use deltadit::internals::cpu::{on_worker, set_huge_pages};
use deltadit::{DType::F32, Tensor};
use std::time::Instant;

fn rand(be: &Cpu, shape: &[usize], seed: usize) -> Tensor<Cpu> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (((i + seed) * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
    be.upload(&v, shape, F32).unwrap()
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(200, |s| s.parse().unwrap());
    let be = Cpu::new(rayon::current_num_threads());
    let (r, d) = (2048, 1152);
    let sets = 4;
    // [off, on][set] = (a, b, out-ish, weight qkv, bias, modv)
    let mut g: Vec<Vec<(Tensor<Cpu>, Tensor<Cpu>, Tensor<Cpu>)>> = Vec::new();
    let mut w: Vec<(Tensor<Cpu>, Tensor<Cpu>, Tensor<Cpu>)> = Vec::new();
    for on in [false, true] {
        set_huge_pages(on);
        g.push((0..sets).map(|s| (rand(&be, &[r, d], s), rand(&be, &[r, d], s + 7), be.alloc(&[r, 3 * d], F32).unwrap())).collect());
        w.push((rand(&be, &[3 * d, d], 3), rand(&be, &[3 * d], 5), rand(&be, &[2, 6 * d], 9)));
    }
    let ops = ["copy", "delta-apply", "residual-gated", "norm-modulate", "gemm-qkv"];
    let mut t = vec![[Vec::new(), Vec::new()]; ops.len()];
    for it in 0..rounds {
        let s = it % sets;
        for (o, op) in ops.iter().enumerate() {
            if *op == "gemm-qkv" && it % 20 != 0 {
                continue;
            }
            for side in [it % 2, 1 - it % 2] {
                let (a, b, out) = &mut g[side][s];
                let (wq, bq, modv) = &w[side];
                let t0 = Instant::now();
                on_worker(&mut || match *op {
                    "copy" => be.copy(a, b),
                    "delta-apply" => be.residual(a, b, None, CacheWrite::None),
                    "residual-gated" => be.residual(a, b, Some((modv, 2)), CacheWrite::None),
                    "norm-modulate" => be.norm_modulate(a, modv, 0, 1, 1e-6, b),
                    _ => be.linear(a, wq, Some(bq), Activation::None, out),
                })
                .unwrap();
                t[o][side].push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let q = |v: &mut Vec<f64>, f: f64| { v.sort_by(|a, b| a.total_cmp(b)); v[((v.len() - 1) as f64 * f) as usize] };
    for (o, op) in ops.iter().enumerate() {
        let [off, on] = &mut t[o];
        let (p0, p1, m0, m1) = (q(off, 0.1), q(on, 0.1), q(off, 0.5), q(on, 0.5));
        println!("{op:<15} p10 4K {p0:9.1} us  THP {p1:9.1} us  4K/THP {:.3} | median {m0:9.1} / {m1:9.1}  {:.3}", p0 / p1, m0 / m1);
    }
}
