//! SD3 / SD3.5 (`SD3Transformer2DModel`, MMDIT_SPEC.md): MMDiT blocks on two streams — image
//! tokens and context (text) tokens, each with its own weights — joined in one attention over
//! [image, context]. SD3.5 adds RMS qk norm and, in the blocks of `dual_attention_layers`
//! (MMDiT-X), a second image-only attention. The last block is context-pre-only: it reads the
//! context but does not update it, so the context stream is dead after it.
//!
//! ```text
//! image   = PatchEmbed(x) + the centre crop of pos_embed.pos_embed
//! c       = TimestepMLP(t) + TextProjection(pooled)           (the pooled part once per run)
//! context = context_embedder(encoder_hidden_states)           (once per run)
//! for each block: image, context = JointBlock(image, context, c)
//! out     = proj_out(AdaLayerNormContinuous(image, c)), unpatchified
//! ```

mod block;

use super::{Arch, IMAGE_AND_CONTEXT};
use crate::backend::{Activation, CacheWrite};
use crate::model::config::{config_err, Keys, MAX_DIM};
use crate::model::layers::{embed_patches, patch_embedding, Mlp, TIME_PROJ_DIM};
use crate::model::{
    family_part, family_part_mut, BranchIo, Conditioning, Context, Family, Linear, Loader, ModelConfig, Workspace,
};
use crate::{Backend, Error, Result, Tensor};
use block::JointBlock;
use serde_json::Value;
use std::any::Any;

/// `SD3Transformer2DModel`'s config keys, with diffusers' defaults (SD3-medium's shape).
pub(crate) fn config_from_keys(k: &Keys<'_>) -> Result<ModelConfig> {
    let in_channels = k.usize_or("in_channels", 16)?;
    let heads = k.usize_or("num_attention_heads", 18)?;
    let head_dim = k.usize_or("attention_head_dim", 64)?;
    let caption_projection_dim = k.usize_or("caption_projection_dim", 1152)?;
    if caption_projection_dim != heads.saturating_mul(head_dim) {
        return Err(config_err(
            Some("caption_projection_dim"),
            format!(
                "{caption_projection_dim} must equal num_attention_heads × attention_head_dim = {} (the blocks read the projected context at the inner dim)",
                heads.saturating_mul(head_dim)
            ),
        ));
    }
    let qk_norm = match k.opt_str("qk_norm")?.as_deref() {
        None => false,
        Some("rms_norm") => true,
        Some(other) => {
            return Err(config_err(Some("qk_norm"), format!("`{other}` is not supported (none or rms_norm)")))
        }
    };
    Ok(ModelConfig {
        family: Family::Sd3,
        num_attention_heads: heads,
        attention_head_dim: head_dim,
        in_channels,
        out_channels: k.usize_or("out_channels", in_channels)?,
        num_layers: k.usize_or("num_layers", 18)?,
        patch_size: k.usize_or("patch_size", 2)?,
        sample_size: k.usize_or("sample_size", 128)?,
        cross_attention_dim: None,
        caption_channels: None,
        norm_eps: 1e-6,
        interpolation_scale: 1.0,
        use_additional_conditions: false,
        num_embeds_ada_norm: 0,
        attention_bias: true,
        joint_attention_dim: Some(k.usize_or("joint_attention_dim", 4096)?),
        pooled_projection_dim: Some(k.usize_or("pooled_projection_dim", 2048)?),
        pos_embed_max_size: Some(k.usize_or("pos_embed_max_size", 96)?),
        qk_norm,
        dual_attention_layers: k.usize_list("dual_attention_layers")?,
        num_single_layers: 0,
        axes_dims_rope: Vec::new(),
        guidance_embeds: false,
    })
}

/// The SD3-only constraints of a config.
pub(crate) fn validate_config(c: &ModelConfig) -> Result<()> {
    let within = |key: &str, v: Option<usize>| -> Result<usize> {
        match v {
            Some(v) if (1..=MAX_DIM).contains(&v) => Ok(v),
            Some(v) => Err(config_err(Some(key), format!("{v} is out of range 1..={MAX_DIM}"))),
            None => Err(config_err(Some(key), "missing (an SD3Transformer2DModel needs it)")),
        }
    };
    within("joint_attention_dim", c.joint_attention_dim)?;
    within("pooled_projection_dim", c.pooled_projection_dim)?;
    within("pos_embed_max_size", c.pos_embed_max_size)?;
    if let Some(&k) = c.dual_attention_layers.iter().find(|&&k| k >= c.num_layers) {
        return Err(config_err(
            Some("dual_attention_layers"),
            format!("block {k} does not exist (num_layers = {})", c.num_layers),
        ));
    }
    Ok(())
}

