//! The CPU backend: f32 reference implementations of every op, multi-threaded with rayon.
//! It is the reference the sim and CUDA backends are checked against, and the fallback when no
//! GPU is present.

mod attention;
pub(crate) mod attention_tiles;
mod elementwise;
mod forecast;
mod linear;
pub(crate) mod linear_tiles;
pub(crate) mod memory;
mod norm_modulate;
mod qk_norm;
mod rel_l1;
mod residual;
mod scheduler;
#[allow(missing_docs)] // crate internals
pub(crate) mod simd;

pub(crate) use attention::attention_f32;
pub(crate) use elementwise::timestep_embedding as timestep_embedding_f32;
pub(crate) use linear::{linear_f32, linear_f32_ld};
pub use memory::{huge_pages, set_huge_pages};
pub(crate) use norm_modulate::norm_modulate_f32;
pub(crate) use qk_norm::{qk_norm_f32, qk_norm_rope_f32};

/// The f32 reference functions behind the ops (crate internals: the benches and tests).
#[cfg(feature = "internals")]
pub(crate) mod reference {
    pub use super::attention::attention_f32;
    pub use super::elementwise::timestep_embedding as timestep_embedding_f32;
    pub use super::linear::{linear_f32, linear_f32_ld};
    pub use super::norm_modulate::norm_modulate_f32;
    pub use super::qk_norm::{qk_norm_f32, qk_norm_rope_f32};
}

/// The rayon pool's hand-over (crate internals).
pub(crate) mod pool {
    /// Runs `f` on a worker thread of the global rayon pool, the calling thread blocked until it
    /// returns (directly when already on a worker). Each op of a forward then forks and joins from a
    /// worker — its tasks go onto that worker's deque, where the other workers, still spinning from
    /// the previous op, take them — instead of being injected from outside with the caller asleep on
    /// a futex until the op ends. Measured on the small PixArt preset (2-core AMD EPYC): 34 → 31
    /// ms per step.
    pub fn on_worker<R: Send>(f: &mut (dyn FnMut() -> R + Send)) -> R {
        if rayon::current_thread_index().is_some() {
            return f();
        }
        rayon::scope(move |_| f())
    }
}
pub(crate) use pool::on_worker;

use super::{shapes, Activation, AttentionShape, Backend, CacheWrite, Cfg, ColSlice, Rope, SchedulerUpdate};
use crate::error::BackendErrorKind;
use crate::{DType, Error, Result, Tensor};
use rayon::prelude::*;

/// Fewest elements a rayon task of an element-wise op gets: a fork-join costs microseconds,
/// more than ~32 K element updates (PyTorch's CPU grain size is 32768 for the same reason).
pub(crate) const TASK_MIN_ELEMS: usize = 1 << 15;

/// Fewest elements a copy is split at (a 64 KB memcpy is about the cost of a fork-join).
const COPY_TASK_MIN_ELEMS: usize = 1 << 14;

/// How many equal tasks an element-wise op over `len` elements is cut into: one (run inline) up
/// to TASK_MIN_ELEMS, else about one per TASK_MIN_ELEMS, rounded up to a multiple of the pool's
/// threads. Rounding *up* is what PyTorch's `parallel_for` does too (ceil(len / grain) chunks):
/// rounding down left a [128, 288] update (36 864 elements) on one thread and cut a [512, 1152]
/// copy into 3 chunks for 2 threads, one of them doing two thirds (measured 16 → 11 µs on the
/// small copy, 2-core AMD EPYC).
pub(crate) fn task_count(len: usize) -> usize {
    if len <= TASK_MIN_ELEMS {
        return 1;
    }
    len.div_ceil(TASK_MIN_ELEMS).next_multiple_of(rayon::current_num_threads().max(1))
}

/// Elements per rayon task of a row-wise op over `len` elements in rows of `cols`: whole rows,
/// [`task_count`] tasks as equal as whole rows allow.
pub(crate) fn task_len(len: usize, cols: usize) -> usize {
    let cols = cols.max(1);
    let rows = len / cols;
    let tasks = task_count(len).min(rows.max(1));
    rows.div_ceil(tasks).max(1) * cols
}

/// The CPU backend. Uses the global rayon pool; `threads` sets the GEMM parallelism.
#[derive(Clone, Debug)]
pub struct Cpu {
    threads: usize,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new(rayon::current_num_threads())
    }
}

