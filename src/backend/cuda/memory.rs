//! Device memory: allocations (stream-ordered where the driver has memory pools), frees deferred
//! past running graph units, and the copies between host and device.

use super::device::{lock, Device};
use super::error::{bytes, drv, drv_alloc, err};
use super::exec::{Mode, Op};
use crate::error::BackendErrorKind;
use crate::Result;
use cudarc::driver::{result, sys, CudaContext};
use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

impl Device {
    /// A device allocation of at least `len` bytes (rounded up to 16, at least 16, so every
    /// buffer has a 16-byte aligned base and size like the kernels' vector accesses assume).
    pub fn alloc(self: &Arc<Self>, len: usize, what: &dyn Fn() -> String) -> Result<CudaBuf> {
        let size = len.checked_add(15).map(|v| (v / 16).max(1) * 16).ok_or_else(|| {
            err(
                BackendErrorKind::OutOfMemory { requested: len },
                format!("allocating {len} bytes for {}: size overflows", what()),
            )
        })?;
        let mut st = self.exec();
        st.host_op("allocation")?;
        self.bind()?;
        // SAFETY: allocation calls with a size and (for the stream-ordered one) our live stream;
        // the memory is uninitialised, which is fine for a buffer of raw bytes.
        let r = unsafe {
            if self.async_alloc {
                result::malloc_async(self.cu_stream(), size)
            } else {
                result::malloc_sync(size)
            }
        };
        drop(st);
        let ptr = r.map_err(|e| {
            let free = self
                .ctx
                .mem_get_info()
                .map(|(f, t)| format!(" ({} of {} free)", bytes(f), bytes(t)))
                .unwrap_or_default();
            drv_alloc(e, size, format!("allocating {} for {}{free}", bytes(size), what()))
        })?;
        let buf = CudaBuf { ptr, bytes: size, owner: Some(self.clone()) };
        if ptr % 16 != 0 {
            return Err(err(
                BackendErrorKind::Driver,
                format!("the driver returned a device pointer {ptr:#x} that is not 16-byte aligned"),
            ));
        }
        Ok(buf)
    }

    /// Frees `ptr` (from `CudaBuf::drop`): stream-ordered, after all work queued so far, or
    /// deferred to the end of a running graph unit.
    pub(super) fn free(&self, ptr: u64) {
        let mut st = self.exec();
        if st.free_must_wait(ptr) {
            return;
        }
        self.free_now(ptr);
    }

    /// Frees the allocations deferred while a unit ran (call after the unit ended).
    pub fn free_deferred(&self) {
        let st = self.exec();
        if st.mode != Mode::Eager {
            return;
        }
        let mut st = st;
        let ptrs = std::mem::take(&mut st.deferred_frees);
        for p in ptrs {
            self.free_now(p);
        }
    }

    /// Needs the exec lock held by the caller (no capture may begin meanwhile).
    fn free_now(&self, ptr: u64) {
        let r = self.bind().and_then(|()| {
            // SAFETY: `ptr` came from the matching allocation call in `alloc` and is freed once
            // (its CudaBuf is being dropped). Stream-ordered: the free happens after every
            // operation queued on our stream so far, i.e. after all work that could use it (all
            // work goes to this one stream). Without memory pools, the stream is synchronised
            // first so that no queued work can still use the memory.
            unsafe {
                if self.async_alloc {
                    result::free_async(ptr, self.cu_stream()).map_err(|e| drv(e, "freeing device memory"))
                } else {
                    self.stream.synchronize().map_err(|e| drv(e, "synchronizing before a free"))?;
                    result::free_sync(ptr).map_err(|e| drv(e, "freeing device memory"))
                }
            }
        });
        if let Err(e) = r {
            lock(&self.pending).push(e.to_string());
        }
    }

