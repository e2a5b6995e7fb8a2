//! Every CPU op against a naive float64 computation on random inputs (never zeros), at several
//! shapes, outputs poisoned with NaN first.

mod common;

use common::{activation64, assert_close, attention64, poisoned, random, Rng};
use deltadit::backend::cpu::Cpu;
use deltadit::backend::{
    Activation, AttentionShape, Backend, CacheWrite, Cfg, ColSlice, SchedulerKind, SchedulerUpdate,
};
use deltadit::DType::F32;

const TOL: f64 = 1e-5;

#[test]
fn linear_bias_and_activations_match_f64() {
    let mut rng = Rng::new(1);
    // The large cases are cut into per-thread tiles: rows only (130×96), ragged column blocks
    // (70×200 on 2 threads: 112 + 88 columns) and a ragged 2-D grid (130×200 on 5 threads).
    for &(threads, m, n, k) in
        &[(2, 1, 1, 1), (2, 3, 5, 7), (2, 17, 33, 65), (2, 130, 96, 144), (2, 70, 200, 48), (5, 130, 200, 48)]
    {
        let be = Cpu::new(threads);
        for act in [Activation::None, Activation::GeluTanh, Activation::Silu] {
            for with_bias in [false, true] {
                let (x, xv) = random(&be, &mut rng, &[m, k], F32, 1.0);
                let (w, wv) = random(&be, &mut rng, &[n, k], F32, 0.3);
                let (b, bv) = random(&be, &mut rng, &[n], F32, 0.5);
                let mut out = poisoned(&be, &[m, n], F32);
                be.linear(&x, &w, with_bias.then_some(&b), act, &mut out).unwrap();
                let mut want = vec![0.0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s: f64 = if with_bias { bv[j] as f64 } else { 0.0 };
                        for kk in 0..k {
                            s += xv[i * k + kk] as f64 * wv[j * k + kk] as f64;
                        }
                        want[i * n + j] = activation64(act, s) as f32;
                    }
                }
                assert_close(
                    &format!("linear {m}x{n}x{k} on {threads} threads {act:?} bias={with_bias}"),
                    &be.download(&out).unwrap(),
                    &want,
                    TOL,
                );
            }
        }
    }
}

#[test]
fn norm_modulate_matches_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(2);
    // the last shape spans several rayon tasks, split inside a sample
    for &(batch, tokens, dim) in &[(1, 1, 4), (2, 7, 36), (3, 65, 144), (2, 301, 144)] {
        let (x, xv) = random(&be, &mut rng, &[batch * tokens, dim], F32, 2.0);
        let (m, mv) = random(&be, &mut rng, &[batch, 6 * dim], F32, 0.5);
        let mut out = poisoned(&be, &[batch * tokens, dim], F32);
        let (shift_row, scale_row, eps) = (3, 4, 1e-6f32);
        be.norm_modulate(&x, &m, shift_row, scale_row, eps, &mut out).unwrap();
        let mut want = vec![0.0f32; batch * tokens * dim];
        for r in 0..batch * tokens {
            let row: Vec<f64> = xv[r * dim..(r + 1) * dim].iter().map(|&v| v as f64).collect();
            let mean = row.iter().sum::<f64>() / dim as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
            let b = r / tokens;
            for j in 0..dim {
                let shift = mv[b * 6 * dim + shift_row * dim + j] as f64;
                let scale = mv[b * 6 * dim + scale_row * dim + j] as f64;
                want[r * dim + j] = ((row[j] - mean) / (var + eps as f64).sqrt() * (1.0 + scale) + shift) as f32;
            }
        }
        assert_close(&format!("norm_modulate b{batch} t{tokens} d{dim}"), &be.download(&out).unwrap(), &want, TOL);
    }
}

