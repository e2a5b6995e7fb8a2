//! The linear layer as register tiles of the transposed product, outᵀ = W·xᵀ, for AVX2 + FMA
//! ([`avx2`]) and AVX-512 ([`avx512`]).
//!
//! The `gemm` crate packs the weight (the right-hand operand of out = x·Wᵀ) on every call: at a
//! batch-2 forward of 64 tokens (128 rows) that is a transpose of the whole weight for a few
//! hundred FLOPs per element, and its tiles ran 128×864×288 at ~70% of this Zen 3's FMA peak. Here
//! the roles are swapped: the weight's rows (k contiguous, as PyTorch stores them) are read in
//! place and broadcast, and the activations are packed instead, in panels of two vectors of rows
//! (16 for AVX2, 32 for AVX-512), each k deep — the smaller operand at the model's shapes, or
//! split across the tasks when it is not. A kernel's tile holds [`Kernel::COLS`] weight rows ×
//! one panel of outᵀ in registers and stores it transposed, as panel rows of COLS columns.
//!
//! Tasks: the larger of m and n is cut among the threads. Cut by columns (weight rows), every task
//! reads all of x, so x is packed once, the tasks packing whole panels of it in parallel; cut by
//! rows, each task packs its own rows and reads the whole weight.
//!
//! Blocking: a pass covers at most [`MAX_DEPTH`] of k (a panel slice then stays in L2);
//! within a pass, a block of weight rows sized to [`WEIGHT_BLOCK`] is run against every panel
//! while it is in L2. Passes after the first add onto the output, the first adds the bias. Each
//! output element is one FMA chain per pass in index order, so results differ from the `gemm`
//! crate's in the last bits only.
//!
//! Measured against the `gemm` crate as `linear_f32` drives it, alternating call by call:
//! - AVX2 on a 2-core Zen 3 (bench/results/2026-12-07-cpu-zen3-linear-tiles): 1.14–1.42× at the
//!   small presets' shapes (96–128 rows), 0.98–1.17× at the 512- to 2048-row ones, 1.6–2.2× at
//!   2–16 rows (the adaLN modulations' batch rows, where the crate packs a 32 MB weight for a few
//!   rows);
//! - AVX-512 on a 2-core Zen 4 (bench/results/2026-12-08-cpu-zen4-avx512-tiles), against the
//!   crate's AVX-512 path: 1.03–1.21× at 128 rows, 1.07–1.20× at 512, 1.01–1.02× at 2048,
//!   2.3× at 16 and 1.7× at 2; against the AVX2 tiles 0.97–1.04×, 1.11–1.13× at 16 rows and
//!   0.93–0.95× at 2.
//!
//! Used where the CPU backend's level is AVX2 or AVX-512 and x has at least [`MIN_ROWS`] rows: a
//! single row would use one lane of each panel vector, and the crate runs it as a GEMV, 1.45×
//! faster than the AVX2 tiles at 1×6912×1152. The kernel is the level's
//! ([`simd::linear_tile_level`]).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
use super::elementwise::apply_activation_slice;
#[cfg(target_arch = "x86_64")]
use super::memory;
#[cfg(target_arch = "x86_64")]
use super::simd::{self, SimdLevel};
#[cfg(target_arch = "x86_64")]
use crate::backend::Activation;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::cell::RefCell;

/// The most of k one pass covers: a 32-row panel slice of 1152 is 147 KB (L2).
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

