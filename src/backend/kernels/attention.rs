//! kernels/attention.cu: fused multi-head attention (FlashAttention-2 style, mma.sync), and
//! kernels/attention_sm90a.cu: the same algorithm on Hopper's warpgroup MMA (wgmma), head dim 72.
//!
//! Q, K and V are column slices of `[batch·tokens, width]` tensors read in place (e.g. of one
//! fused QKV projection output); head h uses columns `[col + h·d, col + (h + 1)·d)`. The kernel
//! moves rows in 16-byte chunks (cp.async, vector stores), so every row start must be 16-byte
//! aligned: row strides and column offsets are multiples of 8 elements.

use super::{dtype_suffix, ptr_or_null, KernelDevice, LaunchCfg};
use crate::backend::params::{
    AttentionParams, ATTN_BLOCK_Q, ATTN_SMEM_D128, ATTN_SMEM_D64, ATTN_SMEM_D72, ATTN_THREADS, ATTN_WG3_BLOCK_Q,
    ATTN_WG3_SMEM_D72, ATTN_WG3_THREADS, ATTN_WG_BLOCK_Q, ATTN_WG_SMEM_D72, ATTN_WG_THREADS,
};
use crate::backend::{shapes, AttentionShape, ColSlice};
use crate::{Error, Result, Tensor};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which attention kernel a kernel backend launches where there is a choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionKernel {
    /// kernels/attention.cu (mma.sync, sm_80+), every supported head dim: the default.
    #[default]
    Mma,
    /// kernels/attention_sm90a.cu (wgmma) for head dim 72 on compute capability 9.0 (H100/H200),
    /// Q·Kᵀ with both operands from shared memory, 2 warpgroups, 2 CTAs an SM; other head dims
    /// still use [`AttentionKernel::Mma`]. This and the two below are checked in the SIMT shim and
    /// opt-in until they have been measured against the mma.sync kernel on a GPU (BENCHMARKS.md).
    Wgmma,
    /// As [`AttentionKernel::Wgmma`] with Q's fragments in registers (half the shared-memory
    /// reads of Q·Kᵀ), 2 warpgroups, 1 CTA an SM.
    WgmmaQRegs,
    /// Q in registers, 3 warpgroups (192 queries a CTA), 1 CTA an SM.
    WgmmaQRegs3,
}

/// The accepted spellings, for error messages.
const KERNEL_NAMES: &str = "mma, wgmma, wgmma-qregs or wgmma-qregs3";

