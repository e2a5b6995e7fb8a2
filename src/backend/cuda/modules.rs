//! The kernel modules (one fatbin per kernels/*.cu, loaded once when the backend starts), every
//! kernel's function handle resolved at load from the kernel table, and launches by [`KernelId`].

use super::device::Device;
use super::error::{bytes, describe, drv, drv_kernel, err};
use super::exec::{Mode, Op};
use super::probe::DeviceInfo;
use crate::backend::build_info::{FATBINS, NVCC};
use crate::backend::kernels::table::{max_dynamic_smem, KERNEL_COUNT};
use crate::backend::kernels::{KernelId, KernelParams, LaunchCfg};
use crate::error::BackendErrorKind;
use crate::Result;
use cudarc::driver::{result, sys, CudaContext};
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

/// One loaded fatbin.
pub(super) struct Module {
    pub stem: &'static str,
    pub handle: sys::CUmodule,
    /// The image, copied to 8-byte-aligned memory and kept for the module's lifetime (the
    /// driver API does not document whether it keeps referring to it).
    _image: Box<[u64]>,
}

/// A kernel's function and the dynamic shared memory limit set on it so far.
struct Func {
    f: sys::CUfunction,
    smem_limit: AtomicU32,
}

/// Every kernel's function, indexed by `KernelId as usize` (None: its module is not loaded).
pub(super) struct KernelTable {
    funcs: Vec<Option<Func>>,
}

impl Device {
    /// Launches `kernel` with its parameter struct on the stream.
    ///
    /// # Safety
    /// As [`KernelDevice::launch`](crate::backend::kernels::KernelDevice::launch).
    pub unsafe fn launch<P: KernelParams>(&self, kernel: KernelId, params: &P, cfg: LaunchCfg) -> Result<()> {
        let name = kernel.name();
        let func = self.kernels.funcs.get(kernel as usize).and_then(Option::as_ref).ok_or_else(|| {
            let why = self.module_failure(kernel.info().file).map_or_else(
                || format!("kernels/{}.cu is not loaded on {}", kernel.info().file, self.info.name),
                String::from,
            );
            err(BackendErrorKind::UnsupportedKernel, format!("kernel {name}: {why}"))
        })?;
        let f = func.f;
        if cfg.smem > func.smem_limit.load(Ordering::Relaxed) {
            self.raise_smem_limit(func, name, cfg.smem)?;
        }
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
        // params.h struct the kernel table names, whose layout `P` mirrors (this function's
        // contract); `args` holds one pointer to it, and cuLaunchKernel copies the parameter
        // bytes before returning. The device addresses inside `params` belong to tensors the
        // launcher borrows: they are live now, and a buffer dropped later is freed in stream
        // order after this kernel (see `free_now`), so the kernel never sees freed memory.
        unsafe { result::launch_kernel(f, (gx, gy, gz), (bx, by, bz), cfg.smem, self.cu_stream(), &mut args) }
            .map_err(|e| {
                let what = format!(
                    "launching kernel {name} (grid {:?}, block {:?}, {} B dynamic shared memory)",
                    cfg.grid, cfg.block, cfg.smem
                );
                drv_kernel(e, name, what)
            })?;
        st.last_kernel = Some(kernel);
        if self.sync_launches && matches!(st.mode, Mode::Eager | Mode::Track) {
            self.stream.synchronize().map_err(|e| {
                let what = format!(
                    "kernel {name} (grid {:?}, block {:?}, {} B dynamic shared memory) failed",
                    cfg.grid, cfg.block, cfg.smem
                );
                drv_kernel(e, name, what)
            })?;
        }
        Ok(())
    }

