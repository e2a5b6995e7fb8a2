//! Attention's two GEMMs as AVX2 + FMA register tiles over keys and values packed once per head.
//!
//! The `gemm` crate packs its right-hand operand on every call: for a head of 1024 keys that is
//! K and V repacked for each 128-row query block, and its general tiles ran Q·Kᵀ (depth d = 72)
//! at ~70 GFLOP/s of this Zen 3 core's 100 (bench/results/2026-12-07-cpu-zen3-experiments). Here
//! a task packs its head's keys and values once and runs every query block of the head against
//! them:
//! - S = scale·Q·Kᵀ in 6 × 16 tiles (12 accumulators, two key vectors and one broadcast query
//!   element: 15 of the 16 ymm registers), keys packed in panels of 16, d deep;
//! - O = P·V / rowsum in 3 × 24 tiles (9 accumulators, three value vectors, one broadcast
//!   weight; 4 rows spilled an accumulator to the stack), values packed in panels of 24 columns,
//!   nk deep; the softmax's 1/sum is applied at the store.
//!
//! Each sum runs in index order with one FMA per term, so results differ from the `gemm` crate's
//! path in the last bits only (tests/cpu_simd.rs compares them at a tolerance). Used where the
//! attention tiles' level ([`super::simd::attention_tile_level`]) is AVX2: AVX2 CPUs, and AVX-512 CPUs whose
//! 512-bit FMAs run at half rate (Zen 4). Elsewhere on AVX-512 the `gemm` crate's 512-bit tiles
//! are twice as wide.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Keys per packed K panel (two 8-lane vectors).
pub const KEYS: usize = 16;
/// Value columns per packed V panel (three 8-lane vectors).
pub const COLS: usize = 24;
/// Query rows per S tile.
const QK_ROWS: usize = 6;
/// Query rows per O tile.
const PV_ROWS: usize = 3;

/// Whether this CPU runs the tiles: their level ([`super::simd::attention_tile_level`]) is
/// AVX2: AVX2 CPUs, and AVX-512 CPUs with half-rate 512-bit FMAs (Zen 4, where the tiles
/// measured 1.11–1.17× the `gemm` crate's AVX-512 path at 1024 tokens, 0.93–1.15× at 64 and 256:
/// bench/results/2026-12-08-cpu-zen4-avx512-tiles/attention-ab.txt).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::attention_tile_level() == super::simd::SimdLevel::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Keys `k` ([nk, d], rows `ks` apart) into ⌈nk/16⌉ panels of d × 16, missing keys zero. Every
/// element is written (in order), so `out` is only grown, never cleared.
pub fn pack_keys(k: &[f32], ks: usize, nk: usize, d: usize, out: &mut Vec<f32>) {
    out.resize(nk.div_ceil(KEYS) * d * KEYS, 0.0);
    for (p, panel) in out.chunks_exact_mut(d * KEYS).take(nk.div_ceil(KEYS)).enumerate() {
        let keys = KEYS.min(nk - p * KEYS);
        let rows: [&[f32]; KEYS] = std::array::from_fn(|l| if l < keys { &k[(p * KEYS + l) * ks..][..d] } else { &[] });
        for (c, lanes) in panel.chunks_exact_mut(KEYS).enumerate() {
            for (l, x) in lanes.iter_mut().enumerate() {
                *x = if l < keys { rows[l][c] } else { 0.0 };
            }
        }
    }
}

/// Values `v` ([nk, d], rows `vs` apart) into ⌈d/24⌉ panels of nk × 24, missing columns zero.
/// Every element is written, so `out` is only grown, never cleared.
pub fn pack_values(v: &[f32], vs: usize, nk: usize, d: usize, out: &mut Vec<f32>) {
    let panels = d.div_ceil(COLS);
    out.resize(panels * nk * COLS, 0.0);
    for p in 0..panels {
        let (c0, w) = (p * COLS, COLS.min(d - p * COLS));
        let panel = &mut out[p * nk * COLS..(p + 1) * nk * COLS];
        for (j, dst) in panel.chunks_exact_mut(COLS).enumerate() {
            let src = &v[j * vs + c0..];
            if w == COLS {
                // a fixed length: inlined vector moves, not a memcpy call per row
                dst.copy_from_slice(&src[..COLS]);
            } else {
                dst[..w].copy_from_slice(&src[..w]);
                dst[w..].fill(0.0);
            }
        }
    }
}

