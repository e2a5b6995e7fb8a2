//! The context, its one stream and the stream's state: what the CUDA backend and its buffers
//! share. Kernel modules are in modules.rs, memory in memory.rs.

use super::error::{describe, drv, drv_kernel, err};
use super::exec::{ExecState, Mode, UnitReport};
use super::modules::{load_modules, KernelTable, Module};
use super::probe::{catch, device_count, device_info, driver_present, kernels_built, DeviceInfo};
use crate::error::BackendErrorKind;
use crate::Result;
use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaStream};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) const KERNELS_NOT_BUILT: &str =
    "kernels not built (nvcc was missing at build time; run scripts/install-cuda.sh and rebuild)";

/// The context, stream, modules and stream state shared by the backend and its buffers.
pub(crate) struct Device {
    pub info: DeviceInfo,
    pub ctx: Arc<CudaContext>,
    /// The one stream all work goes to (non-blocking: the legacy default stream cannot be
    /// captured into a graph).
    pub stream: Arc<CudaStream>,
    pub(super) modules: Vec<Module>,
    /// optional modules that did not load, with the reason
    pub(super) failed_modules: Vec<(&'static str, String)>,
    /// every kernel's function, resolved when the modules were loaded
    pub(super) kernels: KernelTable,
    /// stream-ordered allocation (cuMemAllocAsync/cuMemFreeAsync) is supported
    pub(super) async_alloc: bool,
    /// synchronise after every eager launch (CudaOptions::sync_launches): errors name the kernel
    pub sync_launches: bool,
    exec: Mutex<ExecState>,
    /// errors of frees in `Drop`, reported by the next synchronising call
    pub(super) pending: Mutex<Vec<String>>,
}

// SAFETY: the raw driver handles (CUmodule, CUfunction) are process-wide objects of a context
// that stays alive as long as `ctx`; the driver API is thread-safe, cudarc's context and stream
// are Send + Sync, and all mutable state is behind mutexes.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Device {
    pub fn new(ordinal: usize, sync_launches: bool) -> Result<Arc<Self>> {
        let _ = driver_present();
        let n = device_count()?;
        if n == 0 {
            return Err(err(BackendErrorKind::NoDevice, "no CUDA device (the driver found none)"));
        }
        if ordinal >= n {
            return Err(err(BackendErrorKind::NoDevice, format!("no CUDA device {ordinal}: {n} device(s) present")));
        }
        if !kernels_built() {
            return Err(err(BackendErrorKind::NotBuilt, KERNELS_NOT_BUILT));
        }
        let ctx = catch("creating a CUDA context", || CudaContext::new(ordinal))
            .map_err(|m| err(BackendErrorKind::Driver, m))?
            .map_err(|e| drv(e, format!("creating a context on CUDA device {ordinal}")))?;
        let info = catch("querying the device", || device_info(&ctx))
            .map_err(|m| err(BackendErrorKind::Driver, m))?
            .map_err(|e| drv(e, format!("querying CUDA device {ordinal}")))?;
        if info.driver_version < 13000 {
            return Err(err(BackendErrorKind::UnsupportedDevice, format!(
                "{}: the driver supports CUDA {}.{}, but the kernels were built with nvcc 13.0 and need a CUDA 13 driver (R580 or newer)",
                info.name,
                info.driver_version / 1000,
                (info.driver_version % 1000) / 10
            )));
        }
        let (major, minor) = info.compute_capability;
        if major < 8 {
            return Err(err(BackendErrorKind::UnsupportedDevice, format!(
                "{} has compute capability {major}.{minor}; the kernels need sm_80 or newer (bf16 tensor cores, cp.async)",
                info.name
            )));
        }
        // SAFETY: this backend never creates a CudaSlice (it owns raw allocations, see
        // `CudaBuf`) and uses one stream, so cudarc's per-slice events have nothing to order;
        // without them `new_stream` does not synchronise the context either.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| drv(e, "creating a CUDA stream"))?;
        let async_alloc = ctx.has_async_alloc();
        if async_alloc {
            super::memory::keep_pool_memory(&ctx)?;
        }
        let (modules, failed_modules, kernels) = load_modules(&ctx, &info)?;
        Ok(Arc::new(Device {
            info,
            ctx,
            stream,
            modules,
            failed_modules,
            kernels,
            async_alloc,
            sync_launches,
            exec: Mutex::new(ExecState::new()),
            pending: Mutex::new(Vec::new()),
        }))
    }

