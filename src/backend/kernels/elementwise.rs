//! kernels/elementwise.cu: bias + activation, broadcast add, timestep embedding,
//! patchify/unpatchify and the CFG combine.

use super::table::{family, KernelId};
use super::{grid_stride_blocks, ptr_or_null, KernelDevice, LaunchCfg};
use crate::backend::params::*;
use crate::backend::{shapes, Activation, Cfg};
use crate::{Error, Result, Tensor};

/// A size that a kernel takes as a 32-bit int; the error names the tensor it came from.
pub(crate) fn int32<D: KernelDevice>(op: &'static str, tensor: &'static str, t: &Tensor<D>, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape {
        op,
        tensor,
        expected: "sizes below 2^31".into(),
        found: t.shape().to_vec(),
    })
}

/// Blocks of a grid-stride loop over `n` elements in rows of `cols`: the kernels step in 8-element
/// vectors when rows allow it, one element otherwise.
pub(crate) fn vector_blocks(n: usize, cols: usize, threads: u32) -> u64 {
    grid_stride_blocks(n, threads, if cols.is_multiple_of(8) { 8 } else { 1 })
}

pub fn activation<D: KernelDevice>(
    d: &D,
    x: &Tensor<D>,
    bias: Option<&Tensor<D>>,
    act: Activation,
    out: &mut Tensor<D>,
) -> Result<()> {
    shapes::activation(x, bias, out)?;
    let kernels = match act {
        Activation::GeluTanh => family::ACTIVATION_GELU_TANH,
        Activation::Silu => family::ACTIVATION_SILU,
        // Identity: out = x (+ bias), with the copy and the broadcast add.
        Activation::None => {
            d.copy(x, out)?;
            return bias.map_or(Ok(()), |b| add_bcast(d, out, b));
        }
    };
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let kernel = kernels.for_dtype(x.dtype())?;
    let p = ActivationParams {
        x: d.ptr(x),
        bias: ptr_or_null(d, bias),
        y: d.ptr_mut(out),
        n: n as i64,
        cols: x.cols() as i64,
        ld: x.cols() as i64,
    };
    let cfg = LaunchCfg::linear(vector_blocks(n, x.cols(), EW_THREADS), EW_THREADS)?;
    // SAFETY: out has x's n elements, bias one row of x's cols, all of the kernel's dtype
    // (shapes::activation).
    unsafe { d.launch(kernel, &p, cfg) }
}

/// `act` in place on columns `[col, col + cols)` of x: the activation kernel on rows `x.cols()`
/// apart, starting at column `col`.
pub fn activation_cols<D: KernelDevice>(
    d: &D,
    x: &mut Tensor<D>,
    col: usize,
    cols: usize,
    act: Activation,
) -> Result<()> {
    let (rows, width) = shapes::activation_cols(x, col, cols)?;
    let kernels = match act {
        Activation::GeluTanh => family::ACTIVATION_GELU_TANH,
        Activation::Silu => family::ACTIVATION_SILU,
        Activation::None => return Ok(()),
    };
    let n = rows * cols;
    if n == 0 {
        return Ok(());
    }
    let kernel = kernels.for_dtype(x.dtype())?;
    let es = x.dtype().size();
    // SAFETY (of the offset): col < width, so the address stays inside x's first row.
    let base = unsafe { d.ptr_mut(x).cast::<u8>().add(col * es) }.cast::<std::ffi::c_void>();
    let p = ActivationParams {
        x: base.cast_const(),
        bias: std::ptr::null(),
        y: base,
        n: n as i64,
        cols: cols as i64,
        ld: width as i64,
    };
    let step = if cols.is_multiple_of(8) && width.is_multiple_of(8) { 8 } else { 1 };
    let cfg = LaunchCfg::linear(grid_stride_blocks(n, EW_THREADS, step), EW_THREADS)?;
    // SAFETY: rows r < rows of `cols` elements from column `col`, `width` apart, lie inside x
    // (shapes::activation_cols); x and y alias, which the kernel allows (each element read, then
    // written, by one thread).
    unsafe { d.launch(kernel, &p, cfg) }
}

pub fn add_bcast<D: KernelDevice>(d: &D, x: &mut Tensor<D>, y: &Tensor<D>) -> Result<()> {
    shapes::add_bcast(x, y)?;
    let kernel = family::ADD_BCAST.for_dtype(x.dtype())?;
    let (n, cols) = (x.numel(), x.cols());
    if n == 0 {
        return Ok(());
    }
    let p = AddBcastParams { y: d.ptr(y), x: d.ptr_mut(x), rows: (n / cols) as i64, cols: cols as i64 };
    let cfg = LaunchCfg::linear(vector_blocks(n, cols, EW_THREADS), EW_THREADS)?;
    // SAFETY: x holds rows × cols elements and y one row of them, of one dtype (shapes::add_bcast).
    unsafe { d.launch(kernel, &p, cfg) }
}