    /// Device-to-device copy of `len` bytes, queued on the stream.
    pub fn copy(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut st = self.exec();
        if !st.enqueue("copy", Op::Copy { dst, src, bytes: len as u64 })? {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the callers checked that [src, src + len) and [dst, dst + len) lie inside live
        // allocations (tensor bounds); stream order keeps them alive until the copy ran.
        unsafe { result::memcpy_dtod_async(dst, src, len, self.cu_stream()) }
            .map_err(|e| drv(e, format!("copying {} device to device", bytes(len))))
    }

    /// Host → device copy into `dst` (waits until it is done, so `data` may go right after).
    pub fn upload<T: bytemuck::Pod>(&self, dst: &CudaBuf, data: &[T]) -> Result<()> {
        let len = std::mem::size_of_val(data);
        if len > dst.bytes {
            return Err(err(
                BackendErrorKind::InvalidUse,
                format!("upload of {len} bytes into a {}-byte buffer", dst.bytes),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let mut st = self.exec();
        st.host_op("host-to-device copy")?;
        self.bind()?;
        // SAFETY: `dst` is a live allocation of at least `len` bytes; `data` stays borrowed
        // until the stream synchronisation below has completed the copy.
        unsafe { result::memcpy_htod_async(dst.ptr, data, self.cu_stream()) }
            .map_err(|e| drv(e, format!("copying {} host to device", bytes(len))))?;
        self.sync_locked(&st, "host-to-device copy")
    }

    /// Device → host copy of `out.len()` elements from `src` (waits for all queued work).
    pub fn download<T: bytemuck::Pod>(&self, src: &CudaBuf, out: &mut [T]) -> Result<()> {
        let len = std::mem::size_of_val(out);
        if len > src.bytes {
            return Err(err(
                BackendErrorKind::InvalidUse,
                format!("download of {len} bytes from a {}-byte buffer", src.bytes),
            ));
        }
        let mut st = self.exec();
        st.host_op("device-to-host copy")?;
        if len > 0 {
            self.bind()?;
            // SAFETY: `src` is a live allocation of at least `len` bytes; `out` is exclusively
            // borrowed until the synchronisation below has completed the copy. Queued on our
            // stream, the copy runs after all work that writes `src`.
            unsafe { result::memcpy_dtoh_async(out, src.ptr, self.cu_stream()) }
                .map_err(|e| drv(e, format!("copying {} device to host", bytes(len))))?;
        }
        self.sync_locked(&st, "device-to-host copy")?;
        drop(st);
        self.take_pending()
    }
}

/// Makes the device's memory pool keep freed memory instead of returning it to the driver at
/// every synchronisation (the default release threshold is 0), so per-step temporaries (the
/// rel_l1 probe's partial sums) cost no driver allocation.
pub(super) fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    // SAFETY: cu_device is the context's device; the pool handle stays owned by the driver.
    let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }
        .map_err(|e| drv(e, "getting the device memory pool"))?;
    let mut threshold: u64 = u64::MAX;
    // SAFETY: CU_MEMPOOL_ATTR_RELEASE_THRESHOLD takes a cuuint64_t, which `threshold` is; the
    // pointer is only read during the call.
    unsafe {
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast::<c_void>(),
        )
    }
    .map_err(|e| drv(e, "setting the memory pool's release threshold"))
}

/// One device allocation (the storage of a `Tensor<Cuda>`). Its base address is 16-byte aligned
/// (the driver's allocations are 256-byte aligned) and its size a multiple of 16.
pub struct CudaBuf {
    ptr: u64,
    bytes: usize,
    /// None for a non-owning alias (see [`CudaBuf::alias`]).
    owner: Option<Arc<Device>>,
}

impl CudaBuf {
    /// The device address.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Size of the allocation in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// A second handle to the same memory that frees nothing; it must not outlive `self`
    /// (used for in-place element-wise kernels, which take an input and an output tensor).
    pub(crate) fn alias(&self) -> CudaBuf {
        CudaBuf { ptr: self.ptr, bytes: self.bytes, owner: None }
    }
}

impl fmt::Debug for CudaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaBuf({:#x}, {} bytes{})", self.ptr, self.bytes, if self.owner.is_none() { ", alias" } else { "" })
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        if let Some(dev) = self.owner.take() {
            dev.free(self.ptr);
        }
    }
}