/// The config as diffusers writes it.
pub(crate) fn config_to_json(c: &ModelConfig) -> Value {
    serde_json::json!({
        "_class_name": Family::Sd3.name(),
        "sample_size": c.sample_size,
        "patch_size": c.patch_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "num_layers": c.num_layers,
        "attention_head_dim": c.attention_head_dim,
        "num_attention_heads": c.num_attention_heads,
        "joint_attention_dim": c.joint_attention_dim,
        "caption_projection_dim": c.inner_dim(),
        "pooled_projection_dim": c.pooled_projection_dim,
        "pos_embed_max_size": c.pos_embed_max_size,
        "dual_attention_layers": c.dual_attention_layers,
        "qk_norm": if c.qk_norm { Value::from("rms_norm") } else { Value::Null },
    })
}

/// An SD3 transformer's weights.
pub(crate) struct Model<B: Backend> {
    patch_embed: Linear<B>,
    /// `pos_embed.pos_embed` as a host table [P·P·D] (cropped per latent size)
    pos_table: Vec<f32>,
    pos_max: usize,
    time: Mlp<B>,
    text: Mlp<B>,
    context_embedder: Linear<B>,
    blocks: Vec<JointBlock<B>>,
    norm_out: Linear<B>,
    proj_out: Linear<B>,
}

/// Per-run tensors: the centre-cropped position table, the embedded context and pooled text.
pub(crate) struct RunCtx<B: Backend> {
    pos_embed: Tensor<B>,
    /// context_embedder(encoder_hidden_states) [batch·L, D]: the context stream at boundary 0
    context0: Tensor<B>,
    /// text_embedder(pooled) [batch, D], added to the timestep embedding every step
    pooled: Tensor<B>,
    text_len: usize,
}

/// The scratch activations of a forward.
pub(crate) struct Scratch<B: Backend> {
    pub(crate) text_len: usize,
    pub(crate) patches: Tensor<B>,
    pub(crate) out_tokens: Tensor<B>,
    pub(crate) t_freq: Tensor<B>,
    pub(crate) t_hidden: Tensor<B>,
    pub(crate) cond: Tensor<B>,
    pub(crate) cond_silu: Tensor<B>,
    pub(crate) final_mod: Tensor<B>,
    /// the current block's image modulation rows: [batch, 6D], or [batch, 9D] with dual attention
    pub(crate) mod6: Tensor<B>,
    pub(crate) mod9: Tensor<B>,
    /// the current block's context modulation rows [batch, 6D] (2D in the last block)
    pub(crate) mod_ctx: Tensor<B>,
    pub(crate) mod_ctx_last: Tensor<B>,
    pub(crate) img: StreamScratch<B>,
    pub(crate) ctx: StreamScratch<B>,
    /// LN(h)·(1 + scale_msa2) + shift_msa2 of dual-attention blocks [rows, D]
    pub(crate) norm2: Tensor<B>,
    /// the joint Q|K|V over [image, context] per sample [batch·(N + L), 3D]
    pub(crate) joint_qkv: Tensor<B>,
    /// the joint attention output [batch·(N + L), D]
    pub(crate) joint_out: Tensor<B>,
}

/// One stream's activations inside a block.
pub(crate) struct StreamScratch<B: Backend> {
    pub(crate) norm: Tensor<B>,
    pub(crate) qkv: Tensor<B>,
    pub(crate) attn: Tensor<B>,
    pub(crate) proj: Tensor<B>,
    pub(crate) ff: Tensor<B>,
}

impl<B: Backend> StreamScratch<B> {
    fn new(be: &B, rows: usize, d: usize) -> Result<Self> {
        let dt = be.act_dtype();
        Ok(StreamScratch {
            norm: be.alloc(&[rows, d], dt)?,
            qkv: be.alloc(&[rows, 3 * d], dt)?,
            attn: be.alloc(&[rows, d], dt)?,
            proj: be.alloc(&[rows, d], dt)?,
            ff: be.alloc(&[rows, 4 * d], dt)?,
        })
    }
}

