//! Driver detection, the context and its one stream, the kernel modules (every fatbin of
//! kernels/*.cu, loaded once), the kernel function table and device memory.
//!
//! Nothing here panics when CUDA is missing: cudarc loads libcuda lazily and panics when it is
//! absent, so [`driver_present`] looks for the library first, and every call into cudarc that
//! could still panic (a missing symbol in an old driver) runs under `catch_unwind`.

use super::error::{bytes, describe, drv, err, is_oom};
use super::exec::{ExecState, Mode, Op, UnitReport};
use crate::backend::kernels::{KernelParams, LaunchCfg};
use crate::Result;
use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaStream, DriverError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::build_info::{FATBINS, NVCC};

pub(crate) const KERNELS_NOT_BUILT: &str =
    "kernels not built (nvcc was missing at build time; run scripts/install-cuda.sh and rebuild)";

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100/H200
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    /// free device memory when probed
    pub free_memory: usize,
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

/// Number of CUDA devices; an error when there is no driver or it fails to initialise.
pub fn device_count() -> std::result::Result<usize, String> {
    if !driver_present() {
        return Err("no CUDA driver (libcuda) found".into());
    }
    match catch("cuInit", CudaContext::device_count)? {
        Ok(n) => Ok(n.max(0) as usize),
        Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => Ok(0),
        Err(e) => Err(format!("the CUDA driver failed to initialise: {}", describe(&e))),
    }
}

/// Describes device 0 without ever panicking; the error says why there is no usable device.
pub fn probe() -> std::result::Result<DeviceInfo, String> {
    probe_ordinal(0)
}

/// Describes device `ordinal`.
pub fn probe_ordinal(ordinal: usize) -> std::result::Result<DeviceInfo, String> {
    let n = device_count()?;
    if n == 0 {
        return Err("no CUDA device".into());
    }
    if ordinal >= n {
        return Err(format!("no CUDA device {ordinal} ({n} present)"));
    }
    let ctx = catch("creating a CUDA context", || CudaContext::new(ordinal))?
        .map_err(|e| format!("creating a context on CUDA device {ordinal}: {}", describe(&e)))?;
    catch("querying the device", || device_info(&ctx))?
        .map_err(|e| format!("querying CUDA device {ordinal}: {}", describe(&e)))
}

/// A GPU is present and the kernels were built: `Cuda::new` has what it needs.
pub fn available() -> bool {
    kernels_built() && probe().is_ok()
}

