//! Diffusion transformers over a [`Backend`], written once for every backend. Each model family
//! is one module of `families` behind the `families::Arch` trait, chosen from the config's
//! `_class_name` by one registry; what every family shares lives here: the block-range executor
//! with its Δ-cache taps, the workspace, the per-run context, the hidden streams.
//!
//! A forward is split where the cache needs to cut it:
//!
//! ```text
//! Transformer::embed      latents → the streams at boundary 0 (image tokens; context tokens for
//!                         MMDiT), the step's conditioning
//! Transformer::run_blocks streams at boundary k → boundary m for any block range, with cache taps
//! Transformer::finish     the image stream at boundary L → model output
//! ```
//!
//! The hidden state is a list of named streams ([`Transformer::streams`]): `image` `[batch·tokens,
//! D]`, and for MMDiT families `context` `[batch·text_len, D]`. A cached deviation covers every
//! stream that is still read after its range ends ([`Transformer::live_streams`]).

pub(crate) mod embed;
pub(crate) mod families;
pub(crate) mod layers;
#[allow(missing_docs)] // crate internals
pub(crate) mod macs;

mod config;
mod weights;

pub use config::{Family, ModelConfig};
pub use weights::{Checkpoint, RandomWeights, WeightSource};
pub(crate) use weights::{Linear, Loader};

use crate::backend::CacheWrite;
use crate::error::check_finite;
use crate::{Backend, Error, Result, Tensor};
use families::Arch;
use std::any::Any;
use std::ops::Range;
use std::path::Path;

/// Most image tokens (latent patches per sample) a run may have: a bound that keeps every size
/// product in range and turns a mistyped latent size into an error instead of an allocation that
/// takes the process down.
pub const MAX_TOKENS: usize = 1 << 18;
/// Most text tokens per sample.
pub const MAX_TEXT_TOKENS: usize = 1 << 16;

/// Host-side inputs fixed for a whole run (batch includes the CFG copies). Which fields a family
/// reads: PixArt `text` (+ micro-conditions), DiT `class_labels`, SD3 `text` + `pooled`, FLUX
/// `text` + `pooled` (+ `guidance` for dev, optional `image_ids`/`text_ids`).
///
/// `height` × `width` is the latent size; for packed latents (FLUX, `[B, N, C]`) it is the grid
/// of the N = height·width image tokens (FluxPipeline's `img_ids` come from it unless
/// `image_ids` is given; a forward with its own ids uses height N, width 1).
#[derive(Clone, Debug, Default)]
pub struct Conditioning {
    /// the model batch
    pub batch: usize,
    /// latent height
    pub height: usize,
    /// latent width
    pub width: usize,
    /// Text embeddings [batch, len, features] and optional 0/1 mask [batch, len].
    pub text: Option<TextInput>,
    /// PixArt-α micro-condition: [batch, 2] (height_px, width_px).
    pub resolution: Option<Vec<f32>>,
    /// PixArt-α micro-condition: `[batch]` (height / width).
    pub aspect_ratio: Option<Vec<f32>>,
    /// DiT class labels (num_classes = the null class).
    pub class_labels: Option<Vec<usize>>,
    /// SD3: pooled text embeddings `[batch, pooled_projection_dim]` (`pooled_projections`).
    pub pooled: Option<Vec<f32>>,
    /// FLUX: RoPE positions of the image tokens `[N, 3]` (`img_ids`); default FluxPipeline's
    /// `(0, row, col)` of the height × width grid.
    pub image_ids: Option<Vec<f32>>,
    /// FLUX: RoPE positions of the text tokens `[L, 3]` (`txt_ids`); default zeros.
    pub text_ids: Option<Vec<f32>>,
    /// FLUX.1-dev: the embedded guidance scale `[batch]` (`guidance`).
    pub guidance: Option<Vec<f32>>,
    /// SD3 `skip_layers`: blocks left out of every forward of the run (skip-layer guidance);
    /// uncached runs only.
    pub skip_layers: Vec<usize>,
}