    /// Raises a kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES (a launch asking for more than the table
    /// foresaw; setting it twice from two threads is harmless).
    fn raise_smem_limit(&self, func: &Func, name: &str, smem: u32) -> Result<()> {
        let max = self.info.max_shared_memory_per_block;
        if smem as usize > max {
            return Err(err(
                BackendErrorKind::UnsupportedLayout,
                format!(
                    "kernel {name} needs {} of dynamic shared memory; {} allows {} per block",
                    bytes(smem as usize),
                    self.info.name,
                    bytes(max)
                ),
            ));
        }
        self.bind()?;
        // SAFETY: `func.f` is a live function of a loaded module; the attribute takes an int,
        // which `smem` fits (checked against the device limit above).
        unsafe {
            result::function::set_function_attribute(
                func.f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
        }
        .map_err(|e| drv(e, format!("setting MAX_DYNAMIC_SHARED_SIZE_BYTES = {smem} on kernel {name}")))?;
        func.smem_limit.fetch_max(smem, Ordering::Relaxed);
        Ok(())
    }

    /// Whether kernels/<stem>.cu was loaded (sm_90a modules load on compute capability 9.0 only).
    pub fn has_module(&self, stem: &str) -> bool {
        self.modules.iter().any(|m| m.stem == stem)
    }

    /// Why the optional module kernels/<stem>.cu did not load on this device, if it failed to.
    pub fn module_failure(&self, stem: &str) -> Option<&str> {
        self.failed_modules.iter().find(|(s, _)| *s == stem).map(|(_, why)| why.as_str())
    }
}

/// kernels/*_sm90a.cu: SASS for sm_90a alone (build.rs), optional: the other modules have a
/// kernel for everything they offer.
fn sm90a_only(stem: &str) -> bool {
    stem.ends_with("_sm90a")
}

/// The loaded modules, the optional (`*_sm90a`) ones that failed to load with the reason, and
/// every kernel's function.
type Loaded = (Vec<Module>, Vec<(&'static str, String)>, KernelTable);

pub(super) fn load_modules(ctx: &Arc<CudaContext>, info: &DeviceInfo) -> Result<Loaded> {
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
    match resolve(&modules, info) {
        Ok(table) => Ok((modules, failed, table)),
        Err(e) => {
            for m in &modules {
                // SAFETY: loaded above, unloaded once; nothing ran yet.
                let _ = unsafe { result::module::unload(m.handle) };
            }
            Err(e)
        }
    }
}

/// Looks every kernel of the table up in the module of its file, once, and raises the dynamic
/// shared memory limit of those that need more than the default. A kernel whose (optional) module
/// is not loaded stays None.
fn resolve(modules: &[Module], info: &DeviceInfo) -> Result<KernelTable> {
    let mut funcs = Vec::with_capacity(KERNEL_COUNT);
    for id in KernelId::ALL {
        let k = id.info();
        let Some(m) = modules.iter().find(|m| m.stem == k.file) else {
            funcs.push(None);
            continue;
        };
        let cname =
            CString::new(k.name).map_err(|_| err(BackendErrorKind::Driver, format!("kernel name {:?}", k.name)))?;
        // SAFETY: `m.handle` is a loaded module (unloaded only in Drop).
        let f = unsafe { result::module::get_function(m.handle, cname) }
            .map_err(|e| drv(e, format!("looking up kernel {} in kernels/{}.cu", k.name, m.stem)))?;
        let smem = max_dynamic_smem(id);
        if smem > DEFAULT_SMEM_LIMIT {
            let max = info.max_shared_memory_per_block;
            if smem as usize > max {
                return Err(err(
                    BackendErrorKind::UnsupportedDevice,
                    format!(
                        "kernel {} needs {} of dynamic shared memory; {} allows {} per block",
                        k.name,
                        bytes(smem as usize),
                        info.name,
                        bytes(max)
                    ),
                ));
            }
            // SAFETY: `f` is a live function of a loaded module; the attribute takes an int,
            // which `smem` fits (checked against the device limit above).
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            }
            .map_err(|e| drv(e, format!("setting MAX_DYNAMIC_SHARED_SIZE_BYTES = {smem} on kernel {}", k.name)))?;
        }
        funcs.push(Some(Func { f, smem_limit: AtomicU32::new(smem.max(DEFAULT_SMEM_LIMIT)) }));
    }
    Ok(KernelTable { funcs })
}
