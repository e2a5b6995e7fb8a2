// one-file cargo project: [dependencies] gemm = { version = "0.19.0", features = ["x86-v4"] }, rayon = "1"
use std::time::Instant;
use gemm::Parallelism;
use rayon::prelude::*;
#[derive(Clone, Copy)] struct P(*mut f32); unsafe impl Send for P {} unsafe impl Sync for P {}
fn tile(x: &[f32], w: &[f32], out: P, r0: usize, rows: usize, c0: usize, cols: usize, n: usize, k: usize, par: Parallelism) {
    unsafe { gemm::gemm(rows, cols, k, out.0.add(r0 * n + c0), 1, n as isize, true, x.as_ptr().add(r0 * k), 1, k as isize, w.as_ptr().add(c0 * k), k as isize, 1, 1.0f32, 1.0f32, false, false, false, par) }
}
fn run(x: &[f32], w: &[f32], out: &mut [f32], m: usize, n: usize, k: usize, mb: usize, nb: usize) {
    let cs = n.div_ceil(nb).next_multiple_of(16); let rs = m.div_ceil(mb);
    let tiles: Vec<(usize, usize)> = (0..m).step_by(rs).flat_map(|r| (0..n).step_by(cs).map(move |c| (r, c))).collect();
    let o = P(out.as_mut_ptr());
    tiles.par_iter().for_each(|&(r, c)| { let o = o; tile(x, w, o, r, rs.min(m - r), c, cs.min(n - c), n, k, Parallelism::None) });
}
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (m, n, k) = (args[0], args[1], args[2]);
    let sets = 8;
    let xs: Vec<Vec<f32>> = (0..sets).map(|s| (0..m * k).map(|i| (((i + s) * 7919) % 1000) as f32 * 1e-3 - 0.5).collect()).collect();
    let ws: Vec<Vec<f32>> = (0..sets).map(|s| (0..n * k).map(|i| (((i + s) * 104729) % 1000) as f32 * 1e-3 - 0.5).collect()).collect();
    let mut outs: Vec<Vec<f32>> = (0..sets).map(|_| vec![0f32; m * n]).collect();
    let configs: Vec<(&str, usize, usize)> = vec![("cols2", 1, 2), ("rows2", 2, 1), ("rows4", 4, 1)];
    let reps = ((2e9 / (2 * m * n * k) as f64) as usize).clamp(8, 2000);
    for round in 0..5 {
        let mut line = String::new();
        for &(name, mb, nb) in &configs {
            let t = Instant::now();
            for r in 0..reps { let s = r % sets; run(&xs[s], &ws[s], &mut outs[s], m, n, k, mb, nb); }
            line += &format!("{name} {:.1}  ", t.elapsed().as_secs_f64() / reps as f64 * 1e6);
        }
        let t = Instant::now();
        for r in 0..reps { let s = r % sets; tile(&xs[s], &ws[s], P(outs[s].as_mut_ptr()), 0, m, 0, n, n, k, Parallelism::Rayon(2)); }
        line += &format!("gemm-rayon {:.1}", t.elapsed().as_secs_f64() / reps as f64 * 1e6);
        if round > 0 { println!("{m}x{n}x{k}: {line}"); }
    }
}
