//! The sim backend: the CUDA kernels of kernels/*.cu compiled with g++ against the SIMT shim
//! (kernels/sim/) and run on the CPU, with bf16/f16 storage exactly as on the GPU. The CPU GEMM
//! (f32 accumulation, one rounding of the output, as cuBLASLt with bias/GELU epilogues) stands in
//! for cuBLASLt. It exists so every kernel and the whole model are tested on machines without a
//! GPU; it is slow (each CUDA thread is a fiber).

mod ffi;
#[cfg(deltadit_sim)]
pub mod selftest;

use super::kernels::{self, AttentionChoice, AttentionKernel, KernelDevice, KernelParams, LaunchCfg};
use super::{shapes, Activation, Backend};
use crate::dtype::{bits16_to_f32, f32_to_bits16};
use crate::{DType, Error, Result, Tensor};
use bytemuck::{Pod, Zeroable};
use std::ffi::c_void;

pub use ffi::{count_smem_traffic, is_built, set_warp_order, SmemTraffic, WarpOrder, Wavefronts};

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
    /// Fails when the shim library was not built (no CUDA headers at build time) or `dtype` is
    /// f32 (the kernels take bf16/f16).
    pub fn new(dtype: DType) -> Result<Self> {
        if !is_built() {
            return Err(Error::backend(
                "sim",
                "not built: the SIMT shim needs the CUDA headers at build time; run scripts/install-cuda.sh and rebuild",
            ));
        }
        kernels::dtype_suffix("sim backend", dtype)?;
        let sim = Sim { dtype, threads: rayon::current_num_threads(), attention: AttentionChoice::default() };
        if let Some(k) = AttentionKernel::from_env()? {
            sim.set_attention_kernel(k);
        }
        Ok(sim)
    }

    /// Chooses the attention kernel for head dim 72 (DELTADIT_ATTENTION sets it at creation).
    /// The shim emulates both, so any choice works here.
    pub fn set_attention_kernel(&self, k: AttentionKernel) {
        self.attention.set(k);
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
        let bytes = shape.iter().product::<usize>() * dtype.size();
        // 0xff bytes are a NaN in f32, bf16 and f16: unwritten elements show.
        let buf = SimBuf { chunks: vec![Chunk([0xff; 16]); bytes.div_ceil(16).max(1)], bytes };
        Ok(Tensor::from_parts(buf, shape, dtype))
    }

    fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let mut t = self.alloc(shape, dtype)?;
        self.write(&mut t, data)?;
        Ok(t)
    }

    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(self.to_f32(t))
    }

    fn write(&self, dst: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        if data.len() != dst.numel() {
            return Err(Error::Shape {
                op: "write",
                tensor: "data",
                expected: format!("{} elements", dst.numel()),
                found: vec![data.len()],
            });
        }
        let dtype = dst.dtype();
        let b = dst.buf.bytes_mut();
        match dtype {
            DType::F32 => b.copy_from_slice(bytemuck::cast_slice(data)),
            dt => f32_to_bits16(dt, data, bytemuck::cast_slice_mut(b)),
        }
        Ok(())
    }

    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>) -> Result<()> {
        shapes::same_shape("copy", "dst", dst, src)?;
        shapes::same_dtype("copy", src, &[("dst", dst)])?;
        dst.buf.bytes_mut().copy_from_slice(src.buf.bytes());
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

    fn launch<P: KernelParams>(&self, name: &str, params: &P, cfg: LaunchCfg) -> Result<()> {
        ffi::launch(name, params, cfg)
    }

    fn attention_kernel(&self) -> AttentionKernel {
        self.attention.get()
    }
}
