//! kernels/norm_modulate.cu: LayerNorm + adaLN modulation.

use super::elementwise::int32;
use super::table::family;
use super::{KernelDevice, LaunchCfg};
use crate::backend::params::{
    NormModulateParams, NORM_SCALAR_SLOTS, NORM_STAGES, NORM_STREAM_ROWS_PER_WARP, NORM_THREADS, NORM_VEC_SLOTS,
};
use crate::backend::shapes;
use crate::{Result, Tensor};

/// Threads that share one row: the smallest warp multiple (up to a whole CTA) whose register slots
/// hold the row, so short rows pack several to a CTA and long ones spread over more warps. Rows
/// longer than a CTA's slots get a whole CTA and take the kernel's loop path.
pub(crate) fn row_threads(dim: usize, vectors: bool) -> u32 {
    let (chunks, slots) = if vectors { (dim / 8, NORM_VEC_SLOTS) } else { (dim, NORM_SCALAR_SLOTS) };
    let mut t = 32;
    while t < NORM_THREADS && chunks.div_ceil(t as usize) > slots as usize {
        t *= 2;
    }
    t
}

pub fn norm_modulate<D: KernelDevice>(
    d: &D,
    x: &Tensor<D>,
    modv: &Tensor<D>,
    shift_row: usize,
    scale_row: usize,
    eps: f32,
    out: &mut Tensor<D>,
) -> Result<()> {
    const OP: &str = "norm_modulate";
    let s = shapes::modulation(OP, x, modv, &[shift_row, scale_row])?;
    shapes::same_shape(OP, "out", out, x)?;
    shapes::same_dtype(OP, x, &[("out", out)])?;
    if !eps.is_finite() || eps < 0.0 {
        return Err(crate::Error::param("norm_modulate eps", eps, "a finite number ≥ 0"));
    }
    let (kernel, stream_kernel) =
        (family::NORM_MODULATE.for_dtype(x.dtype())?, family::NORM_MODULATE_STREAM.for_dtype(x.dtype())?);
    if s.rows == 0 {
        return Ok(());
    }
    // The kernel takes 16-byte vectors when rows (and modulation rows) start 16-byte aligned;
    // whole tensors are, so only the row lengths decide.
    let vectors = s.dim.is_multiple_of(8) && s.mod_stride.is_multiple_of(8);
    let tpr = row_threads(s.dim, vectors);
    let p = NormModulateParams {
        x: d.ptr(x),
        modv: d.ptr(modv),
        y: d.ptr_mut(out),
        rows: s.rows as i64,
        tokens: s.tokens as i64,
        mod_batch_stride: s.mod_stride as i64,
        dim: int32(OP, "x", x, s.dim)?,
        shift_row: int32(OP, "modv", modv, shift_row)?,
        scale_row: int32(OP, "modv", modv, scale_row)?,
        eps,
        row_threads: tpr as i32,
        _pad: 0,
    };
    if vectors && tpr == 32 {
        // One warp a row: the streamed kernel (cp.async into NORM_STAGES row buffers a warp,
        // NORM_STREAM_ROWS_PER_WARP rows a warp); dim ≤ 32·8·NORM_VEC_SLOTS keeps it ≤ 48 KB.
        let warps = (NORM_THREADS / 32) as usize;
        let rows_per_cta = warps * NORM_STREAM_ROWS_PER_WARP as usize;
        let mut cfg = LaunchCfg::linear(s.rows.div_ceil(rows_per_cta) as u64, NORM_THREADS)?;
        cfg.smem = (warps * NORM_STAGES as usize * s.dim * x.dtype().size()) as u32;
        // SAFETY: x and out hold rows × dim elements, modv the shift and scale rows of every
        // sample (shapes::modulation), all of the kernel's dtype.
        return unsafe { d.launch(stream_kernel, &p, cfg) };
    }
    let rows_per_cta = (NORM_THREADS / tpr) as usize;
    let cfg = LaunchCfg::linear(s.rows.div_ceil(rows_per_cta) as u64, NORM_THREADS)?;
    // SAFETY: as above.
    unsafe { d.launch(kernel, &p, cfg) }
}

#[cfg(test)]
mod tests {
    use super::row_threads;

    #[test]
    fn row_threads_fit_the_slots() {
        assert_eq!(row_threads(1152, true), 32); // 144 vectors: 5 a lane, one warp a row
        assert_eq!(row_threads(144, true), 32);
        assert_eq!(row_threads(2048, true), 64);
        assert_eq!(row_threads(4096, true), 128);
        assert_eq!(row_threads(12288, true), 256);
        assert_eq!(row_threads(1 << 20, true), 256); // loop path
        assert_eq!(row_threads(100, false), 32);
        assert_eq!(row_threads(1000, false), 64);
    }
}
