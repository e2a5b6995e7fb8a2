// one-file cargo project: [dependencies] deltadit = { path = "<a checkout>", default-features = false, features = ["internals"] }
// usage: attention_ab BATCH HEADS D TOKENS REPS  (self-attention, min and median of REPS calls)
use deltadit::internals::cpu::attention_f32;
use deltadit::backend::AttentionShape;
use std::time::Instant;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (batch, heads, d, nq, reps) = (a[0], a[1], a[2], a[3], a[4]);
    let nk = nq;
    let w = heads * d;
    let s = AttentionShape { batch, heads, head_dim: d, nq, nk, scale: (d as f32).powf(-0.5) };
    let qkv: Vec<f32> = (0..batch * nq * 3 * w).map(|i| (((i * 7919) % 2001) as f32 - 1000.0) * 1e-3).collect();
    let mut out = vec![0f32; batch * nq * w];
    let mut ts = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        attention_f32(&s, (&qkv, 0, 3 * w), (&qkv, w, 3 * w), (&qkv, 2 * w, 3 * w), None, &mut out);
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("min {:.2} ms median {:.2} ms  (check {})", ts[0], ts[ts.len() / 2], out.iter().map(|x| *x as f64).sum::<f64>());
}
