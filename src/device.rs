//! Backend selection for the CLI and library callers that pick a device at run time.

use crate::backend::cuda::{Cuda, CudaOptions};
use crate::backend::{cpu::Cpu, sim::Sim, AttentionKernel};
use crate::{DType, Error, Result};
use std::str::FromStr;

/// Which backend to run on (`cpu`, `sim`, `cuda` as strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// [`Cpu`]: f32 on the host
    Cpu,
    /// [`Sim`]: the CUDA kernels on the host, through the SIMT shim
    Sim,
    /// [`Cuda`]: the GPU
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

/// A backend chosen at run time; [`with_backend!`](crate::with_backend) runs generic code on it.
// One per process, and `with_backend!` hands out the backend itself: no box.
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    /// the CPU backend
    Cpu(Cpu),
    /// the sim backend
    Sim(Sim),
    /// the CUDA backend (device 0)
    Cuda(Cuda),
}

impl AnyBackend {
    /// The backend of `device` computing in `dtype` (default: the device's), with `threads` GEMM
    /// threads on the CPU (default: all) and the CUDA backend's default options.
    pub fn new(device: Device, dtype: Option<DType>, threads: Option<usize>) -> Result<Self> {
        Self::with_options(device, dtype, threads, CudaOptions::default())
    }

    /// As [`AnyBackend::new`], with the CUDA backend's options.
    pub fn with_options(
        device: Device,
        dtype: Option<DType>,
        threads: Option<usize>,
        cuda: CudaOptions,
    ) -> Result<Self> {
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
            Device::Cuda => Ok(AnyBackend::Cuda(Cuda::with_options(0, dtype, cuda)?)),
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

    /// Chooses the attention kernel of a kernel backend (the CPU backend has one: only
    /// [`AttentionKernel::Mma`], the default, is accepted there).
    pub fn set_attention_kernel(&self, k: AttentionKernel) -> Result<()> {
        match self {
            AnyBackend::Cpu(_) if k == AttentionKernel::default() => Ok(()),
            AnyBackend::Cpu(_) => Err(Error::param("attention kernel", k, "the default on the CPU backend")),
            AnyBackend::Sim(b) => {
                b.set_attention_kernel(k);
                Ok(())
            }
            AnyBackend::Cuda(b) => b.set_attention_kernel(k),
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
            Err(why) => (Device::Cpu, why.chain()),
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
