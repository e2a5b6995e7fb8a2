//! The CUDA backend: the kernels of kernels/*.cu (one fatbin per file, embedded at build time)
//! launched through cudarc's driver API, GEMMs through cuBLASLt, one stream, CUDA graphs for the
//! units of [`Backend::graph_run`].
//!
//! ```text
//! device.rs  detection (probe, available), context, stream, modules, kernel table, memory
//! exec.rs    the stream's mode (eager / tracked / capturing / recording) and unit signatures
//! blas.rs    cuBLASLt GEMMs with bias/GELU epilogues, plans cached per shape
//! graph.rs   graph_run: warm-up, capture, checked replay
//! error.rs   CUDA and cuBLASLt statuses as crate errors with context
//! ```
//!
//! Storage: weights and activations in bf16 (default) or f16, latents and the attention key bias
//! in f32, like the sim backend. Every op but `linear` and the memory operations is one of the
//! launchers shared with the sim backend (`super::kernels`), so the GPU runs exactly the launch
//! configurations the SIMT shim tests.
//!
//! Environment: `DELTADIT_CUDA_POISON=1` fills every new tensor with NaN (unwritten elements
//! show), `DELTADIT_CUDA_GRAPHS=0` disables CUDA graphs, `DELTADIT_CUDA_SYNC=1` synchronises
//! after every launch so an asynchronous fault names its kernel.

mod blas;
mod device;
mod error;
mod exec;
mod graph;
pub mod timing;

pub use device::{available, device_count, driver_present, kernels_built, probe, probe_ordinal, CudaBuf, DeviceInfo};
pub use graph::GraphStats;

use super::kernels::{self, AttentionChoice, AttentionKernel, KernelDevice, KernelParams, LaunchCfg};
use super::{shapes, Activation, Backend};
use crate::dtype::{bits16_to_f32, f32_to_bits16};
use crate::{DType, Error, Result, Tensor};
use blas::{alignment, Blas, Epilogue, GemmKey};
use device::Device;
use error::env_flag;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Switches of the CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Fill new tensors with NaN (`DELTADIT_CUDA_POISON=1`).
    pub poison: bool,
    /// Capture and replay `graph_run` units as CUDA graphs (`DELTADIT_CUDA_GRAPHS=0` turns off).
    pub graphs: bool,
    /// Synchronise after every eager launch (`DELTADIT_CUDA_SYNC=1`).
    pub sync_launches: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { poison: false, graphs: true, sync_launches: false }
    }
}

impl CudaOptions {
    /// The defaults, overridden by the DELTADIT_CUDA_* environment variables.
    pub fn from_env() -> Self {
        let d = CudaOptions::default();
        CudaOptions {
            poison: env_flag("DELTADIT_CUDA_POISON", d.poison),
            graphs: env_flag("DELTADIT_CUDA_GRAPHS", d.graphs),
            sync_launches: env_flag("DELTADIT_CUDA_SYNC", d.sync_launches),
        }
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
    /// The backend on device `ordinal` computing in `dtype` (bf16 or f16), with options from the
    /// environment ([`CudaOptions::from_env`]).
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        Self::with_options(ordinal, dtype, CudaOptions::from_env())
    }

    pub fn with_options(ordinal: usize, dtype: DType, opts: CudaOptions) -> Result<Self> {
        if dtype == DType::F32 {
            return Err(Error::Unsupported(
                "the CUDA backend computes in bf16 or f16 (weights and activations); choose --dtype bf16 or f16".into(),
            ));
        }
        let dev = Device::new(ordinal, opts.sync_launches)?;
        let blas = Blas::new(&dev)?;
        let cuda = Cuda {
            graphs: Mutex::new(graph::Graphs::default()),
            blas: Mutex::new(blas),
            dev,
            dtype,
            opts,
            attention: AttentionChoice::default(),
        };
        if let Some(k) = AttentionKernel::from_env()? {
            cuda.set_attention_kernel(k)?;
        }
        Ok(cuda)
    }

    /// Whether this device can run attention kernel `k` (wgmma: compute capability 9.0 and
    /// kernels/attention_sm90a.cu built and loaded).
    pub fn supports_attention_kernel(&self, k: AttentionKernel) -> bool {
        !k.is_wgmma() || self.dev.has_module("attention_sm90a")
    }

