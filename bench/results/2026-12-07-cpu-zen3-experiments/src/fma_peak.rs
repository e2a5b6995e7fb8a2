// one-file cargo project: [dependencies] rayon = "1"; usage: fma_peak [1]  (any argument: one thread; the label says "2 threads" either way)
use std::arch::x86_64::*;
use std::time::Instant;
#[target_feature(enable = "avx2,fma")]
unsafe fn fmas(iters: usize) -> f32 {
    let mut a = [_mm256_set1_ps(0.0); 12];
    let b = _mm256_set1_ps(1.0000001); let c = _mm256_set1_ps(0.999999);
    for _ in 0..iters { for r in a.iter_mut() { *r = _mm256_fmadd_ps(*r, b, c); } }
    let mut s = 0.0; for r in a { let mut t = [0f32; 8]; _mm256_storeu_ps(t.as_mut_ptr(), r); s += t.iter().sum::<f32>(); } s
}
fn main() {
    for _ in 0..3 {
        let iters = 100_000_000;
        let t = Instant::now();
        let r: f32 = if std::env::args().count() > 1 { unsafe { fmas(iters) } } else { rayon::join(|| unsafe { fmas(iters) }, || unsafe { fmas(iters) }).0 };
        let dt = t.elapsed().as_secs_f64();
        println!("2 threads: {:.1} GFLOP/s per core ({r})", (iters * 12 * 16) as f64 / dt * 1e-9);
    }
}