#[test]
fn qk_norm_matches_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(10);
    // (rows, heads, head_dim, q_col, k_col, width, eps): a tiny head; the fused QKV layout; K
    // before Q at odd offsets with a head dim of 8 lanes and a tail of 3; rows enough for several
    // rayon tasks; eps inside the square root
    for &(rows, heads, hd, q_col, k_col, width, eps) in &[
        (1, 1, 4, 0, 4, 12, 1e-6f32),
        (7, 3, 64, 0, 192, 576, 1e-6),
        (5, 2, 19, 45, 3, 90, 1e-6),
        (301, 4, 128, 0, 512, 1536, 1e-6),
        (9, 2, 8, 0, 16, 48, 0.5),
    ] {
        let (mut x, xv) = random(&be, &mut rng, &[rows, width], F32, 2.0);
        let (wq, wqv) = random(&be, &mut rng, &[hd], F32, 1.0);
        let (wk, wkv) = random(&be, &mut rng, &[hd], F32, 1.0);
        be.qk_norm(&mut x, q_col, k_col, heads, hd, &wq, &wk, eps).unwrap();
        let mut want = xv.clone();
        for r in 0..rows {
            for (col, w) in [(q_col, &wqv), (k_col, &wkv)] {
                for h in 0..heads {
                    let v = &mut want[r * width + col + h * hd..][..hd];
                    let ms = v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / hd as f64;
                    let rstd = 1.0 / (ms + eps as f64).sqrt();
                    for (a, &wj) in v.iter_mut().zip(w.iter()) {
                        *a = (*a as f64 * rstd * wj as f64) as f32;
                    }
                }
            }
        }
        let got = be.download(&x).unwrap();
        let what = format!("qk_norm [{rows}, {width}] {heads}×{hd} q {q_col} k {k_col} eps {eps}");
        assert_close(&what, &got, &want, TOL);
        // the other columns are left as they were, bit for bit
        for (i, (&g, &v)) in got.iter().zip(&xv).enumerate() {
            let c = i % width;
            if !(q_col..q_col + heads * hd).contains(&c) && !(k_col..k_col + heads * hd).contains(&c) {
                assert_eq!(g.to_bits(), v.to_bits(), "{what}: column {c} changed");
            }
        }
    }
}

/// The shape, parameter and dtype errors of the op suite's check, on the reference.
#[test]
fn qk_norm_rejects_bad_inputs() {
    common::ops::qk_norm_rejects_bad_inputs(&Cpu::new(2));
}

/// The fused RMS norm + RoPE against f64: the norm as above, then each pair rotated at position
/// offset + r % tokens (several samples, rows enough for several rayon tasks so a task's first
/// row is not a sample's).
#[test]
fn qk_norm_rope_matches_f64() {
    use deltadit::backend::Rope;
    let be = Cpu::new(2);
    let mut rng = Rng::new(11);
    // (rows, heads, head_dim, q_col, k_col, width, tokens, offset)
    for &(rows, heads, hd, q_col, k_col, width, tokens, offset) in &[
        (1, 1, 4, 0, 4, 12, 1, 0),
        (14, 3, 64, 0, 192, 576, 7, 3),
        (10, 2, 18, 45, 3, 90, 5, 1),
        (603, 4, 128, 0, 512, 1536, 201, 17),
    ] {
        let (mut x, xv) = random(&be, &mut rng, &[rows, width], F32, 2.0);
        let (wq, wqv) = random(&be, &mut rng, &[hd], F32, 1.0);
        let (wk, wkv) = random(&be, &mut rng, &[hd], F32, 1.0);
        let positions = offset + tokens;
        let table = common::ops::rope_table(&mut rng, positions, hd);
        let t = be.upload(&table, &[positions, hd], F32).unwrap();
        be.qk_norm_rope(&mut x, q_col, k_col, heads, hd, &wq, &wk, 1e-6, Rope { table: &t, tokens, offset }).unwrap();
        let mut want = xv.clone();
        for r in 0..rows {
            let cs = &table[(offset + r % tokens) * hd..][..hd];
            for (col, w) in [(q_col, &wqv), (k_col, &wkv)] {
                for h in 0..heads {
                    let v = &mut want[r * width + col + h * hd..][..hd];
                    let ms = v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / hd as f64;
                    let rstd = 1.0 / (ms + 1e-6).sqrt();
                    let n: Vec<f64> = v.iter().zip(w.iter()).map(|(&a, &wj)| a as f64 * rstd * wj as f64).collect();
                    for i in 0..hd / 2 {
                        let (c, s) = (cs[2 * i] as f64, cs[2 * i + 1] as f64);
                        v[2 * i] = (n[2 * i] * c - n[2 * i + 1] * s) as f32;
                        v[2 * i + 1] = (n[2 * i + 1] * c + n[2 * i] * s) as f32;
                    }
                }
            }
        }
        let got = be.download(&x).unwrap();
        let what = format!("qk_norm_rope [{rows}, {width}] {heads}×{hd} tokens {tokens} offset {offset}");
        assert_close(&what, &got, &want, TOL);
        for (i, (&g, &v)) in got.iter().zip(&xv).enumerate() {
            let c = i % width;
            if !(q_col..q_col + heads * hd).contains(&c) && !(k_col..k_col + heads * hd).contains(&c) {
                assert_eq!(g.to_bits(), v.to_bits(), "{what}: column {c} changed");
            }
        }
    }
}

