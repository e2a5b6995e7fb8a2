//! The CPU backend's large buffers, backed by transparent huge pages where Linux allows it.
//!
//! A streaming op over a [2048, 1152] activation crosses a 4 KiB page every 1024 floats, per
//! operand; each crossing can be a TLB miss and a page walk, and the hardware prefetchers stop at
//! page boundaries. A 2 MiB page removes both for 512 times the span. Linux backs anonymous
//! memory with huge pages only where the process asks (`madvise(MADV_HUGEPAGE)`) when
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise`, the common default, so a buffer
//! is advised before its first touch: the faults that first touch it then map 2 MiB pages.
//! PyTorch does the same only under `THP_MEM_ALLOC_ENABLE=1`.
//!
//! Only the 2 MiB-aligned interior of a buffer is advised (the allocator owns the rest of its
//! pages), so buffers under 4 MiB may get none and no memory is added to any. Where the kernel
//! refuses (THP `never`, another OS), buffers stay on 4 KiB pages: the advice is a hint.
//!
//! Measured on a 2-vCPU AMD EPYC (Zen 3) through the backend at [2048, 1152], tensors on 4 KiB
//! pages against advised ones, alternating call by call (bench/results/2026-12-08-cpu-zen3-huge-pages,
//! `hpab.rs`; 10th percentile and median of two runs): the copy 4–8% faster, `x += Δ` 6–17%, the
//! gated residual 8–13%, LayerNorm + modulation 4–11%, the 2048×3456×1152 GEMM 0.4–1%.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Bytes of a transparent huge page on x86-64 and most aarch64 kernels.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether buffers allocated from now on are advised onto huge pages (default: yes). Process-wide;
/// for A/B measurements and for users who must keep the process on 4 KiB pages.
pub fn set_huge_pages(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The switch [`set_huge_pages`] sets.
pub fn huge_pages() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A vector of `n` copies of `value`, its storage advised onto huge pages before it is filled.
pub fn filled(n: usize, value: f32) -> Vec<f32> {
    let mut v = with_capacity(n);
    v.resize(n, value);
    v
}

/// An empty vector with room for `n` floats, that room advised onto huge pages (untouched yet).
pub fn with_capacity(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    advise(v.as_mut_ptr() as usize, v.capacity() * size_of::<f32>());
    v
}

/// `buf` resized to `len`, its storage replaced by a fresh advised one when it must grow (the old
/// contents are not kept: for scratch buffers that are overwritten after).
pub fn grow_scratch(buf: &mut Vec<f32>, len: usize) {
    if len > buf.capacity() {
        *buf = with_capacity(len);
    }
    buf.resize(len, 0.0);
}

/// The 2 MiB-aligned pages inside `[addr, addr + bytes)`, or `None` when none fits.
pub fn huge_interior(addr: usize, bytes: usize) -> Option<(usize, usize)> {
    let lo = addr.checked_next_multiple_of(HUGE_PAGE_BYTES)?;
    let hi = addr.checked_add(bytes)? / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    (hi > lo).then_some((lo, hi - lo))
}

#[cfg(target_os = "linux")]
fn advise(addr: usize, bytes: usize) {
    if !huge_pages() {
        return;
    }
    if let Some((lo, len)) = huge_interior(addr, bytes) {
        // SAFETY: [lo, lo + len) lies inside an allocation this process owns; MADV_HUGEPAGE only
        // sets a flag on its mappings (no contents change), and a failure (THP disabled, an old
        // kernel) leaves the pages as they were, so its result is ignored.
        unsafe { libc::madvise(lo as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_addr: usize, _bytes: usize) {}

/// The last-level cache's size in bytes, from Linux's sysfs (cpu0's level-3 cache, else its
/// level 2), 32 MiB where neither can be read. Read once.
pub fn last_level_cache_bytes() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| {
        ["index3", "index2"]
            .iter()
            .find_map(|i| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/{i}/size")).ok())
            .and_then(|s| parse_cache_size(&s))
            .unwrap_or(32 << 20)
    })
}

/// sysfs's cache size ("32768K", "1M", "512"), in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mul) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().filter(|&n| n > 0).map(|n| n * mul)
}

/// The smallest copy, in bytes written, that [`copy_streaming`] runs instead of [`copy_vector`]: the
/// last-level cache's size. Its source and destination then take twice the cache, so the copy
/// evicts what the cache held and would find the destination out of it. Smaller copies keep
/// `memcpy`, which wins while either end may still be in cache.
///
/// Measured on a 2-vCPU Zen 3 (32 MiB L3), 2 threads, alternating call by call
/// (bench/results/2026-12-08-cpu-zen3-huge-pages, `ntab.rs`), memcpy's time over the streaming
/// copy's at the 10th percentile and median, for a cold copy (4 rotating sets), a hot one (1 set)
/// and a copy whose destination is then read:
///
/// | copy | cold | hot | copy + read |
/// |---|---|---|---|
/// | 9.4 MB | 1.07 / 0.80 | 0.36 / 0.56 | 0.82 / 0.94 |
/// | 16.8 MB | 1.27 / 0.86 | 0.60 / 0.98 | 0.86 / 0.92 |
/// | 32 MiB | 1.40 / 1.46 | 1.70 / 1.68 | 1.10 / 1.11 |
/// | 64 MiB | 1.65 / 1.55 | 1.65 / 1.64 | 1.15 / 1.12 |
pub fn streaming_copy_min_bytes() -> usize {
    last_level_cache_bytes()
}

/// `dst = src` with non-temporal stores, which write whole cache lines to memory without first
/// reading them in (a `memcpy` reads each destination line before writing it: a third more
/// memory traffic) and without evicting the cache for data not read again soon.
///
/// # Panics
/// If the lengths differ (as `copy_from_slice`).
pub fn copy_streaming(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: destination and source lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_sfence, _mm_stream_ps};
        // the streaming stores need 16-byte aligned destinations: the first up to 3 floats by hand
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let lines = (dst.len() - head) / 16;
        let (d, s) = (dst[head..].as_mut_ptr(), src[head..].as_ptr());
        for l in 0..lines {
            // SAFETY: SSE is part of x86-64; floats head + 16·l .. +16 lie inside both slices
            // (lines·16 ≤ len − head), and d + 16·l + 4i is 16-byte aligned (d is).
            unsafe {
                for i in 0..4 {
                    _mm_stream_ps(d.add(16 * l + 4 * i), _mm_loadu_ps(s.add(16 * l + 4 * i)));
                }
            }
        }
        let done = head + 16 * lines;
        dst[done..].copy_from_slice(&src[done..]);
        // SAFETY: SSE is part of x86-64. Streaming stores are weakly ordered: the fence makes
        // them visible before this task reports itself finished to the thread that joins it.
        unsafe { _mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// `dst = src` through vector registers, at the CPU backend's SIMD level (see [`copy_vector_at`]).
///
/// # Panics
/// If the lengths differ (as `copy_from_slice`).
pub fn copy_vector(dst: &mut [f32], src: &[f32]) {
    copy_vector_at(super::simd::level(), dst, src)
}

/// `dst = src` as a loop of four 512-bit (AVX-512) or 256-bit (AVX2) loads and stores, the way
/// PyTorch's `copy_` runs; `copy_from_slice` (glibc's `memcpy`) at the baseline level or above
/// the CPU's own. glibc copies these sizes with `rep movsb`, which measured 8–16% slower than
/// the loop on a 2-core Zen 4 at 2.4 and 9.4 MB cold (2 threads, each side on its own rotating
/// buffers, bench/results/2026-12-08-cpu-zen4-avx512-tiles/copy-ab.txt) and equal at 147 KB.
///
/// # Panics
/// If the lengths differ (as `copy_from_slice`).
pub fn copy_vector_at(level: super::simd::SimdLevel, dst: &mut [f32], src: &[f32]) {
    use super::simd::SimdLevel;
    assert_eq!(dst.len(), src.len(), "copy_vector: destination and source lengths differ");
    #[cfg(target_arch = "x86_64")]
    match level.min(super::simd::detected()) {
        // SAFETY: the CPU has AVX-512 F (detected), and the lengths are equal (asserted).
        SimdLevel::Avx512 => return unsafe { copy_avx512(dst, src) },
        // SAFETY: the CPU has AVX2 (detected), and the lengths are equal (asserted).
        SimdLevel::Avx2 => return unsafe { copy_avx2(dst, src) },
        SimdLevel::Baseline => {}
    }
    let _ = level;
    dst.copy_from_slice(src);
}

/// [`copy_vector_at`]'s AVX2 loop.
///
/// # Safety
/// AVX2 is available; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    let blocks = dst.len() / 32;
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    for b in 0..blocks {
        // SAFETY: floats 32b .. 32b + 32 lie inside both slices (blocks·32 ≤ len); all four loads
        // come before the stores, as the slices do not overlap (one is borrowed mutably).
        unsafe {
            let v: [_; 4] = std::array::from_fn(|i| _mm256_loadu_ps(s.add(32 * b + 8 * i)));
            for (i, v) in v.into_iter().enumerate() {
                _mm256_storeu_ps(d.add(32 * b + 8 * i), v);
            }
        }
    }
    let done = 32 * blocks;
    dst[done..].copy_from_slice(&src[done..]);
}

/// [`copy_vector_at`]'s AVX-512 loop.
///
/// # Safety
/// AVX-512 F is available; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_avx512(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
    let blocks = dst.len() / 64;
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    for b in 0..blocks {
        // SAFETY: floats 64b .. 64b + 64 lie inside both slices (blocks·64 ≤ len), which do not
        // overlap.
        unsafe {
            let v: [_; 4] = std::array::from_fn(|i| _mm512_loadu_ps(s.add(64 * b + 16 * i)));
            for (i, v) in v.into_iter().enumerate() {
                _mm512_storeu_ps(d.add(64 * b + 16 * i), v);
            }
        }
    }
    let done = 64 * blocks;
    dst[done..].copy_from_slice(&src[done..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn huge_interior_is_the_aligned_pages_inside() {
        // 6 MiB + 16 for 5 MiB: ends at 11 MiB + 16, so only [8, 10) MiB is a whole aligned page
        assert_eq!(huge_interior(6 * MIB + 16, 5 * MIB), Some((8 * MIB, 2 * MIB)));
        // aligned at both ends: all of it
        assert_eq!(huge_interior(4 * MIB, 6 * MIB), Some((4 * MIB, 6 * MIB)));
        // 3.9 MiB starting just past a boundary holds no whole page
        assert_eq!(huge_interior(2 * MIB + 4096, 4 * MIB - 8192), None);
        assert_eq!(huge_interior(2 * MIB + 4096, 4 * MIB - 4096), Some((4 * MIB, 2 * MIB)));
        assert_eq!(huge_interior(0, 0), None);
        // no wrap-around at the top of the address space
        assert_eq!(huge_interior(usize::MAX - MIB, 4 * MIB), None);
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 * MIB));
        assert_eq!(parse_cache_size("1M"), Some(MIB));
        assert_eq!(parse_cache_size("524288"), Some(512 << 10));
        assert_eq!(parse_cache_size("0K"), None);
        assert_eq!(parse_cache_size("lots"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn grow_scratch_resizes_and_keeps_room() {
        let mut v = Vec::new();
        grow_scratch(&mut v, 3 * MIB);
        assert_eq!(v.len(), 3 * MIB);
        let room = v.as_ptr();
        grow_scratch(&mut v, MIB);
        assert_eq!((v.len(), v.as_ptr()), (MIB, room), "shrinking must keep the allocation");
        v.iter_mut().for_each(|x| *x = 1.5);
        grow_scratch(&mut v, 2 * MIB);
        assert_eq!(v.as_ptr(), room, "growing within the capacity must keep the allocation");
        assert!(v[..MIB].iter().all(|&x| x == 1.5) && v[MIB..].iter().all(|&x| x == 0.0));
    }
}
