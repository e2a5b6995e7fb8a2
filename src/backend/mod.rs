//! The op set every backend implements. The model is written once over this trait.
//!
//! | backend | storage | kernels | GEMM |
//! | --- | --- | --- | --- |
//! | [`cpu::Cpu`] | f32, host | Rust reference implementations (multi-threaded) | `gemm` crate |
//! | [`sim::Sim`] | bf16/f16 activations, f32 latents, host | the CUDA kernels run by the SIMT shim | `gemm` crate (f32 accumulate) |
//! | [`cuda::Cuda`] | bf16/f16 activations, f32 latents, device | the CUDA kernels | cuBLASLt |
//!
//! Activations are 2-D `[rows, cols]` tensors, rows = batch × tokens. Per-sample modulation
//! vectors are `[batch, R·dim]` tensors holding R rows of `dim` values per sample (PixArt and DiT
//! blocks: R = 6 in the order shift, scale, gate (attention), shift, scale, gate (MLP)).
//! Outputs are written into tensors the caller allocated once (a workspace), so the CUDA backend
//! can capture steps in graphs with stable addresses.

#[allow(missing_docs)] // crate internals (re-exported by `internals`)
pub(crate) mod build_info;
pub mod cpu;
pub mod cuda;
#[allow(missing_docs)]
pub(crate) mod kernels;
#[allow(missing_docs)]
pub(crate) mod params;
#[allow(missing_docs)]
pub(crate) mod shapes;
pub mod sim;

pub use kernels::AttentionKernel;

/// Keeps [`Backend`] implementable by this crate only.
mod sealed {
    pub trait Sealed {}
    impl Sealed for super::cpu::Cpu {}
    impl Sealed for super::sim::Sim {}
    impl Sealed for super::cuda::Cuda {}
}

use crate::{DType, Result, Tensor};

/// Element-wise function applied after a bias (or fused into a GEMM epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    None,
    /// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    GeluTanh,
    /// x·sigmoid(x).
    Silu,
}

/// Columns `[col, col + heads·head_dim)` of a `[batch·tokens, width]` tensor: one of Q, K, V
/// inside a fused projection output, read in place without a transpose.
#[derive(Clone, Copy)]
pub struct ColSlice<'a, B: Backend> {
    /// the tensor
    pub t: &'a Tensor<B>,
    /// the first column
    pub col: usize,
}

impl<'a, B: Backend> ColSlice<'a, B> {
    /// Columns from `col` on of `t`.
    pub fn new(t: &'a Tensor<B>, col: usize) -> Self {
        ColSlice { t, col }
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// samples
    pub batch: usize,
    /// attention heads
    pub heads: usize,
    /// channels per head
    pub head_dim: usize,
    /// query tokens per sample
    pub nq: usize,
    /// key/value tokens per sample
    pub nk: usize,
    /// softmax scale (diffusers: head_dim^-0.5)
    pub scale: f32,
}

/// The rotary position table of a [`Backend::qk_norm_rope`] and where a tensor's rows sit in it.
pub struct Rope<'a, B: Backend> {
    /// f32 `[positions, head_dim]`: (cos, sin) of each adjacent pair of a head, per position
    pub table: &'a Tensor<B>,
    /// rows per sample: row r sits at position `offset + r % tokens`
    pub tokens: usize,
    /// the table position of each sample's first row
    pub offset: usize,
}

impl<B: Backend> Clone for Rope<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Rope<'_, B> {}

/// What a residual update also writes into a Δ-cache buffer (see [`Backend::residual`]).
pub enum CacheWrite<'a, B: Backend> {
    /// No cache write.
    None,
    /// `cache = x_out`: remember the hidden state entering a cached block range.
    Anchor(&'a mut Tensor<B>),
    /// `cache = x_out − cache`: turn the stored anchor into the range's deviation Δ.
    Delta(&'a mut Tensor<B>),
}

/// Classifier-free guidance applied by [`Backend::cfg_combine`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cfg {
    /// batch = model batch; ε = output
    Off,
    /// model batch = 2·batch; ε = u + scale·(c − u)
    On {
        /// the guidance scale
        scale: f32,
        /// DiT orders the batch [cond, null]; PixArt [uncond, cond].
        cond_first: bool,
    },
}

/// One fused scheduler update; formulas in kernels/params.h (`SCHED_*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulerUpdate {
    /// the formula
    pub kind: SchedulerKind,
    /// its coefficients
    pub c: [f32; 6],
}