/// The table, tokens and head-dim errors of the op suite's check, on the reference.
#[test]
fn qk_norm_rope_rejects_bad_inputs() {
    common::ops::qk_norm_rope_rejects_bad_inputs(&Cpu::new(2));
}

#[test]
fn residual_gated_anchor_and_delta_match_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(3);
    // the second shape spans several rayon tasks, split inside a sample
    for (batch, tokens, dim) in [(2, 9, 40), (2, 301, 144)] {
        let rows = batch * tokens;
        for mode in 0..3 {
            for gated in [false, true] {
                let (mut x, xv) = random(&be, &mut rng, &[rows, dim], F32, 1.0);
                let (y, yv) = random(&be, &mut rng, &[rows, dim], F32, 1.0);
                let (m, mv) = random(&be, &mut rng, &[batch, 6 * dim], F32, 1.0);
                let (mut cache, cv) = random(&be, &mut rng, &[rows, dim], F32, 1.0);
                let cw = match mode {
                    0 => CacheWrite::None,
                    1 => CacheWrite::Anchor(&mut cache),
                    _ => CacheWrite::Delta(&mut cache),
                };
                be.residual(&mut x, &y, gated.then_some((&m, 5)), cw).unwrap();
                let want: Vec<f32> = (0..rows * dim)
                    .map(|i| {
                        let g = if gated { mv[(i / dim / tokens) * 6 * dim + 5 * dim + i % dim] as f64 } else { 1.0 };
                        (xv[i] as f64 + g * yv[i] as f64) as f32
                    })
                    .collect();
                let got = be.download(&x).unwrap();
                assert_close(&format!("residual {rows}x{dim} mode {mode} gated={gated}: x"), &got, &want, TOL);
                let want_cache: Vec<f32> = match mode {
                    0 => cv.clone(),
                    1 => got.clone(),
                    _ => got.iter().zip(&cv).map(|(&o, &c)| o - c).collect(),
                };
                assert_close(
                    &format!("residual {rows}x{dim} mode {mode}: cache"),
                    &be.download(&cache).unwrap(),
                    &want_cache,
                    TOL,
                );
            }
        }
    }
}

