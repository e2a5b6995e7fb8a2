//! The AVX-512 kernel of the linear tiles: a 12 × 32 tile of outᵀ in 24 zmm accumulators (two
//! panel vectors and one broadcast weight: 27 of the 32 registers), transposed in registers 16
//! rows at a time and stored as 32 output rows of 12 columns through a lane mask.
//!
//! Twice the lanes and twice the registers of the AVX2 kernel: on cores with two 512-bit FMA
//! pipes (Intel Xeon, Zen 5) that is twice the FMAs per cycle; on Zen 4, whose 512-bit FMAs
//! issue at half rate, the FMA rate is the AVX2 kernel's with half the instructions (measured
//! 0.97–1.04× the AVX2 tiles at 128–2048 rows, 1.11–1.13× at 16). 12 columns divide every DiT
//! width (288 to 4608).

use super::{Kernel, Tile};
use std::arch::x86_64::*;

/// The AVX-512 kernel: 32-row panels (two zmm), 12-column tiles.
pub(super) struct Avx512;

impl Kernel for Avx512 {
    const PANEL: usize = 32;
    const COLS: usize = 12;

    unsafe fn tile(cols: usize, wide: bool, t: &Tile) {
        // SAFETY: AVX-512 F/VL and the tile's extents are the trait's contract.
        unsafe { dispatch(cols, wide, t) }
    }
}

/// [`tile`] for `cols` weight rows (1..=12) and a 32- or 16-wide panel.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn dispatch(cols: usize, wide: bool, t: &Tile) {
    macro_rules! by_cols {
        ($h:literal, $($r:literal)*) => {
            match cols {
                $($r => tile::<$r, $h>(t),)*
                _ => tile::<1, $h>(t),
            }
        };
    }
    // SAFETY: forwarded contract.
    unsafe {
        if wide {
            by_cols!(2, 12 11 10 9 8 7 6 5 4 3 2)
        } else {
            by_cols!(1, 12 11 10 9 8 7 6 5 4 3 2)
        }
    }
}

/// One R × 16H tile of outᵀ: acc[i] = Σ_d w_i[d] · panel[d], stored transposed as `t.rows`
/// output rows of R columns (plus the bias on the first pass, plus out's values after it).
///
/// # Safety
/// AVX-512 F/VL are available; t's pointers cover R weight rows of `depth` floats, `depth` panel
/// steps of 16H floats, and `t.rows` ≤ 16H output rows of R floats.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn tile<const R: usize, const H: usize>(t: &Tile) {
    // SAFETY: forwarded contract.
    let acc = unsafe { accumulate::<R, H>(t) };
    // the tile's R columns of an output row
    let mask: __mmask16 = ((1u32 << R) - 1) as __mmask16;
    // SAFETY: the bias holds R values from the tile's first column (contract); masked-off lanes
    // are not read.
    let bias = t.bias.map_or(_mm512_setzero_ps(), |b| unsafe { _mm512_maskz_loadu_ps(mask, b) });
    for h in 0..H {
        let cols = transpose16(std::array::from_fn(|i| acc.get(i).map_or(_mm512_setzero_ps(), |a| a[h])));
        for (j, &col) in cols.iter().enumerate().take(t.rows.saturating_sub(16 * h)) {
            // SAFETY: output row 16h + j < t.rows has R writable columns at the tile's corner;
            // the masked load and store touch only those.
            unsafe {
                let o = t.out.add((16 * h + j) * t.ldo);
                let base = if t.first { bias } else { _mm512_maskz_loadu_ps(mask, o) };
                store_cols::<R>(o, mask, _mm512_add_ps(col, base));
            }
        }
    }
}

