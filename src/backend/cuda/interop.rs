//! Interoperation with other CUDA runtimes on the same device (PyTorch through DLPack): copies
//! between a tensor and memory another runtime owns, and ordering between this backend's stream
//! and theirs, so data crosses without a trip through host memory.

use super::error::{drv, err};
use super::Cuda;
use crate::error::BackendErrorKind;
use crate::{Result, Tensor};
use cudarc::driver::{result, sys};
use std::ffi::c_void;

impl Cuda {
    /// The device's index.
    pub fn ordinal(&self) -> usize {
        self.dev.info.ordinal
    }

    /// The raw handle of the one stream all of this backend's work goes to.
    pub fn stream_handle(&self) -> *mut c_void {
        self.dev.cu_stream().cast()
    }

    /// Copies `dst`'s size in bytes from device address `src`, queued on this backend's stream.
    ///
    /// # Safety
    /// `src` must be the address of at least `dst.numel() · dst.dtype().size()` readable bytes on
    /// this backend's device, holding values of `dst`'s dtype, that stay allocated and unwritten
    /// until the copy has run (order the other runtime's work with [`Cuda::wait_for_stream`]
    /// before, and [`Cuda::signal_stream`] after).
    pub unsafe fn copy_from_device_ptr(&self, src: u64, dst: &mut Tensor<Cuda>) -> Result<()> {
        let len = dst.numel() * dst.dtype().size();
        self.dev.copy(dst.buf.device_ptr(), src, len)
    }

    /// Copies `src`'s bytes to device address `dst`, queued on this backend's stream.
    ///
    /// # Safety
    /// `dst` must be the address of at least `src.numel() · src.dtype().size()` writable bytes on
    /// this backend's device that nothing else reads or writes until the copy has run.
    pub unsafe fn copy_to_device_ptr(&self, src: &Tensor<Cuda>, dst: u64) -> Result<()> {
        let len = src.numel() * src.dtype().size();
        self.dev.copy(dst, src.buf.device_ptr(), len)
    }

    /// Makes this backend's stream wait for the work queued on `stream` so far (an event recorded
    /// there and waited on here; the host does not block).
    ///
    /// # Safety
    /// `stream` must be a live stream handle of this backend's context (device), or null for the
    /// legacy default stream.
    pub unsafe fn wait_for_stream(&self, stream: *mut c_void) -> Result<()> {
        // SAFETY: the caller's contract; ours is a live stream of this context.
        unsafe { self.order(stream.cast(), self.dev.cu_stream(), "waiting for another runtime's stream") }
    }

    /// Makes `stream` wait for the work queued on this backend's stream so far.
    ///
    /// # Safety
    /// As [`Cuda::wait_for_stream`].
    pub unsafe fn signal_stream(&self, stream: *mut c_void) -> Result<()> {
        // SAFETY: the caller's contract; ours is a live stream of this context.
        unsafe { self.order(self.dev.cu_stream(), stream.cast(), "making another runtime's stream wait for ours") }
    }

    /// `after` waits for the work queued on `before` so far.
    ///
    /// # Safety
    /// Both are live streams of this context (or null: the legacy default stream).
    unsafe fn order(&self, before: sys::CUstream, after: sys::CUstream, what: &str) -> Result<()> {
        let mut st = self.dev.exec();
        st.host_op(what)?;
        if before == after {
            return Ok(());
        }
        self.dev.bind()?;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| drv(e, what))?;
        // SAFETY: `event` was just created; the streams are live (the caller's contract).
        let r = unsafe {
            result::event::record(event, before)
                .and_then(|()| result::stream::wait_event(after, event, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))
        };
        // SAFETY: created above and destroyed once; a wait already queued on it still completes
        // (the driver releases the event when it has).
        let destroyed = unsafe { result::event::destroy(event) };
        r.map_err(|e| drv(e, what))?;
        destroyed.map_err(|e| drv(e, what))?;
        drop(st);
        Ok(())
    }

    /// Checks that a device address lies on this backend's device (a pointer of another device
    /// would make the copies above fault).
    pub fn check_device_ptr(&self, ptr: u64) -> Result<()> {
        let mut ordinal: i32 = -1;
        self.dev.bind()?;
        // SAFETY: cuPointerGetAttribute writes one int (the device ordinal) through the pointer,
        // which is valid; an address the driver does not know is an error, not UB.
        let r = unsafe {
            sys::cuPointerGetAttribute(
                (&mut ordinal as *mut i32).cast::<c_void>(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr,
            )
        }
        .result();
        match r {
            Ok(()) if ordinal as usize == self.ordinal() => Ok(()),
            Ok(()) => Err(err(
                BackendErrorKind::InvalidUse,
                format!("address {ptr:#x} is on CUDA device {ordinal}, this backend on device {}", self.ordinal()),
            )),
            Err(e) => Err(drv(e, format!("address {ptr:#x} is not device memory the driver knows"))),
        }
    }
}
