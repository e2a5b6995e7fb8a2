//! kernels/attention.cu: fused multi-head attention (FlashAttention-2 style, mma.sync), and
//! kernels/attention_sm90a.cu: the same algorithm on Hopper's warpgroup MMA (wgmma), head dim 72.
//!
//! Q, K and V are column slices of `[batch·tokens, width]` tensors read in place (e.g. of one
//! fused QKV projection output); head h uses columns `[col + h·d, col + (h + 1)·d)`. The kernel
//! moves rows in 16-byte chunks (cp.async, vector stores), so every row start must be 16-byte
//! aligned: row strides and column offsets are multiples of 8 elements.

use super::table::{attention_variant, AttentionKernel, ATTENTION_VARIANTS};
use super::{ptr_or_null, KernelDevice, LaunchCfg};
use crate::backend::params::AttentionParams;
use crate::backend::{shapes, AttentionShape, ColSlice};
use crate::error::BackendErrorKind;
use crate::{Error, Result, Tensor};
use std::ffi::c_void;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

impl AttentionKernel {
    /// The `kernels/<file>.cu` stem of this kernel's entry points.
    pub fn file(self) -> &'static str {
        ATTENTION_VARIANTS.iter().find(|v| v.kernel == self).map_or("attention", |v| v.file)
    }

    /// Whether this is one of the Hopper kernels of kernels/attention_sm90a.cu (compute capability
    /// 9.0 only; loaded only there).
    pub fn is_wgmma(self) -> bool {
        self.file() == "attention_sm90a"
    }

    /// The Hopper kernels (kernels/attention_sm90a.cu).
    pub fn wgmma_kernels() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.is_wgmma()).collect()
    }

    /// The head dims this kernel has an entry point for (others run the default kernel).
    pub fn head_dims(self) -> impl Iterator<Item = usize> {
        ATTENTION_VARIANTS.iter().filter(move |v| v.kernel == self).map(|v| v.head_dim)
    }

    /// A comma-separated list of kernel names (blank: none), e.g. "wgmma,wgmma-qregs".
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::parse).collect()
    }
}

impl FromStr for AttentionKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s.trim()).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            Error::param("attention kernel", s, format!("one of {}", names.join(", ")))
        })
    }
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend's current [`AttentionKernel`], settable through `&self` (the backends are shared).
#[derive(Debug, Default)]
pub(crate) struct AttentionChoice(AtomicU8);

impl AttentionChoice {
    pub fn get(&self) -> AttentionKernel {
        let v = self.0.load(Ordering::Relaxed) as usize;
        AttentionKernel::ALL.get(v).copied().unwrap_or_default()
    }

    pub fn set(&self, k: AttentionKernel) {
        let i = AttentionKernel::ALL.iter().position(|&x| x == k).unwrap_or(0);
        self.0.store(i as u8, Ordering::Relaxed);
    }
}

impl Clone for AttentionChoice {
    fn clone(&self) -> Self {
        let c = AttentionChoice::default();
        c.set(self.get());
        c
    }
}

/// Whether a kernel backend has an attention kernel for `head_dim`.
pub fn attention_supported_head_dim(head_dim: usize) -> bool {
    attention_variant(AttentionKernel::default(), head_dim).is_some()
}

fn layout_err(msg: String) -> Error {
    Error::backend("kernels", BackendErrorKind::UnsupportedLayout, format!("attention: {msg}"))
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
    let s = shape;
    let variant = attention_variant(d.attention_kernel(), s.head_dim).ok_or_else(|| {
        let dims: Vec<String> = ATTENTION_VARIANTS
            .iter()
            .filter(|v| v.kernel == AttentionKernel::default())
            .map(|v| v.head_dim.to_string())
            .collect();
        Error::backend(
            "kernels",
            BackendErrorKind::UnsupportedHeadDim { head_dim: s.head_dim },
            format!(
                "attention: no kernel for head dim {}; the kernels support head dims {}",
                s.head_dim,
                dims.join(", ")
            ),
        )
    })?;
    let kernel = variant.for_dtype(out.dtype())?;
    let (block_q, threads, smem) = (variant.block_q, variant.threads, variant.smem);
    let width = s.heads * s.head_dim;

    for (name, col, stride) in [("q", q.col, ops.q_stride), ("k", k.col, ops.k_stride), ("v", v.col, ops.v_stride)] {
        if col % VEC != 0 || stride % VEC != 0 {
            return Err(layout_err(format!(
                "{name} rows must start on 16-byte boundaries: column offset {col} and row stride {stride} \
                 must be multiples of {VEC} elements"
            )));
        }
        // The kernel forms in-tile offsets (row · stride) in 32 bits.
        if stride > (i32::MAX as usize) / (block_q as usize) {
            return Err(layout_err(format!("{name} row stride {stride} is too large")));
        }
    }
    let elem = out.dtype().size();
    // Pointer arithmetic only: each column offset lies inside its tensor (shapes::attention
    // checked col + width ≤ cols).
    let at = |t: &Tensor<D>, col: usize| d.ptr(t).cast::<u8>().wrapping_add(col * elem).cast::<c_void>();
    let (qp, kp, vp, o) = (at(q.t, q.col), at(k.t, k.col), at(v.t, v.col), d.ptr_mut(out));
    for (name, ptr) in [("q", qp), ("k", kp), ("v", vp), ("out", o.cast_const())] {
        if !(ptr as usize).is_multiple_of(16) {
            return Err(layout_err(format!("{name} is not 16-byte aligned")));
        }
    }
    let (nq, nk) = (i32_of("nq", s.nq)?, i32_of("nk", s.nk)?);
    let blocks_q = s.nq.div_ceil(block_q as usize);
    if blocks_q > i32::MAX as usize || s.heads > 65_535 || s.batch > 65_535 {
        return Err(layout_err(format!(
            "grid ({blocks_q}, {}, {}) out of range (heads and batch ≤ 65535)",
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
    // SAFETY: q, k and v address `width` columns from their offsets in every one of their
    // batch × tokens rows, out [batch·nq, width] and key_bias [batch, nk] f32 (shapes::attention);
    // the kernel reads and writes nothing else.
    unsafe { d.launch(kernel, &p, cfg) }
}

fn i32_of(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| layout_err(format!("{what} = {n} exceeds the kernel's i32 range")))
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
            assert_eq!(k.name().parse::<AttentionKernel>().unwrap(), k);
            assert!(k.head_dims().next().is_some(), "{k} has no entry point");
        }
    }
}