impl Cpu {
    /// [`Backend::residual`] / [`Backend::residual_forecast`] once the terms are checked.
    fn residual_terms(
        op: &'static str,
        x: &mut Tensor<Self>,
        terms: &[&Tensor<Self>],
        coef: Option<&[f32]>,
        gate: Option<(&Tensor<Self>, usize)>,
        cache: CacheWrite<'_, Self>,
    ) -> Result<()> {
        let gate = match gate {
            Some((modv, row)) => Some((&modv.buf[..], shapes::modulation(op, x, modv, &[row])?, row)),
            None => None,
        };
        let cache = match cache {
            CacheWrite::None => residual::Cache::None,
            CacheWrite::Anchor(c) => {
                shapes::same_shape(op, "cache", c, x)?;
                residual::Cache::Anchor(&mut c.buf)
            }
            CacheWrite::Delta(c) => {
                shapes::same_shape(op, "cache", c, x)?;
                residual::Cache::Delta(&mut c.buf)
            }
        };
        let dim = x.cols();
        let ys: Vec<&[f32]> = terms.iter().map(|t| &t.buf[..]).collect();
        residual::residual_terms_f32(&mut x.buf, &ys, coef, dim, gate, cache);
        Ok(())
    }

    /// The backend with GEMMs on `threads` threads (element-wise ops use the global rayon pool).
    pub fn new(threads: usize) -> Self {
        Cpu { threads: threads.max(1) }
    }

    /// GEMM threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn f32_only(op: &'static str, name: &'static str, t: &Tensor<Self>) -> Result<()> {
        t.expect_dtype(op, name, DType::F32)
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    const NAME: &'static str = "cpu";