#[test]
fn attention_self_and_cross_with_mask_match_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(4);
    // (batch, heads, head_dim, nq, nk, masked)
    for &(batch, heads, d, nq, nk, masked) in
        &[(1, 1, 8, 1, 1, false), (2, 3, 16, 37, 37, false), (2, 2, 72, 130, 12, true), (3, 1, 64, 5, 300, true)]
    {
        let width = heads * d;
        let scale = (d as f32).powf(-0.5);
        let s = AttentionShape { batch, heads, head_dim: d, nq, nk, scale };
        let (qkv, qv) = random(&be, &mut rng, &[batch * nq, 3 * width], F32, 1.0);
        let (kv, kvv) = random(&be, &mut rng, &[batch * nk, 2 * width], F32, 1.0);
        // masks keep a random subset, at least one key (sample 0 keeps only key 0)
        let bias_v: Vec<f32> = (0..batch * nk)
            .map(|i| if (i % nk == 0) || (i / nk > 0 && rng.uniform() < 0.5) { 0.0 } else { -10000.0 })
            .collect();
        let bias = be.upload(&bias_v, &[batch, nk], F32).unwrap();
        let mut out = poisoned(&be, &[batch * nq, width], F32);
        let self_attn = nq == nk;
        let (k_t, k_arr, v_col) = if self_attn { (&qkv, &qv, 2 * width) } else { (&kv, &kvv, width) };
        let k_col = if self_attn { width } else { 0 };
        be.attention(
            &s,
            ColSlice::new(&qkv, 0),
            ColSlice::new(k_t, k_col),
            ColSlice::new(k_t, v_col),
            masked.then_some(&bias),
            &mut out,
        )
        .unwrap();
        let ks = k_t.cols();
        let want =
            attention64(&s, (&qv, 0, 3 * width), (k_arr, k_col, ks), (k_arr, v_col, ks), masked.then_some(&bias_v[..]));
        assert_close(
            &format!("attention b{batch} h{heads} d{d} {nq}x{nk} mask={masked}"),
            &be.download(&out).unwrap(),
            &want,
            TOL,
        );
    }
}

/// Key-bias rows of `nk` keys for the padding-mask test: (name, bias).
fn mask_rows(rng: &mut Rng, nk: usize) -> Vec<(&'static str, Vec<f32>)> {
    let keep = |f: &dyn Fn(usize) -> bool, masked: f32| (0..nk).map(|j| if f(j) { 0.0 } else { masked }).collect();
    vec![
        ("first token", keep(&|j| j == 0, -10000.0)),
        ("last token", keep(&|j| j == nk - 1, -10000.0)),
        ("3 tokens", keep(&|j| j < 3, -10000.0)),
        ("20 tokens", keep(&|j| j < 20, -10000.0)),
        ("all", keep(&|_| true, -10000.0)),
        ("scattered", keep(&|j| j % 3 == 1 || j == 0, -10000.0)),
        ("-inf", keep(&|j| j < 2, f32::NEG_INFINITY)),
        ("-1e9", keep(&|j| j % 2 == 0, -1e9)),
        // kept keys with their own small biases (their max below 0)
        ("soft", (0..nk).map(|j| if j < 5 { -0.5 - 2.0 * rng.uniform() } else { -10000.0 }).collect()),
        // masked only 150 below: dropped while the scores are small, all kept when they are large
        ("-150", keep(&|j| j < 4, -150.0)),
    ]
}