impl<B: Backend> Model<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.inner_dim();
        let (c, p) = (cfg.in_channels, cfg.patch_size);
        let pos_max = cfg.pos_embed_max_size.unwrap_or(0);
        let joint = cfg.joint_attention_dim.unwrap_or(0);
        let pooled = cfg.pooled_projection_dim.unwrap_or(0);
        // The stored buffer; diffusers computes it at init as a sin-cos table of the whole grid.
        let key = "pos_embed.pos_embed";
        let pos_table = if l.source.contains(key) {
            l.get(key, &[1, pos_max * pos_max, d])?
        } else {
            crate::model::embed::pos_embed_2d(d, pos_max, pos_max, cfg.base_size(), 1.0)?
        };
        let n = cfg.num_layers;
        let blocks = (0..n)
            .map(|i| JointBlock::load(l, cfg, i, i + 1 == n, cfg.dual_attention_layers.contains(&i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            patch_embed: patch_embedding(l, "pos_embed.proj", d, c, p)?,
            pos_table,
            pos_max,
            time: Mlp::load(l, "time_text_embed.timestep_embedder", TIME_PROJ_DIM, d, d)?,
            text: Mlp::load(l, "time_text_embed.text_embedder", pooled, d, d)?,
            context_embedder: l.linear("context_embedder", d, joint, true)?,
            blocks,
            norm_out: l.linear("norm_out.linear", 2 * d, d, true)?,
            proj_out: l.linear("proj_out", p * p * cfg.out_channels, d, true)?,
        })
    }

    /// The centre crop of the position table for an h×w patch grid (diffusers
    /// `PatchEmbed.cropped_pos_embed`).
    fn cropped_pos_embed(&self, d: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let m = self.pos_max;
        if h > m || w > m {
            return Err(Error::input(
                "hidden_states",
                format!("a {h}×{w} patch grid is larger than the model's position table ({m}×{m}, pos_embed_max_size)"),
            ));
        }
        let (top, left) = ((m - h) / 2, (m - w) / 2);
        let mut out = Vec::with_capacity(h * w * d);
        for i in 0..h {
            let row = (top + i) * m + left;
            out.extend_from_slice(&self.pos_table[row * d..(row + w) * d]);
        }
        Ok(out)
    }
}