    pub fn exec(&self) -> MutexGuard<'_, ExecState> {
        lock(&self.exec)
    }

    /// Makes the context current on the calling thread (the backend may be used from any
    /// thread; raw driver calls need it).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| drv(e, "making the CUDA context current on this thread"))
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Reports an error recorded where none could be returned (a failed free in `Drop`).
    pub fn take_pending(&self) -> Result<()> {
        let mut p = lock(&self.pending);
        if p.is_empty() {
            return Ok(());
        }
        let msgs = std::mem::take(&mut *p);
        Err(err(BackendErrorKind::Driver, msgs.join("; ")))
    }

    fn last_kernel(&self, st: &ExecState) -> String {
        st.last_kernel.map_or_else(String::new, |k| format!(" (last kernel launched: {})", k.name()))
    }

    /// Waits for all queued work (a host operation: not allowed inside a graph unit).
    pub fn synchronize(&self, what: &str) -> Result<()> {
        let mut st = self.exec();
        st.host_op(what)?;
        self.sync_locked(&st, what)?;
        drop(st);
        self.take_pending()
    }

    pub(super) fn sync_locked(&self, st: &ExecState, what: &str) -> Result<()> {
        self.stream.synchronize().map_err(|e| {
            let what = format!(
                "{what}: synchronizing the stream{}; an earlier asynchronous launch failed \
                 (CudaOptions::sync_launches or compute-sanitizer names the kernel)",
                self.last_kernel(st)
            );
            match st.last_kernel {
                Some(k) => drv_kernel(e, k.name(), what),
                None => drv(e, what),
            }
        })
    }

    /// Starts a capture unit: the exec state in capture mode and the stream capturing this
    /// thread's work (graph_run units, bench graphs). On failure nothing is left running.
    pub fn begin_capture(&self) -> Result<()> {
        let mut st = self.exec();
        st.begin(Mode::Capture)?;
        let begun = self.bind().and_then(|()| {
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| drv(e, "cuStreamBeginCapture"))
        });
        if begun.is_err() {
            st.end();
            drop(st);
            self.free_deferred();
        }
        begun
    }

    /// Ends the stream's capture and instantiates what it recorded (None: nothing was enqueued);
    /// `what` names the graph in an error. The unit stays open: [`Device::end_unit`] closes it.
    pub fn end_capture(&self, what: &str) -> Result<Option<CudaGraph>> {
        let _st = self.exec();
        self.bind().and_then(|()| {
            self.stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| drv(e, format!("ending the capture / instantiating {what}")))
        })
    }

    /// Ends the running unit and frees what was deferred.
    pub fn end_unit(&self) -> UnitReport {
        let report = self.exec().end();
        self.free_deferred();
        report
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Runs when the backend and every buffer are gone.
        if let Err(e) = self.stream.synchronize() {
            eprintln!("deltadit cuda: synchronizing the stream at shutdown: {}", describe(&e));
        }
        for m in &self.modules {
            // SAFETY: loaded in `load_modules`, unloaded exactly once here; no work that uses
            // its functions is queued any more (synchronised above).
            if let Err(e) = unsafe { result::module::unload(m.handle) } {
                eprintln!("deltadit cuda: unloading kernels/{}.cu: {}", m.stem, describe(&e));
            }
        }
        if let Some(p) = self.pending.get_mut().ok().filter(|p| !p.is_empty()) {
            eprintln!("deltadit cuda: unreported errors: {}", p.join("; "));
        }
    }
}