    fn act_dtype(&self) -> DType {
        DType::F32
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        if dtype != DType::F32 {
            return Err(Error::backend(
                "cpu",
                BackendErrorKind::UnsupportedDType { dtype },
                format!("computes in f32 only (asked for {dtype})"),
            ));
        }
        let n = shapes::alloc_bytes(shape, dtype)? / dtype.size();
        Ok(Tensor::from_parts(memory::filled(n, f32::NAN), shape, dtype))
    }

    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(t.buf.clone())
    }

    fn write(&self, dst: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        shapes::write(dst, data.len())?;
        dst.buf.copy_from_slice(data);
        Ok(())
    }

    /// Runs the unit on a worker of the rayon pool while the caller waits (see [`on_worker`]).
    fn graph_run(&self, _key: &str, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        on_worker(f)
    }

    fn fill_bits(&self, t: &mut Tensor<Self>, bits: u32) -> Result<()> {
        t.buf.fill(f32::from_bits(bits));
        Ok(())
    }

    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let (m, n, k) = shapes::linear(x, w, bias, out)?;
        linear_f32(&x.buf, &w.buf, bias.map(|b| b.buf.as_slice()), act, &mut out.buf, m, n, k, self.threads);
        Ok(())
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
        let bias = bias.map(|b| b.buf.as_slice());
        linear_f32_ld(&x.t.buf[x.col..], ldx, &w.buf, bias, act, &mut out.buf, m, n, k, self.threads);
        Ok(())
    }

    fn norm_modulate(
        &self,
        x: &Tensor<Self>,
        modv: &Tensor<Self>,
        shift_row: usize,
        scale_row: usize,
        eps: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let s = shapes::modulation("norm_modulate", x, modv, &[shift_row, scale_row])?;
        shapes::same_shape("norm_modulate", "out", out, x)?;
        norm_modulate_f32(&x.buf, &modv.buf, s, shift_row, scale_row, eps, &mut out.buf);
        Ok(())
    }

    fn qk_norm(
        &self,
        x: &mut Tensor<Self>,
        q_col: usize,
        k_col: usize,
        heads: usize,
        head_dim: usize,
        wq: &Tensor<Self>,
        wk: &Tensor<Self>,
        eps: f32,
    ) -> Result<()> {
        let s = shapes::qk_norm(x, q_col, k_col, heads, head_dim, wq, wk, eps)?;
        let heads_at = [(q_col, &wq.buf[..]), (k_col, &wk.buf[..])];
        qk_norm_f32(&mut x.buf, s.width, heads_at, heads, head_dim, eps);
        Ok(())
    }

    fn qk_norm_rope(
        &self,
        x: &mut Tensor<Self>,
        q_col: usize,
        k_col: usize,
        heads: usize,
        head_dim: usize,
        wq: &Tensor<Self>,
        wk: &Tensor<Self>,
        eps: f32,
        rope: Rope<'_, Self>,
    ) -> Result<()> {
        let s = shapes::qk_norm_rope(x, q_col, k_col, heads, head_dim, wq, wk, eps, &rope)?;
        let heads_at = [(q_col, &wq.buf[..]), (k_col, &wk.buf[..])];
        let t = &rope.table.buf[..];
        qk_norm_rope_f32(&mut x.buf, s.width, heads_at, heads, head_dim, eps, t, rope.tokens, rope.offset);
        Ok(())
    }

    fn residual(
        &self,
        x: &mut Tensor<Self>,
        y: &Tensor<Self>,
        gate: Option<(&Tensor<Self>, usize)>,
        cache: CacheWrite<'_, Self>,
    ) -> Result<()> {
        shapes::same_shape("residual", "y", y, x)?;
        Self::residual_terms("residual", x, &[y], None, gate, cache)
    }

    fn residual_forecast(
        &self,
        x: &mut Tensor<Self>,
        terms: &[&Tensor<Self>],
        coef: &Tensor<Self>,
        gate: Option<(&Tensor<Self>, usize)>,
        cache: CacheWrite<'_, Self>,
    ) -> Result<()> {
        shapes::forecast("residual_forecast", x, terms, coef, 0)?;
        Self::residual_terms("residual_forecast", x, terms, Some(&coef.buf[..terms.len()]), gate, cache)
    }

    fn forecast(
        &self,
        x: &mut Tensor<Self>,
        terms: &[&Tensor<Self>],
        coef: &Tensor<Self>,
        coef_offset: usize,
        accumulate: bool,
    ) -> Result<()> {
        shapes::forecast("forecast", x, terms, coef, coef_offset)?;
        let c = &coef.buf[coef_offset..coef_offset + terms.len()];
        let ts: Vec<&[f32]> = terms.iter().map(|t| &t.buf[..]).collect();
        forecast::forecast_f32(&mut x.buf, &ts, c, accumulate);
        Ok(())
    }

    fn ladder_update(
        &self,
        d0: &Tensor<Self>,
        prev: &mut Tensor<Self>,
        levels: &mut [&mut Tensor<Self>],
        coef: &Tensor<Self>,
        coef_offset: usize,
    ) -> Result<()> {
        shapes::ladder_update("ladder_update", d0, prev, levels, coef, coef_offset)?;
        let c = &coef.buf[coef_offset..coef_offset + 2 * levels.len()];
        let mut lv: Vec<&mut [f32]> = levels.iter_mut().map(|t| &mut t.buf[..]).collect();
        forecast::ladder_update_f32(&d0.buf, &mut prev.buf, &mut lv, c);
        Ok(())
    }

    fn attention(
        &self,
        shape: &AttentionShape,
        q: ColSlice<'_, Self>,
        k: ColSlice<'_, Self>,
        v: ColSlice<'_, Self>,
        key_bias: Option<&Tensor<Self>>,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        let ops = shapes::attention(shape, &q, &k, &v, key_bias, out)?;
        attention_f32(
            shape,
            (&q.t.buf, q.col, ops.q_stride),
            (&k.t.buf, k.col, ops.k_stride),
            (&v.t.buf, v.col, ops.v_stride),
            key_bias.map(|b| b.buf.as_slice()),
            &mut out.buf,
        );
        Ok(())
    }

    fn activation(
        &self,
        x: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        shapes::same_shape("activation", "out", out, x)?;
        if let Some(b) = bias {
            if b.numel() != x.cols() {
                return Err(Error::Shape {
                    op: "activation",
                    tensor: "bias",
                    expected: format!("[{}]", x.cols()),
                    found: b.shape().to_vec(),
                });
            }
        }
        elementwise::activation(&x.buf, bias.map(|b| b.buf.as_slice()), act, x.cols(), &mut out.buf);
        Ok(())
    }

    fn activation_cols(&self, x: &mut Tensor<Self>, col: usize, cols: usize, act: Activation) -> Result<()> {
        let (_, width) = shapes::activation_cols(x, col, cols)?;
        elementwise::activation_cols(&mut x.buf, width, col, cols, act);
        Ok(())
    }

    fn copy_rows(
        &self,
        src: &Tensor<Self>,
        src_at: (usize, usize),
        dst: &mut Tensor<Self>,
        dst_at: (usize, usize),
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        shapes::copy_rows(src, src_at, dst, dst_at, (rows, cols))?;
        let (sw, dw) = (src.cols(), dst.cols());
        elementwise::copy_rows(&src.buf, sw, src_at, &mut dst.buf, dw, dst_at, rows, cols);
        Ok(())
    }

    fn add_bcast(&self, x: &mut Tensor<Self>, y: &Tensor<Self>) -> Result<()> {
        if y.numel() != x.cols() {
            return Err(Error::Shape {
                op: "add_bcast",
                tensor: "y",
                expected: format!("[{}]", x.cols()),
                found: y.shape().to_vec(),
            });
        }
        elementwise::add_bcast(&mut x.buf, &y.buf);
        Ok(())
    }

    fn timestep_embedding(
        &self,
        t: &Tensor<Self>,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        if out.rows() != t.numel() || !out.cols().is_multiple_of(2) {
            return Err(Error::Shape {
                op: "timestep_embedding",
                tensor: "out",
                expected: format!("[{}, even dim]", t.numel()),
                found: out.shape().to_vec(),
            });
        }
        let dim = out.cols();
        elementwise::timestep_embedding(&t.buf, dim, flip_sin_to_cos, downscale_freq_shift, &mut out.buf);
        Ok(())
    }

    fn patchify(&self, latents: &Tensor<Self>, patch: usize, out: &mut Tensor<Self>) -> Result<()> {
        let dims = shapes::patchify(latents, patch, out)?;
        elementwise::patchify(&latents.buf, dims, patch, &mut out.buf);
        Ok(())
    }

    fn unpatchify(&self, x: &Tensor<Self>, patch: usize, out: &mut Tensor<Self>) -> Result<()> {
        let dims = shapes::unpatchify(x, patch, out)?;
        elementwise::unpatchify(&x.buf, dims, patch, &mut out.buf);
        Ok(())
    }

    fn cfg_combine(&self, out: &Tensor<Self>, cfg: Cfg, eps: &mut Tensor<Self>) -> Result<()> {
        let dims = shapes::cfg_combine(out, cfg != Cfg::Off, eps)?;
        elementwise::cfg_combine(&out.buf, dims, cfg, &mut eps.buf);
        Ok(())
    }

    fn scheduler_step(
        &self,
        update: &SchedulerUpdate,
        x: &mut Tensor<Self>,
        eps: &Tensor<Self>,
        x0_prev: Option<&mut Tensor<Self>>,
        noise: Option<&Tensor<Self>>,
    ) -> Result<()> {
        shapes::scheduler_step(x, eps, x0_prev.as_deref(), noise)?;
        scheduler::scheduler_step(
            update,
            &mut x.buf,
            &eps.buf,
            x0_prev.map(|t| t.buf.as_mut_slice()),
            noise.map(|t| t.buf.as_slice()),
        );
        Ok(())
    }

    fn rel_l1(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<(f32, f32)> {
        shapes::same_shape("rel_l1", "b", b, a)?;
        Self::f32_only("rel_l1", "a", a)?;
        Ok(rel_l1::rel_l1(&a.buf, &b.buf))
    }

    unsafe fn copy_elems(
        &self,
        src: &Tensor<Self>,
        src_off: usize,
        dst: &mut Tensor<Self>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        // One thread's memcpy reaches about half the copy bandwidth of two; a memcpy is cheaper
        // per element than an update, so a copy's tasks are larger (and as equal as the split of
        // an update's, aligned to 64 bytes).
        let tasks = if len <= COPY_TASK_MIN_ELEMS {
            1
        } else {
            len.div_ceil(8 * TASK_MIN_ELEMS).next_multiple_of(rayon::current_num_threads().max(1))
        };
        let chunk = len.div_ceil(tasks).next_multiple_of(16).max(1);
        let (d, s) = (&mut dst.buf[dst_off..dst_off + len], &src.buf[src_off..src_off + len]);
        // A copy too large for the cache streams past it (see memory::streaming_copy_min_bytes).
        let stream = len * size_of::<f32>() >= memory::streaming_copy_min_bytes();
        d.par_chunks_mut(chunk).zip(s.par_chunks(chunk)).for_each(|(d, s)| match stream {
            true => memory::copy_streaming(d, s),
            false => memory::copy_vector(d, s),
        });
        Ok(())
    }
}
