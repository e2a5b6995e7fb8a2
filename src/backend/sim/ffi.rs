//! The C ABI of the shim library (kernels/sim/): every kernel's shim index is resolved once by
//! name, then kernels launch by index.

use crate::backend::kernels::table::{KernelId, KERNELS, KERNEL_COUNT};
use crate::backend::kernels::{KernelParams, LaunchCfg};
use crate::error::BackendErrorKind;
use crate::{Error, Result};

/// Order in which the shim runs the warps of a block: changing it exposes missing barriers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarpOrder {
    InOrder,
    Reversed,
    Shuffled(u32),
}

/// Whether the shim library was compiled into this build (it needs the CUDA headers).
pub const fn is_built() -> bool {
    cfg!(deltadit_sim)
}

#[cfg(deltadit_sim)]
mod sys {
    use std::ffi::{c_char, c_int, c_uint, c_void};
    extern "C" {
        pub fn deltadit_sim_kernel_index(name: *const c_char) -> c_int;
        pub fn deltadit_sim_launch_index(
            index: c_int,
            params: *const c_void,
            params_size: usize,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            dyn_smem: usize,
        ) -> c_int;
        pub fn deltadit_sim_last_error() -> *const c_char;
        pub fn deltadit_sim_set_warp_order(order: c_int, seed: c_uint);
        pub fn deltadit_sim_smem_stats_begin();
        pub fn deltadit_sim_smem_stats_end(out: *mut SmemStats);
    }

    /// kernels/sim/shim.h `DeltaditSimSmemStats`.
    #[repr(C)]
    #[derive(Default)]
    pub struct SmemStats {
        pub ldmatrix: [u64; 3],
        pub cp_async: [u64; 3],
        pub wgmma_smem_bytes: u64,
        pub wgmma_macs: u64,
        pub mma_macs: u64,
    }
}

fn sim_err(kind: BackendErrorKind, msg: impl Into<String>) -> Error {
    Error::backend("sim", kind, msg)
}

/// The shim index of every kernel of the table, resolved once (None: the shim does not know it,
/// a build that lost a registration).
#[cfg(deltadit_sim)]
fn indices() -> &'static [Option<i32>; KERNEL_COUNT] {
    static TABLE: std::sync::OnceLock<[Option<i32>; KERNEL_COUNT]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            let name = std::ffi::CString::new(KERNELS[i].name).ok()?;
            // SAFETY: a NUL-terminated name, read during the call only.
            let idx = unsafe { sys::deltadit_sim_kernel_index(name.as_ptr()) };
            (idx >= 0).then_some(idx)
        })
    })
}