/// Text embeddings of a batch: `[batch, len, features]` values and an optional 0/1 padding mask
/// `[batch, len]` (1 keep, 0 discard).
#[derive(Clone, Debug)]
pub struct TextInput {
    /// `[batch, len, features]`
    pub embeds: Vec<f32>,
    /// `[batch, len]`
    pub mask: Option<Vec<f32>>,
    /// tokens per sample
    pub len: usize,
}

impl Conditioning {
    /// Checks values: every tensor finite (the error names the tensor and the first bad index).
    /// Sizes are checked against the model when the run's context is built.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = &self.text {
            check_finite("encoder_hidden_states", &t.embeds)?;
            if let Some(m) = &t.mask {
                check_finite("encoder_attention_mask", m)?;
            }
        }
        if let Some(r) = &self.resolution {
            check_finite("resolution", r)?;
        }
        if let Some(a) = &self.aspect_ratio {
            check_finite("aspect_ratio", a)?;
        }
        if let Some(p) = &self.pooled {
            check_finite("pooled_projections", p)?;
        }
        for (name, v) in [("img_ids", &self.image_ids), ("txt_ids", &self.text_ids), ("guidance", &self.guidance)] {
            if let Some(v) = v {
                check_finite(name, v)?;
            }
        }
        Ok(())
    }
}

/// Step-invariant, per-run tensors (text projections, K/V of the text, class or micro-condition
/// embeddings, the position table at this latent size), made by [`Transformer::context`].
pub struct Context<B: Backend> {
    pub(crate) batch: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    /// per block: left out of the forward (`skip_layers`)
    pub(crate) skip: Vec<bool>,
    /// the family's own per-run tensors
    pub(crate) family: Box<dyn Any + Send + Sync>,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: Backend> Context<B> {
    /// The model batch (CFG copies included).
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// Activations of one forward, allocated once per (batch, latent size) and reused every step,
/// so the CUDA backend can replay captured graphs on fixed addresses.
pub struct Workspace<B: Backend> {
    pub(crate) batch: usize,
    /// image tokens per sample
    pub(crate) tokens: usize,
    /// f32 model input [batch, C, H, W] or the family's layout (the pipeline writes it each step)
    pub(crate) model_in: Tensor<B>,
    /// f32 timesteps [batch] as the blocks see them ([`Transformer::model_timesteps`])
    pub(crate) t: Tensor<B>,
    /// f32 model output [batch, C_out, H, W] or the family's layout
    pub(crate) model_out: Tensor<B>,
    /// the hidden streams, in the order of [`Transformer::streams`]
    pub(crate) streams: Vec<Tensor<B>>,
    /// the family's own scratch buffers
    pub(crate) scratch: Box<dyn Any + Send + Sync>,
}

impl<B: Backend> Workspace<B> {
    /// The f32 model output of the last forward (`[batch, C_out, H, W]`, FLUX `[batch, N, C_out]`).
    pub fn output(&self) -> &Tensor<B> {
        &self.model_out
    }
}

/// The family part of a context or workspace, as the family that made it.
pub(crate) fn family_part<T: 'static>(part: &(dyn Any + Send + Sync)) -> Result<&T> {
    part.downcast_ref::<T>()
        .ok_or_else(|| Error::param("workspace", "made by another model", "the context and workspace of this model"))
}

/// Mutable [`family_part`].
pub(crate) fn family_part_mut<T: 'static>(part: &mut (dyn Any + Send + Sync)) -> Result<&mut T> {
    part.downcast_mut::<T>()
        .ok_or_else(|| Error::param("workspace", "made by another model", "the context and workspace of this model"))
}

/// A Δ-cache write: after [`Transformer::run_blocks`], `bufs[s] = s_to − s_from` for every stream
/// s live at `to`, the deviation blocks [from, to) added. The anchor s_from is written into the
/// buffer when the run reaches it (fused into the preceding residual update, or a copy at the
/// start of the range) and turned into the deviation by the residual update that produces s_to.
pub(crate) struct DeltaTap<'a, B: Backend> {
    pub from: usize,
    pub to: usize,
    /// one buffer per stream
    pub bufs: &'a mut [Tensor<B>],
}

