//! The AVX2 + FMA kernel of the linear tiles: a 6 × 16 tile of outᵀ in 12 ymm accumulators (two
//! panel vectors and one broadcast weight: 15 of the 16 registers), transposed in registers and
//! stored as 16 output rows of 6 columns.

use super::{Kernel, Tile};
use std::arch::x86_64::*;

/// The AVX2 kernel: 16-row panels (two ymm), 6-column tiles.
pub(super) struct Avx2;

impl Kernel for Avx2 {
    const PANEL: usize = 16;
    const COLS: usize = 6;

    unsafe fn tile(cols: usize, wide: bool, t: &Tile) {
        // SAFETY: AVX2 and FMA and the tile's extents are the trait's contract.
        unsafe { dispatch(cols, wide, t) }
    }
}

/// [`tile`] for `cols` weight rows (1..=6) and a 16- or 8-wide panel.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma")]
unsafe fn dispatch(cols: usize, wide: bool, t: &Tile) {
    // SAFETY: forwarded contract.
    unsafe {
        match (cols, wide) {
            (6, true) => tile::<6, 2>(t),
            (5, true) => tile::<5, 2>(t),
            (4, true) => tile::<4, 2>(t),
            (3, true) => tile::<3, 2>(t),
            (2, true) => tile::<2, 2>(t),
            (_, true) => tile::<1, 2>(t),
            (6, false) => tile::<6, 1>(t),
            (5, false) => tile::<5, 1>(t),
            (4, false) => tile::<4, 1>(t),
            (3, false) => tile::<3, 1>(t),
            (2, false) => tile::<2, 1>(t),
            (_, false) => tile::<1, 1>(t),
        }
    }
}

/// One R × 8H tile of outᵀ: acc[i] = Σ_d w_i[d] · panel[d], stored transposed as `t.rows`
/// output rows of R columns (plus the bias on the first pass, plus out's values after it).
///
/// # Safety
/// AVX2 and FMA are available; t's pointers cover R weight rows of `depth` floats, `depth` panel
/// steps of 8H floats, and `t.rows` ≤ 8H output rows of R floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const H: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); H]; R];
    // one pointer per row: the loop then addresses each row as base + d (no chain of adds)
    let rows: [*const f32; R] = std::array::from_fn(|i| t.w.wrapping_add(i * t.ldw));
    for d in 0..t.depth {
        // SAFETY: step d of the panel and element d of each weight row are in bounds (contract).
        unsafe {
            let b: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(t.xp.add(d * 8 * H + 8 * h)));
            for (acc, row) in acc.iter_mut().zip(rows) {
                let a = _mm256_broadcast_ss(&*row.add(d));
                for (acc, &b) in acc.iter_mut().zip(&b) {
                    *acc = _mm256_fmadd_ps(a, b, *acc);
                }
            }
        }
    }
    let mut lanes = [0.0f32; 8];
    if let Some(bias) = t.bias {
        // SAFETY: the bias holds R values from the tile's first column (contract).
        (0..R).for_each(|i| lanes[i] = unsafe { *bias.add(i) });
    }
    let bias = _mm256_loadu_ps(lanes.as_ptr());
    for h in 0..H {
        let cols = transpose8(std::array::from_fn(|i| acc.get(i).map_or(_mm256_setzero_ps(), |a| a[h])));
        for (j, &col) in cols.iter().enumerate().take(t.rows.saturating_sub(8 * h)) {
            // SAFETY: output row 8h + j < t.rows has R writable columns at the tile's corner.
            unsafe {
                let o = t.out.add((8 * h + j) * t.ldo);
                let base = if t.first { bias } else { load_lanes::<R>(o) };
                store_lanes::<R>(o, _mm256_add_ps(col, base));
            }
        }
    }
}

/// The first R floats at `p` as the low lanes of a vector (the rest 0).
///
/// # Safety
/// AVX2 is available; p holds R readable floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_lanes<const R: usize>(p: *const f32) -> __m256 {
    // SAFETY: the reads stay within p's R floats (contract).
    unsafe {
        if R == 6 {
            let hi = _mm_castsi128_ps(_mm_loadl_epi64(p.add(4) as *const __m128i));
            _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(p)), hi)
        } else {
            let mut lanes = [0.0f32; 8];
            std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), R);
            _mm256_loadu_ps(lanes.as_ptr())
        }
    }
}

/// The low R lanes of `v` to the R floats at `p`.
///
/// # Safety
/// AVX2 is available; p holds R writable floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_lanes<const R: usize>(p: *mut f32, v: __m256) {
    // SAFETY: the writes stay within p's R floats (contract).
    unsafe {
        if R == 6 {
            _mm_storeu_ps(p, _mm256_castps256_ps128(v));
            _mm_storel_epi64(p.add(4) as *mut __m128i, _mm_castps_si128(_mm256_extractf128_ps::<1>(v)));
        } else {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, R);
        }
    }
}

/// Rows of 8 lanes → columns: `out[j][i] = r[i][j]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // t = [lo(0,1), hi(0,1), lo(2,3), hi(2,3), lo(4,5), hi(4,5), lo(6,7), hi(6,7)]
    let s = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    std::array::from_fn(|j| {
        let (a, b) = (s[j % 4], s[j % 4 + 4]);
        if j < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    })
}
