//! The sim backend: the CUDA kernels of kernels/*.cu compiled with g++ against the SIMT shim
//! (kernels/sim/) and run on the CPU, with bf16/f16 storage exactly as on the GPU. The CPU GEMM
//! (f32 accumulation, one rounding of the output, as cuBLASLt with bias/GELU epilogues) stands in
//! for cuBLASLt. It exists so every kernel and the whole model are tested on machines without a
//! GPU; it is slow (each CUDA thread is a fiber).

#[allow(missing_docs)] // crate internals
mod ffi;
#[cfg(deltadit_sim)]
pub(crate) mod selftest;

use super::kernels::{self, AttentionChoice, AttentionKernel, KernelDevice, KernelId, KernelParams, LaunchCfg};
use super::{shapes, Activation, Backend, ColSlice};
use crate::dtype::{bits16_to_f32, f32_to_bits16};
use crate::error::BackendErrorKind;
use crate::{DType, Error, Result, Tensor};
use bytemuck::{Pod, Zeroable};
use std::ffi::c_void;

pub use ffi::is_built;

/// The shim's instruments (crate internals: tests and benches).
#[cfg(feature = "internals")]
pub(crate) mod instruments {
    pub use super::ffi::{count_smem_traffic, set_warp_order, SmemTraffic, WarpOrder, Wavefronts};
}

/// 16 bytes, 16-byte aligned: the unit of sim storage, so every tensor satisfies the kernels'
/// 16-byte vector-load and cp.async alignment like a cudaMalloc'd buffer does.
#[repr(C, align(16))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Chunk([u8; 16]);

/// Host storage of one sim tensor.
pub struct SimBuf {
    chunks: Vec<Chunk>,
    bytes: usize,
}

impl SimBuf {
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.chunks)[..self.bytes]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.chunks)[..self.bytes]
    }
}

/// The sim backend; `dtype` (bf16 or f16) is the storage of weights and activations.
#[derive(Clone, Debug)]
pub struct Sim {
    dtype: DType,
    threads: usize,
    attention: AttentionChoice,
}

impl Sim {
    /// Fails when the shim library was not built (no CUDA headers at build time:
    /// [`BackendErrorKind::NotBuilt`]) or `dtype` is f32 (the kernels take bf16/f16:
    /// [`BackendErrorKind::UnsupportedDType`]).
    pub fn new(dtype: DType) -> Result<Self> {
        if !is_built() {
            return Err(Error::backend(
                "sim",
                BackendErrorKind::NotBuilt,
                "the SIMT shim needs the CUDA headers at build time; run scripts/install-cuda.sh and rebuild",
            ));
        }
        if dtype == DType::F32 {
            return Err(Error::backend(
                "sim",
                BackendErrorKind::UnsupportedDType { dtype },
                "the kernels compute in bf16 or f16 (weights and activations)",
            ));
        }
        Ok(Sim { dtype, threads: rayon::current_num_threads(), attention: AttentionChoice::default() })
    }

    /// Chooses the attention kernel where a head dim has more than one (72). The shim emulates
    /// every one, so any choice works here.
    pub fn set_attention_kernel(&self, k: AttentionKernel) {
        self.attention.set(k);
    }

    /// The attention kernel it launches where there is a choice.
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention.get()
    }

    fn to_f32(&self, t: &Tensor<Self>) -> Vec<f32> {
        let b = t.buf.bytes();
        match t.dtype() {
            DType::F32 => bytemuck::cast_slice::<u8, f32>(b).to_vec(),
            dt => {
                let mut out = vec![0.0; t.numel()];
                bits16_to_f32(dt, bytemuck::cast_slice(b), &mut out);
                out
            }
        }
    }
}

impl Backend for Sim {
    type Buf = SimBuf;
    const NAME: &'static str = "sim";

    fn act_dtype(&self) -> DType {
        self.dtype
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let bytes = shapes::alloc_bytes(shape, dtype)?;
        // 0xff bytes are a NaN in f32, bf16 and f16: unwritten elements show.
        let buf = SimBuf { chunks: vec![Chunk([0xff; 16]); bytes.div_ceil(16).max(1)], bytes };
        Ok(Tensor::from_parts(buf, shape, dtype))
    }

    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(self.to_f32(t))
    }

    fn write(&self, dst: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        shapes::write(dst, data.len())?;
        let dtype = dst.dtype();
        let b = dst.buf.bytes_mut();
        match dtype {
            DType::F32 => b.copy_from_slice(bytemuck::cast_slice(data)),
            dt => f32_to_bits16(dt, data, bytemuck::cast_slice_mut(b)),
        }
        Ok(())
    }

    fn fill_bits(&self, t: &mut Tensor<Self>, bits: u32) -> Result<()> {
        kernels::fill_bits(self, t, bits)
    }

    /// The stand-in for cuBLASLt: f32 GEMM with bias and activation, one rounding of the output.
    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let (m, n, k) = shapes::linear(x, w, bias, out)?;
        let (xf, wf) = (self.to_f32(x), self.to_f32(w));
        let bf = bias.map(|b| self.to_f32(b));
        let mut of = vec![0.0f32; m * n];
        super::cpu::linear_f32(&xf, &wf, bf.as_deref(), act, &mut of, m, n, k, self.threads);
        self.write(out, &of)
    }

    fn linear_cols(
        &self,
        x: ColSlice<'_, Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let (m, n, k, ldx) = shapes::linear_cols(&x, w, bias, out)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (xf, wf) = (self.to_f32(x.t), self.to_f32(w));
        let bf = bias.map(|b| self.to_f32(b));
        let mut of = vec![0.0f32; m * n];
        super::cpu::linear_f32_ld(&xf[x.col..], ldx, &wf, bf.as_deref(), act, &mut of, m, n, k, self.threads);
        self.write(out, &of)
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
        let es = src.dtype().size();
        dst.buf.bytes_mut()[dst_off * es..(dst_off + len) * es]
            .copy_from_slice(&src.buf.bytes()[src_off * es..(src_off + len) * es]);
        Ok(())
    }
}

impl KernelDevice for Sim {
    fn ptr(&self, t: &Tensor<Self>) -> *const c_void {
        t.buf.chunks.as_ptr().cast()
    }

    fn ptr_mut(&self, t: &mut Tensor<Self>) -> *mut c_void {
        t.buf.chunks.as_mut_ptr().cast()
    }

    unsafe fn launch<P: KernelParams>(&self, kernel: KernelId, params: &P, cfg: LaunchCfg) -> Result<()> {
        // SAFETY: the caller's contract is ffi::launch's.
        unsafe { ffi::launch(kernel, params, cfg) }
    }

    fn attention_kernel(&self) -> AttentionKernel {
        self.attention.get()
    }
}
