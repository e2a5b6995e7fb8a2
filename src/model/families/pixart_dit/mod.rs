//! PixArt-α/Σ (`PixArtTransformer2DModel`) and DiT (`DiTTransformer2DModel`): diffusers'
//! BasicTransformerBlock with adaLN-single (PixArt, cross-attention to T5 text) or adaLN-Zero
//! (DiT, class labels), on one image stream (MODEL_SPEC.md). The two share their blocks and
//! differ in the conditioning ([`cond`]).

mod block;
mod cond;

use block::{SCALE_MSA, SHIFT_MSA};

use super::{Arch, IMAGE_ONLY};
use crate::backend::CacheWrite;
use crate::model::layers::{embed_patches, patch_embedding, TIME_PROJ_DIM};
use crate::model::{
    family_part, family_part_mut, BranchIo, Conditioning, Context, Family, Linear, Loader, ModelConfig, Workspace,
};
use crate::{Backend, Result, Tensor};
use block::Block;
use cond::{Conditioner, RunCtx};
use std::any::Any;

/// A PixArt or DiT transformer's weights.
pub(crate) struct Model<B: Backend> {
    patch_embed: Linear<B>,
    conditioner: Conditioner<B>,
    blocks: Vec<Block<B>>,
    proj_out: Linear<B>,
}

/// The scratch activations of a forward.
pub(crate) struct Scratch<B: Backend> {
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

impl<B: Backend> Model<B> {
    pub fn load(l: &Loader<'_, B>, config: &ModelConfig) -> Result<Self> {
        let d = config.inner_dim();
        let (c, p) = (config.in_channels, config.patch_size);
        let patch_embed = patch_embedding(l, "pos_embed.proj", d, c, p)?;
        let conditioner = Conditioner::load(l, config)?;
        let blocks = (0..config.num_layers)
            .map(|i| Block::load(l, config, i, conditioner.block_embedder(i)))
            .collect::<Result<Vec<_>>>()?;
        let proj_name = match config.family {
            Family::DiT => "proj_out_2",
            _ => "proj_out",
        };
        let proj_out = l.linear(proj_name, p * p * config.out_channels, d, true)?;
        Ok(Model { patch_embed, conditioner, blocks, proj_out })
    }
}

impl<B: Backend> Arch<B> for Model<B> {
    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn streams(&self) -> &'static [&'static str] {
        IMAGE_ONLY
    }

    fn context(&self, be: &B, cfg: &ModelConfig, c: &Conditioning) -> Result<Box<dyn Any + Send + Sync>> {
        let kv: Vec<&Linear<B>> = self.blocks.iter().filter_map(|b| b.cross_kv.as_ref()).collect();
        Ok(Box::new(self.conditioner.context(be, cfg, c, &kv)?))
    }

    fn workspace(
        &self,
        be: &B,
        cfg: &ModelConfig,
        ctx: &Context<B>,
        tokens: usize,
    ) -> Result<super::StreamsAndScratch<B>> {
        let (b, d, p) = (ctx.batch, cfg.inner_dim(), cfg.patch_size);
        let rows = b * tokens;
        let dt = be.act_dtype();
        let a = |shape: &[usize]| be.alloc(shape, dt);
        let embedders = self.conditioner.num_embedders();
        let scratch = Scratch {
            norm: a(&[rows, d])?,
            qkv: a(&[rows, 3 * d])?,
            attn: a(&[rows, d])?,
            proj: a(&[rows, d])?,
            ff: a(&[rows, 4 * d])?,
            patches: a(&[rows, cfg.in_channels * p * p])?,
            out_tokens: a(&[rows, p * p * cfg.out_channels])?,
            t_freq: a(&[b, TIME_PROJ_DIM])?,
            t_hidden: a(&[b, d])?,
            cond: (0..embedders).map(|_| a(&[b, d])).collect::<Result<_>>()?,
            cond_silu: (0..embedders).map(|_| a(&[b, d])).collect::<Result<_>>()?,
            tmod: a(&[b, 6 * d])?,
            modv: a(&[b, 6 * d])?,
            final_mod: a(&[b, 2 * d])?,
        };
        Ok((vec![a(&[rows, d])?], Box::new(scratch)))
    }

    fn embed(&self, be: &B, cfg: &ModelConfig, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()> {
        let run: &RunCtx<B> = family_part(&*ctx.family)?;
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        let x = &mut ws.streams[0];
        embed_patches(be, &self.patch_embed, &run.pos_embed, cfg.patch_size, &ws.model_in, &mut s.patches, x)?;
        self.conditioner.step(be, run, &ws.t, s)
    }

    fn block(
        &self,
        be: &B,
        cfg: &ModelConfig,
        ctx: &Context<B>,
        ws: &mut Workspace<B>,
        k: usize,
        writes: &mut [CacheWrite<'_, B>],
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        let run: &RunCtx<B> = family_part(&*ctx.family)?;
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        let kv = (!run.cross_kv.is_empty()).then(|| block::CrossKv {
            kv: &run.cross_kv[k],
            bias: run.key_bias.as_ref(),
            text_len: run.text_len,
        });
        let tap = super::take_write(writes, 0);
        self.blocks[k].forward(be, cfg, &mut ws.streams[0], s, (ws.batch, ws.tokens), kv, tap, io)
    }

    fn finish(&self, be: &B, cfg: &ModelConfig, ws: &mut Workspace<B>) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        self.conditioner.final_modulation(be, ws.batch, s)?;
        be.norm_modulate(&ws.streams[0], &s.final_mod, 0, 1, 1e-6, &mut s.norm)?;
        let po = &self.proj_out;
        be.linear(&s.norm, &po.w, po.b.as_ref(), crate::backend::Activation::None, &mut s.out_tokens)?;
        be.unpatchify(&s.out_tokens, cfg.patch_size, &mut ws.model_out)
    }

    fn probe_block0_input(&self, be: &B, cfg: &ModelConfig, ws: &mut Workspace<B>, out: &mut Tensor<B>) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        self.blocks[0].modulate(be, s)?;
        let eps = match cfg.family {
            Family::DiT => 1e-6,
            _ => cfg.norm_eps,
        };
        be.norm_modulate(&ws.streams[0], &s.modv, SHIFT_MSA, SCALE_MSA, eps, out)
    }

    fn branch_slots(&self, k: usize) -> Vec<usize> {
        // attention, [cross-attention,] MLP: all on the image stream
        vec![0; self.blocks[k].slot_ff() + 1]
    }
}