/// Padding masks of every shape — one kept token (first or last), a few, all, scattered, −∞ and
/// −10⁹ masks, soft biases — with the samples of one call under different masks, several query
/// blocks, and scores small (the masked keys left out of the GEMMs) or large enough that a −150
/// mask leaves the masked keys real weight (the CPU backend must then keep them): each sample
/// against the float64 reference, and a one-kept-token call against attention over that token
/// alone.
#[test]
fn attention_padding_masks_match_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(9);
    // (heads, head_dim, nq, nk, q std): nq 130 spans two query blocks of 128
    for &(heads, d, nq, nk, q_std) in
        &[(2, 72, 64, 32, 1.0), (1, 16, 130, 7, 1.0), (3, 40, 5, 120, 1.0), (1, 1, 3, 1, 1.0), (2, 16, 33, 24, 100.0)]
    {
        let mut rows = mask_rows(&mut rng, nk);
        if nk == 1 {
            rows.retain(|(name, _)| ["first token", "all"].contains(name));
        }
        let batch = rows.len();
        let width = heads * d;
        let s = AttentionShape { batch, heads, head_dim: d, nq, nk, scale: (d as f32).powf(-0.5) };
        let (q, qv) = random(&be, &mut rng, &[batch * nq, width], F32, q_std);
        let (kv, kvv) = random(&be, &mut rng, &[batch * nk, 2 * width], F32, 1.0);
        let bias_v: Vec<f32> = rows.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let bias = be.upload(&bias_v, &[batch, nk], F32).unwrap();
        let mut out = poisoned(&be, &[batch * nq, width], F32);
        be.attention(&s, ColSlice::new(&q, 0), ColSlice::new(&kv, 0), ColSlice::new(&kv, width), Some(&bias), &mut out)
            .unwrap();
        let got = be.download(&out).unwrap();
        let want = attention64(&s, (&qv, 0, width), (&kvv, 0, 2 * width), (&kvv, width, 2 * width), Some(&bias_v));
        let per_sample = nq * width;
        for (b, (name, _)) in rows.iter().enumerate() {
            let r = b * per_sample..(b + 1) * per_sample;
            let what = format!("attention h{heads} d{d} {nq}x{nk} q std {q_std}, mask {name}");
            assert_close(&what, &got[r.clone()], &want[r], TOL);
        }

        // the "last token" sample alone, masked, against attention over its last key only
        if nk > 1 {
            let b = 1;
            let s1 = AttentionShape { batch: 1, nk: 1, ..s };
            let q1 = be.upload(&qv[b * per_sample..(b + 1) * per_sample], &[nq, width], F32).unwrap();
            let last = (b * nk + nk - 1) * 2 * width;
            let kv1 = be.upload(&kvv[last..last + 2 * width], &[1, 2 * width], F32).unwrap();
            let mut out1 = poisoned(&be, &[nq, width], F32);
            be.attention(
                &s1,
                ColSlice::new(&q1, 0),
                ColSlice::new(&kv1, 0),
                ColSlice::new(&kv1, width),
                None,
                &mut out1,
            )
            .unwrap();
            let what = format!("attention h{heads} d{d} {nq}x{nk}: last token masked against that key alone");
            assert_close(&what, &got[b * per_sample..(b + 1) * per_sample], &be.download(&out1).unwrap(), 1e-7);
        }
    }
}

#[test]
fn activation_and_add_bcast_match_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(5);
    // the second shape spans several rayon tasks
    for (rows, cols) in [(11, 23), (301, 230)] {
        let (x, xv) = random(&be, &mut rng, &[rows, cols], F32, 2.0);
        let (b, bv) = random(&be, &mut rng, &[cols], F32, 1.0);
        for act in [Activation::GeluTanh, Activation::Silu, Activation::None] {
            let mut out = poisoned(&be, &[rows, cols], F32);
            be.activation(&x, Some(&b), act, &mut out).unwrap();
            let want: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    let v = xv[i] as f64 + bv[i % cols] as f64;
                    activation64(act, v) as f32
                })
                .collect();
            assert_close(&format!("activation {rows}x{cols} {act:?}"), &be.download(&out).unwrap(), &want, TOL);
        }
        let (mut x2, x2v) = random(&be, &mut rng, &[rows, cols], F32, 1.0);
        be.add_bcast(&mut x2, &b).unwrap();
        let want: Vec<f32> = (0..rows * cols).map(|i| x2v[i] + bv[i % cols]).collect();
        assert_close(&format!("add_bcast {rows}x{cols}"), &be.download(&x2).unwrap(), &want, 1e-7);
    }
}

