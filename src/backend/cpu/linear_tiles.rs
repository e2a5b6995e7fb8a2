//! The linear layer as AVX2 + FMA register tiles of the transposed product, outᵀ = W·xᵀ.
//!
//! The `gemm` crate packs the weight (the right-hand operand of out = x·Wᵀ) on every call: at a
//! batch-2 forward of 64 tokens (128 rows) that is a transpose of the whole weight for a few
//! hundred FLOPs per element, and its tiles ran 128×864×288 at ~70% of this Zen 3's FMA peak. Here
//! the roles are swapped: the weight's rows (k contiguous, as PyTorch stores them) are read in
//! place and broadcast, and the activations are packed instead, in panels of 16 rows, each
//! k deep — the smaller operand at the model's shapes, or split across the tasks when it is not.
//! A 6 × 16 tile of outᵀ (12 accumulators, two panel vectors and one broadcast weight: 15 of the
//! 16 ymm registers) is transposed in registers and stored as 16 output rows of 6 columns.
//!
//! Tasks: the larger of m and n is cut among the threads. Cut by columns (weight rows), every task
//! reads all of x, so x is packed once, the tasks packing whole panels of it in parallel; cut by
//! rows, each task packs its own rows and reads the whole weight.
//!
//! Blocking: a pass covers at most [`MAX_DEPTH`] of k (a panel slice then stays in L2, a few
//! weight rows in L1); within a pass, a block of weight rows sized to [`WEIGHT_BLOCK`] is run
//! against every panel while it is in L2. Passes after the first add onto the output, the first
//! adds the bias. Each output element is one FMA chain per pass in index order, so results differ
//! from the `gemm` crate's in the last bits only.
//!
//! Measured against the `gemm` crate as `linear_f32` drives it, alternating call by call on a
//! 2-core Zen 3 (bench/results/2026-12-07-cpu-zen3-linear-tiles): 1.14–1.42× at the small
//! presets' shapes (96–128 rows), 0.98–1.17× at the 512- to 2048-row ones, 1.6–2.2× at 2–16 rows
//! (the adaLN modulations' batch rows, where the crate packs a 32 MB weight for a few rows).
//!
//! Used where AVX2 is the CPU backend's level and x has at least [`MIN_ROWS`] rows: a single row
//! would use one of 8 panel lanes, and the crate runs it as a GEMV, 1.45× faster than the tiles
//! at 1×6912×1152.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::elementwise::apply_activation_slice;
#[cfg(target_arch = "x86_64")]
use super::memory;
#[cfg(target_arch = "x86_64")]
use crate::backend::Activation;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::cell::RefCell;

/// x rows per packed panel (two 8-lane vectors); a last panel of at most 8 rows is 8 wide.
pub const PANEL: usize = 16;
#[cfg(target_arch = "x86_64")]
/// Weight rows (output columns) per tile.
const TILE_COLS: usize = 6;
/// The most of k one pass covers: a 16-row panel slice of 1152 is 72 KB (L2), six weight rows
/// 27 KB (L1).
pub const MAX_DEPTH: usize = 1152;
#[cfg(target_arch = "x86_64")]
/// Floats of weight rows a pass runs against every panel while they stay in L2 (192 KB).
const WEIGHT_BLOCK: usize = 48 * 1024;
/// The most floats a thread keeps packed between calls (32 MiB): enough for 2048 rows of depth
/// 4096. Larger ones (PixArt-α 1024's ff2 on 2 threads: 4096 rows a task at depth 4608, 75 MB)
/// are allocated per call, a few ms against the GEMM's ~0.5 s, instead of pinned to the thread.
#[cfg(target_arch = "x86_64")]
const RETAINED: usize = 8 << 20;
/// The fewest x rows the tiles take (one row is the crate's GEMV).
pub const MIN_ROWS: usize = 2;