/// One block's cached branch outputs (before their gates), in slots its family defines.
pub(crate) struct BranchCache<B: Backend> {
    pub slots: Vec<Tensor<B>>,
}

/// Where a block's branch outputs go: the workspace, or per-block cache buffers (FORA stores
/// them on full steps and reuses them).
pub(crate) enum BranchIo<'a, B: Backend> {
    Compute,
    Store(&'a mut BranchCache<B>),
    Reuse(ReusedBranches<'a, B>),
}

/// A cached block's branch outputs on a reuse step: as stored, or forecast from them by a
/// TaylorSeer ladder (FORA with `calibrator=taylor…`).
pub(crate) struct ReusedBranches<'a, B: Backend> {
    /// the block's stored outputs (d_0 of a forecast)
    pub stored: &'a [Tensor<B>],
    /// the block's slots of each ladder level d_1.., and the coefficients (1, e, e²/2) on the
    /// backend
    pub forecast: Option<BlockForecast<'a, B>>,
}

/// One block's view of a TaylorSeer ladder over branch outputs: its slots of each level d_1..,
/// and the ladder's coefficients (1, e, e²/2) on the backend.
pub(crate) type BlockForecast<'a, B> = (Vec<&'a [Tensor<B>]>, &'a Tensor<B>);

/// The same over every block's branch outputs: each level one tensor per slot of every block,
/// in block order.
pub(crate) type BranchForecast<'a, B> = (&'a [Vec<Tensor<B>>], &'a Tensor<B>);

impl<B: Backend> ReusedBranches<'_, B> {
    /// `x += gate ⊙ out` for branch `slot`'s reused output with the Δ write `tap`: the stored
    /// output, or its forecast `d_0 + e·d_1 + e²/2·d_2` combined in the same pass
    /// ([`Backend::residual_forecast`]: no forecast buffer written and read back).
    pub fn residual(
        &self,
        be: &B,
        x: &mut Tensor<B>,
        slot: usize,
        gate: Option<(&Tensor<B>, usize)>,
        tap: CacheWrite<'_, B>,
    ) -> Result<()> {
        let missing = || missing_branch_slot(slot, self.stored.len());
        let d0 = self.stored.get(slot).ok_or_else(missing)?;
        match &self.forecast {
            None => be.residual(x, d0, gate, tap),
            Some((levels, coef)) => {
                let mut terms = vec![d0];
                for l in levels {
                    terms.push(l.get(slot).ok_or_else(missing)?);
                }
                be.residual_forecast(x, &terms, coef, gate, tap)
            }
        }
    }
}

impl<B: Backend> BranchIo<'_, B> {
    /// Where branch `slot`'s output goes: its cache buffer when storing, else `scratch`.
    pub fn slot<'s>(&'s mut self, slot: usize, scratch: &'s mut Tensor<B>) -> Result<&'s mut Tensor<B>> {
        match self {
            BranchIo::Store(c) => {
                let n = c.slots.len();
                c.slots.get_mut(slot).ok_or_else(|| missing_branch_slot(slot, n))
            }
            _ => Ok(scratch),
        }
    }
}

/// A block asked for branch slot `slot` of a cache that holds `n`.
fn missing_branch_slot(slot: usize, n: usize) -> Error {
    Error::param("branch cache", format!("slot {slot} of {n}"), "a buffer for every branch of the block")
}

/// Per-block branch outputs for FORA-style caching (see [`BranchIo`]).
pub(crate) enum Branches<'a, B: Backend> {
    Compute,
    Store(&'a mut [BranchCache<B>]),
    /// every block's stored outputs, and the forecast made from them if calibrated
    Reuse(&'a [BranchCache<B>], Option<BranchForecast<'a, B>>),
}