#[test]
fn timestep_embedding_matches_f64_formula() {
    let be = Cpu::new(2);
    let ts = [0.0f32, 1.0, 37.0, 500.0, 999.0];
    for (flip, shift) in [(true, 0.0f32), (true, 1.0), (false, 0.0)] {
        let t = be.upload(&ts, &[ts.len()], F32).unwrap();
        let dim = 256;
        let mut out = poisoned(&be, &[ts.len(), dim], F32);
        be.timestep_embedding(&t, flip, shift, &mut out).unwrap();
        let half = dim / 2;
        let mut want = vec![0.0f32; ts.len() * dim];
        for (b, &tv) in ts.iter().enumerate() {
            for k in 0..half {
                let a = tv as f64 * (-(10000f64.ln()) * k as f64 / (half as f64 - shift as f64)).exp();
                let (s, c) = a.sin_cos();
                let (first, second) = if flip { (c, s) } else { (s, c) };
                want[b * dim + k] = first as f32;
                want[b * dim + half + k] = second as f32;
            }
        }
        // f32 arguments up to ~1000 rad: sin/cos of the rounded argument differ from f64 by
        // about 1000·2⁻²⁴ ≈ 6e-5.
        assert_close(
            &format!("timestep_embedding flip={flip} shift={shift}"),
            &be.download(&out).unwrap(),
            &want,
            2e-4,
        );
    }
}

