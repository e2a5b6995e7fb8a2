//! The CUDA backend: the kernels of kernels/*.cu (one fatbin per file, embedded at build time)
//! launched through cudarc's driver API, GEMMs through cuBLASLt, one stream, CUDA graphs for the
//! units of [`Backend::graph_run`].
//!
//! ```text
//! probe.rs    driver and device detection (probe, available), DeviceInfo
//! device.rs   the context, its one stream, capture units, synchronisation
//! modules.rs  the fatbins, every kernel's function resolved once at load, launches
//! memory.rs   allocations, frees, host/device copies (CudaBuf)
//! exec.rs     the stream's mode (eager / tracked / capturing / recording) and unit signatures
//! blas.rs     cuBLASLt GEMMs with bias/GELU epilogues, plans cached per shape
//! graph.rs    graph_run: warm-up, capture, checked replay
//! timing.rs   CUDA events and graphs for the benchmarks
//! error.rs    CUDA and cuBLASLt statuses as crate errors with a kind and context
//! ```
//!
//! Storage: weights and activations in bf16 (default) or f16, latents and the attention key bias
//! in f32, like the sim backend. Every op but `linear` and the memory operations is one of the
//! launchers shared with the sim backend (`super::kernels`), so the GPU runs exactly the launch
//! configurations the SIMT shim tests.
//!
//! The library reads no environment variables: [`CudaOptions`] is set by the caller (the CLI and
//! the benches map `DELTADIT_CUDA_*` variables onto it).

mod blas;
mod device;
mod error;
mod exec;
mod graph;
mod interop;
mod memory;
mod modules;
mod probe;
pub(crate) mod timing;

pub use error::CudaStatus;
pub use graph::GraphStats;
pub use memory::CudaBuf;
pub use probe::{available, device_count, driver_present, kernels_built, probe, probe_ordinal, DeviceInfo};

use super::kernels::{self, AttentionChoice, AttentionKernel, KernelDevice, KernelId, KernelParams, LaunchCfg};
use super::{shapes, Activation, Backend, ColSlice};
use crate::dtype::{bits16_to_f32, f32_to_bits16};
use crate::error::BackendErrorKind;
use crate::{DType, Error, Result, Tensor};
use blas::{alignment, Blas, Epilogue, GemmKey};
use device::Device;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Switches of the CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CudaOptions {
    /// Fill new tensors with NaN, so unwritten elements show (tests).
    pub poison: bool,
    /// Capture and replay `graph_run` units as CUDA graphs.
    pub graphs: bool,
    /// Synchronise after every eager launch, so an asynchronous fault names its kernel.
    pub sync_launches: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { poison: false, graphs: true, sync_launches: false }
    }
}

impl CudaOptions {
    /// The defaults with NaN poisoning of new tensors on or off.
    pub fn with_poison(mut self, on: bool) -> Self {
        self.poison = on;
        self
    }

    /// The same with CUDA graphs on or off.
    pub fn with_graphs(mut self, on: bool) -> Self {
        self.graphs = on;
        self
    }

    /// The same with a synchronisation after every eager launch on or off.
    pub fn with_sync_launches(mut self, on: bool) -> Self {
        self.sync_launches = on;
        self
    }
}

/// The CUDA backend on one device.
pub struct Cuda {
    // Field order is drop order: graphs and cuBLASLt state go before the device.
    graphs: Mutex<graph::Graphs>,
    blas: Mutex<Blas>,
    dev: Arc<Device>,
    dtype: DType,
    opts: CudaOptions,
    attention: AttentionChoice,
}