/// A diffusion transformer loaded on a backend: PixArt-α/Σ, DiT, SD3/SD3.5.
pub struct Transformer<B: Backend> {
    pub(crate) config: ModelConfig,
    arch: Box<dyn Arch<B>>,
    weights_desc: String,
}

impl<B: Backend> Transformer<B> {
    /// Loads `dir/config.json` and the diffusers safetensors weights in `dir` (one file or an
    /// index of shards).
    pub fn load(backend: &B, dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::from_source(backend, config, &ckpt)
    }

    /// Builds the model of `config` from the tensors of `source` (any [`WeightSource`]: a
    /// checkpoint, weights handed over from another framework, random values).
    pub fn from_source(backend: &B, config: ModelConfig, source: &dyn WeightSource) -> Result<Self> {
        config.validate()?;
        let l = Loader { backend, source };
        let arch = families::build(&l, &config)?;
        Ok(Transformer { config, arch, weights_desc: source.describe() })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Transformer blocks.
    pub fn num_blocks(&self) -> usize {
        self.arch.num_blocks()
    }

    /// The hidden streams' names: `["image"]`, or `["image", "context"]` for MMDiT families.
    pub fn streams(&self) -> &'static [&'static str] {
        self.arch.streams()
    }

    /// How many streams (the first ones of [`Self::streams`]) are read after block boundary
    /// `boundary` (0..=L): a stream no later block reads needs no cached deviation there.
    pub fn live_streams(&self, boundary: usize) -> usize {
        self.arch.live_streams(boundary)
    }

    /// The shape of the model input of `batch` samples at latent size height × width (`output`:
    /// of the output): `[B, C, H, W]`, or packed `[B, H·W, C]` for FLUX.
    pub fn latent_shape(&self, batch: usize, height: usize, width: usize, output: bool) -> Vec<usize> {
        self.arch.latent_shape(&self.config, batch, height, width, output)
    }

    /// The timesteps the blocks see for the forward's `timestep` input (FLUX multiplies by
    /// 1000 inside the model; the others take it as is).
    pub fn model_timesteps(&self, t: &[f32]) -> Vec<f32> {
        t.iter().map(|&v| self.arch.model_timestep(v)).collect()
    }

    /// Where the weights came from (files and stored dtypes).
    pub fn weights_desc(&self) -> &str {
        &self.weights_desc
    }

    /// Per-run context (text K/V for every block, micro-conditions or class embeddings, the
    /// position table of this latent size).
    pub fn context(&self, be: &B, c: &Conditioning) -> Result<Context<B>> {
        let p = self.config.patch_size;
        if c.batch == 0 || c.height == 0 || c.width == 0 || !c.height.is_multiple_of(p) || !c.width.is_multiple_of(p) {
            return Err(Error::input(
                "hidden_states",
                format!(
                    "latent size {}×{} (batch {}) must be non-empty multiples of the patch size {p}",
                    c.height, c.width, c.batch
                ),
            ));
        }
        let tokens = (c.height / p).checked_mul(c.width / p).filter(|&t| t <= MAX_TOKENS);
        if tokens.is_none() {
            return Err(Error::input(
                "hidden_states",
                format!("latent size {}×{} gives more than {MAX_TOKENS} tokens at patch size {p}", c.height, c.width),
            ));
        }
        if let Some(t) = &c.text {
            if t.len == 0 || t.len > MAX_TEXT_TOKENS {
                return Err(Error::input(
                    "encoder_hidden_states",
                    format!("{} text tokens (1..={MAX_TEXT_TOKENS})", t.len),
                ));
            }
        }
        let rows = c.batch.checked_mul(tokens.unwrap_or(0)).and_then(|r| r.checked_mul(self.config.inner_dim()));
        if rows.is_none_or(|n| n > isize::MAX as usize / 8) {
            return Err(Error::input("hidden_states", format!("batch {} is too large for this latent size", c.batch)));
        }
        let mut skip = vec![false; self.num_blocks()];
        for &k in &c.skip_layers {
            *skip
                .get_mut(k)
                .ok_or_else(|| Error::param("skip_layers", k, format!("block indices 0..{}", self.num_blocks())))? =
                true;
        }
        let family = self.arch.context(be, &self.config, c)?;
        Ok(Context {
            batch: c.batch,
            height: c.height,
            width: c.width,
            skip,
            family,
            _backend: std::marker::PhantomData,
        })
    }