#[test]
fn patchify_and_unpatchify_follow_the_conv_and_einsum_layouts() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(6);
    for &(b, c, h, w, p) in &[(1, 4, 4, 4, 2), (2, 3, 6, 10, 2), (1, 2, 3, 6, 3)] {
        let (x, xv) = random(&be, &mut rng, &[b, c, h, w], F32, 1.0);
        let (th, tw) = (h / p, w / p);
        let mut patches = poisoned(&be, &[b * th * tw, c * p * p], F32);
        be.patchify(&x, p, &mut patches).unwrap();
        let got = be.download(&patches).unwrap();
        for bi in 0..b {
            for i in 0..th {
                for j in 0..tw {
                    for ci in 0..c {
                        for kh in 0..p {
                            for kw in 0..p {
                                let tok = (bi * th + i) * tw + j;
                                assert_eq!(
                                    got[tok * c * p * p + (ci * p + kh) * p + kw],
                                    xv[((bi * c + ci) * h + i * p + kh) * w + j * p + kw]
                                );
                            }
                        }
                    }
                }
            }
        }
        // unpatchify reads features in (p, q, c) order: out[b, c, i·p + pp, j·p + q] = x[tok, (pp·p + q)·C + c]
        let (tok, tv) = random(&be, &mut rng, &[b * th * tw, p * p * c], F32, 1.0);
        let mut img = poisoned(&be, &[b, c, h, w], F32);
        be.unpatchify(&tok, p, &mut img).unwrap();
        let got = be.download(&img).unwrap();
        for bi in 0..b {
            for ci in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        let t = (bi * th + y / p) * tw + xx / p;
                        assert_eq!(
                            got[((bi * c + ci) * h + y) * w + xx],
                            tv[t * p * p * c + ((y % p) * p + xx % p) * c + ci]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn cfg_combine_orders_and_learned_sigma_split() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(7);
    let (batch, c, c_out, h, w) = (2, 4, 8, 3, 5);
    let (out, ov) = random(&be, &mut rng, &[2 * batch, c_out, h, w], F32, 1.0);
    let hw = h * w;
    for cond_first in [true, false] {
        let g = 4.5f32;
        let mut eps = poisoned(&be, &[batch, c, h, w], F32);
        be.cfg_combine(&out, Cfg::On { scale: g, cond_first }, &mut eps).unwrap();
        let want: Vec<f32> = (0..batch * c * hw)
            .map(|i| {
                let (b, ch, p) = (i / (c * hw), (i / hw) % c, i % hw);
                let at = |s: usize| ov[(s * c_out + ch) * hw + p] as f64;
                let (cv, uv) = if cond_first { (at(b), at(b + batch)) } else { (at(b + batch), at(b)) };
                (uv + g as f64 * (cv - uv)) as f32
            })
            .collect();
        assert_close(&format!("cfg_combine cond_first={cond_first}"), &be.download(&eps).unwrap(), &want, 1e-6);
    }
    let (out1, o1) = random(&be, &mut rng, &[batch, c_out, h, w], F32, 1.0);
    let mut eps = poisoned(&be, &[batch, c, h, w], F32);
    be.cfg_combine(&out1, Cfg::Off, &mut eps).unwrap();
    let want: Vec<f32> =
        (0..batch * c * hw).map(|i| o1[((i / (c * hw)) * c_out + (i / hw) % c) * hw + i % hw]).collect();
    assert_eq!(be.download(&eps).unwrap(), want);
}

#[test]
fn scheduler_step_formulas_match_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(8);
    let n = 301;
    let c = [0.7f32, 0.9, 1.1, -0.3, 2.0, 0.25];
    for kind in SchedulerKind::ALL {
        let (mut x, xv) = random(&be, &mut rng, &[n], F32, 1.0);
        let (eps, ev) = random(&be, &mut rng, &[n], F32, 1.0);
        let (mut prev, pv) = random(&be, &mut rng, &[n], F32, 1.0);
        let (noise, nv) = random(&be, &mut rng, &[n], F32, 1.0);
        let u = SchedulerUpdate { kind, c };
        be.scheduler_step(&u, &mut x, &eps, Some(&mut prev), Some(&noise)).unwrap();
        let cd: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        let x0: Vec<f64> = (0..n)
            .map(|i| match kind {
                // flow matching: x0 = x − σ·v with σ = c1
                SchedulerKind::FlowEuler => xv[i] as f64 - cd[1] * ev[i] as f64,
                _ => (xv[i] as f64 - cd[0] * ev[i] as f64) / cd[1],
            })
            .collect();
        let want: Vec<f32> = (0..n)
            .map(|i| {
                let xi = xv[i] as f64;
                (match kind {
                    SchedulerKind::Dpm1 => cd[2] * xi - cd[3] * x0[i],
                    SchedulerKind::Dpm2 => cd[2] * xi - cd[3] * x0[i] - cd[5] * cd[4] * (x0[i] - pv[i] as f64),
                    SchedulerKind::Ddim => cd[2] * x0[i] + cd[3] * ev[i] as f64,
                    SchedulerKind::Lcm => cd[4] * (cd[2] * x0[i] + cd[3] * xi) + cd[5] * nv[i] as f64,
                    SchedulerKind::FlowEuler => xi + cd[0] * ev[i] as f64,
                }) as f32
            })
            .collect();
        assert_close(&format!("scheduler_step {kind:?}"), &be.download(&x).unwrap(), &want, 1e-6);
        let x0f: Vec<f32> = x0.iter().map(|&v| v as f32).collect();
        assert_close(&format!("scheduler_step {kind:?}: x0_prev"), &be.download(&prev).unwrap(), &x0f, 1e-6);
    }
}

#[test]
fn rel_l1_and_copy_range() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(9);
    let (a, av) = random(&be, &mut rng, &[7, 13], F32, 1.0);
    let (b, bv) = random(&be, &mut rng, &[7, 13], F32, 1.0);
    let (d, n) = be.rel_l1(&a, &b).unwrap();
    let dw: f64 = av.iter().zip(&bv).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum();
    let nw: f64 = bv.iter().map(|&y| (y as f64).abs()).sum();
    assert!(((d as f64) - dw).abs() <= 1e-5 * dw && ((n as f64) - nw).abs() <= 1e-5 * nw);
    let mut dst = poisoned(&be, &[5, 13], F32);
    be.copy_range(&a, 13, &mut dst, 26, 20).unwrap();
    assert_eq!(&be.download(&dst).unwrap()[26..46], &av[13..33]);
    assert!(be.copy_range(&a, 80, &mut dst, 0, 20).is_err(), "out-of-range source must be an error");
}

/// Copies long enough to be cut into several rayon tasks (uneven lengths, offsets that are not
/// multiples of a task's 64-byte alignment): every element lands once, nothing around it moves.
#[test]
fn copy_range_split_across_tasks() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(17);
    for len in [16_385usize, 36_871, 589_827] {
        let (a, av) = random(&be, &mut rng, &[len + 5], F32, 1.0);
        let mut dst = poisoned(&be, &[len + 9], F32);
        be.copy_range(&a, 5, &mut dst, 3, len).unwrap();
        let got = be.download(&dst).unwrap();
        assert_eq!(&got[3..3 + len], &av[5..5 + len], "copy of {len}");
        assert!(got[..3].iter().chain(&got[3 + len..]).all(|v| v.is_nan()), "copy of {len} wrote outside its range");
    }
}

