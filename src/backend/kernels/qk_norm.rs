//! kernels/qk_norm.cu: RMSNorm of each attention head of Q and K, in place.

use super::elementwise::int32;
use super::table::family;
use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{QkNormParams, QK_NORM_THREADS};
use crate::backend::{shapes, Rope};
use crate::{Result, Tensor};

/// Lanes that share one head: on the vector path (16-byte chunks, one a lane) the head's chunks
/// rounded up to a power of two (64 → 8, 128 → 16, 256 → 32), else a whole warp.
pub(crate) fn group_lanes(head_dim: usize, vectors: bool) -> u32 {
    if vectors {
        (head_dim / 8).next_power_of_two().min(32) as u32
    } else {
        32
    }
}

#[allow(clippy::too_many_arguments)]
pub fn qk_norm<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    q_col: usize,
    k_col: usize,
    heads: usize,
    head_dim: usize,
    wq: &Tensor<D>,
    wk: &Tensor<D>,
    eps: f32,
) -> Result<()> {
    let s = shapes::qk_norm(x, q_col, k_col, heads, head_dim, wq, wk, eps)?;
    launch(d, x, s, q_col, k_col, heads, head_dim, wq, wk, eps, None)
}

/// [`qk_norm`] fused with FLUX's RoPE: the same kernel with the table set.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    q_col: usize,
    k_col: usize,
    heads: usize,
    head_dim: usize,
    wq: &Tensor<D>,
    wk: &Tensor<D>,
    eps: f32,
    rope: Rope<'_, D>,
) -> Result<()> {
    let s = shapes::qk_norm_rope(x, q_col, k_col, heads, head_dim, wq, wk, eps, &rope)?;
    launch(d, x, s, q_col, k_col, heads, head_dim, wq, wk, eps, Some(rope))
}

#[allow(clippy::too_many_arguments)]
fn launch<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    s: shapes::QkNormSizes,
    q_col: usize,
    k_col: usize,
    heads: usize,
    head_dim: usize,
    wq: &Tensor<D>,
    wk: &Tensor<D>,
    eps: f32,
    rope: Option<Rope<'_, D>>,
) -> Result<()> {
    const OP: &str = "qk_norm";
    let kernel = family::QK_NORM.for_dtype(x.dtype())?;
    if s.rows == 0 {
        return Ok(());
    }
    // The kernel's vector path (its condition, less the base pointers' 16-byte alignment, which
    // whole tensors have): whole 16-byte chunks, at most one a lane.
    let vectors = head_dim.is_multiple_of(8)
        && head_dim <= 8 * 32
        && s.width.is_multiple_of(8)
        && q_col.is_multiple_of(8)
        && k_col.is_multiple_of(8);
    let lanes = group_lanes(head_dim, vectors);
    let p = QkNormParams {
        x: d.ptr_mut(x),
        wq: d.ptr(wq),
        wk: d.ptr(wk),
        rows: s.rows as i64,
        row_stride: s.width as i64,
        q_col: q_col as i64,
        k_col: k_col as i64,
        heads: int32(OP, "x", x, heads)?,
        head_dim: int32(OP, "x", x, head_dim)?,
        group_lanes: lanes as i32,
        eps,
        rope: rope.map_or(std::ptr::null(), |r| d.ptr(r.table) as *const f32),
        rope_tokens: rope.map_or(0, |r| r.tokens as i64),
        rope_offset: rope.map_or(0, |r| r.offset as i64),
    };
    // One item a group; groups past the cap loop (grid-stride).
    let items = s.rows * 2 * heads;
    let cfg = LaunchCfg::linear(grid_stride_blocks(items, QK_NORM_THREADS / lanes, 1), QK_NORM_THREADS)?;
    // SAFETY: x is a [rows, width] tensor holding both column ranges [col, col + heads·head_dim)
    // of every row, wq and wk are [head_dim] (shapes::qk_norm), all of the kernel's dtype; a
    // RoPE table is f32 [positions, head_dim] holding offset..offset + tokens, rows a multiple
    // of tokens (shapes::qk_norm_rope).
    unsafe { d.launch(kernel, &p, cfg) }
}

#[cfg(test)]
mod tests {
    use super::group_lanes;

    #[test]
    fn group_lanes_hold_the_head() {
        assert_eq!(group_lanes(64, true), 8);
        assert_eq!(group_lanes(128, true), 16);
        assert_eq!(group_lanes(256, true), 32);
        assert_eq!(group_lanes(72, true), 16); // 9 chunks
        assert_eq!(group_lanes(8, true), 1);
        assert_eq!(group_lanes(100, false), 32);
    }
}