/// Whether this CPU runs the tiles (their level, [`simd::linear_tile_level`], is AVX2 or AVX-512).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd::linear_tile_level() >= SimdLevel::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
/// A register-tile kernel: its panel and tile widths and the tile itself.
trait Kernel {
    /// x rows per packed panel (two vectors); a last panel of at most PANEL/2 rows is PANEL/2 wide.
    const PANEL: usize;
    /// Weight rows (output columns) per tile, at most.
    const COLS: usize;
    /// One tile of `cols` (1..=COLS) weight rows against a PANEL-wide (`wide`) or PANEL/2-wide
    /// panel slice.
    ///
    /// # Safety
    /// The kernel's instruction set is available; t's pointers cover `cols` weight rows of
    /// `t.depth` floats (`t.ldw` apart), `t.depth` panel steps of the panel's width, and
    /// `t.rows` ≤ the panel's width output rows of `cols` floats (`t.ldo` apart).
    unsafe fn tile(cols: usize, wide: bool, t: &Tile);
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
fn shares<K: Kernel>(m: usize, n: usize, tasks: usize) -> Vec<Share> {
    let cut = |len: usize, unit: usize| -> Vec<(usize, usize)> {
        let parts = tasks.clamp(1, len.div_ceil(unit));
        let step = len.div_ceil(parts).next_multiple_of(unit);
        (0..len).step_by(step).map(|s| (s, step.min(len - s))).collect()
    };
    if n >= m {
        cut(n, K::COLS).into_iter().map(|cols| Share { cols, rows: (0, m) }).collect()
    } else {
        cut(m, K::PANEL).into_iter().map(|rows| Share { cols: (0, n), rows }).collect()
    }
}

/// `out[m, n] = act(Σ_k x[m, k]·w[n, k] + bias[n])`, x's rows `ldx` apart, over `tasks` tasks.
///
/// # Safety
/// [`available`]; `x` holds m rows of k floats `ldx` apart, `w` n·k floats, `bias` (when given)
/// n, `out` m·n; m ≥ 1, n ≥ 1, k ≥ 1.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear(
    x: (&[f32], usize),
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    mnk: (usize, usize, usize),
    tasks: usize,
) {
    // SAFETY: the caller's contract; the tiles' level says which instruction set is there.
    unsafe {
        if simd::linear_tile_level() >= SimdLevel::Avx512 {
            linear_with::<avx512::Avx512>(x, w, bias, act, out, mnk, tasks)
        } else {
            linear_with::<avx2::Avx2>(x, w, bias, act, out, mnk, tasks)
        }
    }
}