/// Runs `kernel` on the calling thread.
///
/// # Safety
/// As [`KernelDevice::launch`](crate::backend::kernels::KernelDevice::launch): `P` is the kernel's
/// parameter struct and every address in it points into live host memory large enough for the
/// kernel's accesses.
#[cfg(deltadit_sim)]
pub unsafe fn launch<P: KernelParams>(kernel: KernelId, params: &P, cfg: LaunchCfg) -> Result<()> {
    let name = kernel.name();
    let index = indices()[kernel as usize].ok_or_else(|| {
        sim_err(BackendErrorKind::NotBuilt, format!("kernel {name}: not registered with the shim (a stale build?)"))
    })?;
    let [gx, gy, gz] = cfg.grid;
    let [bx, by, bz] = cfg.block;
    // SAFETY: `params` is a #[repr(C)] struct matching the kernel's C parameter struct
    // (KernelParams' contract); the shim copies size_of::<P>() bytes and checks the size against
    // the registered kernel. Pointers inside it address live host buffers large enough for the
    // kernel (this function's contract) for the duration of this synchronous call.
    let rc = unsafe {
        sys::deltadit_sim_launch_index(
            index,
            (params as *const P).cast(),
            std::mem::size_of::<P>(),
            gx,
            gy,
            gz,
            bx,
            by,
            bz,
            cfg.smem as usize,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated message that stays valid until the next launch
    // on this thread; it is copied out at once.
    let msg = unsafe {
        let p = sys::deltadit_sim_last_error();
        if p.is_null() {
            "unknown error".to_string()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(sim_err(BackendErrorKind::KernelLaunch { kernel: name.to_string() }, format!("kernel {name}: {msg}")))
}

/// Without the shim library: every launch fails.
///
/// # Safety
/// Nothing runs.
#[cfg(not(deltadit_sim))]
pub unsafe fn launch<P: KernelParams>(kernel: KernelId, _params: &P, _cfg: LaunchCfg) -> Result<()> {
    let _ = (KERNELS, KERNEL_COUNT);
    Err(sim_err(
        BackendErrorKind::NotBuilt,
        format!("kernel {}: the shim library is not built (run scripts/install-cuda.sh)", kernel.name()),
    ))
}

/// Sets the warp order of later launches (process-wide).
pub fn set_warp_order(order: WarpOrder) {
    #[cfg(deltadit_sim)]
    {
        let (o, seed) = match order {
            WarpOrder::InOrder => (0, 0),
            WarpOrder::Reversed => (1, 0),
            WarpOrder::Shuffled(s) => (2, s),
        };
        // SAFETY: plain setter of two integers in the shim.
        unsafe { sys::deltadit_sim_set_warp_order(o, seed) };
    }
    #[cfg(not(deltadit_sim))]
    let _ = order;
}

/// Shared-memory wavefronts of one kind of warp-wide 16-byte access (kernels/sim/smem_traffic.cpp:
/// 32 banks of 4 bytes, phases of 8 lanes; a phase costs the most distinct rows in one 16-byte
/// bank group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wavefronts {
    /// Warp instructions counted.
    pub requests: u64,
    /// Wavefronts they take.
    pub wavefronts: u64,
    /// Wavefronts they would take without bank conflicts.
    pub ideal: u64,
}

impl Wavefronts {
    /// `wavefronts / ideal`: 1 without bank conflicts, 2 for two-way conflicts throughout (1 when
    /// nothing was counted).
    pub fn conflict_factor(&self) -> f64 {
        if self.ideal == 0 {
            1.0
        } else {
            self.wavefronts as f64 / self.ideal as f64
        }
    }
}

/// The shared-memory traffic and tensor-core work of some launches, as the shim counts them: the
/// bank conflicts of ldmatrix row reads and cp.async destination writes, the operand bytes wgmma
/// reads from shared memory, and the multiply-adds of wgmma and mma.sync. Plain shared loads and
/// stores are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmemTraffic {
    pub ldmatrix: Wavefronts,
    pub cp_async: Wavefronts,
    pub wgmma_smem_bytes: u64,
    pub wgmma_macs: u64,
    pub mma_macs: u64,
}

impl SmemTraffic {
    /// Bytes of shared-memory bandwidth the counted accesses take: 128 a wavefront (a phase of 8
    /// 16-byte rows), plus wgmma's operand bytes.
    pub fn smem_bytes(&self) -> u64 {
        128 * (self.ldmatrix.wavefronts + self.cp_async.wavefronts) + self.wgmma_smem_bytes
    }
}

/// Runs `f` with the shim counting the shared-memory traffic of the kernels it launches on this
/// thread (the sim backend launches synchronously on the calling thread). Other threads' launches
/// are not counted. Without the shim library, counts nothing.
pub fn count_smem_traffic<T>(f: impl FnOnce() -> T) -> (T, SmemTraffic) {
    #[cfg(deltadit_sim)]
    {
        // SAFETY: resets and enables a thread-local counter in the shim.
        unsafe { sys::deltadit_sim_smem_stats_begin() };
        let r = f();
        let mut n = sys::SmemStats::default();
        // SAFETY: the shim fills the #[repr(C)] mirror of its DeltaditSimSmemStats.
        unsafe { sys::deltadit_sim_smem_stats_end(&mut n) };
        let w = |c: [u64; 3]| Wavefronts { requests: c[0], wavefronts: c[1], ideal: c[2] };
        let t = SmemTraffic {
            ldmatrix: w(n.ldmatrix),
            cp_async: w(n.cp_async),
            wgmma_smem_bytes: n.wgmma_smem_bytes,
            wgmma_macs: n.wgmma_macs,
            mma_macs: n.mma_macs,
        };
        (r, t)
    }
    #[cfg(not(deltadit_sim))]
    {
        (f(), SmemTraffic::default())
    }
}