    /// The activations of a forward with `ctx`'s batch and latent size.
    pub fn workspace(&self, be: &B, ctx: &Context<B>) -> Result<Workspace<B>> {
        let cfg = &self.config;
        let b = ctx.batch;
        let tokens = (ctx.height / cfg.patch_size) * (ctx.width / cfg.patch_size);
        let f32_ = crate::DType::F32;
        let (model_in, t, model_out) = (
            be.alloc(&self.latent_shape(b, ctx.height, ctx.width, false), f32_)?,
            be.alloc(&[b], f32_)?,
            be.alloc(&self.latent_shape(b, ctx.height, ctx.width, true), f32_)?,
        );
        let (streams, scratch) = self.arch.workspace(be, cfg, ctx, tokens)?;
        Ok(Workspace { batch: b, tokens, model_in, t, model_out, streams, scratch })
    }

    /// The streams at boundary 0 from `ws.model_in`, and the step's conditioning from `ws.t`.
    pub(crate) fn embed(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()> {
        self.arch.embed(be, &self.config, ctx, ws)
    }

    /// Runs blocks `range` on the streams, writing the Δ taps. Each tap needs range.start ≤ from
    /// < to ≤ range.end; at most one tap may end at a given boundary (its delta is fused into
    /// that residual update), anchors at the same boundary beyond the first fused write are
    /// copies.
    pub(crate) fn run_blocks(
        &self,
        be: &B,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        range: Range<usize>,
        taps: &mut [DeltaTap<'_, B>],
        branches: Branches<'_, B>,
    ) -> Result<()> {
        let layers = self.num_blocks();
        if range.start > range.end || range.end > layers {
            return Err(Error::param("block range", format!("{range:?}"), format!("within 0..{layers}")));
        }
        let n_streams = ws.streams.len();
        for (i, t) in taps.iter().enumerate() {
            if t.from < range.start || t.from >= t.to || t.to > range.end {
                return Err(Error::param(
                    "cache tap",
                    format!("{}..{}", t.from, t.to),
                    format!("a non-empty range within {range:?}"),
                ));
            }
            if t.bufs.len() != n_streams {
                return Err(Error::param("cache tap", t.bufs.len(), format!("one buffer per stream ({n_streams})")));
            }
            if taps[..i].iter().any(|u| u.to == t.to) {
                return Err(Error::param("cache taps", t.to, "at most one Δ ending at a block boundary"));
            }
        }
        let cached = !taps.is_empty() || !matches!(branches, Branches::Compute);
        if cached && ctx.skip[range.clone()].iter().any(|&s| s) {
            return Err(Error::param(
                "skip_layers",
                "with a cache policy",
                "an uncached run (skip-layer guidance skips blocks itself)",
            ));
        }
        // Anchors at the start of the range: copies of the streams there.
        let live = self.live_streams(range.start);
        for t in taps.iter_mut().filter(|t| t.from == range.start) {
            for s in 0..live {
                be.copy(&ws.streams[s], &mut t.bufs[s])?;
            }
        }
        let mut branches = branches;
        for k in range {
            if ctx.skip[k] {
                continue;
            }
            let boundary = k + 1;
            let live = self.live_streams(boundary);
            // Fused into this block's last residual of each stream: the delta ending here, else
            // the first anchor.
            let fused =
                taps.iter().position(|t| t.to == boundary).or_else(|| taps.iter().position(|t| t.from == boundary));
            let io = match &mut branches {
                Branches::Compute => BranchIo::Compute,
                Branches::Store(c) => BranchIo::Store(&mut c[k]),
                Branches::Reuse(c, forecast) => {
                    // block k's slots start after those of the blocks before it
                    let first: usize = c[..k].iter().map(|b| b.slots.len()).sum();
                    let stored = &c[k].slots[..];
                    let forecast = forecast
                        .map(|(levels, coef)| (levels.iter().map(|l| &l[first..first + stored.len()]).collect(), coef));
                    BranchIo::Reuse(ReusedBranches { stored, forecast })
                }
            };
            let mut writes: Vec<CacheWrite<'_, B>> = Vec::with_capacity(n_streams);
            match fused {
                Some(i) => {
                    let delta = taps[i].to == boundary;
                    for (s, buf) in taps[i].bufs.iter_mut().enumerate() {
                        writes.push(match (s < live, delta) {
                            (false, _) => CacheWrite::None,
                            (true, true) => CacheWrite::Delta(buf),
                            (true, false) => CacheWrite::Anchor(buf),
                        });
                    }
                }
                None => writes.extend((0..n_streams).map(|_| CacheWrite::None)),
            }
            self.arch.block(be, &self.config, ctx, ws, k, &mut writes, io)?;
            drop(writes);
            for (i, t) in taps.iter_mut().enumerate() {
                if t.from == boundary && Some(i) != fused {
                    for s in 0..live {
                        be.copy(&ws.streams[s], &mut t.bufs[s])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds a cached deviation at boundary `boundary`: every stream live there moves by its Δ.
    pub(crate) fn apply_delta(&self, be: &B, ws: &mut Workspace<B>, boundary: usize, bufs: &[Tensor<B>]) -> Result<()> {
        let live = self.live_streams(boundary);
        for (stream, delta) in ws.streams.iter_mut().zip(bufs).take(live) {
            be.residual(stream, delta, None, CacheWrite::None)?;
        }
        Ok(())
    }

    /// The image stream at boundary L → `ws.model_out` (f32 [batch, C_out, H, W]).
    pub(crate) fn finish(&self, be: &B, ws: &mut Workspace<B>) -> Result<()> {
        self.arch.finish(be, &self.config, ws)
    }

    /// Block 0's modulated image input (e.g. LN(h_0)·(1 + scale_msa) + shift_msa) into `out`
    /// (the cheap probe of adaptive cache policies). Call after [`Self::embed`].
    pub(crate) fn probe_block0_input(&self, be: &B, ws: &mut Workspace<B>, out: &mut Tensor<B>) -> Result<()> {
        self.arch.probe_block0_input(be, &self.config, ws, out)
    }

    /// One uncached forward of `latents` (`[batch, C, H, W]`, FLUX `[batch, N, C]`) at the
    /// forward's `timestep` input `t` `[batch]`; the output is [`Workspace::output`].
    pub fn forward(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>, latents: &[f32], t: &[f32]) -> Result<()> {
        be.write(&mut ws.model_in, latents)?;
        be.write(&mut ws.t, &self.model_timesteps(t))?;
        self.embed(be, ctx, ws)?;
        self.run_blocks(be, ctx, ws, 0..self.num_blocks(), &mut [], Branches::Compute)?;
        self.finish(be, ws)
    }

    /// One buffer per stream, shaped like the streams of `ws` (a Δ cache).
    pub(crate) fn stream_buffers(&self, be: &B, ws: &Workspace<B>) -> Result<Vec<Tensor<B>>> {
        ws.streams.iter().map(|s| be.alloc(s.shape(), s.dtype())).collect()
    }

    /// Allocates per-block branch caches (FORA).
    pub(crate) fn branch_caches(&self, be: &B, ws: &Workspace<B>) -> Result<Vec<BranchCache<B>>> {
        (0..self.num_blocks())
            .map(|k| {
                let slots = self
                    .arch
                    .branch_slots(k)
                    .iter()
                    .map(|&s| be.alloc(ws.streams[s].shape(), ws.streams[s].dtype()))
                    .collect::<Result<_>>()?;
                Ok(BranchCache { slots })
            })
            .collect()
    }
}