/// diffusers' `max_period` of the sinusoid.
const MAX_PERIOD: f32 = 10_000.0;

pub fn timestep_embedding<D: KernelDevice>(
    d: &D,
    t: &Tensor<D>,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    out: &mut Tensor<D>,
) -> Result<()> {
    const OP: &str = "timestep_embedding";
    let (batch, dim) = shapes::timestep_embedding(t, out)?;
    let kernel = family::TIMESTEP_EMBEDDING.for_dtype(out.dtype())?;
    if batch == 0 || dim == 0 {
        return Ok(());
    }
    let p = TimestepEmbedParams {
        t: d.ptr(t).cast(),
        batch: int32(OP, "t", t, batch)?,
        dim: int32(OP, "out", out, dim)?,
        out: d.ptr_mut(out),
        flip_sin_to_cos: flip_sin_to_cos as i32,
        downscale_freq_shift,
        max_period: MAX_PERIOD,
        _pad: 0,
    };
    let cfg = LaunchCfg::linear(grid_stride_blocks(batch * dim / 2, EW_THREADS, 1), EW_THREADS)?;
    // SAFETY: t holds `batch` f32 timesteps and out [batch, dim] elements (shapes::timestep_embedding).
    unsafe { d.launch(kernel, &p, cfg) }
}

pub fn patchify<D: KernelDevice>(d: &D, latents: &Tensor<D>, patch: usize, out: &mut Tensor<D>) -> Result<()> {
    const OP: &str = "patchify";
    let [b, c, h, w] = shapes::patchify(latents, patch, out)?;
    let kernel = family::PATCHIFY.for_dtype(out.dtype())?;
    let n = out.numel();
    if n == 0 {
        return Ok(());
    }
    let i = |v| int32(OP, "latents", latents, v);
    let p = PatchifyParams {
        x: d.ptr(latents).cast(),
        out: d.ptr_mut(out),
        batch: i(b)?,
        channels: i(c)?,
        height: i(h)?,
        width: i(w)?,
        patch: i(patch)?,
        _pad: 0,
    };
    let cfg = LaunchCfg::linear(grid_stride_blocks(n, EW_THREADS, 1), EW_THREADS)?;
    // SAFETY: latents are f32 [b, c, h, w] and out holds their patches (shapes::patchify).
    unsafe { d.launch(kernel, &p, cfg) }
}

pub fn unpatchify<D: KernelDevice>(d: &D, x: &Tensor<D>, patch: usize, out: &mut Tensor<D>) -> Result<()> {
    const OP: &str = "unpatchify";
    let [b, c, h, w] = shapes::unpatchify(x, patch, out)?;
    let kernel = family::UNPATCHIFY.for_dtype(x.dtype())?;
    let n = out.numel();
    if n == 0 {
        return Ok(());
    }
    let i = |v| int32(OP, "out", out, v);
    let p = UnpatchifyParams {
        batch: i(b)?,
        channels: i(c)?,
        h: i(h / patch)?,
        w: i(w / patch)?,
        patch: i(patch)?,
        _pad: 0,
        x: d.ptr(x),
        out: d.ptr_mut(out).cast(),
    };
    let cfg = LaunchCfg::linear(grid_stride_blocks(n, EW_THREADS, 1), EW_THREADS)?;
    // SAFETY: out is f32 [b, c, h, w] and x holds its patches (shapes::unpatchify).
    unsafe { d.launch(kernel, &p, cfg) }
}

pub fn cfg_combine<D: KernelDevice>(d: &D, out: &Tensor<D>, cfg: Cfg, eps: &mut Tensor<D>) -> Result<()> {
    const OP: &str = "cfg_combine";
    let [batch, c, c_out, hw] = shapes::cfg_combine(out, cfg != Cfg::Off, eps)?;
    let n = eps.numel();
    if n == 0 {
        return Ok(());
    }
    let (guided, scale, cond_first) = match cfg {
        Cfg::Off => (0, 0.0, 0),
        Cfg::On { scale, cond_first } => (1, scale, cond_first as i32),
    };
    let i = |v| int32(OP, "out", out, v);
    let p = CfgParams {
        out: d.ptr(out).cast(),
        batch: i(batch)?,
        channels: i(c)?,
        channels_out: i(c_out)?,
        hw: i(hw)?,
        cfg: guided,
        cond_first,
        scale,
        _pad: 0,
        eps: d.ptr_mut(eps).cast(),
    };
    let cfg = LaunchCfg::linear(grid_stride_blocks(n, EW_THREADS, 1), EW_THREADS)?;
    // SAFETY: out is f32 [factor·batch, c_out, h, w] and eps f32 [batch, c, h, w] with c ≤ c_out
    // (shapes::cfg_combine).
    unsafe { d.launch(KernelId::CfgCombineF32, &p, cfg) }
}
