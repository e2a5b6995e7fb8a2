//! Run-time SIMD dispatch for the CPU backend's element-wise loops.
//!
//! The crate is built for baseline x86-64 (SSE2), so its loops vectorise 4 wide. The hot loops
//! (activations, LayerNorm + modulation, the residual/Δ updates, softmax) are compiled again
//! for AVX2+FMA and AVX-512 by [`multiversion!`] and the best level the CPU reports is called.
//! Rust never contracts `a·b + c` into an FMA and never reorders float sums, so every level
//! computes bit-identical results; only the speed differs (tests/cpu_simd.rs checks both).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// An instruction-set level the element-wise loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// x86-64 baseline (SSE2), or any non-x86 target.
    Baseline,
    /// AVX2 + FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F/VL + AVX2 + FMA.
    Avx512,
}

impl SimdLevel {
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512];

    fn from_u8(v: u8) -> Option<SimdLevel> {
        SimdLevel::ALL.get(v.checked_sub(1)? as usize).copied()
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<SimdLevel> {
        SimdLevel::ALL
            .into_iter()
            .find(|l| l.to_string() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| crate::Error::param("SIMD level", s, "baseline, avx2 or avx512"))
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        })
    }
}

/// The best level this CPU supports.
pub fn detected() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return SimdLevel::Avx512;
            }
            if avx2 {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    })
}

/// 0: no cap; otherwise 1 + the capped level's index in [`SimdLevel::ALL`].
static CAP: AtomicU8 = AtomicU8::new(0);

/// Caps the level the loops use (`None`: the detected one). Process-wide; for benchmarks and the
/// tests that compare levels. A cap above what the CPU has is lowered to [`detected`].
pub fn set_cap(cap: Option<SimdLevel>) {
    let v = cap.map_or(0, |l| SimdLevel::ALL.iter().position(|&a| a == l).unwrap_or(0) as u8 + 1);
    CAP.store(v, Ordering::Relaxed);
}

/// The level the loops run at now: the detected one, lowered by [`set_cap`].
#[inline]
pub fn level() -> SimdLevel {
    let d = detected();
    match SimdLevel::from_u8(CAP.load(Ordering::Relaxed)) {
        Some(cap) => cap.min(d),
        None => d,
    }
}

/// 0: by the CPU; 1: the AVX2 tiles; 2: the 512-bit kernels where available.
static WIDE_TILES: AtomicU8 = AtomicU8::new(0);

/// What [`set_wide_tiles`] last said (`None`: choose by the CPU).
fn wide_tiles() -> Option<bool> {
    match WIDE_TILES.load(Ordering::Relaxed) {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Chooses the register-tile kernels' width on AVX-512 CPUs: `Some(false)` the AVX2 tiles for
/// both the linear layer and attention, `Some(true)` the 512-bit kernels (the linear layer's
/// AVX-512 tiles; attention has none, so the `gemm` crate's AVX-512 path), `None` by the CPU
/// (the default; see [`attention_tile_level`] and [`linear_tile_level`]). Process-wide; for benchmarks and
/// the tests that run both on one machine.
pub fn set_wide_tiles(wide: Option<bool>) {
    WIDE_TILES.store(wide.map_or(0, |w| 1 + w as u8), Ordering::Relaxed);
}

/// Whether this CPU runs 512-bit FMAs at the 256-bit FLOP rate: AMD's family 25 (Zen 4; Zen 3,
/// the same family, has no AVX-512) splits each into two 256-bit halves.
pub fn half_rate_512() -> bool {
    static HALF: OnceLock<bool> = OnceLock::new();
    *HALF.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            // SAFETY: CPUID leaves 0 and 1 exist on every x86-64 CPU.
            #[allow(unused_unsafe)]
            let (vendor, sig) = unsafe { (__cpuid(0), __cpuid(1).eax) };
            let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
            let base = (sig >> 8) & 0xf;
            let family = if base == 0xf { base + ((sig >> 20) & 0xff) } else { base };
            amd && family == 0x19
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The instruction set of the attention tiles: [`level`], except AVX2 on AVX-512 CPUs that run
/// 512-bit FMAs at half rate ([`half_rate_512`]): there the AVX2 tiles measured 1.00–1.14× the
/// `gemm` crate's AVX-512 path (bench/results/2026-12-08-cpu-zen4-avx512-tiles), while on full-rate
/// AVX-512 the crate's 512-bit tiles are twice as wide. [`set_wide_tiles`] overrides the choice.
pub fn attention_tile_level() -> SimdLevel {
    let l = level();
    if l == SimdLevel::Avx512 && !wide_tiles().unwrap_or(!half_rate_512()) {
        SimdLevel::Avx2
    } else {
        l
    }
}

/// The instruction set of the linear layer's tiles: [`level`] (its AVX-512 tiles on every
/// AVX-512 CPU: on a Zen 4 they measured 0.97–1.04× the AVX2 tiles at 128 to 2048 rows and
/// 1.11–1.13× at 16), or AVX2 when [`set_wide_tiles`]`(Some(false))`.
pub fn linear_tile_level() -> SimdLevel {
    let l = level();
    if l == SimdLevel::Avx512 && wide_tiles() == Some(false) {
        SimdLevel::Avx2
    } else {
        l
    }
}

/// Defines a function whose body is compiled three times (baseline, AVX2+FMA, AVX-512) and
/// dispatched on [`level`] at each call; bodies should be loops over slices with `#[inline(always)]`
/// helpers, so the whole loop is built for the wider registers.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) { body($($arg),*) }
                match $crate::backend::cpu::simd::level() {
                    // SAFETY: level() reports AVX-512 F/VL, AVX2 and FMA only when the CPU has them.
                    $crate::backend::cpu::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: level() reports AVX2 and FMA only when the CPU has them.
                    $crate::backend::cpu::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::backend::cpu::simd::SimdLevel::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID's vendor and family, read against the kernel's /proc/cpuinfo (Linux x86-64 only).
    #[test]
    fn half_rate_512_is_amd_family_25() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let field = |key: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        };
        let (Some(vendor), Some(family)) = (field("vendor_id"), field("cpu family")) else { return };
        assert_eq!(half_rate_512(), vendor == "AuthenticAMD" && family == "25", "vendor {vendor}, family {family}");
    }

    #[test]
    fn levels_parse_from_their_names() {
        for l in SimdLevel::ALL {
            assert_eq!(l.to_string().parse::<SimdLevel>().unwrap(), l);
        }
        assert_eq!(" AVX2 ".parse::<SimdLevel>().unwrap(), SimdLevel::Avx2);
        let e = "sse4".parse::<SimdLevel>().unwrap_err().to_string();
        assert!(e.contains("sse4") && e.contains("avx512"), "{e}");
    }
}
