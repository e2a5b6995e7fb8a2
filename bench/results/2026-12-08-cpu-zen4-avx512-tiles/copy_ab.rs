// Copy A/B: glibc memcpy against plain AVX2 and AVX-512 load/store loops, per chunk on 2 threads
// (the split the backend uses), interleaved call by call, sources and destinations rotating over
// enough sets to pass the last-level cache (as the benches do). Args: floats [rounds]
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::time::Instant;

#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    while i + 32 <= n {
        let a = _mm256_loadu_ps(s.add(i));
        let b = _mm256_loadu_ps(s.add(i + 8));
        let c = _mm256_loadu_ps(s.add(i + 16));
        let e = _mm256_loadu_ps(s.add(i + 24));
        _mm256_storeu_ps(d.add(i), a);
        _mm256_storeu_ps(d.add(i + 8), b);
        _mm256_storeu_ps(d.add(i + 16), c);
        _mm256_storeu_ps(d.add(i + 24), e);
        i += 32;
    }
    dst[i..].copy_from_slice(&src[i..]);
}

#[target_feature(enable = "avx512f")]
unsafe fn copy_avx512(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    while i + 64 <= n {
        let a = _mm512_loadu_ps(s.add(i));
        let b = _mm512_loadu_ps(s.add(i + 16));
        let c = _mm512_loadu_ps(s.add(i + 32));
        let e = _mm512_loadu_ps(s.add(i + 48));
        _mm512_storeu_ps(d.add(i), a);
        _mm512_storeu_ps(d.add(i + 16), b);
        _mm512_storeu_ps(d.add(i + 32), c);
        _mm512_storeu_ps(d.add(i + 48), e);
        i += 64;
    }
    dst[i..].copy_from_slice(&src[i..]);
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let n = a[0];
    let rounds = a.get(1).copied().unwrap_or(5);
    let threads = rayon::current_num_threads();
    let sets = ((96usize << 20) / (8 * n)).clamp(4, 64);
    let srcs: Vec<Vec<f32>> = (0..sets).map(|s| (0..n).map(|i| ((i + s) % 1000) as f32).collect()).collect();
    let mut dsts: Vec<Vec<f32>> = (0..sets).map(|_| vec![1.0f32; n]).collect();
    let calls = ((4e9 / (8.0 * n as f64)) as usize).clamp(50, 20000) * rounds / 5;
    let names = ["memcpy", "avx2-loop", "avx512-loop"];
    let mut t: Vec<Vec<f64>> = vec![vec![]; 3];
    let chunk = n.div_ceil(threads).next_multiple_of(64);
    for r in 0..calls {
        for (side, tv) in t.iter_mut().enumerate() {
            let s = (r * 3 + side) % sets;
            let (src, dst) = (&srcs[s], &mut dsts[s]);
            let t0 = Instant::now();
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| match side {
                0 => d.copy_from_slice(s),
                // SAFETY: the CPU has AVX2 / AVX-512 F (checked by the caller's choice of machine)
                1 => unsafe { copy_avx2(d, s) },
                _ => unsafe { copy_avx512(d, s) },
            });
            tv.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mut line = format!("{:.2} MB ({sets} sets):", 4.0 * n as f64 / 1e6);
    let mut p10 = vec![];
    for (side, tv) in t.iter_mut().enumerate() {
        tv.sort_by(|a, b| a.total_cmp(b));
        let (p, m) = (tv[tv.len() / 10], tv[tv.len() / 2]);
        p10.push(p);
        line += &format!("  {} p10 {:.1} us ({:.0} GB/s) med {:.1}", names[side], p, 8.0 * n as f64 / p / 1e3, m);
    }
    line += &format!("  memcpy/avx2 {:.3} memcpy/avx512 {:.3}", p10[0] / p10[1], p10[0] / p10[2]);
    println!("{line}");
}
