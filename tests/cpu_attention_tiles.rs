//! The CPU attention's AVX2 + FMA tiles (src/backend/cpu/attention_tiles.rs) against the float64
//! reference, with the backend's SIMD level capped at AVX2 so they run on AVX-512 machines too
//! (there the uncapped backend takes the `gemm` crate's path). Shapes cover every tile edge: head
//! widths off the 8-lane vector and the 24-column value panel (8, 36, 40, 64, 72, 128), key
//! counts off the 16-key panel (1, 5, 17, 300), query counts off the 6- and 3-row tiles and
//! spanning several 128-row blocks (1, 7, 130, 257), heads fewer and more than the threads'
//! tasks; self-attention in the fused QKV layout and unmasked or unmasked-but-biased
//! cross-attention (biases the compaction does not drop, so the tiles run them). One test in its
//! own binary: the level cap is process-wide.

mod common;

use common::{assert_close, attention64, cap_simd_at_avx2, poisoned, random, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{AttentionShape, Backend, ColSlice};
use deltadit::internals::cpu::attention_tiles_run;
use deltadit::internals::cpu::simd;
use deltadit::DType::F32;

const TOL: f64 = 1e-5;

#[test]
fn attention_tiles_match_f64() {
    if !cap_simd_at_avx2() {
        return;
    }
    assert!(attention_tiles_run(), "the level is capped at AVX2, yet the backend would not run the tiles");
    let be = Cpu::new(2);
    let mut rng = Rng::new(23);
    // (batch, heads, head_dim, nq, nk): nq == nk is self-attention
    let shapes = [
        (1, 1, 8, 1, 1),
        (1, 1, 72, 7, 5),
        (2, 3, 36, 130, 17),
        (1, 2, 40, 257, 257),
        (2, 4, 64, 33, 300),
        (1, 1, 128, 130, 130),
        (2, 16, 72, 64, 64),
    ];
    for (batch, heads, d, nq, nk) in shapes {
        for biased in [false, true] {
            let width = heads * d;
            let s = AttentionShape { batch, heads, head_dim: d, nq, nk, scale: (d as f32).powf(-0.5) };
            let (qkv, qv) = random(&be, &mut rng, &[batch * nq, 3 * width], F32, 1.0);
            let (kv, kvv) = random(&be, &mut rng, &[batch * nk, 2 * width], F32, 1.0);
            // soft biases within a few units: no key is far enough below to be left out
            let bias_v: Vec<f32> = (0..batch * nk).map(|_| -3.0 * rng.uniform()).collect();
            let bias = be.upload(&bias_v, &[batch, nk], F32).unwrap();
            let self_attn = nq == nk;
            let (k_t, k_arr, k_col, v_col) =
                if self_attn { (&qkv, &qv, width, 2 * width) } else { (&kv, &kvv, 0, width) };
            let mut out = poisoned(&be, &[batch * nq, width], F32);
            be.attention(
                &s,
                ColSlice::new(&qkv, 0),
                ColSlice::new(k_t, k_col),
                ColSlice::new(k_t, v_col),
                biased.then_some(&bias),
                &mut out,
            )
            .unwrap();
            let ks = k_t.cols();
            let want = attention64(
                &s,
                (&qv, 0, 3 * width),
                (k_arr, k_col, ks),
                (k_arr, v_col, ks),
                biased.then_some(&bias_v[..]),
            );
            assert_close(
                &format!("tiles b{batch} h{heads} d{d} {nq}x{nk} bias={biased}"),
                &be.download(&out).unwrap(),
                &want,
                TOL,
            );
        }
    }
    simd::set_cap(None);
}
