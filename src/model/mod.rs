//! PixArt-α/Σ (`PixArtTransformer2DModel`) and DiT (`DiTTransformer2DModel`) over a [`Backend`],
//! written once for every backend. A forward is split where the Δ-DiT cache needs to cut it:
//!
//! ```text
//! Transformer::embed      latents → h_0 (patch embedding + position), per-step conditioning
//! Transformer::run_blocks h_k → h_m for any contiguous block range, with cache taps
//! Transformer::finish     h_L → model output (final adaLN, projection, unpatchify)
//! ```

mod block;
mod cond;
mod config;
mod embed;
#[allow(missing_docs)] // crate internals
pub(crate) mod macs;
mod weights;

pub(crate) use block::{Block, BranchCache, BranchIo};
pub(crate) use cond::Conditioner;
pub use cond::Context;
pub use config::{Family, ModelConfig};
pub use weights::{Checkpoint, RandomWeights, WeightSource};
pub(crate) use weights::{Linear, Loader};

use crate::backend::{Activation, CacheWrite};
use crate::error::check_finite;
use crate::{Backend, DType, Error, Result, Tensor};
use std::ops::Range;
use std::path::Path;

/// Host-side inputs fixed for a whole run (batch includes the CFG copies).
#[derive(Clone, Debug, Default)]
pub struct Conditioning {
    /// the model batch
    pub batch: usize,
    /// latent height
    pub height: usize,
    /// latent width
    pub width: usize,
    /// PixArt text: embeddings [batch, len, features] and optional 0/1 mask [batch, len].
    pub text: Option<TextInput>,
    /// PixArt-α micro-condition: [batch, 2] (height_px, width_px).
    pub resolution: Option<Vec<f32>>,
    /// PixArt-α micro-condition: `[batch]` (height / width).
    pub aspect_ratio: Option<Vec<f32>>,
    /// DiT class labels (num_classes = the null class).
    pub class_labels: Option<Vec<usize>>,
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
        Ok(())
    }
}

/// Activations of one forward, allocated once per (batch, latent size) and reused every step,
/// so the CUDA backend can replay captured graphs on fixed addresses.
pub struct Workspace<B: Backend> {
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    /// f32 model input [batch, C, H, W] (the pipeline writes it each step)
    pub(crate) model_in: Tensor<B>,
    /// f32 timesteps [batch]
    pub(crate) t: Tensor<B>,
    /// f32 model output [batch, C_out, H, W]
    pub(crate) model_out: Tensor<B>,
    /// the residual stream h [batch·tokens, D]
    pub(crate) x: Tensor<B>,
    pub(crate) norm: Tensor<B>,
    pub(crate) qkv: Tensor<B>,
    pub(crate) attn: Tensor<B>,
    pub(crate) proj: Tensor<B>,
    pub(crate) ff: Tensor<B>,
    pub(crate) patches: Tensor<B>,
    pub(crate) out_tokens: Tensor<B>,
    pub(crate) t_freq: Tensor<B>,
    pub(crate) t_hidden: Tensor<B>,
    /// conditioning per timestep embedder [batch, D] (DiT checkpoints may hold several)
    pub(crate) cond: Vec<Tensor<B>>,
    pub(crate) cond_silu: Vec<Tensor<B>>,
    /// PixArt: the shared modulation rows [batch, 6D]
    pub(crate) tmod: Tensor<B>,
    /// the current block's modulation rows [batch, 6D]
    pub(crate) modv: Tensor<B>,
    pub(crate) final_mod: Tensor<B>,
}

impl<B: Backend> Workspace<B> {
    /// The f32 model output `[batch, C_out, H, W]` of the last forward.
    pub fn output(&self) -> &Tensor<B> {
        &self.model_out
    }
}

/// A Δ-cache write: after [`Transformer::run_blocks`], `buf = h_to − h_from`, the deviation
/// blocks [from, to) added. The anchor h_from is written into `buf` when the run reaches it (fused
/// into the preceding residual update, or a copy at the start of the range) and turned into the
/// deviation by the residual update that produces h_to.
pub(crate) struct DeltaTap<'a, B: Backend> {
    pub from: usize,
    pub to: usize,
    pub buf: &'a mut Tensor<B>,
}