fn device_info(ctx: &Arc<CudaContext>) -> std::result::Result<DeviceInfo, DriverError> {
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

/// One loaded fatbin.
struct Module {
    stem: &'static str,
    handle: sys::CUmodule,
    /// The image, copied to 8-byte-aligned memory and kept for the module's lifetime (the
    /// driver API does not document whether it keeps referring to it).
    _image: Box<[u64]>,
}

struct Func {
    name: String,
    f: sys::CUfunction,
    /// MAX_DYNAMIC_SHARED_SIZE_BYTES set on the function so far
    smem_limit: u32,
}

#[derive(Default)]
struct FuncTable {
    index: HashMap<String, usize>,
    funcs: Vec<Func>,
}

/// The context, stream, modules and stream state shared by the backend and its buffers.
pub(crate) struct Device {
    pub info: DeviceInfo,
    pub ctx: Arc<CudaContext>,
    /// The one stream all work goes to (non-blocking: the legacy default stream cannot be
    /// captured into a graph).
    pub stream: Arc<CudaStream>,
    modules: Vec<Module>,
    /// optional modules that did not load, with the reason
    failed_modules: Vec<(&'static str, String)>,
    funcs: Mutex<FuncTable>,
    /// stream-ordered allocation (cuMemAllocAsync/cuMemFreeAsync) is supported
    async_alloc: bool,
    /// synchronise after every eager launch (DELTADIT_CUDA_SYNC=1): errors name the kernel
    pub sync_launches: bool,
    exec: Mutex<ExecState>,
    /// errors of frees in `Drop`, reported by the next synchronising call
    pending: Mutex<Vec<String>>,
}

// SAFETY: the raw driver handles (CUmodule, CUfunction) are process-wide objects of a context
// that stays alive as long as `ctx`; the driver API is thread-safe, cudarc's context and stream
// are Send + Sync, and all mutable state is behind mutexes.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Device {
    pub fn new(ordinal: usize, sync_launches: bool) -> Result<Arc<Self>> {
        if !driver_present() {
            return Err(err(
                "no CUDA driver (libcuda) found: install the NVIDIA driver or add the folder holding libcuda.so.1 to LD_LIBRARY_PATH",
            ));
        }
        let n = device_count().map_err(err)?;
        if n == 0 {
            return Err(err("no CUDA device (the driver found none)"));
        }
        if ordinal >= n {
            return Err(err(format!("no CUDA device {ordinal}: {n} device(s) present")));
        }
        if !kernels_built() {
            return Err(err(KERNELS_NOT_BUILT));
        }
        let ctx = catch("creating a CUDA context", || CudaContext::new(ordinal))
            .map_err(err)?
            .map_err(|e| drv(e, format!("creating a context on CUDA device {ordinal}")))?;
        let info = catch("querying the device", || device_info(&ctx))
            .map_err(err)?
            .map_err(|e| drv(e, format!("querying CUDA device {ordinal}")))?;
        if info.driver_version < 13000 {
            return Err(err(format!(
                "{}: the driver supports CUDA {}.{}, but the kernels were built with nvcc 13.0 and need a CUDA 13 driver (R580 or newer)",
                info.name,
                info.driver_version / 1000,
                (info.driver_version % 1000) / 10
            )));
        }
        let (major, minor) = info.compute_capability;
        if major < 8 {
            return Err(err(format!(
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
            keep_pool_memory(&ctx)?;
        }
        let (modules, failed_modules) = load_modules(&ctx, &info)?;
        Ok(Arc::new(Device {
            info,
            ctx,
            stream,
            modules,
            failed_modules,
            funcs: Mutex::new(FuncTable::default()),
            async_alloc,
            sync_launches,
            exec: Mutex::new(ExecState::new()),
            pending: Mutex::new(Vec::new()),
        }))
    }

    /// Whether kernels/<stem>.cu was loaded (sm_90a modules load on compute capability 9.0 only).
    pub fn has_module(&self, stem: &str) -> bool {
        self.modules.iter().any(|m| m.stem == stem)
    }

    /// Why the optional module kernels/<stem>.cu did not load on this device, if it failed to.
    pub fn module_failure(&self, stem: &str) -> Option<&str> {
        self.failed_modules.iter().find(|(s, _)| *s == stem).map(|(_, why)| why.as_str())
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
        Err(err(msgs.join("; ")))
    }

    fn last_kernel(&self, st: &ExecState) -> String {
        match st.last_kernel {
            Some(i) => lock(&self.funcs)
                .funcs
                .get(i)
                .map_or_else(String::new, |f| format!(" (last kernel launched: {})", f.name)),
            None => String::new(),
        }
    }

    /// Waits for all queued work (a host operation: not allowed inside a graph unit).
    pub fn synchronize(&self, what: &str) -> Result<()> {
        let mut st = self.exec();
        st.host_op(what)?;
        self.sync_locked(&st, what)?;
        drop(st);
        self.take_pending()
    }

    fn sync_locked(&self, st: &ExecState, what: &str) -> Result<()> {
        self.stream.synchronize().map_err(|e| {
            drv(
                e,
                format!(
                    "{what}: synchronizing the stream{}; an earlier asynchronous launch failed \
                     (DELTADIT_CUDA_SYNC=1 or compute-sanitizer names the kernel)",
                    self.last_kernel(st)
                ),
            )
        })
    }

    // ---- memory ---------------------------------------------------------------------------------

    /// A device allocation of at least `len` bytes (rounded up to 16, at least 16, so every
    /// buffer has a 16-byte aligned base and size like the kernels' vector accesses assume).
    pub fn alloc(self: &Arc<Self>, len: usize, what: &dyn Fn() -> String) -> Result<CudaBuf> {
        let size = len
            .checked_add(15)
            .map(|v| (v / 16).max(1) * 16)
            .ok_or_else(|| err(format!("allocating {len} bytes for {}: size overflows", what())))?;
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
            if is_oom(&e) {
                let free = self
                    .ctx
                    .mem_get_info()
                    .map(|(f, t)| format!(" ({} of {} free)", bytes(f), bytes(t)))
                    .unwrap_or_default();
                err(format!("out of memory allocating {} for {}{free}", bytes(size), what()))
            } else {
                drv(e, format!("allocating {} for {}", bytes(size), what()))
            }
        })?;
        let buf = CudaBuf { ptr, bytes: size, owner: Some(self.clone()) };
        if ptr % 16 != 0 {
            return Err(err(format!("the driver returned a device pointer {ptr:#x} that is not 16-byte aligned")));
        }
        Ok(buf)
    }

    /// Frees `ptr` (from `CudaBuf::drop`): stream-ordered, after all work queued so far, or
    /// deferred to the end of a running graph unit.
    fn free(&self, ptr: u64) {
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
            return Err(err(format!("upload of {len} bytes into a {}-byte buffer", dst.bytes)));
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
            return Err(err(format!("download of {len} bytes from a {}-byte buffer", src.bytes)));
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

    // ---- kernels --------------------------------------------------------------------------------

    /// The function `name` from whichever module has it, with its dynamic shared memory limit
    /// raised to `smem` when that is above the 48 KB default.
    fn function(&self, name: &str, smem: u32) -> Result<(usize, sys::CUfunction)> {
        let mut t = lock(&self.funcs);
        let idx = match t.index.get(name) {
            Some(&i) => i,
            None => {
                let f = self.load_function(name)?;
                t.funcs.push(Func { name: name.to_string(), f, smem_limit: DEFAULT_SMEM_LIMIT });
                let i = t.funcs.len() - 1;
                t.index.insert(name.to_string(), i);
                i
            }
        };
        let func = &mut t.funcs[idx];
        if smem > func.smem_limit {
            let max = self.info.max_shared_memory_per_block;
            if smem as usize > max {
                return Err(err(format!(
                    "kernel {name} needs {} of dynamic shared memory; {} allows {} per block",
                    bytes(smem as usize),
                    self.info.name,
                    bytes(max)
                )));
            }
            self.bind()?;
            // SAFETY: `func.f` is a live function of a loaded module; the attribute takes an
            // int, which `smem` fits (checked against the device limit above).
            unsafe {
                result::function::set_function_attribute(
                    func.f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            }
            .map_err(|e| drv(e, format!("setting MAX_DYNAMIC_SHARED_SIZE_BYTES = {smem} on kernel {name}")))?;
            func.smem_limit = smem;
        }
        Ok((idx, func.f))
    }

    fn load_function(&self, name: &str) -> Result<sys::CUfunction> {
        let cname = CString::new(name).map_err(|_| err(format!("kernel name {name:?} contains a NUL byte")))?;
        self.bind()?;
        // The module registered for the name first (no failed lookups for compute-sanitizer to
        // report), then every module for kernels the registry does not list.
        let home = crate::backend::build_info::KERNEL_FILES.iter().find(|(k, _)| *k == name).map(|(_, s)| *s);
        let order = self
            .modules
            .iter()
            .filter(|m| Some(m.stem) == home)
            .chain(self.modules.iter().filter(|m| Some(m.stem) != home));
        for m in order {
            // SAFETY: `m.handle` is a loaded module (unloaded only in Drop).
            match unsafe { result::module::get_function(m.handle, cname.clone()) } {
                Ok(f) => return Ok(f),
                Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NOT_FOUND => continue,
                Err(e) => return Err(drv(e, format!("looking up kernel {name} in kernels/{}.cu", m.stem))),
            }
        }
        let stems: Vec<_> = self.modules.iter().map(|m| m.stem).collect();
        Err(err(format!("kernel {name} not found in any fatbin (kernels/{{{}}}.cu)", stems.join(","))))
    }

    /// Launches `name` with its parameter struct on the stream.
    pub fn launch<P: KernelParams>(&self, name: &str, params: &P, cfg: LaunchCfg) -> Result<()> {
        let (idx, f) = self.function(name, cfg.smem)?;
        // SAFETY: `P: KernelParams` is a #[repr(C)] bindgen mirror of a kernels/params.h struct;
        // params.h pads every struct explicitly (`_pad` fields; offsets and sizes pinned by
        // bindgen's layout assertions — the field sizes of each struct add up to its size), so
        // all size_of::<P>() bytes are initialised fields, and `params` is borrowed for as long
        // as `raw` lives.
        let raw = unsafe { std::slice::from_raw_parts((params as *const P).cast::<u8>(), std::mem::size_of::<P>()) };
        let mut st = self.exec();
        let op = Op::Kernel { func: f as usize as u64, grid: cfg.grid, block: cfg.block, smem: cfg.smem, params: raw };
        if !st.enqueue(name, op)? {
            return Ok(());
        }
        self.bind()?;
        let [gx, gy, gz] = cfg.grid;
        let [bx, by, bz] = cfg.block;
        let mut args = [(params as *const P).cast_mut().cast::<c_void>()];
        // SAFETY: every kernel of kernels/*.cu takes exactly one by-value parameter, the
        // params.h struct named by the launcher, whose layout `P` mirrors (KernelParams'
        // contract); `args` holds one pointer to it, and cuLaunchKernel copies the parameter
        // bytes before returning. The device addresses inside `params` belong to tensors the
        // launcher borrows: they are live now, and a buffer dropped later is freed in stream
        // order after this kernel (see `free_now`), so the kernel never sees freed memory.
        unsafe { result::launch_kernel(f, (gx, gy, gz), (bx, by, bz), cfg.smem, self.cu_stream(), &mut args) }
            .map_err(|e| {
                drv(
                    e,
                    format!(
                        "launching kernel {name} (grid {:?}, block {:?}, {} B dynamic shared memory)",
                        cfg.grid, cfg.block, cfg.smem
                    ),
                )
            })?;
        st.last_kernel = Some(idx);
        if self.sync_launches && matches!(st.mode, Mode::Eager | Mode::Track) {
            self.stream.synchronize().map_err(|e| {
                drv(
                    e,
                    format!(
                        "kernel {name} (grid {:?}, block {:?}, {} B dynamic shared memory) failed",
                        cfg.grid, cfg.block, cfg.smem
                    ),
                )
            })?;
        }
        Ok(())
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

/// Makes the device's memory pool keep freed memory instead of returning it to the driver at
/// every synchronisation (the default release threshold is 0), so per-step temporaries (the
/// rel_l1 probe's two floats) cost no driver allocation.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<()> {
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

/// kernels/*_sm90a.cu: SASS for sm_90a alone (build.rs), optional: the other modules have a
/// kernel for everything they offer.
fn sm90a_only(stem: &str) -> bool {
    stem.ends_with("_sm90a")
}

/// The loaded modules, and the optional (`*_sm90a`) ones that failed to load with the reason.
type Loaded = (Vec<Module>, Vec<(&'static str, String)>);

fn load_modules(ctx: &Arc<CudaContext>, info: &DeviceInfo) -> Result<Loaded> {
    ctx.bind_to_thread().map_err(|e| drv(e, "making the CUDA context current"))?;
    let mut modules: Vec<Module> = Vec::with_capacity(FATBINS.len());
    let mut failed = Vec::new();
    for &(stem, image) in FATBINS {
        // sm_90a SASS runs on compute capability 9.0 exactly (and has no PTX to JIT elsewhere).
        if sm90a_only(stem) && info.compute_capability != (9, 0) {
            continue;
        }
        let mut words = vec![0u64; image.len().div_ceil(8)].into_boxed_slice();
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..image.len()].copy_from_slice(image);
        // SAFETY: `words` holds a complete fatbin image written by nvcc -fatbin (build.rs),
        // 8-byte aligned and kept alive with the module.
        match unsafe { result::module::load_data(words.as_ptr().cast::<c_void>()) } {
            Ok(handle) => modules.push(Module { stem, handle, _image: words }),
            // An optional module (a faster variant with a fallback) that does not load leaves the
            // backend working; the reason is kept for the error of whoever asks for it.
            Err(e) if sm90a_only(stem) => {
                failed.push((
                    stem,
                    format!("loading kernels/{stem}.cu (sm_90a SASS) on {}: {}", info.name, describe(&e)),
                ));
            }
            Err(e) => {
                for m in &modules {
                    // SAFETY: loaded above, unloaded once; nothing ran yet.
                    let _ = unsafe { result::module::unload(m.handle) };
                }
                let (ma, mi) = info.compute_capability;
                return Err(drv(
                    e,
                    format!(
                        "loading kernels/{stem}.cu (fatbin with SASS for {}, built by {}) on {} (sm_{ma}{mi})",
                        if sm90a_only(stem) { "sm_90a" } else { "sm_80, sm_90 and compute_90 PTX" },
                        NVCC.unwrap_or("nvcc"),
                        info.name
                    ),
                ));
            }
        }
    }
    Ok((modules, failed))
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