/// `s[i, j] = scale · q_i · k_j` for the `rows` query rows at `q` (`qs` apart, d each) and the
/// nk keys packed in `kp`; s is rows × nk, row-major.
///
/// # Safety
/// AVX2 and FMA are available; q holds `rows` rows of d floats `qs` apart; kp is
/// [`pack_keys`]'s output for nk keys of depth d; s holds rows·nk floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn scores(
    q: *const f32,
    qs: usize,
    rows: usize,
    kp: &[f32],
    nk: usize,
    d: usize,
    s: &mut [f32],
    scale: f32,
) {
    debug_assert!(kp.len() >= nk.div_ceil(KEYS) * d * KEYS && s.len() >= rows * nk);
    for p in 0..nk.div_ceil(KEYS) {
        let (j0, w) = (p * KEYS, KEYS.min(nk - p * KEYS));
        // SAFETY (all below): panel p lies inside kp; tile rows i..i+mr of q and s are in bounds
        // by the caller's contract, and the store writes columns j0..j0+w of them.
        let kpp = unsafe { kp.as_ptr().add(p * d * KEYS) };
        let mut i = 0;
        while i < rows {
            let mr = QK_ROWS.min(rows - i);
            let (qi, si) = unsafe { (q.add(i * qs), s.as_mut_ptr().add(i * nk + j0)) };
            let t = (qi, qs, kpp, d, si, nk, w, scale);
            unsafe {
                match mr {
                    6 => qk_tile::<6>(t),
                    5 => qk_tile::<5>(t),
                    4 => qk_tile::<4>(t),
                    3 => qk_tile::<3>(t),
                    2 => qk_tile::<2>(t),
                    _ => qk_tile::<1>(t),
                }
            }
            i += mr;
        }
    }
}

/// (q, its row stride, the key panel, d, s at the tile's corner, s's row stride, valid columns,
/// scale)
#[cfg(target_arch = "x86_64")]
type QkTile = (*const f32, usize, *const f32, usize, *mut f32, usize, usize, f32);

/// One MR × 16 tile of S.
///
/// # Safety
/// As [`scores`], for the tile's rows and panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn qk_tile<const MR: usize>((q, qs, kp, d, s, ss, w, scale): QkTile) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // one pointer per row: the loop then addresses each row as base + c (no chain of adds)
    let rows: [*const f32; MR] = std::array::from_fn(|i| q.wrapping_add(i * qs));
    for c in 0..d {
        // SAFETY: the panel holds d × 16 floats; row i of q holds d floats (caller's contract).
        unsafe {
            let (b0, b1) = (_mm256_loadu_ps(kp.add(c * KEYS)), _mm256_loadu_ps(kp.add(c * KEYS + 8)));
            for (acc, row) in acc.iter_mut().zip(rows) {
                let a = _mm256_broadcast_ss(&*row.add(c));
                acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
            }
        }
    }
    let sc = _mm256_set1_ps(scale);
    for (i, acc) in acc.iter().enumerate() {
        let (lo, hi) = (_mm256_mul_ps(acc[0], sc), _mm256_mul_ps(acc[1], sc));
        // SAFETY: row i of s has w ≤ 16 writable columns from the tile's corner.
        unsafe {
            let dst = s.add(i * ss);
            if w == KEYS {
                _mm256_storeu_ps(dst, lo);
                _mm256_storeu_ps(dst.add(8), hi);
            } else {
                let mut tmp = [0.0f32; KEYS];
                _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
                tmp[..w].iter().enumerate().for_each(|(c, &x)| *dst.add(c) = x);
            }
        }
    }
}

/// `o[i, c] = inv[i] · Σ_j p[i, j] · v[j, c]` for the `rows` weight rows of `p` (rows × nk,
/// row-major) and the values packed in `vp`; o's rows are `os` apart, d columns each.
///
/// # Safety
/// AVX2 and FMA are available; p holds rows·nk floats, inv `rows`; vp is [`pack_values`]'s
/// output for nk values of width d; o's `rows` rows of d floats, `os` apart, are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn weighted_values(
    p: &[f32],
    rows: usize,
    inv: &[f32],
    vp: &[f32],
    nk: usize,
    d: usize,
    o: *mut f32,
    os: usize,
) {
    debug_assert!(p.len() >= rows * nk && inv.len() >= rows && vp.len() >= d.div_ceil(COLS) * nk * COLS);
    let mut i = 0;
    while i < rows {
        let mr = PV_ROWS.min(rows - i);
        for panel in 0..d.div_ceil(COLS) {
            let (c0, w) = (panel * COLS, COLS.min(d - panel * COLS));
            // SAFETY: rows i..i+mr of p and o, panel `panel` of vp: in bounds (caller's contract).
            let t = unsafe {
                (
                    p.as_ptr().add(i * nk),
                    nk,
                    vp.as_ptr().add(panel * nk * COLS),
                    inv.as_ptr().add(i),
                    o.add(i * os + c0),
                    os,
                    w,
                )
            };
            unsafe {
                match mr {
                    3 => pv_tile::<3>(t),
                    2 => pv_tile::<2>(t),
                    _ => pv_tile::<1>(t),
                }
            }
        }
        i += mr;
    }
}

