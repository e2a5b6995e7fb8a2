//! Element types of tensors and weights.

use std::fmt;
use std::str::FromStr;

/// Storage type of a tensor. The CPU backend computes in f32; the sim and CUDA backends keep
/// weights and activations in bf16 or f16 (f32 accumulation) and latents in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE single precision
    F32,
    /// bfloat16
    BF16,
    /// IEEE half precision
    F16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// `f32`, `bf16` or `f16`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// Rounds an f32 to this type and back (what storing it costs).
    pub fn round(self, v: f32) -> f32 {
        match self {
            DType::F32 => v,
            DType::BF16 => half::bf16::from_f32(v).to_f32(),
            DType::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// A quiet-NaN bit pattern used to poison buffers of this type.
    pub const fn nan_bits(self) -> u32 {
        match self {
            DType::F32 => 0x7fc0_0000,
            DType::BF16 => 0x7fc0,
            DType::F16 => 0x7e00,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            _ => Err(crate::Error::param("dtype", s, "one of f32, bf16, f16")),
        }
    }
}

/// Converts f32 values to the 16-bit storage of `dtype` (bf16/f16 bit patterns).
pub(crate) fn f32_to_bits16(dtype: DType, src: &[f32], dst: &mut [u16]) {
    debug_assert_eq!(src.len(), dst.len());
    match dtype {
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = half::bf16::from_f32(s).to_bits()),
        DType::F16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = half::f16::from_f32(s).to_bits()),
        DType::F32 => unreachable!("f32 has no 16-bit storage"),
    }
}

/// Converts 16-bit storage of `dtype` back to f32.
pub(crate) fn bits16_to_f32(dtype: DType, src: &[u16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    match dtype {
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = half::bf16::from_bits(s).to_f32()),
        DType::F16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = half::f16::from_bits(s).to_f32()),
        DType::F32 => unreachable!("f32 has no 16-bit storage"),
    }
}