/// The low R lanes of `v` to the R floats at `o`: a full tile's 12 as a ymm and an xmm store,
/// an edge tile's through the lane mask. (Zen 4's masked 512-bit stores are slow: storing whole
/// tiles through the mask cost the kernel 5–10% at 128 rows × depth 288.)
///
/// # Safety
/// AVX-512 F/VL are available; `o` holds R writable floats; `mask` has the low R bits set.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
unsafe fn store_cols<const R: usize>(o: *mut f32, mask: __mmask16, v: __m512) {
    // SAFETY: the writes stay within o's R floats (contract).
    unsafe {
        if R == 12 {
            _mm256_storeu_ps(o, _mm512_castps512_ps256(v));
            _mm_storeu_ps(o.add(8), _mm512_extractf32x4_ps::<2>(v));
        } else {
            _mm512_mask_storeu_ps(o, mask, v);
        }
    }
}

/// The tile's sums, acc[i][h] = Σ_d w_i[d] · panel[d][16h..16h + 16].
///
/// A function of its own, not inlined into [`tile`]: there the epilogue's indexing of `acc` kept
/// the array in memory, and LLVM stored all 24 accumulators to the stack on every depth step
/// (2.5× slower on the Zen 4); here they only live in registers.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline(never)]
unsafe fn accumulate<const R: usize, const H: usize>(t: &Tile) -> [[__m512; H]; R] {
    let mut acc = [[_mm512_setzero_ps(); H]; R];
    // one pointer per row: the loop then addresses each row as base + d (no chain of adds)
    let rows: [*const f32; R] = std::array::from_fn(|i| t.w.wrapping_add(i * t.ldw));
    for d in 0..t.depth {
        // SAFETY: step d of the panel and element d of each weight row are in bounds (contract).
        unsafe {
            let b: [__m512; H] = std::array::from_fn(|h| _mm512_loadu_ps(t.xp.add(d * 16 * H + 16 * h)));
            for (acc, row) in acc.iter_mut().zip(rows) {
                let a = _mm512_set1_ps(*row.add(d));
                for (acc, &b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_fmadd_ps(a, b, *acc);
                }
            }
        }
    }
    acc
}

/// Rows of 16 lanes → columns: `out[j][i] = r[i][j]`. Each group of four rows is transposed
/// within its 128-bit lanes (as [`super::avx2::transpose8`] does), then the lanes are gathered
/// across the groups.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // s[4g + q]: lane c holds column 4c + q of rows 4g..4g+4
    let s: [__m512; 16] = std::array::from_fn(|i| {
        let (g, q) = (i / 4, i % 4);
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (ab, cd) = if q < 2 {
            (_mm512_unpacklo_ps(a, b), _mm512_unpacklo_ps(c, d))
        } else {
            (_mm512_unpackhi_ps(a, b), _mm512_unpackhi_ps(c, d))
        };
        if q % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(ab, cd)
        } else {
            _mm512_shuffle_ps::<0xEE>(ab, cd)
        }
    });
    // column 4c + q = lane c of s[q], s[4 + q], s[8 + q], s[12 + q]
    std::array::from_fn(|j| {
        let (c, q) = (j / 4, j % 4);
        let (a, b, cc, d) = (s[q], s[4 + q], s[8 + q], s[12 + q]);
        let (ab, cd) = if c < 2 {
            (_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0x44>(cc, d))
        } else {
            (_mm512_shuffle_f32x4::<0xEE>(a, b), _mm512_shuffle_f32x4::<0xEE>(cc, d))
        };
        if c % 2 == 0 {
            _mm512_shuffle_f32x4::<0x88>(ab, cd)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(ab, cd)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if super::super::super::simd::detected() < super::super::super::simd::SimdLevel::Avx512 {
            eprintln!("no AVX-512 on this CPU: transpose16 cannot run here");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32 * 1.5 - 7.0).collect();
        // SAFETY: AVX-512 F/VL are present (checked above); the loads and stores stay in m and t.
        let t: Vec<f32> = unsafe {
            let rows: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(m.as_ptr().add(16 * i)));
            let cols = transpose16(rows);
            let mut t = vec![0.0f32; 256];
            for (j, c) in cols.iter().enumerate() {
                _mm512_storeu_ps(t.as_mut_ptr().add(16 * j), *c);
            }
            t
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(t[16 * j + i], m[16 * i + j], "out[{j}][{i}]");
            }
        }
    }
}