impl Cuda {
    /// The backend on device `ordinal` computing in `dtype` (bf16 or f16), with the default
    /// options.
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        Self::with_options(ordinal, dtype, CudaOptions::default())
    }

    /// The backend with `opts`. Errors: [`BackendErrorKind::NoDevice`] (no driver or device),
    /// [`BackendErrorKind::NotBuilt`] (no kernels in this build),
    /// [`BackendErrorKind::UnsupportedDevice`], [`BackendErrorKind::UnsupportedDType`] (f32).
    pub fn with_options(ordinal: usize, dtype: DType, opts: CudaOptions) -> Result<Self> {
        if dtype == DType::F32 {
            return Err(error::err(
                BackendErrorKind::UnsupportedDType { dtype },
                "the CUDA backend computes in bf16 or f16 (weights and activations); choose --dtype bf16 or f16",
            ));
        }
        let dev = Device::new(ordinal, opts.sync_launches)?;
        let blas = Blas::new(&dev)?;
        Ok(Cuda {
            graphs: Mutex::new(graph::Graphs::default()),
            blas: Mutex::new(blas),
            dev,
            dtype,
            opts,
            attention: AttentionChoice::default(),
        })
    }

    /// Whether this device can run attention kernel `k` (its module — for wgmma,
    /// kernels/attention_sm90a.cu, compute capability 9.0 only — built and loaded).
    pub fn supports_attention_kernel(&self, k: AttentionKernel) -> bool {
        self.dev.has_module(k.file())
    }

    /// Chooses the attention kernel where a head dim has more than one (72);
    /// [`BackendErrorKind::UnsupportedKernel`] where this device cannot run it. Captured graphs of
    /// earlier steps still hold the old kernel; their launch signature no longer matches, so they
    /// are captured again at the next replay.
    pub fn set_attention_kernel(&self, k: AttentionKernel) -> Result<()> {
        if !self.supports_attention_kernel(k) {
            let why = match self.dev.module_failure(k.file()) {
                Some(why) => why.to_string(),
                None => {
                    let (ma, mi) = self.dev.info.compute_capability;
                    format!(
                        "needs a GPU of compute capability 9.0 (H100/H200) and kernels/{}.cu built by nvcc; {} is sm_{ma}{mi}",
                        k.file(),
                        self.dev.info.name
                    )
                }
            };
            return Err(error::err(BackendErrorKind::UnsupportedKernel, format!("attention kernel {k}: {why}")));
        }
        self.attention.set(k);
        Ok(())
    }

    /// The attention kernel it launches where there is a choice.
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention.get()
    }

    /// The device this backend runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.dev.info
    }

    /// The options it was created with.
    pub fn options(&self) -> CudaOptions {
        self.opts
    }

    /// cuBLASLt's version number (e.g. 130100 for 13.1.0).
    pub fn cublaslt_version(&self) -> usize {
        self.blas().version
    }

    fn blas(&self) -> std::sync::MutexGuard<'_, Blas> {
        self.blas.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // Graph executables and cuBLASLt state are destroyed next: let queued work finish first.
        if let Err(e) = self.dev.stream.synchronize() {
            eprintln!("deltadit cuda: synchronizing before shutdown: {}", error::describe(&e));
        }
    }
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.dev.info.name)
            .field("dtype", &self.dtype)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    const NAME: &'static str = "cuda";

    fn act_dtype(&self) -> DType {
        self.dtype
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let len = shapes::alloc_bytes(shape, dtype)?;
        let buf = self.dev.alloc(len, &|| format!("a {shape:?} {dtype} tensor"))?;
        let mut t = Tensor::from_parts(buf, shape, dtype);
        if self.opts.poison {
            kernels::fill_bits(self, &mut t, dtype.nan_bits())?;
        }
        Ok(t)
    }

    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        let n = t.numel();
        match t.dtype() {
            DType::F32 => {
                let mut out = vec![0f32; n];
                self.dev.download(&t.buf, &mut out)?;
                Ok(out)
            }
            dt => {
                let mut raw = vec![0u16; n];
                self.dev.download(&t.buf, &mut raw)?;
                let mut out = vec![0f32; n];
                bits16_to_f32(dt, &raw, &mut out);
                Ok(out)
            }
        }
    }

    fn write(&self, dst: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        shapes::write(dst, data.len())?;
        match dst.dtype() {
            DType::F32 => self.dev.upload(&dst.buf, data),
            dt => {
                let mut raw = vec![0u16; data.len()];
                f32_to_bits16(dt, data, &mut raw);
                self.dev.upload(&dst.buf, &raw)
            }
        }
    }

    fn fill_bits(&self, t: &mut Tensor<Self>, bits: u32) -> Result<()> {
        kernels::fill_bits(self, t, bits)
    }

    fn graph_run(&self, key: &str, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        self.run_graph(key, f)
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize("synchronize")
    }

    /// cuBLASLt with the bias / GELU(+bias) epilogues; SiLU as bias epilogue + SiLU kernel.
    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let (m, n, k) = shapes::linear(x, w, bias, out)?;
        self.gemm((x.buf.device_ptr(), k), w, bias, act, out, (m, n, k))
    }

    /// [`Cuda::linear`] with cuBLASLt's B (the input) at the column offset, ld = the row stride.
    fn linear_cols(
        &self,
        x: ColSlice<'_, Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let (m, n, k, ldx) = shapes::linear_cols(&x, w, bias, out)?;
        let xp = x.t.buf.device_ptr() + (x.col * x.t.dtype().size()) as u64;
        self.gemm((xp, ldx), w, bias, act, out, (m, n, k))
    }

    super::kernels::kernel_backend_ops!();

    unsafe fn copy_elems(
        &self,
        src: &Tensor<Self>,
        src_off: usize,
        dst: &mut Tensor<Self>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        let es = src.dtype().size() as u64;
        let (s, d) = (src.buf.device_ptr() + src_off as u64 * es, dst.buf.device_ptr() + dst_off as u64 * es);
        self.dev.copy(d, s, len * es as usize)
    }
}

