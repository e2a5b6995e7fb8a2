// A/B of 4 KiB pages against transparent huge pages (madvise) for the operands of the CPU linear
// layer (the tiles): the same call alternating between two copies of the inputs. Args: m n k
use deltadit::backend::Activation;
use deltadit::internals::cpu::{linear_f32, on_worker};
use std::time::Instant;
fn alloc(n: usize, huge: bool, f: impl Fn(usize) -> f32) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    if huge {
        let p = v.as_mut_ptr() as usize;
        let lo = (p + (2 << 20) - 1) & !((2 << 20) - 1);
        let hi = (p + n * 4) & !((2 << 20) - 1);
        if hi > lo { assert_eq!(unsafe { libc::madvise(lo as *mut _, hi - lo, libc::MADV_HUGEPAGE) }, 0); }
    }
    v.extend((0..n).map(f));
    v
}
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (m, n, k) = (a[0], a[1], a[2]);
    let threads = rayon::current_num_threads();
    let sets = 4;
    let mk = |h: bool| {
        let xs: Vec<Vec<f32>> = (0..sets).map(|s| alloc(m * k, h, |i| (((i + s) * 7919) % 1000) as f32 * 1e-3 - 0.5)).collect();
        let ws: Vec<Vec<f32>> = (0..sets).map(|s| alloc(n * k, h, |i| (((i + s) * 104729) % 1000) as f32 * 1e-3 - 0.5)).collect();
        let os: Vec<Vec<f32>> = (0..sets).map(|_| alloc(m * n, h, |_| 0.0)).collect();
        (xs, ws, os)
    };
    let mut v = [mk(false), mk(true)];
    let b: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1).collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    println!("{}", smaps.lines().find(|l| l.starts_with("AnonHuge")).unwrap());
    let calls = ((4e9 / (2 * m * n * k) as f64) as usize).clamp(16, 4000);
    let mut t: [Vec<f64>; 2] = [vec![], vec![]];
    for r in 0..calls {
        for h in 0..2 {
            let s = r % sets;
            let (xs, ws, os) = &mut v[h];
            let (x, w, o) = (&xs[s], &ws[s], &mut os[s]);
            let t0 = Instant::now();
            on_worker(&mut || linear_f32(x, w, Some(&b), Activation::None, o, m, n, k, threads));
            t[h].push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let stat = |v: &mut Vec<f64>| { v.sort_by(|a, b| a.total_cmp(b)); (v[v.len() / 10], v[v.len() / 2]) };
    let (a, b2) = (stat(&mut t[0]), stat(&mut t[1]));
    println!("{m}x{n}x{k}: p10 4K {:.1} us  THP {:.1} us  ratio {:.3} | median {:.1} / {:.1} ratio {:.3}", a.0, b2.0, a.0 / b2.0, a.1, b2.1, a.1 / b2.1);
}
