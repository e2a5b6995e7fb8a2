//! kernels/fill.cu: poison or initialise a buffer with one bit pattern; strided block copies.

use super::table::{family, KernelFamily, KernelId};
use super::{grid_stride_blocks, KernelDevice, LaunchCfg};
use crate::backend::params::{CopyRowsParams, FillParams, FILL_THREADS};
use crate::backend::shapes;
use crate::{DType, Result, Tensor};

/// The raw-bits kernel of `family` for elements of `dtype` (`u16` or `u32`).
fn raw_kernel(family: &KernelFamily, dtype: DType) -> Result<KernelId> {
    let suffix = if dtype.size() == 2 { "u16" } else { "u32" };
    family.with_suffix(suffix).ok_or_else(|| {
        crate::Error::backend(
            "kernels",
            crate::error::BackendErrorKind::NotBuilt,
            format!("no {}_{suffix} kernel", family.name),
        )
    })
}

/// `dst[dst_at + (r, c)] = src[src_at + (r, c)]` for r < rows, c < cols (exact: raw bits).
pub fn copy_rows<D: KernelDevice>(
    d: &D,
    src: &Tensor<D>,
    src_at: (usize, usize),
    dst: &mut Tensor<D>,
    dst_at: (usize, usize),
    (rows, cols): (usize, usize),
) -> Result<()> {
    shapes::copy_rows(src, src_at, dst, dst_at, (rows, cols))?;
    let n = rows * cols;
    if n == 0 {
        return Ok(());
    }
    let kernel = raw_kernel(&family::COPY_ROWS, src.dtype())?;
    let es = src.dtype().size();
    let (src_ld, dst_ld) = (src.cols(), dst.cols());
    let (s_off, d_off) = ((src_at.0 * src_ld + src_at.1) * es, (dst_at.0 * dst_ld + dst_at.1) * es);
    // SAFETY (of the offsets): the blocks' first elements lie inside their tensors
    // (shapes::copy_rows, n > 0).
    let (sp, dp) = unsafe { (d.ptr(src).cast::<u8>().add(s_off), d.ptr_mut(dst).cast::<u8>().add(d_off)) };
    let p = CopyRowsParams {
        src: sp.cast(),
        dst: dp.cast(),
        rows: rows as i64,
        cols: cols as i64,
        src_ld: src_ld as i64,
        dst_ld: dst_ld as i64,
    };
    let cfg = LaunchCfg::linear(grid_stride_blocks(n, FILL_THREADS, 4), FILL_THREADS)?;
    // SAFETY: both rows × cols blocks, rows src_ld / dst_ld apart, lie inside their tensors of
    // one element size (shapes::copy_rows); src and dst are distinct tensors (&/&mut).
    unsafe { d.launch(kernel, &p, cfg) }
}

pub fn fill_bits<D: KernelDevice>(d: &D, t: &mut Tensor<D>, bits: u32) -> Result<()> {
    let n = t.numel();
    if n == 0 {
        return Ok(());
    }
    let kernel = raw_kernel(&family::FILL, t.dtype())?;
    let p = FillParams { x: d.ptr_mut(t), n: n as i64, value: bits, _pad: 0 };
    // SAFETY: the kernel writes n elements of the tensor's element size, which it holds.
    unsafe { d.launch(kernel, &p, LaunchCfg::linear(grid_stride_blocks(n, FILL_THREADS, 4), FILL_THREADS)?) }
}