/// Per-block branch outputs for FORA-style caching (see [`BranchIo`]).
pub(crate) enum Branches<'a, B: Backend> {
    Compute,
    Store(&'a mut [BranchCache<B>]),
    Reuse(&'a [BranchCache<B>]),
}

/// A PixArt or DiT transformer loaded on a backend.
pub struct Transformer<B: Backend> {
    pub(crate) config: ModelConfig,
    patch_embed: Linear<B>,
    conditioner: Conditioner<B>,
    blocks: Vec<Block<B>>,
    proj_out: Linear<B>,
    weights_desc: String,
}

impl<B: Backend> Transformer<B> {
    /// Loads `dir/config.json` and the diffusers safetensors weights in `dir`.
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
        let d = config.inner_dim();
        let (c, p) = (config.in_channels, config.patch_size);
        let patch_embed = Linear {
            w: l.tensor("pos_embed.proj.weight", &[d, c, p, p])?,
            b: Some(l.tensor("pos_embed.proj.bias", &[d])?),
        };
        let mut patch_embed = patch_embed;
        patch_embed.w.reshape(&[d, c * p * p])?;
        let conditioner = Conditioner::load(&l, &config)?;
        let blocks = (0..config.num_layers)
            .map(|i| Block::load(&l, &config, i, conditioner.block_embedder(i)))
            .collect::<Result<Vec<_>>>()?;
        let proj_name = match config.family {
            Family::PixArt => "proj_out",
            Family::DiT => "proj_out_2",
        };
        let proj_out = l.linear(proj_name, p * p * config.out_channels, d, true)?;
        Ok(Transformer { config, patch_embed, conditioner, blocks, proj_out, weights_desc: source.describe() })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Transformer blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Where the weights came from (files and stored dtypes).
    pub fn weights_desc(&self) -> &str {
        &self.weights_desc
    }

    /// Per-run context (text K/V for every block, micro-conditions or class embeddings).
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
        let kv: Vec<&Linear<B>> = self.blocks.iter().filter_map(|b| b.cross_kv.as_ref()).collect();
        self.conditioner.context(be, &self.config, c, &kv)
    }

    /// The activations of a forward with `ctx`'s batch and latent size.
    pub fn workspace(&self, be: &B, ctx: &Context<B>) -> Result<Workspace<B>> {
        let cfg = &self.config;
        let (b, d, p) = (ctx.batch, cfg.inner_dim(), cfg.patch_size);
        let tokens = (ctx.height / p) * (ctx.width / p);
        let rows = b * tokens;
        let dt = be.act_dtype();
        let a = |shape: &[usize]| be.alloc(shape, dt);
        Ok(Workspace {
            batch: b,
            tokens,
            model_in: be.alloc(&[b, cfg.in_channels, ctx.height, ctx.width], DType::F32)?,
            t: be.alloc(&[b], DType::F32)?,
            model_out: be.alloc(&[b, cfg.out_channels, ctx.height, ctx.width], DType::F32)?,
            x: a(&[rows, d])?,
            norm: a(&[rows, d])?,
            qkv: a(&[rows, 3 * d])?,
            attn: a(&[rows, d])?,
            proj: a(&[rows, d])?,
            ff: a(&[rows, 4 * d])?,
            patches: a(&[rows, cfg.in_channels * p * p])?,
            out_tokens: a(&[rows, p * p * cfg.out_channels])?,
            t_freq: a(&[b, cond::TIME_PROJ_DIM])?,
            t_hidden: a(&[b, d])?,
            cond: (0..self.conditioner.num_embedders()).map(|_| a(&[b, d])).collect::<Result<_>>()?,
            cond_silu: (0..self.conditioner.num_embedders()).map(|_| a(&[b, d])).collect::<Result<_>>()?,
            tmod: a(&[b, 6 * d])?,
            modv: a(&[b, 6 * d])?,
            final_mod: a(&[b, 2 * d])?,
        })
    }

    /// h_0 = patch embedding of `ws.model_in` + position; the step's conditioning from `ws.t`.
    pub(crate) fn embed(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()> {
        let p = self.config.patch_size;
        be.patchify(&ws.model_in, p, &mut ws.patches)?;
        be.linear(&ws.patches, &self.patch_embed.w, self.patch_embed.b.as_ref(), Activation::None, &mut ws.x)?;
        let shape = ws.x.shape().to_vec();
        ws.x.reshape(&[ws.batch, ws.tokens * shape[1]])?;
        let r = be.add_bcast(&mut ws.x, &ctx.pos_embed);
        ws.x.reshape(&shape)?;
        r?;
        self.conditioner.step(be, ctx, ws)
    }

    /// Runs blocks `range` on `ws.x`, writing the Δ taps. Each tap needs range.start ≤ from <
    /// to ≤ range.end; at most one tap may end at a given boundary (its delta is fused into
    /// that residual update), anchors at the same boundary beyond the first fused write are copies.
    pub(crate) fn run_blocks(
        &self,
        be: &B,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        range: Range<usize>,
        taps: &mut [DeltaTap<'_, B>],
        branches: Branches<'_, B>,
    ) -> Result<()> {
        if range.start > range.end || range.end > self.blocks.len() {
            return Err(Error::param("block range", format!("{range:?}"), format!("within 0..{}", self.blocks.len())));
        }
        for (i, t) in taps.iter().enumerate() {
            if t.from < range.start || t.from >= t.to || t.to > range.end {
                return Err(Error::param(
                    "cache tap",
                    format!("{}..{}", t.from, t.to),
                    format!("a non-empty range within {range:?}"),
                ));
            }
            if taps[..i].iter().any(|u| u.to == t.to) {
                return Err(Error::param("cache taps", t.to, "at most one Δ ending at a block boundary"));
            }
        }
        // Anchors at the start of the range: copies of h_start.
        for t in taps.iter_mut().filter(|t| t.from == range.start) {
            be.copy(&ws.x, t.buf)?;
        }
        let mut branches = branches;
        for k in range {
            let boundary = k + 1;
            // Fused into this block's last residual: the delta ending here, else the first anchor.
            let fused =
                taps.iter().position(|t| t.to == boundary).or_else(|| taps.iter().position(|t| t.from == boundary));
            let kv = (!ctx.cross_kv.is_empty()).then(|| block::CrossKv {
                kv: &ctx.cross_kv[k],
                bias: ctx.key_bias.as_ref(),
                text_len: ctx.text_len,
            });
            let io = match &mut branches {
                Branches::Compute => BranchIo::Compute,
                Branches::Store(c) => BranchIo::Store(&mut c[k]),
                Branches::Reuse(c) => BranchIo::Reuse(&c[k]),
            };
            let tap = match fused {
                Some(i) if taps[i].to == boundary => CacheWrite::Delta(&mut *taps[i].buf),
                Some(i) => CacheWrite::Anchor(&mut *taps[i].buf),
                None => CacheWrite::None,
            };
            self.blocks[k].forward(be, &self.config, ws, kv, tap, io)?;
            for (i, t) in taps.iter_mut().enumerate() {
                if t.from == boundary && Some(i) != fused {
                    be.copy(&ws.x, t.buf)?;
                }
            }
        }
        Ok(())
    }

    /// h_L → `ws.model_out` (f32 [batch, C_out, H, W]).
    pub(crate) fn finish(&self, be: &B, ws: &mut Workspace<B>) -> Result<()> {
        self.conditioner.final_modulation(be, ws)?;
        be.norm_modulate(&ws.x, &ws.final_mod, 0, 1, 1e-6, &mut ws.norm)?;
        be.linear(&ws.norm, &self.proj_out.w, self.proj_out.b.as_ref(), Activation::None, &mut ws.out_tokens)?;
        be.unpatchify(&ws.out_tokens, self.config.patch_size, &mut ws.model_out)
    }

    /// Block 0's modulated input LN(h_0)·(1 + scale_msa) + shift_msa into `out` (the cheap probe
    /// of adaptive cache policies). Call after [`Self::embed`].
    pub(crate) fn probe_block0_input(&self, be: &B, ws: &mut Workspace<B>, out: &mut Tensor<B>) -> Result<()> {
        self.blocks[0].modulate(be, ws)?;
        let eps = match self.config.family {
            Family::PixArt => self.config.norm_eps,
            Family::DiT => 1e-6,
        };
        be.norm_modulate(&ws.x, &ws.modv, block::SHIFT_MSA, block::SCALE_MSA, eps, out)
    }

    /// One uncached forward of `latents` `[batch, C, H, W]` at timesteps `t` `[batch]`; the
    /// output is [`Workspace::output`].
    pub fn forward(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>, latents: &[f32], t: &[f32]) -> Result<()> {
        be.write(&mut ws.model_in, latents)?;
        be.write(&mut ws.t, t)?;
        self.embed(be, ctx, ws)?;
        self.run_blocks(be, ctx, ws, 0..self.blocks.len(), &mut [], Branches::Compute)?;
        self.finish(be, ws)
    }

    /// Allocates per-block branch caches (FORA).
    pub(crate) fn branch_caches(&self, be: &B, ws: &Workspace<B>) -> Result<Vec<BranchCache<B>>> {
        let shape = ws.x.shape().to_vec();
        let dt = be.act_dtype();
        self.blocks
            .iter()
            .map(|b| {
                Ok(BranchCache {
                    attn: be.alloc(&shape, dt)?,
                    cross: if b.cross.is_some() { Some(be.alloc(&shape, dt)?) } else { None },
                    ff: be.alloc(&shape, dt)?,
                })
            })
            .collect()
    }
}
