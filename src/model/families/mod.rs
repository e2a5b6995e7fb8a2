//! The model families, one module each, behind [`Arch`]. Adding a family: its module (config
//! keys, weights, conditioning, blocks, final layer), its new ops in the backends, and one line
//! in [`build`] and in `ModelConfig::from_json_str`'s class table.
//!
//! | module | diffusers class | streams |
//! | --- | --- | --- |
//! | [`pixart_dit`] | `PixArtTransformer2DModel`, `DiTTransformer2DModel` | image |
//! | [`sd3`] | `SD3Transformer2DModel` | image, context |
//! | [`flux`] | `FluxTransformer2DModel` | image, context |

pub(crate) mod flux;
pub(crate) mod pixart_dit;
pub(crate) mod sd3;

use super::{BranchIo, Conditioning, Context, Loader, ModelConfig, Workspace};
use crate::backend::CacheWrite;
use crate::model::Family;
use crate::{Backend, Result, Tensor};
use std::any::Any;

/// The stream names of single-stream families.
pub(crate) const IMAGE_ONLY: &[&str] = &["image"];
/// The stream names of MMDiT families: image tokens, then context (text) tokens.
pub(crate) const IMAGE_AND_CONTEXT: &[&str] = &["image", "context"];

/// A workspace's streams and the family's scratch buffers.
pub(crate) type StreamsAndScratch<B> = (Vec<Tensor<B>>, Box<dyn Any + Send + Sync>);

/// What a model family implements; the generic parts of [`super::Transformer`] call these.
pub(crate) trait Arch<B: Backend>: Send + Sync {
    /// Transformer blocks.
    fn num_blocks(&self) -> usize;
    /// Names of the hidden streams (the workspace holds them in this order).
    fn streams(&self) -> &'static [&'static str];
    /// Streams read after block boundary `boundary` (0..=L).
    fn live_streams(&self, boundary: usize) -> usize {
        let _ = boundary;
        self.streams().len()
    }
    /// The shape of the model input (`output`: the output) for a batch at latent size
    /// height × width: `[B, C, H, W]`, or the family's own layout (FLUX: packed `[B, H·W, C]`).
    fn latent_shape(&self, cfg: &ModelConfig, batch: usize, height: usize, width: usize, output: bool) -> Vec<usize> {
        let c = if output { cfg.out_channels } else { cfg.in_channels };
        vec![batch, c, height, width]
    }
    /// The timestep the blocks see for the forward's `timestep` input `t` (FLUX: 1000·t).
    fn model_timestep(&self, t: f32) -> f32 {
        t
    }
    /// The family's per-run tensors (checked against the model: sizes, labels, text length).
    fn context(&self, be: &B, cfg: &ModelConfig, c: &Conditioning) -> Result<Box<dyn Any + Send + Sync>>;
    /// The streams and the family's scratch buffers for `ctx`'s batch and size.
    fn workspace(&self, be: &B, cfg: &ModelConfig, ctx: &Context<B>, tokens: usize) -> Result<StreamsAndScratch<B>>;
    /// Streams at boundary 0 from `ws.model_in`; the step's conditioning from `ws.t`.
    fn embed(&self, be: &B, cfg: &ModelConfig, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()>;
    /// Block `k` on the streams in place; `writes[s]` fused into stream s's last residual update
    /// in the block (`CacheWrite::None` for a stream the block does not change).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        be: &B,
        cfg: &ModelConfig,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        k: usize,
        writes: &mut [CacheWrite<'_, B>],
        io: BranchIo<'_, B>,
    ) -> Result<()>;
    /// The image stream at boundary L → `ws.model_out`.
    fn finish(&self, be: &B, cfg: &ModelConfig, ws: &mut Workspace<B>) -> Result<()>;
    /// Block 0's modulated image input into `out` (after `embed`).
    fn probe_block0_input(&self, be: &B, cfg: &ModelConfig, ws: &mut Workspace<B>, out: &mut Tensor<B>) -> Result<()>;
    /// The stream of each branch output block `k` caches (FORA), in the slot order its
    /// `BranchIo` uses.
    fn branch_slots(&self, k: usize) -> Vec<usize>;
}

/// The registry: the family module that builds a model of `cfg`.
pub(crate) fn build<B: Backend>(l: &Loader<'_, B>, cfg: &ModelConfig) -> Result<Box<dyn Arch<B>>> {
    Ok(match cfg.family {
        Family::PixArt | Family::DiT => Box::new(pixart_dit::Model::load(l, cfg)?),
        Family::Sd3 => Box::new(sd3::Model::load(l, cfg)?),
        Family::Flux => Box::new(flux::Model::load(l, cfg)?),
    })
}

/// A CacheWrite that moves out of `writes[s]` (the block's fused write for stream s).
pub(crate) fn take_write<'a, B: Backend>(writes: &mut [CacheWrite<'a, B>], s: usize) -> CacheWrite<'a, B> {
    match writes.get_mut(s) {
        Some(w) => std::mem::replace(w, CacheWrite::None),
        None => CacheWrite::None,
    }
}

/// MMDiT families: the last block leaves the context as it is (nothing reads it afterwards), so no
/// Δ of the context can end there; `w` is the context stream's write for that block.
pub(crate) fn no_context_write<B: Backend>(w: CacheWrite<'_, B>) -> Result<()> {
    match w {
        CacheWrite::None => Ok(()),
        _ => Err(crate::Error::param(
            "cache write",
            "on the context stream after the last block",
            "none (the context is not read after the last block)",
        )),
    }
}