/// The residual on a forecast branch output, `x += gate ⊙ Σ c_i·y_i`, with the fused Δ write:
/// against the float64 formula, several rayon tasks, 1–3 terms.
#[test]
fn residual_forecast_matches_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(31);
    let (batch, tokens, dim) = (2, 301, 144);
    let rows = batch * tokens;
    for (terms, coefs) in [(1, [0.5f32, 0.0, 0.0]), (2, [1.0, 3.0, 0.0]), (3, [1.0, -2.0, 2.0])] {
        let (mut x, xv) = random(&be, &mut rng, &[rows, dim], F32, 1.0);
        let ys: Vec<_> = (0..terms).map(|_| random(&be, &mut rng, &[rows, dim], F32, 1.0)).collect();
        let (m, mv) = random(&be, &mut rng, &[batch, 6 * dim], F32, 1.0);
        let (mut cache, cv) = random(&be, &mut rng, &[rows, dim], F32, 1.0);
        let coef = be.upload(&coefs, &[3], F32).unwrap();
        let refs: Vec<_> = ys.iter().map(|(t, _)| t).collect();
        be.residual_forecast(&mut x, &refs, &coef, Some((&m, 1)), CacheWrite::Delta(&mut cache)).unwrap();
        let want: Vec<f32> = (0..rows * dim)
            .map(|i| {
                let g = mv[(i / dim / tokens) * 6 * dim + dim + i % dim] as f64;
                let y: f64 = ys.iter().zip(coefs).map(|((_, v), c)| c as f64 * v[i] as f64).sum();
                (xv[i] as f64 + g * y) as f32
            })
            .collect();
        let got = be.download(&x).unwrap();
        assert_close(&format!("residual_forecast {terms} terms: x"), &got, &want, TOL);
        let want_cache: Vec<f32> = got.iter().zip(&cv).map(|(&o, &c)| o - c).collect();
        assert_close(&format!("residual_forecast {terms} terms: Δ"), &be.download(&cache).unwrap(), &want_cache, TOL);
    }
}

/// The TaylorSeer ladder update against the float64 finite differences: d_1 = (d0 − prev)/w,
/// d_2 = (d_1 − d_1(old))/w, prev ← d0.
#[test]
fn ladder_update_matches_f64() {
    let be = Cpu::new(2);
    let mut rng = Rng::new(41);
    let n = 70_001;
    let (d0, dv) = random(&be, &mut rng, &[n], F32, 1.0);
    let (mut prev, pv) = random(&be, &mut rng, &[n], F32, 1.0);
    let (mut l1, l1v) = random(&be, &mut rng, &[n], F32, 1.0);
    let (mut l2, _) = random(&be, &mut rng, &[n], F32, 1.0);
    let w = 3.0f64;
    let c = [0.0f32, (1.0 / w) as f32, (-1.0 / w) as f32, (1.0 / w) as f32, (-1.0 / w) as f32];
    let coef = be.upload(&c, &[5], F32).unwrap();
    be.ladder_update(&d0, &mut prev, &mut [&mut l1, &mut l2], &coef, 1).unwrap();
    let want1: Vec<f32> = dv.iter().zip(&pv).map(|(&d, &p)| ((d as f64 - p as f64) / w) as f32).collect();
    let want2: Vec<f32> = want1.iter().zip(&l1v).map(|(&a, &b)| ((a as f64 - b as f64) / w) as f32).collect();
    assert_eq!(be.download(&prev).unwrap(), dv, "prev becomes d0");
    assert_close("ladder level 1", &be.download(&l1).unwrap(), &want1, TOL);
    assert_close("ladder level 2", &be.download(&l2).unwrap(), &want2, TOL);
}