/// Whether this CPU runs the tiles (AVX2 + FMA, and the CPU backend's SIMD level is AVX2).
pub fn available() -> bool {
    super::attention_tiles::available()
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The packed x panels of the calls and tasks this thread runs, kept between calls (a forward
    /// packs the same sizes block after block).
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
/// A task's share of the product: weight rows (output columns) `cols`, x rows `rows`.
#[derive(Clone, Copy, Debug)]
struct Share {
    cols: (usize, usize),
    rows: (usize, usize),
}

#[cfg(target_arch = "x86_64")]
/// The shares of an m × n product for `tasks` tasks: the larger side is cut, in whole tiles, so
/// the other operand is read (or packed) once per task.
fn shares(m: usize, n: usize, tasks: usize) -> Vec<Share> {
    let cut = |len: usize, unit: usize| -> Vec<(usize, usize)> {
        let parts = tasks.clamp(1, len.div_ceil(unit));
        let step = len.div_ceil(parts).next_multiple_of(unit);
        (0..len).step_by(step).map(|s| (s, step.min(len - s))).collect()
    };
    if n >= m {
        cut(n, TILE_COLS).into_iter().map(|cols| Share { cols, rows: (0, m) }).collect()
    } else {
        cut(m, PANEL).into_iter().map(|rows| Share { cols: (0, n), rows }).collect()
    }
}

/// `out[m, n] = act(Σ_k x[m, k]·w[n, k] + bias[n])`, x's rows `ldx` apart, over `tasks` tasks.
///
/// # Safety
/// AVX2 and FMA are available ([`available`]); `x` holds m rows of k floats `ldx` apart, `w`
/// n·k floats, `bias` (when given) n, `out` m·n; m ≥ 1, n ≥ 1, k ≥ 1.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear(
    (x, ldx): (&[f32], usize),
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    tasks: usize,
) {
    debug_assert!(m >= 1 && n >= 1 && k >= 1 && ldx >= k && w.len() >= n * k && out.len() >= m * n);
    let shares = shares(m, n, tasks);
    // Shares are disjoint rectangles of out; they travel as an address because a rectangle of a
    // row-major matrix is not a slice. x likewise, read by all.
    let out_addr = out.as_mut_ptr() as usize;
    let x_addr = x.as_ptr() as usize;
    // SAFETY (both closures): AVX2/FMA and the operands' extents are the caller's contract; the
    // shares partition [0, m) × [0, n), so each task alone writes its rectangle of out; `panels`
    // holds the share's rows packed.
    let compute = |s: &Share, panels: &[f32]| unsafe { share(w, bias, act, out_addr as *mut f32, (n, k), *s, panels) };
    let pack = |r0: usize, rows: usize, panels: &mut [f32]| unsafe {
        pack_rows((x_addr as *const f32).add(r0 * ldx), ldx, rows, k, panels)
    };
    with_panels(|buf| {
        if shares.len() > 1 && shares[0].rows == (0, m) {
            // Cut by columns, every task reads all of x: pack it once, the tasks each packing
            // whole panels of it, rather than once per task.
            memory::grow_scratch(buf, packed_len(m, k));
            let per = m.div_ceil(PANEL).div_ceil(shares.len());
            buf.par_chunks_mut(per * k * PANEL).enumerate().for_each(|(c, chunk)| {
                let r0 = c * per * PANEL;
                pack(r0, (per * PANEL).min(m - r0), chunk)
            });
            let panels: &[f32] = buf;
            shares.par_iter().for_each(|s| compute(s, panels));
        } else if shares.len() == 1 {
            memory::grow_scratch(buf, packed_len(m, k));
            pack(0, m, buf);
            compute(&shares[0], buf);
        } else {
            shares.par_iter().for_each(|s| {
                with_panels(|own| {
                    memory::grow_scratch(own, packed_len(s.rows.1, k));
                    pack(s.rows.0, s.rows.1, own);
                    compute(s, own)
                })
            });
        }
    })
}

#[cfg(target_arch = "x86_64")]
/// Runs `f` with this thread's panel buffer (a fresh one if it is already in use). A buffer
/// grown past [`RETAINED`] is freed afterwards rather than held by the thread.
fn with_panels<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PANELS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut held) => {
            let r = f(&mut held);
            if held.capacity() > RETAINED {
                *held = Vec::new();
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// One task: the passes over k for its share, x's rows packed in `panels`, then the activation
/// over its rectangle.
///
/// # Safety
/// As [`linear`], for the share's rectangle of out (row-major, n columns), written by no one
/// else; `panels` holds the share's x rows as [`pack_rows`] lays them out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn share(
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: *mut f32,
    (n, k): (usize, usize),
    s: Share,
    panels: &[f32],
) {
    let ((c0, cols), (r0, rows)) = (s.cols, s.rows);
    debug_assert!(panels.len() >= packed_len(rows, k));
    let passes = k.div_ceil(MAX_DEPTH);
    let depth = k.div_ceil(passes);
    let block = (WEIGHT_BLOCK / depth / TILE_COLS * TILE_COLS).max(TILE_COLS);
    for d0 in (0..k).step_by(depth) {
        let kd = depth.min(k - d0);
        for b0 in (c0..c0 + cols).step_by(block) {
            let b1 = (b0 + block).min(c0 + cols);
            for p in 0..rows.div_ceil(PANEL) {
                let valid = PANEL.min(rows - p * PANEL);
                let wide = valid > PANEL / 2;
                let lanes = if wide { PANEL } else { PANEL / 2 };
                let mut j = b0;
                while j < b1 {
                    let tc = TILE_COLS.min(b1 - j);
                    // SAFETY: weight rows j..j+tc at depth d0, panel p's slice at d0 (panels
                    // start every k·16 floats; each depth step holds `lanes` floats), and out's
                    // rows r0+16p.. (valid of them) at column j all lie inside the operands.
                    let t = unsafe {
                        Tile {
                            w: w.as_ptr().add(j * k + d0),
                            ldw: k,
                            xp: panels.as_ptr().add(p * k * PANEL + d0 * lanes),
                            depth: kd,
                            out: out.add((r0 + p * PANEL) * n + j),
                            ldo: n,
                            rows: valid,
                            bias: if d0 == 0 { bias.map(|b| b.as_ptr().add(j)) } else { None },
                            first: d0 == 0,
                        }
                    };
                    // SAFETY: as above; AVX2/FMA (caller's contract).
                    unsafe { dispatch(tc, wide, &t) };
                    j += tc;
                }
            }
        }
    }
    if act != Activation::None {
        for r in r0..r0 + rows {
            // SAFETY: row r's columns c0..c0+cols are this task's alone (caller's contract).
            apply_activation_slice(unsafe { std::slice::from_raw_parts_mut(out.add(r * n + c0), cols) }, act);
        }
    }
}

/// One tile's operands: `cols` (the const R) weight rows at `w` (`ldw` apart), the panel slice
/// at `xp`, `depth` steps deep; out at the tile's corner (row `ldo` apart), `rows` valid rows.
#[cfg(target_arch = "x86_64")]
struct Tile {
    w: *const f32,
    ldw: usize,
    xp: *const f32,
    depth: usize,
    out: *mut f32,
    ldo: usize,
    rows: usize,
    /// the bias at the tile's first column, on the first pass
    bias: Option<*const f32>,
    /// the first pass stores; later ones add onto out
    first: bool,
}

/// [`tile`] for `cols` weight rows (1..=6) and a 16- or 8-wide panel.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
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

#[cfg(target_arch = "x86_64")]
/// Floats [`pack_rows`] writes for `rows` rows of depth k.
fn packed_len(rows: usize, k: usize) -> usize {
    let rest = rows % PANEL;
    rows / PANEL * PANEL * k + if rest == 0 { 0 } else { last_width(rest) * k }
}

#[cfg(target_arch = "x86_64")]
/// The width of a last panel holding `rest` (1..16) rows.
fn last_width(rest: usize) -> usize {
    if rest <= PANEL / 2 {
        PANEL / 2
    } else {
        PANEL
    }
}

/// `rows` rows of x (k floats each, `ld` apart) into ⌈rows/16⌉ panels, panel p at p·k·16: each
/// depth step holds the panel's rows side by side (16, or 8 for a last panel of at most 8 rows),
/// missing rows zero. Every element of `out[..packed_len(rows, k)]` is written.
///
/// # Safety
/// AVX2 is available; x holds `rows` rows of k floats `ld` apart; out holds
/// [`packed_len`]`(rows, k)` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_rows(x: *const f32, ld: usize, rows: usize, k: usize, out: &mut [f32]) {
    let full = rows / PANEL;
    let rest = rows % PANEL;
    let last = if rest == 0 { 0 } else { last_width(rest) };
    debug_assert!(out.len() >= packed_len(rows, k));
    for p in 0..full {
        for h in 0..2 {
            // SAFETY: rows 16p + 8h .. +8 of x exist (p < full); the panel's floats lie in out.
            unsafe {
                let src: [*const f32; 8] = std::array::from_fn(|l| x.add((p * PANEL + 8 * h + l) * ld));
                let dst = out.as_mut_ptr().add(p * k * PANEL + 8 * h);
                let mut d = 0;
                while d + 8 <= k {
                    let cols = transpose8(std::array::from_fn(|l| _mm256_loadu_ps(src[l].add(d))));
                    for (c, &v) in cols.iter().enumerate() {
                        _mm256_storeu_ps(dst.add((d + c) * PANEL), v);
                    }
                    d += 8;
                }
                for d in d..k {
                    for (l, s) in src.iter().enumerate() {
                        *dst.add(d * PANEL + l) = *s.add(d);
                    }
                }
            }
        }
    }
    if last > 0 {
        let base = full * k * PANEL;
        for d in 0..k {
            for l in 0..last {
                // SAFETY: row full·16 + l < rows exists when l < rest; the slot lies in out.
                out[base + d * last + l] = if l < rest { unsafe { *x.add((full * PANEL + l) * ld + d) } } else { 0.0 };
            }
        }
    }
}
