//! The CPU backend's memory (src/backend/cpu/memory.rs):
//! - large tensors advised onto transparent huge pages: the mapping holding a new 64 MiB tensor
//!   carries the kernel's `hg` flag (MADV_HUGEPAGE) when the switch is on and not when it is off,
//!   and holds the NaN poison either way. 64 MiB is above glibc's largest mmap threshold, so each
//!   tensor is a fresh mapping rather than reused heap. Linux only; skipped (with a message)
//!   where the kernel has THP off. The switch is process-wide, and the other tests here do not
//!   depend on it;
//! - the streaming (non-temporal) copy, bit-exact at every alignment and through `Backend::copy`
//!   past the size where the backend takes it;
//! - the vector-register copy below that size, bit-exact at every level the CPU has.

use deltadit::backend::cpu::Cpu;
use deltadit::backend::Backend;
use deltadit::internals::cpu::simd::{self, SimdLevel};
use deltadit::internals::cpu::{copy_streaming, copy_vector_at, set_huge_pages, streaming_copy_min_bytes};
use deltadit::DType::F32;

/// The VmFlags of the mapping of this process that contains `addr` (from /proc/self/smaps).
fn vm_flags(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
    }
    panic!("no mapping of this process contains {addr:#x}");
}

#[test]
fn large_tensors_are_advised_onto_huge_pages() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if mode.is_empty() || mode.contains("[never]") {
        println!("skipped: transparent huge pages are off here ({})", mode.trim());
        return;
    }
    let be = Cpu::new(2);
    let shape = [16 << 10, 1 << 10]; // 64 MiB of f32
    for on in [true, false] {
        set_huge_pages(on);
        let t = be.alloc(&shape, F32).unwrap();
        let buf = t.buf();
        // a page well inside the buffer: the advised interior excludes only its unaligned ends
        let probe = buf.as_ptr() as usize + buf.len() * 2;
        let flags = vm_flags(probe);
        assert_eq!(flags.iter().any(|f| f == "hg"), on, "huge pages {on}: VmFlags {flags:?}");
        assert!(buf.iter().all(|x| x.is_nan()), "huge pages {on}: a new tensor must hold the NaN poison");
    }
    set_huge_pages(true);
}

/// `copy_streaming` at every destination alignment within a 16-byte line, lengths around its
/// 16-float loop (the hand-copied head and tail), into the middle of a NaN-poisoned buffer whose
/// surroundings must stay untouched.
#[test]
fn streaming_copy_copies_exactly_at_every_offset() {
    let src: Vec<f32> = (0..1200).map(|i| ((i * 7919) % 1013) as f32 * 0.37 - 150.0).collect();
    for off in 0..5 {
        for len in (0..70).chain([255, 1024, 1100]) {
            let mut dst = vec![f32::NAN; len + 16];
            copy_streaming(&mut dst[off..off + len], &src[3..3 + len]);
            assert!(
                dst[..off].iter().chain(&dst[off + len..]).all(|x| x.is_nan()),
                "off {off} len {len}: wrote outside"
            );
            assert!(
                dst[off..off + len].iter().zip(&src[3..]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "off {off} len {len}: wrong values"
            );
        }
    }
}

/// `copy_vector_at` at each SIMD level the CPU has, at every float offset within a 64-byte line,
/// lengths around its 32- and 64-float loops (the copied tail), into the middle of a
/// NaN-poisoned buffer whose surroundings must stay untouched.
#[test]
fn vector_copy_copies_exactly_at_every_level_and_offset() {
    let src: Vec<f32> = (0..1300).map(|i| ((i * 104729) % 2039) as f32 * -0.21 + 99.0).collect();
    let levels: Vec<SimdLevel> = SimdLevel::ALL.into_iter().filter(|&l| l <= simd::detected()).collect();
    for level in levels {
        for off in 0..17 {
            for len in (0..140).chain([255, 1024, 1100, 1279]) {
                let mut dst = vec![f32::NAN; len + 32];
                copy_vector_at(level, &mut dst[off..off + len], &src[5..5 + len]);
                assert!(
                    dst[..off].iter().chain(&dst[off + len..]).all(|x| x.is_nan()),
                    "{level} off {off} len {len}: wrote outside"
                );
                assert!(
                    dst[off..off + len].iter().zip(&src[5..]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level} off {off} len {len}: wrong values"
                );
            }
        }
    }
}

/// `Backend::copy` and `copy_range` past the streaming threshold (the copy's tasks stream), at an
/// unaligned offset, against the source.
#[test]
fn large_copies_stream_and_match() {
    let be = Cpu::new(2);
    let n = streaming_copy_min_bytes() / 4 + 1237;
    let data: Vec<f32> = (0..n).map(|i| ((i * 104729) % 997) as f32 * 0.01 - 5.0).collect();
    let src = be.upload(&data, &[n], F32).unwrap();
    let mut dst = be.alloc(&[n], F32).unwrap();
    be.copy(&src, &mut dst).unwrap();
    assert!(dst.buf().iter().zip(&data).all(|(a, b)| a.to_bits() == b.to_bits()), "copy differs from its source");
    let mut dst = be.alloc(&[n + 8], F32).unwrap();
    be.copy_range(&src, 1, &mut dst, 3, n - 1).unwrap();
    let d = dst.buf();
    assert!(d[..3].iter().chain(&d[n + 2..]).all(|x| x.is_nan()), "copy_range wrote outside its range");
    assert!(d[3..n + 2].iter().zip(&data[1..]).all(|(a, b)| a.to_bits() == b.to_bits()), "copy_range differs");
}
