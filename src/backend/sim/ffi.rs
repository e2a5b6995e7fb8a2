//! The C ABI of the shim library (kernels/sim/): launch a registered kernel by name.

use crate::backend::kernels::{KernelParams, LaunchCfg};
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
        pub fn deltadit_sim_launch(
            name: *const c_char,
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
        pub fn deltadit_sim_smem_stats_end(out: *mut u64);
    }
}

#[cfg(deltadit_sim)]
pub fn launch<P: KernelParams>(name: &str, params: &P, cfg: LaunchCfg) -> Result<()> {
    let cname = std::ffi::CString::new(name).map_err(|_| Error::backend("sim", "kernel name with a NUL byte"))?;
    let [gx, gy, gz] = cfg.grid;
    let [bx, by, bz] = cfg.block;
    // SAFETY: `params` is a #[repr(C)] struct matching the kernel's C parameter struct
    // (KernelParams' contract); the shim copies size_of::<P>() bytes and checks the size against
    // the registered kernel. Pointers inside it address live host buffers owned by the caller's
    // tensors for the duration of this synchronous call.
    let rc = unsafe {
        sys::deltadit_sim_launch(
            cname.as_ptr(),
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
        if p.is_null() { "unknown error".to_string() } else { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() }
    };
    Err(Error::backend("sim", format!("kernel {name}: {msg}")))
}

#[cfg(not(deltadit_sim))]
pub fn launch<P: KernelParams>(name: &str, _params: &P, _cfg: LaunchCfg) -> Result<()> {
    Err(Error::backend("sim", format!("kernel {name}: the shim library is not built (run scripts/install-cuda.sh)")))
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

/// Shared-memory wavefronts of one kind of warp-wide 16-byte access (kernels/sim/smem_banks.cpp:
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
        if self.ideal == 0 { 1.0 } else { self.wavefronts as f64 / self.ideal as f64 }
    }
}

/// Bank accounting of the ldmatrix row reads and cp.async destination writes of some launches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmemBanks {
    pub ldmatrix: Wavefronts,
    pub cp_async: Wavefronts,
}

/// Runs `f` with the shim counting the shared-memory wavefronts of the kernels it launches on
/// this thread (the sim backend launches synchronously on the calling thread). Other threads'
/// launches are not counted. Without the shim library, counts nothing.
pub fn count_smem_banks<T>(f: impl FnOnce() -> T) -> (T, SmemBanks) {
    #[cfg(deltadit_sim)]
    {
        // SAFETY: resets and enables a thread-local counter in the shim.
        unsafe { sys::deltadit_sim_smem_stats_begin() };
        let r = f();
        let mut n = [0u64; 6];
        // SAFETY: the shim writes exactly six u64 into `n`.
        unsafe { sys::deltadit_sim_smem_stats_end(n.as_mut_ptr()) };
        let w = |i: usize| Wavefronts { requests: n[i], wavefronts: n[i + 1], ideal: n[i + 2] };
        (r, SmemBanks { ldmatrix: w(0), cp_async: w(3) })
    }
    #[cfg(not(deltadit_sim))]
    {
        (f(), SmemBanks::default())
    }
}