/// [`linear`] with kernel K.
///
/// # Safety
/// As [`linear`], with K's instruction set available.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn linear_with<K: Kernel>(
    (x, ldx): (&[f32], usize),
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    tasks: usize,
) {
    debug_assert!(m >= 1 && n >= 1 && k >= 1 && ldx >= k && w.len() >= n * k && out.len() >= m * n);
    let shares = shares::<K>(m, n, tasks);
    // Shares are disjoint rectangles of out; they travel as an address because a rectangle of a
    // row-major matrix is not a slice. x likewise, read by all.
    let out_addr = out.as_mut_ptr() as usize;
    let x_addr = x.as_ptr() as usize;
    // SAFETY (both closures): K's instruction set and the operands' extents are the caller's contract; the
    // shares partition [0, m) × [0, n), so each task alone writes its rectangle of out; `panels`
    // holds the share's rows packed.
    let compute =
        |s: &Share, panels: &[f32]| unsafe { share::<K>(w, bias, act, out_addr as *mut f32, (n, k), *s, panels) };
    let pack = |r0: usize, rows: usize, panels: &mut [f32]| unsafe {
        pack_rows::<K>((x_addr as *const f32).add(r0 * ldx), ldx, rows, k, panels)
    };
    with_panels(|buf| {
        if shares.len() > 1 && shares[0].rows == (0, m) {
            // Cut by columns, every task reads all of x: pack it once, the tasks each packing
            // whole panels of it, rather than once per task.
            memory::grow_scratch(buf, packed_len::<K>(m, k));
            let per = m.div_ceil(K::PANEL).div_ceil(shares.len());
            buf.par_chunks_mut(per * k * K::PANEL).enumerate().for_each(|(c, chunk)| {
                let r0 = c * per * K::PANEL;
                pack(r0, (per * K::PANEL).min(m - r0), chunk)
            });
            let panels: &[f32] = buf;
            shares.par_iter().for_each(|s| compute(s, panels));
        } else if shares.len() == 1 {
            memory::grow_scratch(buf, packed_len::<K>(m, k));
            pack(0, m, buf);
            compute(&shares[0], buf);
        } else {
            shares.par_iter().for_each(|s| {
                with_panels(|own| {
                    memory::grow_scratch(own, packed_len::<K>(s.rows.1, k));
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
unsafe fn share<K: Kernel>(
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    out: *mut f32,
    (n, k): (usize, usize),
    s: Share,
    panels: &[f32],
) {
    let ((c0, cols), (r0, rows)) = (s.cols, s.rows);
    debug_assert!(panels.len() >= packed_len::<K>(rows, k));
    let passes = k.div_ceil(MAX_DEPTH);
    let depth = k.div_ceil(passes);
    let block = (WEIGHT_BLOCK / depth / K::COLS * K::COLS).max(K::COLS);
    for d0 in (0..k).step_by(depth) {
        let kd = depth.min(k - d0);
        for b0 in (c0..c0 + cols).step_by(block) {
            let b1 = (b0 + block).min(c0 + cols);
            for p in 0..rows.div_ceil(K::PANEL) {
                let valid = K::PANEL.min(rows - p * K::PANEL);
                let wide = valid > K::PANEL / 2;
                let lanes = if wide { K::PANEL } else { K::PANEL / 2 };
                let mut j = b0;
                while j < b1 {
                    let tc = K::COLS.min(b1 - j);
                    // SAFETY: weight rows j..j+tc at depth d0, panel p's slice at d0 (panels
                    // start every k·PANEL floats; each depth step holds `lanes` floats), and out's
                    // rows r0 + p·PANEL.. (valid of them) at column j all lie inside the operands.
                    let t = unsafe {
                        Tile {
                            w: w.as_ptr().add(j * k + d0),
                            ldw: k,
                            xp: panels.as_ptr().add(p * k * K::PANEL + d0 * lanes),
                            depth: kd,
                            out: out.add((r0 + p * K::PANEL) * n + j),
                            ldo: n,
                            rows: valid,
                            bias: if d0 == 0 { bias.map(|b| b.as_ptr().add(j)) } else { None },
                            first: d0 == 0,
                        }
                    };
                    // SAFETY: as above; K's instruction set (caller's contract).
                    unsafe { K::tile(tc, wide, &t) };
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
pub(super) struct Tile {
    pub(super) w: *const f32,
    pub(super) ldw: usize,
    pub(super) xp: *const f32,
    pub(super) depth: usize,
    pub(super) out: *mut f32,
    pub(super) ldo: usize,
    pub(super) rows: usize,
    /// the bias at the tile's first column, on the first pass
    pub(super) bias: Option<*const f32>,
    /// the first pass stores; later ones add onto out
    pub(super) first: bool,
}

#[cfg(target_arch = "x86_64")]
/// Floats [`pack_rows`] writes for `rows` rows of depth k.
fn packed_len<K: Kernel>(rows: usize, k: usize) -> usize {
    let rest = rows % K::PANEL;
    rows / K::PANEL * K::PANEL * k + if rest == 0 { 0 } else { last_width::<K>(rest) * k }
}

#[cfg(target_arch = "x86_64")]
/// The width of a last panel holding `rest` (1..PANEL) rows.
fn last_width<K: Kernel>(rest: usize) -> usize {
    if rest <= K::PANEL / 2 {
        K::PANEL / 2
    } else {
        K::PANEL
    }
}

/// `rows` rows of x (k floats each, `ld` apart) into ⌈rows/P⌉ panels (P = K's panel), panel p
/// at p·k·P: each depth step holds the panel's rows side by side (P, or P/2 for a last panel of
/// at most P/2 rows), missing rows zero. Every element of `out[..packed_len(rows, k)]` is
/// written. Full panels are transposed 8 rows × 8 steps at a time in ymm registers.
///
/// # Safety
/// AVX2 is available (both kernels' CPUs have it); x holds `rows` rows of k floats `ld` apart;
/// out holds [`packed_len`]`(rows, k)` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_rows<K: Kernel>(x: *const f32, ld: usize, rows: usize, k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let panel = K::PANEL;
    let full = rows / panel;
    let rest = rows % panel;
    let last = if rest == 0 { 0 } else { last_width::<K>(rest) };
    debug_assert!(out.len() >= packed_len::<K>(rows, k));
    for p in 0..full {
        for h in 0..panel / 8 {
            // SAFETY: rows p·P + 8h .. +8 of x exist (p < full); the panel's floats lie in out.
            unsafe {
                let src: [*const f32; 8] = std::array::from_fn(|l| x.add((p * panel + 8 * h + l) * ld));
                let dst = out.as_mut_ptr().add(p * k * panel + 8 * h);
                let mut d = 0;
                while d + 8 <= k {
                    let cols = avx2::transpose8(std::array::from_fn(|l| _mm256_loadu_ps(src[l].add(d))));
                    for (c, &v) in cols.iter().enumerate() {
                        _mm256_storeu_ps(dst.add((d + c) * panel), v);
                    }
                    d += 8;
                }
                for d in d..k {
                    for (l, s) in src.iter().enumerate() {
                        *dst.add(d * panel + l) = *s.add(d);
                    }
                }
            }
        }
    }
    if last > 0 {
        let base = full * k * panel;
        for d in 0..k {
            for l in 0..last {
                // SAFETY: row full·P + l < rows exists when l < rest; the slot lies in out.
                out[base + d * last + l] = if l < rest { unsafe { *x.add((full * panel + l) * ld + d) } } else { 0.0 };
            }
        }
    }
}
