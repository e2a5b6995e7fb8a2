// one-file cargo project: [dependencies] gemm = { version = "0.19.0", features = ["x86-v4"] }
use std::time::Instant;
use gemm::Parallelism;
// C (m×n, dst strides cs, rs) = A (m×k: acs, ars) · B (k×n: bcs, brs)
#[allow(clippy::too_many_arguments)]
fn g(m: usize, n: usize, k: usize, c: &mut [f32], ccs: isize, crs: isize, a: &[f32], acs: isize, ars: isize, b: &[f32], bcs: isize, brs: isize) {
    unsafe { gemm::gemm(m, n, k, c.as_mut_ptr(), ccs, crs, false, a.as_ptr(), acs, ars, b.as_ptr(), bcs, brs, 0.0f32, 1.0f32, false, false, false, Parallelism::None) }
}
fn main() {
    let (nk, d) = (1024usize, 72usize);
    let w = 16 * d; // row stride of q, k, v in the fused layout: [tokens, heads*d]
    let q: Vec<f32> = (0..nk * w).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
    let kk = q.clone(); let v = q.clone();
    let mut s = vec![0f32; 256 * nk];
    let mut o = vec![0f32; nk * w];
    for &rows in &[32usize, 64, 128, 256] {
        let reps = 2 * 1024 / rows;
        for _ in 0..2 {
        let t = Instant::now();
        for r in 0..reps { let i0 = (r * rows) % nk;
            // S[rows, nk] row-major = Q[i0.., :d] · K^T
            g(rows, nk, d, &mut s, 1, nk as isize, &q[i0 * w..], 1, w as isize, &kk, w as isize, 1);
        }
        let tqk = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for r in 0..reps { let i0 = (r * rows) % nk;
            g(rows, d, nk, &mut o[i0 * w..], 1, w as isize, &s, 1, nk as isize, &v, 1, w as isize);
        }
        let tpv = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for r in 0..reps { let i0 = (r * rows) % nk;
            // S^T [nk, rows] col-major  == S row-major; compute as m=nk? write S^T row-major: S^T[j, i]
            g(nk, rows, d, &mut s, 1, rows as isize, &kk, 1, w as isize, &q[i0 * w..], w as isize, 1);
        }
        let tqkt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for r in 0..reps { let i0 = (r * rows) % nk;
            // O = (S^T)^T V with S^T [nk, rows] row-major read as column-major A
            g(rows, d, nk, &mut o[i0 * w..], 1, w as isize, &s, rows as isize, 1, &v, 1, w as isize);
        }
        let tpvt = t.elapsed().as_secs_f64();
        let mut ot = vec![0f32; d * rows];
        let t = Instant::now();
        for r in 0..reps { let i0 = (r * rows) % nk;
            g(nk, rows, d, &mut s, nk as isize, 1, &kk, 1, w as isize, &q[i0 * w..], w as isize, 1);
        }
        let tkqs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..reps {
            // O^T [d, rows] = V^T [d, nk] · S^T [nk, rows]; O^T stored column-major (= O row-major, stride d)
            g(d, rows, nk, &mut ot, d as isize, 1, &v, w as isize, 1, &s, 1, rows as isize);
        }
        let tvts = t.elapsed().as_secs_f64();
        let fl = 2.0 * (reps * rows * nk * d) as f64;
        println!("rows {rows:3}: QK {:.1} GF/s  PV {:.1} GF/s  KQ^T {:.1} GF/s  PtV {:.1}  VtS {:.1}  KQ->S {:.1}", fl / tqk * 1e-9, fl / tpv * 1e-9, fl / tqkt * 1e-9, fl / tpvt * 1e-9, fl / tvts * 1e-9, fl / tkqs * 1e-9);
        }
    }
}
