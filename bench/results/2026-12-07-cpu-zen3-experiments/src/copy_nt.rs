// one-file cargo project: [dependencies] rayon = "1"
use rayon::prelude::*;
use std::time::Instant;
use std::arch::x86_64::*;
fn med(mut v: Vec<f64>) -> f64 { v.sort_by(|a,b| a.partial_cmp(b).unwrap()); v[v.len()/2] }
#[target_feature(enable = "avx2")]
unsafe fn vcopy(d: &mut [f32], s: &[f32]) {
    let n = d.len() / 8 * 8;
    let mut i = 0;
    while i < n { _mm256_storeu_ps(d.as_mut_ptr().add(i), _mm256_loadu_ps(s.as_ptr().add(i))); i += 8; }
    d[n..].copy_from_slice(&s[n..]);
}
#[target_feature(enable = "avx2")]
unsafe fn ntcopy(d: &mut [f32], s: &[f32]) {
    // align dst to 32 bytes
    let mut i = 0;
    while i < d.len() && (d.as_ptr().add(i) as usize) % 32 != 0 { d[i] = s[i]; i += 1; }
    while i + 8 <= d.len() { _mm256_stream_ps(d.as_mut_ptr().add(i), _mm256_loadu_ps(s.as_ptr().add(i))); i += 8; }
    _mm_sfence();
    while i < d.len() { d[i] = s[i]; i += 1; }
}
fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(2048*1152);
    let sets: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(4);
    let src: Vec<Vec<f32>> = (0..sets).map(|s| (0..n).map(|i| ((i+s) % 977) as f32 * 0.001).collect()).collect();
    let mut dst: Vec<Vec<f32>> = (0..sets).map(|_| vec![1.0f32; n]).collect();
    let reps = 200;
    let list = [72usize];
    for round in 0..4 {
    for &tasks in &list {
        let chunk = n.div_ceil(tasks).next_multiple_of(16);
        let mut t3 = [vec![], vec![], vec![]];
        for (v, tv) in t3.iter_mut().enumerate() {
        for r in 0..reps {
            let s = r % sets;
            let (dd, ss) = (&mut dst[s], &src[s]);
            let t = Instant::now();
            dd.par_chunks_mut(chunk).zip(ss.par_chunks(chunk)).for_each(|(d, s)| unsafe { match v { 0 => d.copy_from_slice(s), 1 => d.iter_mut().zip(s).for_each(|(a, b)| *a += *b), _ => ntcopy(d, s) } });
            tv.push(t.elapsed().as_secs_f64());
        }
        }
        let [a, b, c] = t3;
        if round > 0 { println!("tasks {tasks:3}: memcpy {:.1} us  add {:.1} us  nt {:.1}", med(a)*1e6, med(b)*1e6, med(c)*1e6); }
    }
    }
    std::hint::black_box(&dst);
}