/// (p at the tile's first row, nk (p's row stride and the depth), the value panel, inv at the
/// tile's first row, o at the tile's corner, o's row stride, valid columns)
#[cfg(target_arch = "x86_64")]
type PvTile = (*const f32, usize, *const f32, *const f32, *mut f32, usize, usize);

/// One MR × 24 tile of O.
///
/// # Safety
/// As [`weighted_values`], for the tile's rows and panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_tile<const MR: usize>((p, nk, vp, inv, o, os, w): PvTile) {
    let mut acc = [[_mm256_setzero_ps(); 3]; MR];
    let rows: [*const f32; MR] = std::array::from_fn(|i| p.wrapping_add(i * nk));
    for j in 0..nk {
        // SAFETY: the panel holds nk × 24 floats, row i of p nk floats (caller's contract).
        unsafe {
            let v = vp.add(j * COLS);
            let b = [_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)), _mm256_loadu_ps(v.add(16))];
            for (acc, row) in acc.iter_mut().zip(rows) {
                let a = _mm256_broadcast_ss(&*row.add(j));
                for t in 0..3 {
                    acc[t] = _mm256_fmadd_ps(a, b[t], acc[t]);
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: inv holds MR values from the tile's first row; row i of o has w ≤ 24 writable
        // columns from the tile's corner.
        unsafe {
            let sc = _mm256_set1_ps(*inv.add(i));
            let dst = o.add(i * os);
            if w == COLS {
                for (t, &a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(dst.add(8 * t), _mm256_mul_ps(a, sc));
                }
            } else {
                let mut tmp = [0.0f32; COLS];
                for (t, &a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * t), _mm256_mul_ps(a, sc));
                }
                tmp[..w].iter().enumerate().for_each(|(c, &x)| *dst.add(c) = x);
            }
        }
    }
}

/// e^x for 8 lanes: [`super::elementwise::fast_exp`]'s reduction and polynomial, with FMAs.
///
/// # Safety
/// AVX2 and FMA are available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp8(x: __m256) -> __m256 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.7));
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(ROUND));
    let n = _mm256_sub_ps(t, _mm256_set1_ps(ROUND));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(ROUND.to_bits() as i32 - 127));
    _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23)))
}

/// The softmax of [`super::attention`] (`softmax_rows`) in AVX2 + FMA: each `nk`-wide row of
/// `scores` ← exp(row + bias − its max), weights under `flush` set to 0, `inv[r]` ← 1 / the row's
/// sum. Rows shorter than 8 take the scalar tail only.
///
/// # Safety
/// AVX2 and FMA are available; scores holds whole rows of nk, inv one value per row, bias nk.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax_rows(scores: &mut [f32], nk: usize, bias: Option<&[f32]>, inv: &mut [f32], flush: f32) {
    let full = nk / 8 * 8;
    let scalar_exp = |x: f32| {
        // SAFETY: AVX2 and FMA are available (this function's contract).
        let mut lanes = [0.0f32; 8];
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), exp8(_mm256_set1_ps(x))) };
        lanes[0]
    };
    for (row, inv) in scores.chunks_exact_mut(nk).zip(inv.iter_mut()) {
        let ptr = row.as_mut_ptr();
        // SAFETY (all below): lanes c..c+8 with c + 8 ≤ full ≤ nk lie inside the row and bias.
        let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut max = f32::NEG_INFINITY;
        if let Some(bias) = bias {
            for c in (0..full).step_by(8) {
                let x = unsafe { _mm256_add_ps(_mm256_loadu_ps(ptr.add(c)), _mm256_loadu_ps(bias.as_ptr().add(c))) };
                unsafe { _mm256_storeu_ps(ptr.add(c), x) };
                maxv = _mm256_max_ps(maxv, x);
            }
            for c in full..nk {
                row[c] += bias[c];
                max = max.max(row[c]);
            }
        } else {
            for c in (0..full).step_by(8) {
                maxv = _mm256_max_ps(maxv, unsafe { _mm256_loadu_ps(ptr.add(c)) });
            }
            max = row[full..].iter().fold(max, |m, &x| m.max(x));
        }
        let mut lanes = [0.0f32; 8];
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), maxv) };
        let max = lanes.iter().fold(max, |m, &x| m.max(x));
        let (mv, fv) = (_mm256_set1_ps(max), _mm256_set1_ps(flush));
        let mut sumv = _mm256_setzero_ps();
        for c in (0..full).step_by(8) {
            let e = unsafe { exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(c)), mv)) };
            let e = _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_GE_OQ>(e, fv));
            unsafe { _mm256_storeu_ps(ptr.add(c), e) };
            sumv = _mm256_add_ps(sumv, e);
        }
        let mut tail = 0.0f32;
        for x in &mut row[full..] {
            let e = scalar_exp(*x - max);
            *x = if e < flush { 0.0 } else { e };
            tail += *x;
        }
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sumv) };
        *inv = 1.0 / (lanes.iter().sum::<f32>() + tail);
    }
}
