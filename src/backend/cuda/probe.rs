//! Driver detection and the description of a device: nothing here panics when CUDA is missing.
//! cudarc loads libcuda lazily and panics when it is absent, so [`driver_present`] looks for the
//! library first, and every call into cudarc that could still panic (a missing symbol in an old
//! driver) runs under `catch_unwind`.

use super::error::{bytes, describe};
use crate::backend::build_info::FATBINS;
use crate::error::BackendErrorKind;
use crate::Result;
use cudarc::driver::{sys, CudaContext, DriverError};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// the device's index
    pub ordinal: usize,
    /// e.g. `NVIDIA H100 80GB HBM3`
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100/H200
    pub compute_capability: (i32, i32),
    /// device memory in bytes
    pub total_memory: usize,
    /// free device memory when probed
    pub free_memory: usize,
    /// streaming multiprocessors
    pub multiprocessors: i32,
    /// the most dynamic shared memory one block may opt in to
    pub max_shared_memory_per_block: usize,
    /// CUDA version the driver supports, e.g. 13000 for 13.0
    pub driver_version: i32,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ma, mi) = self.compute_capability;
        write!(
            f,
            "CUDA device {}: {} (sm_{ma}{mi}, {} SMs, {} memory, {} free; driver supports CUDA {}.{})",
            self.ordinal,
            self.name,
            self.multiprocessors,
            bytes(self.total_memory),
            bytes(self.free_memory),
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10
        )
    }
}

/// Runs `f`, turning a panic inside cudarc into an error message.
pub(crate) fn catch<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("{what}: cudarc panicked: {msg}")
    })
}

/// Whether libcuda can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: is_culib_present only dlopen()s the candidate names of libcuda (running the
    // library's initialisers, as loading the driver in any CUDA program does) and closes them.
    catch("looking for libcuda", || unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// Whether the kernels were compiled into this build (nvcc was found at build time).
pub fn kernels_built() -> bool {
    !FATBINS.is_empty()
}

fn no_device(msg: impl Into<String>) -> crate::Error {
    super::error::err(BackendErrorKind::NoDevice, msg)
}

/// Number of CUDA devices; an error ([`BackendErrorKind::NoDevice`]) when there is no driver or it
/// fails to initialise.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(no_device(
            "no CUDA driver (libcuda) found: install the NVIDIA driver or add the folder holding libcuda.so.1 to LD_LIBRARY_PATH",
        ));
    }
    match catch("cuInit", CudaContext::device_count).map_err(no_device)? {
        Ok(n) => Ok(n.max(0) as usize),
        Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => Ok(0),
        Err(e) => Err(no_device(format!("the CUDA driver failed to initialise: {}", describe(&e)))),
    }
}

/// Describes device 0 without ever panicking; the error says why there is no usable device.
pub fn probe() -> Result<DeviceInfo> {
    probe_ordinal(0)
}

/// Describes device `ordinal`.
pub fn probe_ordinal(ordinal: usize) -> Result<DeviceInfo> {
    let n = device_count()?;
    if n == 0 {
        return Err(no_device("no CUDA device (the driver found none)"));
    }
    if ordinal >= n {
        return Err(no_device(format!("no CUDA device {ordinal}: {n} device(s) present")));
    }
    let ctx = catch("creating a CUDA context", || CudaContext::new(ordinal))
        .map_err(no_device)?
        .map_err(|e| super::error::drv(e, format!("creating a context on CUDA device {ordinal}")))?;
    catch("querying the device", || device_info(&ctx))
        .map_err(no_device)?
        .map_err(|e| super::error::drv(e, format!("querying CUDA device {ordinal}")))
}

/// A GPU is present and the kernels were built: `Cuda::new` has what it needs.
pub fn available() -> bool {
    kernels_built() && probe().is_ok()
}

pub(super) fn device_info(ctx: &Arc<CudaContext>) -> std::result::Result<DeviceInfo, DriverError> {
    use sys::CUdevice_attribute as A;
    let mut driver_version = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer, which is valid.
    unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result()?;
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        total_memory: ctx.total_mem()?,
        free_memory: ctx.mem_get_info()?.0,
        multiprocessors: ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        max_shared_memory_per_block: ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(0)
            as usize,
        driver_version,
    })
}