impl AttentionKernel {
    pub const ALL: [AttentionKernel; 4] =
        [AttentionKernel::Mma, AttentionKernel::Wgmma, AttentionKernel::WgmmaQRegs, AttentionKernel::WgmmaQRegs3];
    /// The kernels of kernels/attention_sm90a.cu (compute capability 9.0 only).
    pub const WGMMA: [AttentionKernel; 3] =
        [AttentionKernel::Wgmma, AttentionKernel::WgmmaQRegs, AttentionKernel::WgmmaQRegs3];

    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Mma => "mma",
            AttentionKernel::Wgmma => "wgmma",
            AttentionKernel::WgmmaQRegs => "wgmma-qregs",
            AttentionKernel::WgmmaQRegs3 => "wgmma-qregs3",
        }
    }

    /// Whether this is one of the sm_90a wgmma kernels.
    pub fn is_wgmma(self) -> bool {
        self != AttentionKernel::Mma
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| Error::param("attention kernel", s, KERNEL_NAMES))
    }

    /// A comma-separated list of kernel names (blank: none), e.g. "wgmma,wgmma-qregs".
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(Self::parse).collect()
    }

    /// The wgmma kernels the environment variable `var` lists (comma-separated), else all of them:
    /// how the GPU run (scripts/gpu-run.sh) confines its wgmma test and bench steps to one kernel,
    /// or to those whose tests passed.
    pub fn wgmma_from_env(var: &str) -> Result<Vec<Self>> {
        match std::env::var(var) {
            Ok(v) => {
                let ks = Self::parse_list(&v)
                    .map_err(|_| Error::param(var, &v, "wgmma, wgmma-qregs or wgmma-qregs3, comma-separated"))?;
                match ks.iter().find(|k| !k.is_wgmma()) {
                    Some(k) => Err(Error::param(var, k.name(), "wgmma kernels only")),
                    None => Ok(ks),
                }
            }
            Err(_) => Ok(Self::WGMMA.to_vec()),
        }
    }

    /// DELTADIT_ATTENTION (mma | wgmma | wgmma-qregs | wgmma-qregs3), when set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var("DELTADIT_ATTENTION") {
            Ok(v) if !v.trim().is_empty() => {
                Self::parse(&v).map(Some).map_err(|_| Error::param("DELTADIT_ATTENTION", v, KERNEL_NAMES))
            }
            _ => Ok(None),
        }
    }

    /// Kernel name stem (without the dtype), queries a CTA, threads and dynamic shared memory of
    /// the head-dim-72 kernel.
    fn d72_launch(self) -> (&'static str, u32, u32, u32) {
        match self {
            AttentionKernel::Mma => ("attention_d72", ATTN_BLOCK_Q, ATTN_THREADS, ATTN_SMEM_D72),
            AttentionKernel::Wgmma => ("attention_wgmma_d72", ATTN_WG_BLOCK_Q, ATTN_WG_THREADS, ATTN_WG_SMEM_D72),
            AttentionKernel::WgmmaQRegs => {
                ("attention_wgmma_qregs_d72", ATTN_WG_BLOCK_Q, ATTN_WG_THREADS, ATTN_WG_SMEM_D72)
            }
            AttentionKernel::WgmmaQRegs3 => {
                ("attention_wgmma_qregs3_d72", ATTN_WG3_BLOCK_Q, ATTN_WG3_THREADS, ATTN_WG3_SMEM_D72)
            }
        }
    }
}

/// A backend's current [`AttentionKernel`], settable through `&self` (the backends are shared).
#[derive(Debug, Default)]
pub(crate) struct AttentionChoice(AtomicU8);

impl AttentionChoice {
    pub fn get(&self) -> AttentionKernel {
        let v = self.0.load(Ordering::Relaxed);
        AttentionKernel::ALL.into_iter().find(|&k| k as u8 == v).unwrap_or_default()
    }

    pub fn set(&self, k: AttentionKernel) {
        self.0.store(k as u8, Ordering::Relaxed);
    }
}

impl Clone for AttentionChoice {
    fn clone(&self) -> Self {
        let c = AttentionChoice::default();
        c.set(self.get());
        c
    }
}

/// Head dims with a compiled kernel specialisation.
pub fn attention_supported_head_dim(head_dim: usize) -> bool {
    matches!(head_dim, 64 | 72 | 128)
}

/// Dynamic shared memory of the kernel for `head_dim` (all above 48 KB: the CUDA backend raises
/// the function's MAX_DYNAMIC_SHARED_SIZE_BYTES to this).
pub(crate) fn smem_bytes(head_dim: usize) -> Option<u32> {
    match head_dim {
        64 => Some(ATTN_SMEM_D64),
        72 => Some(ATTN_SMEM_D72),
        128 => Some(ATTN_SMEM_D128),
        _ => None,
    }
}

/// Elements per 16-byte chunk of a bf16/f16 row.
const VEC: usize = 8;

