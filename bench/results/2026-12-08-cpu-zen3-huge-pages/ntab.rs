// A/B of the CPU backend's streaming copy (deltadit::internals::cpu::copy_streaming) against
// memcpy (copy_from_slice), cut into tasks as Backend::copy cuts them, 2 threads, buffers from
// Backend::alloc (huge pages on), alternating call by call; 10th percentile and median per side.
// Cases: "cold" (4 rotating sets, as the benches), "hot" (1 set: source and destination in cache),
// "copy+read" (4 sets; the destination then summed, as a restore's next reader would).
// Args: n [rounds]
use deltadit::backend::cpu::Cpu;
use deltadit::backend::Backend;
use deltadit::internals::cpu::{copy_streaming, on_worker};
use deltadit::DType::F32;
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).map_or(2048 * 1152, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(300, |s| s.parse().unwrap());
    let be = Cpu::new(rayon::current_num_threads());
    let bufs = |sets: usize| -> Vec<(Vec<f32>, Vec<f32>)> {
        (0..sets)
            .map(|s| {
                let v: Vec<f32> = (0..n).map(|i| (((i + s) * 7919) % 1000) as f32 * 1e-3).collect();
                let a = be.upload(&v, &[n], F32).unwrap().buf().clone();
                let b = be.upload(&v, &[n], F32).unwrap().buf().clone();
                (a, b)
            })
            .collect()
    };
    let tasks = n.div_ceil(8 << 15).next_multiple_of(rayon::current_num_threads());
    let chunk = n.div_ceil(tasks).next_multiple_of(16);
    let copy = |d: &mut [f32], s: &[f32], stream: bool| {
        d.par_chunks_mut(chunk).zip(s.par_chunks(chunk)).for_each(|(d, s)| if stream { copy_streaming(d, s) } else { d.copy_from_slice(s) })
    };
    let q = |v: &mut Vec<f64>, f: f64| { v.sort_by(|a, b| a.total_cmp(b)); v[((v.len() - 1) as f64 * f) as usize] };
    for (case, sets, read) in [("cold", 4, false), ("hot", 1, false), ("copy+read", 4, true)] {
        let mut b = bufs(sets);
        let mut t = [Vec::new(), Vec::new()];
        let mut sink = 0.0f32;
        for it in 0..rounds {
            let s = it % sets;
            for stream in [it % 2 == 0, it % 2 == 1] {
                let (src, dst) = &mut b[s];
                let t0 = Instant::now();
                on_worker(&mut || {
                    copy(dst, src, stream);
                    if read {
                        sink += dst.par_chunks(1 << 15).map(|c| c.iter().sum::<f32>()).sum::<f32>();
                    }
                });
                t[stream as usize].push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        let [m, s] = &mut t;
        let (p0, p1, m0, m1) = (q(m, 0.1), q(s, 0.1), q(m, 0.5), q(s, 0.5));
        println!("n {n} {case:<10} p10 memcpy {p0:8.1} us  stream {p1:8.1} us  memcpy/stream {:.3} | median {m0:8.1} / {m1:8.1}  {:.3}  ({sink:.0})", p0 / p1, m0 / m1);
    }
}