    /// Chooses the attention kernel for head dim 72 (DELTADIT_ATTENTION sets it at creation).
    /// Captured graphs of earlier steps still hold the old kernel; their launch signature no
    /// longer matches, so they are captured again at the next replay.
    pub fn set_attention_kernel(&self, k: AttentionKernel) -> Result<()> {
        if !self.supports_attention_kernel(k) {
            if let Some(why) = self.dev.module_failure("attention_sm90a") {
                return Err(Error::Unsupported(format!("attention kernel {}: {why}", k.name())));
            }
            let (ma, mi) = self.dev.info.compute_capability;
            return Err(Error::Unsupported(format!(
                "attention kernel {}: needs a GPU of compute capability 9.0 (H100/H200) and kernels/attention_sm90a.cu \
                 built by nvcc; {} is sm_{ma}{mi}",
                k.name(),
                self.dev.info.name
            )));
        }
        self.attention.set(k);
        Ok(())
    }

    /// The device this backend runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.dev.info
    }

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

    fn bytes_of(&self, op: &'static str, shape: &[usize], dtype: DType) -> Result<usize> {
        shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).ok_or_else(|| Error::Shape {
            op,
            tensor: "shape",
            expected: "a size that fits in memory".into(),
            found: shape.to_vec(),
        })
    }

    fn check_data_len(op: &'static str, t: &Tensor<Self>, data: usize) -> Result<()> {
        if data != t.numel() {
            return Err(Error::Shape {
                op,
                tensor: "data",
                expected: format!("{} elements", t.numel()),
                found: vec![data],
            });
        }
        Ok(())
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
        let len = self.bytes_of("alloc", shape, dtype)?;
        let buf = self.dev.alloc(len, &|| format!("a {shape:?} {dtype} tensor"))?;
        let mut t = Tensor::from_parts(buf, shape, dtype);
        if self.opts.poison {
            kernels::fill_bits(self, &mut t, dtype.nan_bits())?;
        }
        Ok(t)
    }

    fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let mut t = self.alloc(shape, dtype)?;
        self.write(&mut t, data)?;
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
        Self::check_data_len("write", dst, data.len())?;
        match dst.dtype() {
            DType::F32 => self.dev.upload(&dst.buf, data),
            dt => {
                let mut raw = vec![0u16; data.len()];
                f32_to_bits16(dt, data, &mut raw);
                self.dev.upload(&dst.buf, &raw)
            }
        }
    }

    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>) -> Result<()> {
        shapes::same_shape("copy", "dst", dst, src)?;
        shapes::same_dtype("copy", src, &[("dst", dst)])?;
        let len = src.numel() * src.dtype().size();
        self.dev.copy(dst.buf.device_ptr(), src.buf.device_ptr(), len)
    }

    fn fill_bits(&self, t: &mut Tensor<Self>, bits: u32) -> Result<()> {
        kernels::fill_bits(self, t, bits)
    }

    fn graph_run(&self, key: &str, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
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
            return Err(Error::Unsupported("linear: a weight with 0 input features".into()));
        }
        let epilogue = match (act, bias.is_some()) {
            (Activation::GeluTanh, false) => Epilogue::Gelu,
            (Activation::GeluTanh, true) => Epilogue::GeluBias,
            (Activation::None | Activation::Silu, false) => Epilogue::Default,
            (Activation::None | Activation::Silu, true) => Epilogue::Bias,
        };
        let (xp, wp, op) = (x.buf.device_ptr(), w.buf.device_ptr(), out.buf.device_ptr());
        let bp = bias.map_or(0, |b| b.buf.device_ptr());
        let key = GemmKey {
            m: m as u64,
            n: n as u64,
            k: k as u64,
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

    super::kernels::kernel_backend_ops!();

    fn copy_range(
        &self,
        src: &Tensor<Self>,
        src_off: usize,
        dst: &mut Tensor<Self>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        shapes::copy_range(src, src_off, dst, dst_off, len)?;
        let es = src.dtype().size() as u64;
        let (s, d) = (src.buf.device_ptr() + src_off as u64 * es, dst.buf.device_ptr() + dst_off as u64 * es);
        self.dev.copy(d, s, len * es as usize)
    }
}

impl KernelDevice for Cuda {
    fn ptr(&self, t: &Tensor<Self>) -> *const c_void {
        t.buf.device_ptr() as usize as *const c_void
    }

    fn ptr_mut(&self, t: &mut Tensor<Self>) -> *mut c_void {
        t.buf.device_ptr() as usize as *mut c_void
    }

    fn launch<P: KernelParams>(&self, name: &str, params: &P, cfg: LaunchCfg) -> Result<()> {
        self.dev.launch(name, params, cfg)
    }

    fn attention_kernel(&self) -> AttentionKernel {
        self.attention.get()
    }
}
