//! Error helpers: every driver and cuBLASLt status becomes an [`Error::Backend`] of the `cuda`
//! backend with a [`BackendErrorKind`], a context that says what was being done ("launching kernel
//! attention_d72_bf16 (grid …)", "allocating 64.0 MiB for a [4096, 4096] bf16 tensor", …) and the
//! driver's error (its name and description) as the source.

use crate::error::{BackendError, BackendErrorKind};
use crate::Error;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::{sys, DriverError};
use std::fmt::Display;

pub(crate) const BACKEND: &str = "cuda";

/// A CUDA driver or cuBLASLt status: the source of a CUDA backend error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name} ({description})")]
pub struct CudaStatus {
    /// e.g. `CUDA_ERROR_OUT_OF_MEMORY`
    pub name: String,
    /// the driver's description
    pub description: String,
}

/// An error of the CUDA backend of `kind`.
pub(crate) fn err(kind: BackendErrorKind, msg: impl Into<String>) -> Error {
    Error::backend(BACKEND, kind, msg)
}

/// The driver's name and description of `e`.
pub(crate) fn status(e: &DriverError) -> CudaStatus {
    // cuGetErrorName/String only read static tables; they fail for unknown codes.
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let description = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    CudaStatus { name, description }
}

/// `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
pub(crate) fn describe(e: &DriverError) -> String {
    status(e).to_string()
}

/// The kind of a driver failure: launch failures and faults by their codes, everything else
/// [`BackendErrorKind::Driver`].
fn kind_of(e: &DriverError, kernel: Option<&str>) -> BackendErrorKind {
    use sys::cudaError_enum as C;
    match e.0 {
        C::CUDA_ERROR_OUT_OF_MEMORY => BackendErrorKind::OutOfMemory { requested: 0 },
        C::CUDA_ERROR_NO_DEVICE | C::CUDA_ERROR_INVALID_DEVICE => BackendErrorKind::NoDevice,
        C::CUDA_ERROR_LAUNCH_FAILED
        | C::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
        | C::CUDA_ERROR_LAUNCH_TIMEOUT
        | C::CUDA_ERROR_ILLEGAL_ADDRESS
        | C::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | C::CUDA_ERROR_MISALIGNED_ADDRESS
        | C::CUDA_ERROR_INVALID_PC
        | C::CUDA_ERROR_HARDWARE_STACK_ERROR
        | C::CUDA_ERROR_ASSERT => BackendErrorKind::KernelLaunch { kernel: kernel.unwrap_or("unknown").to_string() },
        _ => BackendErrorKind::Driver,
    }
}

/// `what` failed with the driver error `e`.
pub(crate) fn drv(e: DriverError, what: impl Display) -> Error {
    Error::Backend(BackendError::new(BACKEND, kind_of(&e, None), what.to_string()).with_source(status(&e)))
}

/// Launching (or running) `kernel` failed with `e`.
pub(crate) fn drv_kernel(e: DriverError, kernel: &str, what: impl Display) -> Error {
    let kind = match kind_of(&e, Some(kernel)) {
        BackendErrorKind::Driver => BackendErrorKind::KernelLaunch { kernel: kernel.to_string() },
        k => k,
    };
    Error::Backend(BackendError::new(BACKEND, kind, what.to_string()).with_source(status(&e)))
}

/// An allocation of `requested` bytes failed with `e`.
pub(crate) fn drv_alloc(e: DriverError, requested: usize, what: impl Display) -> Error {
    let kind = match kind_of(&e, None) {
        BackendErrorKind::OutOfMemory { .. } => BackendErrorKind::OutOfMemory { requested },
        k => k,
    };
    Error::Backend(BackendError::new(BACKEND, kind, what.to_string()).with_source(status(&e)))
}

/// Checks a cuBLASLt status.
pub(crate) fn blas(status: lt::cublasStatus_t, what: impl FnOnce() -> String) -> crate::Result<()> {
    match status {
        lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        s => {
            let kind = match s {
                lt::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => BackendErrorKind::OutOfMemory { requested: 0 },
                lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => BackendErrorKind::UnsupportedLayout,
                _ => BackendErrorKind::Driver,
            };
            let source = CudaStatus { name: format!("{s:?}"), description: "cuBLASLt status".into() };
            Err(Error::Backend(BackendError::new(BACKEND, kind, what()).with_source(source)))
        }
    }
}

/// 1536 → "1.5 KiB".
pub(crate) fn bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