impl<B: Backend> Arch<B> for Model<B> {
    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn streams(&self) -> &'static [&'static str] {
        IMAGE_AND_CONTEXT
    }

    /// The last block does not update the context: after it only the image stream is read.
    fn live_streams(&self, boundary: usize) -> usize {
        if boundary >= self.blocks.len() {
            1
        } else {
            2
        }
    }

    fn context(&self, be: &B, cfg: &ModelConfig, c: &Conditioning) -> Result<Box<dyn Any + Send + Sync>> {
        let (d, b, p) = (cfg.inner_dim(), c.batch, cfg.patch_size);
        let dt = be.act_dtype();
        let pos = self.cropped_pos_embed(d, c.height / p, c.width / p)?;
        let pos_embed = be.upload(&pos, &[pos.len()], dt)?;
        let text = c.text.as_ref().ok_or_else(|| {
            Error::input("encoder_hidden_states", "SD3 needs text embeddings [B, L, joint_attention_dim]")
        })?;
        if text.mask.is_some() {
            return Err(Error::input(
                "encoder_attention_mask",
                "SD3 attends to every context token: the model takes no text mask",
            ));
        }
        let (l, feat) = (text.len, self.context_embedder.in_features());
        if b.checked_mul(l).and_then(|v| v.checked_mul(feat)) != Some(text.embeds.len()) {
            return Err(Error::input(
                "encoder_hidden_states",
                format!("expected [{b}, {l}, {feat}], found {} values", text.embeds.len()),
            ));
        }
        let pooled_in = c.pooled.as_ref().ok_or_else(|| {
            Error::input("pooled_projections", "SD3 needs pooled text embeddings [B, pooled_projection_dim]")
        })?;
        let pf = self.text.l1.in_features();
        if pooled_in.len() != b * pf {
            return Err(Error::input(
                "pooled_projections",
                format!("expected [{b}, {pf}], found {} values", pooled_in.len()),
            ));
        }
        let enc = be.upload(&text.embeds, &[b * l, feat], dt)?;
        let mut context0 = be.alloc(&[b * l, d], dt)?;
        let ce = &self.context_embedder;
        be.linear(&enc, &ce.w, ce.b.as_ref(), Activation::None, &mut context0)?;
        let pooled = self.text.run_host(be, b, pooled_in, Activation::Silu)?;
        Ok(Box::new(RunCtx { pos_embed, context0, pooled, text_len: l }))
    }

    fn workspace(
        &self,
        be: &B,
        cfg: &ModelConfig,
        ctx: &Context<B>,
        tokens: usize,
    ) -> Result<super::StreamsAndScratch<B>> {
        let run: &RunCtx<B> = family_part(&*ctx.family)?;
        let (b, d, p, l) = (ctx.batch, cfg.inner_dim(), cfg.patch_size, run.text_len);
        let (rows, rows_c) = (b * tokens, b * l);
        let dt = be.act_dtype();
        let a = |shape: &[usize]| be.alloc(shape, dt);
        let scratch = Scratch {
            text_len: l,
            patches: a(&[rows, cfg.in_channels * p * p])?,
            out_tokens: a(&[rows, p * p * cfg.out_channels])?,
            t_freq: a(&[b, TIME_PROJ_DIM])?,
            t_hidden: a(&[b, d])?,
            cond: a(&[b, d])?,
            cond_silu: a(&[b, d])?,
            final_mod: a(&[b, 2 * d])?,
            mod6: a(&[b, 6 * d])?,
            mod9: a(&[b, 9 * d])?,
            mod_ctx: a(&[b, 6 * d])?,
            mod_ctx_last: a(&[b, 2 * d])?,
            img: StreamScratch::new(be, rows, d)?,
            ctx: StreamScratch::new(be, rows_c, d)?,
            norm2: a(&[rows, d])?,
            joint_qkv: a(&[rows + rows_c, 3 * d])?,
            joint_out: a(&[rows + rows_c, d])?,
        };
        Ok((vec![a(&[rows, d])?, a(&[rows_c, d])?], Box::new(scratch)))
    }

    fn embed(&self, be: &B, cfg: &ModelConfig, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()> {
        let run: &RunCtx<B> = family_part(&*ctx.family)?;
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        let (img, rest) = ws.streams.split_at_mut(1);
        embed_patches(
            be,
            &self.patch_embed,
            &run.pos_embed,
            cfg.patch_size,
            &ws.model_in,
            &mut s.patches,
            &mut img[0],
        )?;
        be.copy(&run.context0, &mut rest[0])?;
        // c = TimestepEmbedding(Timesteps(256, flip_sin_to_cos, shift 0)(t)) + pooled projection
        be.timestep_embedding(&ws.t, true, 0.0, &mut s.t_freq)?;
        self.time.run(be, &s.t_freq, Activation::Silu, &mut s.t_hidden, &mut s.cond)?;
        be.residual(&mut s.cond, &run.pooled, None, CacheWrite::None)?;
        be.activation(&s.cond, None, Activation::Silu, &mut s.cond_silu)
    }

    fn block(
        &self,
        be: &B,
        cfg: &ModelConfig,
        _ctx: &Context<B>,
        ws: &mut Workspace<B>,
        k: usize,
        writes: &mut [CacheWrite<'_, B>],
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        let (img, rest) = ws.streams.split_at_mut(1);
        let (w_img, w_ctx) = (super::take_write(writes, 0), super::take_write(writes, 1));
        self.blocks[k].forward(be, cfg, (&mut img[0], &mut rest[0]), s, (ws.batch, ws.tokens), (w_img, w_ctx), io)
    }

    fn finish(&self, be: &B, cfg: &ModelConfig, ws: &mut Workspace<B>) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        // AdaLayerNormContinuous: chunks (scale, shift)
        let no = &self.norm_out;
        be.linear(&s.cond_silu, &no.w, no.b.as_ref(), Activation::None, &mut s.final_mod)?;
        be.norm_modulate(&ws.streams[0], &s.final_mod, 1, 0, 1e-6, &mut s.img.norm)?;
        let po = &self.proj_out;
        be.linear(&s.img.norm, &po.w, po.b.as_ref(), Activation::None, &mut s.out_tokens)?;
        be.unpatchify(&s.out_tokens, cfg.patch_size, &mut ws.model_out)
    }

    fn probe_block0_input(&self, be: &B, _cfg: &ModelConfig, ws: &mut Workspace<B>, out: &mut Tensor<B>) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        let m = self.blocks[0].modulate_image(be, s)?;
        be.norm_modulate(&ws.streams[0], m, block::SHIFT_MSA, block::SCALE_MSA, 1e-6, out)
    }

    fn branch_slots(&self, k: usize) -> Vec<usize> {
        self.blocks[k].branch_slots()
    }
}
