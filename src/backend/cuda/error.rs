//! Error helpers: every driver and cuBLASLt status becomes an [`Error::Backend`] of the `cuda`
//! backend that says what was being done ("launching kernel attention_d72_bf16 (grid …)",
//! "allocating 64.0 MiB for a [4096, 4096] bf16 tensor", …) followed by the CUDA error name and
//! its description.

use crate::Error;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::{sys, DriverError};
use std::fmt::Display;

pub(crate) const BACKEND: &str = "cuda";

/// An error of the CUDA backend.
pub(crate) fn err(msg: impl Into<String>) -> Error {
    Error::backend(BACKEND, msg)
}

/// `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
pub(crate) fn describe(e: &DriverError) -> String {
    // cuGetErrorName/String only read static tables; they fail for unknown codes.
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// `what: CUDA_ERROR_… (…)` as a crate error.
pub(crate) fn drv(e: DriverError, what: impl Display) -> Error {
    err(format!("{what}: {}", describe(&e)))
}

pub(crate) fn is_oom(e: &DriverError) -> bool {
    e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
}

/// Checks a cuBLASLt status.
pub(crate) fn blas(status: lt::cublasStatus_t, what: impl FnOnce() -> String) -> crate::Result<()> {
    match status {
        lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        s => Err(err(format!("{}: cuBLASLt {s:?}", what()))),
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

/// Reads a boolean switch from the environment: unset → `default`; "0", "false", "off", "no" or
/// "" → false; anything else → true.
pub(crate) fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "off" | "no"),
    }
}