/// The formula of a [`SchedulerUpdate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    /// DPM-Solver++ first order: x0 = (x − c0·ε)/c1; x = c2·x − c3·x0
    Dpm1,
    /// DPM-Solver++ 2M midpoint: d1 = c4·(x0 − x0_prev); x = c2·x − c3·x0 − c5·d1
    Dpm2,
    /// DDIM η = 0: x = c2·x0 + c3·ε
    Ddim,
    /// LCM: den = c2·x0 + c3·x; x = c4·den + c5·noise (or den on the last step)
    Lcm,
    /// Flow-matching Euler (diffusers `FlowMatchEulerDiscreteScheduler.step`, ε the predicted
    /// velocity): x = x + c0·ε with c0 = σ_next − σ, in f32; x0 = x − c1·ε (c1 = σ) is what
    /// x0_prev receives.
    FlowEuler,
}

impl SchedulerKind {
    /// Every formula (the tests cover each).
    pub const ALL: [SchedulerKind; 5] =
        [SchedulerKind::Dpm1, SchedulerKind::Dpm2, SchedulerKind::Ddim, SchedulerKind::Lcm, SchedulerKind::FlowEuler];
}

/// The op set. Shapes are checked by each implementation and reported as [`crate::Error::Shape`].
///
/// Implemented by the crate's three backends ([`cpu::Cpu`], [`sim::Sim`], [`cuda::Cuda`]); it is
/// sealed (tensors can only be made by a backend of this crate), so the op set can grow without
/// breaking callers.
pub trait Backend: sealed::Sealed + Sized + Send + Sync + 'static {
    /// Storage of one tensor.
    type Buf: Send + Sync;
    /// `cpu`, `sim` or `cuda`.
    const NAME: &'static str;

    /// dtype of weights and activations on this backend.
    fn act_dtype(&self) -> DType;

    /// A tensor with unspecified contents (the CPU and sim backends poison them with NaN).
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>>;
    /// Uploads f32 data, converting to `dtype`.
    fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let mut t = self.alloc(shape, dtype)?;
        self.write(&mut t, data)?;
        Ok(t)
    }
    /// Reads a tensor back as f32 (waits for pending work).
    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>>;
    /// Overwrites `dst` with f32 data converted to its dtype (same element count).
    fn write(&self, dst: &mut Tensor<Self>, data: &[f32]) -> Result<()>;
    /// dst = src (same shape and dtype).
    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>) -> Result<()> {
        shapes::same_shape("copy", "dst", dst, src)?;
        shapes::same_dtype("copy", src, &[("dst", dst)])?;
        // SAFETY: same dtype and element count, so [0, numel) lies inside both.
        unsafe { self.copy_elems(src, 0, dst, 0, src.numel()) }
    }
    /// Every element of `t` = the bit pattern `bits` (NaN poisoning in tests).
    fn fill_bits(&self, t: &mut Tensor<Self>, bits: u32) -> Result<()>;
    /// Runs `f`, a unit of work that enqueues the same ops on the same buffers every time it runs
    /// under `key`. The CUDA backend captures it as a graph after its first run and replays it;
    /// the CPU backend runs it on one of its worker threads while the caller waits, so `f` must
    /// not depend on which thread runs it (no thread-locals). Host reads must stay outside `f`.
    fn graph_run(&self, key: &str, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        let _ = key;
        f()
    }

    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// `out[m, n] = act(Σ_k x[m, k]·w[n, k] + bias[n])`: a PyTorch Linear with weight `[out, in]`.
    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// [`Backend::linear`] with its input read in place from a column range of a wider tensor:
    /// `x` = columns `[x.col, x.col + k)` of every row of `x.t` (k = the weight's `in`), rows
    /// `x.t.cols()` elements apart (FLUX's single block: proj_out's MLP half reads the MLP
    /// columns of the fused `[T, 3D + M]` projection output). `out` is `[x.t.rows(), n]`.
    fn linear_cols(
        &self,
        x: ColSlice<'_, Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// `out = LayerNorm(x)·(1 + scale) + shift`, LayerNorm without affine parameters, with shift
    /// and scale rows `shift_row`/`scale_row` of each sample's modulation vectors.
    fn norm_modulate(
        &self,
        x: &Tensor<Self>,
        modv: &Tensor<Self>,
        shift_row: usize,
        scale_row: usize,
        eps: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// RMSNorm over each head of Q and K in place, as diffusers' `RMSNorm(head_dim, eps)` with a
    /// weight (SD3.5 / FLUX `attn.norm_q`, `attn.norm_k`): for every row r and head h,
    /// v = x\[r, col + h·head_dim ..\]\[..head_dim\] becomes v·rsqrt(mean(v²) + eps)·w (mean and
    /// product in f32, rounded once to x's dtype), with (col, w) = (q_col, wq) and (k_col, wk).
    /// `x`: 2-D `[rows, width]` (typically the fused QKV projection output `[rows, 3·D]`), both
    /// column ranges inside a row and disjoint; `wq`, `wk`: `[head_dim]` of x's dtype.
    ///
    /// (diffusers with a bf16/f16 weight rounds v·rsqrt(…) to the weight's dtype before the
    /// product: a second rounding this op leaves out.)
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// [`Backend::qk_norm`] fused with the rotary position embedding of FLUX (diffusers
    /// `apply_rotary_emb` with `use_real`, adjacent pairs): after the norm, in f32 and rounded
    /// once, every head of Q and K of row r is rotated at position `rope.offset + r % rope.tokens`
    /// of `rope.table` — each pair (a, b) = `(v[2i], v[2i+1])` becomes (a·cos − b·sin, b·cos + a·sin)
    /// with (cos, sin) = `(table[pos, 2i], table[pos, 2i+1])`. `head_dim` must be even; the table is
    /// f32 `[positions, head_dim]` with positions ≥ offset + tokens, and rows a multiple of tokens.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// `x = x + gate ⊙ y` (gate: row `gate_row` of each sample's modulation vectors; `None`: no
    /// gate), then the Δ-cache write of `cache`.
    fn residual(
        &self,
        x: &mut Tensor<Self>,
        y: &Tensor<Self>,
        gate: Option<(&Tensor<Self>, usize)>,
        cache: CacheWrite<'_, Self>,
    ) -> Result<()>;

    /// [`Backend::residual`] on a forecast: `x = x + gate ⊙ Σ_i coef[i]·terms[i]`, then the
    /// Δ-cache write of `cache`, the forecast combined in f32 in the same pass (FORA's reused
    /// branch outputs extrapolated by TaylorSeer, gated by this step's gates: no forecast buffer
    /// written and read back). 1..=3 terms of x's shape and dtype; `coef` as in
    /// [`Backend::forecast`].
    fn residual_forecast(
        &self,
        x: &mut Tensor<Self>,
        terms: &[&Tensor<Self>],
        coef: &Tensor<Self>,
        gate: Option<(&Tensor<Self>, usize)>,
        cache: CacheWrite<'_, Self>,
    ) -> Result<()>;

    /// `x = (accumulate ? x : 0) + Σ_i coef[coef_offset + i]·terms[i]` in f32, rounded once to
    /// x's dtype, in one pass: the forecast apply of a calibrated cached quantity (x a stream,
    /// terms its snapshots) and its TaylorSeer ladder update (coefficients 1/w, −1/w). 1..=3
    /// terms of x's shape and dtype; `coef` is f32 and stays on the backend (its values are
    /// written before a captured graph runs).
    fn forecast(
        &self,
        x: &mut Tensor<Self>,
        terms: &[&Tensor<Self>],
        coef: &Tensor<Self>,
        coef_offset: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// A full step's TaylorSeer ladder update in one pass (cache-dit's finite differences): per
    /// element `cur = d0; old = prev; prev = d0`, then for each level i
    /// `new = coef[off + 2i]·cur + coef[off + 2i + 1]·old; old = levels[i]; levels[i] = new;
    /// cur = levels[i]` (each level rounded to the dtype once, the level above differencing the
    /// stored value). Coefficients (1/w, −1/w) where a level becomes defined, (0, 0) else. 1..=2
    /// levels; `prev` and the levels of `d0`'s shape and dtype; `coef` f32 on the backend.
    fn ladder_update(
        &self,
        d0: &Tensor<Self>,
        prev: &mut Tensor<Self>,
        levels: &mut [&mut Tensor<Self>],
        coef: &Tensor<Self>,
        coef_offset: usize,
    ) -> Result<()>;

    /// Multi-head attention, `out[b·nq + i, h·d + j]`, with an optional f32 additive key bias
    /// `[batch, nk]` (the text padding mask as −10000).
    fn attention(
        &self,
        shape: &AttentionShape,
        q: ColSlice<'_, Self>,
        k: ColSlice<'_, Self>,
        v: ColSlice<'_, Self>,
        key_bias: Option<&Tensor<Self>>,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// `out = act(x + bias)` element-wise, bias broadcast over rows.
    fn activation(
        &self,
        x: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        act: Activation,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// `x[r, col + c] = act(x[r, col + c])` in place for every row r and c < `cols`: an
    /// activation on a column range of a 2-D tensor (the MLP columns of FLUX's fused single-block
    /// projection), the other columns untouched. Rounded once to x's dtype, as
    /// [`Backend::activation`].
    fn activation_cols(&self, x: &mut Tensor<Self>, col: usize, cols: usize, act: Activation) -> Result<()>;

    /// `dst[dst_at.0 + r, dst_at.1 + c] = src[src_at.0 + r, src_at.1 + c]` for r < `rows`,
    /// c < `cols`, `size = (rows, cols)` (2-D tensors of one dtype, (row, column) positions, rows as wide as each
    /// tensor): a column range of rows gathered into another tensor (FLUX's joint Q|K|V out of
    /// the wider fused single-block projection). Exact.
    fn copy_rows(
        &self,
        src: &Tensor<Self>,
        src_at: (usize, usize),
        dst: &mut Tensor<Self>,
        dst_at: (usize, usize),
        size: (usize, usize),
    ) -> Result<()>;

    /// `x[r, :] += y` for every row r (y has x's row length).
    fn add_bcast(&self, x: &mut Tensor<Self>, y: &Tensor<Self>) -> Result<()>;

    /// Sinusoidal timestep embedding of the f32 timesteps `t` `[batch]` into `out [batch, dim]`
    /// (diffusers `get_timestep_embedding` with max_period 10000).
    fn timestep_embedding(
        &self,
        t: &Tensor<Self>,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// f32 latents `[B, C, H, W]` → patches `[B·(H/p)·(W/p), C·p·p]` in conv-weight order.
    fn patchify(&self, latents: &Tensor<Self>, patch: usize, out: &mut Tensor<Self>) -> Result<()>;

    /// Tokens `[B·h·w, p·p·C]` → f32 `[B, C, h·p, w·p]` (out's shape gives B, C, H, W).
    fn unpatchify(&self, x: &Tensor<Self>, patch: usize, out: &mut Tensor<Self>) -> Result<()>;

    /// Guided ε `[batch, C, H, W]` from the f32 model output `[n, C_out, H, W]` (learned-sigma
    /// split: only the first C channels).
    fn cfg_combine(&self, out: &Tensor<Self>, cfg: Cfg, eps: &mut Tensor<Self>) -> Result<()>;

    /// One fused scheduler update of the f32 latents (x0_prev is read by DPM2, then set to x0).
    fn scheduler_step(
        &self,
        update: &SchedulerUpdate,
        x: &mut Tensor<Self>,
        eps: &Tensor<Self>,
        x0_prev: Option<&mut Tensor<Self>>,
        noise: Option<&Tensor<Self>>,
    ) -> Result<()>;

    /// (Σ|a − b|, Σ|b|): relative-L1 probes for cache policies (reads two floats back).
    fn rel_l1(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<(f32, f32)>;

    /// `dst[dst_off..dst_off + len] = src[src_off..src_off + len]` (elements, same dtype): row
    /// gathers and concatenations (class embeddings, CFG duplication of the latents).
    fn copy_range(
        &self,
        src: &Tensor<Self>,
        src_off: usize,
        dst: &mut Tensor<Self>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        shapes::copy_range(src, src_off, dst, dst_off, len)?;
        // SAFETY: both ranges were checked to lie inside their tensors, of one dtype.
        unsafe { self.copy_elems(src, src_off, dst, dst_off, len) }
    }

    /// The memory copy behind [`Backend::copy`] and [`Backend::copy_range`], unchecked.
    ///
    /// # Safety
    /// `src` and `dst` have one dtype and `[src_off, src_off + len)`, `[dst_off, dst_off + len)`
    /// lie inside them.
    #[doc(hidden)]
    unsafe fn copy_elems(
        &self,
        src: &Tensor<Self>,
        src_off: usize,
        dst: &mut Tensor<Self>,
        dst_off: usize,
        len: usize,
    ) -> Result<()>;
}