impl Cuda {
    /// `out = act(x·wᵀ + bias)` through cuBLASLt, x at address `xp` with rows `ldx` apart (sizes
    /// checked by the caller through `shapes::linear` / `shapes::linear_cols`).
    fn gemm(
        &self,
        (xp, ldx): (u64, usize),
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        if let Some(b) = bias {
            shapes::same_dtype("linear", out, &[("bias", b)])?;
        }
        if out.dtype() == DType::F32 {
            return Err(Error::DType { op: "linear", tensor: "x", expected: self.dtype, found: DType::F32 });
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return Err(Error::Shape {
                op: "linear",
                tensor: "weight",
                expected: "[out, in] with in ≥ 1".into(),
                found: w.shape().to_vec(),
            });
        }
        let epilogue = match (act, bias.is_some()) {
            (Activation::GeluTanh, false) => Epilogue::Gelu,
            (Activation::GeluTanh, true) => Epilogue::GeluBias,
            (Activation::None | Activation::Silu, false) => Epilogue::Default,
            (Activation::None | Activation::Silu, true) => Epilogue::Bias,
        };
        let (wp, op) = (w.buf.device_ptr(), out.buf.device_ptr());
        let bp = bias.map_or(0, |b| b.buf.device_ptr());
        let key = GemmKey {
            m: m as u64,
            n: n as u64,
            k: k as u64,
            ldx: ldx as u64,
            epilogue,
            dtype: out.dtype(),
            align: alignment(&[xp, wp, bp, op]),
        };
        self.blas().gemm(&self.dev, key, xp, wp, bp, op)?;
        if act == Activation::Silu {
            // In place: the activation kernel reads and writes each element in one thread.
            let alias = Tensor::from_parts(out.buf.alias(), out.shape(), out.dtype());
            kernels::activation(self, &alias, None, Activation::Silu, out)?;
        }
        Ok(())
    }
}

impl KernelDevice for Cuda {
    fn ptr(&self, t: &Tensor<Self>) -> *const c_void {
        t.buf.device_ptr() as usize as *const c_void
    }

    fn ptr_mut(&self, t: &mut Tensor<Self>) -> *mut c_void {
        t.buf.device_ptr() as usize as *mut c_void
    }

    unsafe fn launch<P: KernelParams>(&self, kernel: KernelId, params: &P, cfg: LaunchCfg) -> Result<()> {
        // SAFETY: the caller's contract is Device::launch's.
        unsafe { self.dev.launch(kernel, params, cfg) }
    }

    fn attention_kernel(&self) -> AttentionKernel {
        self.attention.get()
    }
}
