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