pub fn attention<D: KernelDevice>(
    d: &D,
    shape: &AttentionShape,
    q: ColSlice<'_, D>,
    k: ColSlice<'_, D>,
    v: ColSlice<'_, D>,
    key_bias: Option<&Tensor<D>>,
    out: &mut Tensor<D>,
) -> Result<()> {
    let ops = shapes::attention(shape, &q, &k, &v, key_bias, out)?;
    let suffix = dtype_suffix("attention", out.dtype())?;
    let smem = smem_bytes(shape.head_dim).ok_or_else(|| {
        Error::Unsupported(format!(
            "attention: head_dim {} has no kernel; supported head dims are 64, 72 and 128",
            shape.head_dim
        ))
    })?;
    let s = shape;
    let width = s.heads * s.head_dim;
    let (name, block_q, threads, smem) = if s.head_dim == 72 {
        let (stem, block_q, threads, smem) = d.attention_kernel().d72_launch();
        (format!("{stem}_{suffix}"), block_q, threads, smem)
    } else {
        (format!("attention_d{}_{suffix}", s.head_dim), ATTN_BLOCK_Q, ATTN_THREADS, smem)
    };

    for (name, col, stride) in [("q", q.col, ops.q_stride), ("k", k.col, ops.k_stride), ("v", v.col, ops.v_stride)] {
        if col % VEC != 0 || stride % VEC != 0 {
            return Err(Error::Unsupported(format!(
                "attention: {name} rows must start on 16-byte boundaries: column offset {col} and row stride {stride} \
                 must be multiples of {VEC} elements"
            )));
        }
        // The kernel forms in-tile offsets (row · stride) in 32 bits.
        if stride > (i32::MAX as usize) / (block_q as usize) {
            return Err(Error::Unsupported(format!("attention: {name} row stride {stride} is too large")));
        }
    }
    let elem = out.dtype().size();
    // Pointer arithmetic only: each column offset lies inside its tensor (shapes::attention
    // checked col + width ≤ cols).
    let at = |t: &Tensor<D>, col: usize| d.ptr(t).cast::<u8>().wrapping_add(col * elem).cast::<c_void>();
    let (qp, kp, vp, o) = (at(q.t, q.col), at(k.t, k.col), at(v.t, v.col), d.ptr_mut(out));
    for (name, ptr) in [("q", qp), ("k", kp), ("v", vp), ("out", o.cast_const())] {
        if !(ptr as usize).is_multiple_of(16) {
            return Err(Error::Unsupported(format!("attention: {name} is not 16-byte aligned")));
        }
    }
    let (nq, nk) = (i32_of("nq", s.nq)?, i32_of("nk", s.nk)?);
    let blocks_q = s.nq.div_ceil(block_q as usize);
    if blocks_q > i32::MAX as usize || s.heads > 65_535 || s.batch > 65_535 {
        return Err(Error::Unsupported(format!(
            "attention: grid ({blocks_q}, {}, {}) out of range (heads and batch ≤ 65535)",
            s.heads, s.batch
        )));
    }

    let p = AttentionParams {
        q: qp,
        k: kp,
        v: vp,
        o,
        key_bias: ptr_or_null(d, key_bias).cast::<f32>(),
        q_row_stride: ops.q_stride as i64,
        k_row_stride: ops.k_stride as i64,
        v_row_stride: ops.v_stride as i64,
        o_row_stride: width as i64,
        q_batch_stride: (s.nq * ops.q_stride) as i64,
        k_batch_stride: (s.nk * ops.k_stride) as i64,
        v_batch_stride: (s.nk * ops.v_stride) as i64,
        o_batch_stride: (s.nq * width) as i64,
        bias_batch_stride: s.nk as i64,
        batch: s.batch as i32,
        heads: s.heads as i32,
        nq,
        nk,
        scale_log2: s.scale * std::f32::consts::LOG2_E,
        _pad: 0,
    };
    let cfg = LaunchCfg { grid: [blocks_q as u32, s.heads as u32, s.batch as u32], block: [threads, 1, 1], smem };
    d.launch(&name, &p, cfg)
}

fn i32_of(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Unsupported(format!("attention: {what} = {n} exceeds the kernel's i32 range")))
}

#[cfg(test)]
mod tests {
    use super::AttentionKernel;

    #[test]
    fn kernel_lists_parse() {
        let l = AttentionKernel::parse_list(" wgmma-qregs3, mma ,").unwrap();
        assert_eq!(l, vec![AttentionKernel::WgmmaQRegs3, AttentionKernel::Mma]);
        assert!(AttentionKernel::parse_list("").unwrap().is_empty());
        let e = AttentionKernel::parse_list("wgmma,flash").unwrap_err().to_string();
        assert!(e.contains("flash") && e.contains("wgmma-qregs"), "{e}");
        for k in AttentionKernel::ALL {
            assert_eq!(AttentionKernel::parse(k.name()).unwrap(), k);
            assert_eq!(k.is_wgmma(), AttentionKernel::WGMMA.contains(&k));
        }
    }
}
