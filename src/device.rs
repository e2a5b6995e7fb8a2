//! Backend selection for the CLI and library callers that pick a device at run time.

use crate::backend::kernels::{AttentionKernel, KernelDevice};
use crate::backend::{cpu::Cpu, sim::Sim};
use crate::{DType, Error, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Sim,
    Cuda,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "sim" => Ok(Device::Sim),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(Error::param("device", s, "one of cpu, cuda, sim")),
        }
    }
}

impl Device {
    /// The dtype a device computes in when none is asked for.
    pub fn default_dtype(self) -> DType {
        match self {
            Device::Cpu => DType::F32,
            Device::Sim | Device::Cuda => DType::BF16,
        }
    }
}

/// A backend chosen at run time.
pub enum AnyBackend {
    Cpu(Cpu),
    Sim(Sim),
    Cuda(crate::backend::cuda::Cuda),
}

impl AnyBackend {
    pub fn new(device: Device, dtype: Option<DType>, threads: Option<usize>) -> Result<Self> {
        let dtype = dtype.unwrap_or(device.default_dtype());
        match device {
            Device::Cpu => {
                if dtype != DType::F32 {
                    return Err(Error::param(
                        "dtype",
                        dtype,
                        "f32 on the CPU backend (bf16/f16 run on --device cuda or sim)",
                    ));
                }
                Ok(AnyBackend::Cpu(Cpu::new(threads.unwrap_or_else(rayon::current_num_threads))))
            }
            Device::Sim => Ok(AnyBackend::Sim(Sim::new(dtype)?)),
            Device::Cuda => Ok(AnyBackend::Cuda(crate::backend::cuda::Cuda::new(0, dtype)?)),
        }
    }

    /// The attention kernel of a kernel backend (None on the CPU backend, which has one).
    pub fn attention_kernel(&self) -> Option<AttentionKernel> {
        match self {
            AnyBackend::Cpu(_) => None,
            AnyBackend::Sim(b) => Some(b.attention_kernel()),
            AnyBackend::Cuda(b) => Some(b.attention_kernel()),
        }
    }

    /// CUDA when a GPU and the kernels are present, else the CPU (with the reason).
    pub fn auto() -> (Device, String) {
        match crate::backend::cuda::probe() {
            Ok(info) if crate::backend::cuda::kernels_built() => (Device::Cuda, info.to_string()),
            Ok(_) => (
                Device::Cpu,
                "a GPU is present but the CUDA kernels were not built (run scripts/install-cuda.sh and rebuild)".into(),
            ),
            Err(why) => (Device::Cpu, why),
        }
    }
}

/// Runs `$body` with `$b` bound to the concrete backend inside an [`AnyBackend`].
#[macro_export]
macro_rules! with_backend {
    ($any:expr, |$b:ident| $body:expr) => {
        match $any {
            $crate::device::AnyBackend::Cpu($b) => $body,
            $crate::device::AnyBackend::Sim($b) => $body,
            $crate::device::AnyBackend::Cuda($b) => $body,
        }
    };
}
