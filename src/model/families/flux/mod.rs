//! FLUX.1 dev and schnell (`FluxTransformer2DModel`, MMDIT_SPEC.md): double-stream blocks on the
//! image and context (text) tokens with their own weights, joined in one attention over
//! [context, image] with rotary position embeddings, then single-stream blocks on the
//! concatenation, one set of weights for both. Latents come packed by the pipeline, `[B, N, C]`.
//!
//! ```text
//! image   = x_embedder(hidden_states)                            (packed tokens, no patchify)
//! c       = TimestepMLP(1000·t) [+ GuidanceMLP(1000·g), dev] + TextProjection(pooled)
//! context = context_embedder(encoder_hidden_states)              (once per run)
//! rope    = per-axis RoPE of cat(txt_ids, img_ids)                (once per run, f64 → f32 table)
//! for each double block: context, image = DoubleBlock(image, context, c)
//! for each single block: context, image = SingleBlock(cat(context, image), c) split back
//! out     = proj_out(AdaLayerNormContinuous(image, c))           (packed tokens)
//! ```
//!
//! Streams: `["image", "context"]` through every block. A single block's ops are row-wise except
//! its attention, so it runs on the two streams as they are (one weight set, the attention
//! gathering [context, image] as the double blocks do): the concatenated stream of diffusers is
//! never materialised, and the cache sees the same two streams on both sides of the boundary
//! between double and single blocks. The context is read up to the last block, which does not
//! update it (its context rows only feed the attention): after it only the image is live.

mod block;

use super::{Arch, IMAGE_AND_CONTEXT};
use crate::backend::{Activation, CacheWrite};
use crate::model::config::{config_err, Keys, MAX_DIM};
use crate::model::layers::{Mlp, TIME_PROJ_DIM};
use crate::model::{
    family_part, family_part_mut, BranchIo, Conditioning, Context, Family, Linear, Loader, ModelConfig, Workspace,
};
use crate::{Backend, DType, Error, Result, Tensor};
use block::{DoubleBlock, SingleBlock};
use serde_json::Value;
use std::any::Any;

/// RoPE base frequency of `FluxPosEmbed`.
const THETA: f64 = 10000.0;

/// `FluxTransformer2DModel`'s config keys, with diffusers' defaults (FLUX.1's shape).
pub(crate) fn config_from_keys(k: &Keys<'_>) -> Result<ModelConfig> {
    let in_channels = k.usize_or("in_channels", 64)?;
    let axes = match k.usize_list("axes_dims_rope")? {
        v if v.is_empty() => vec![16, 56, 56],
        v => v,
    };
    Ok(ModelConfig {
        family: Family::Flux,
        num_attention_heads: k.usize_or("num_attention_heads", 24)?,
        attention_head_dim: k.usize_or("attention_head_dim", 128)?,
        in_channels,
        out_channels: k.usize_or("out_channels", in_channels)?,
        num_layers: k.usize_or("num_layers", 19)?,
        patch_size: k.usize_or("patch_size", 1)?,
        sample_size: 128,
        cross_attention_dim: None,
        caption_channels: None,
        norm_eps: 1e-6,
        interpolation_scale: 1.0,
        use_additional_conditions: false,
        num_embeds_ada_norm: 0,
        attention_bias: true,
        joint_attention_dim: Some(k.usize_or("joint_attention_dim", 4096)?),
        pooled_projection_dim: Some(k.usize_or("pooled_projection_dim", 768)?),
        pos_embed_max_size: None,
        qk_norm: true,
        dual_attention_layers: Vec::new(),
        num_single_layers: k.usize_or("num_single_layers", 38)?,
        axes_dims_rope: axes,
        guidance_embeds: k.bool_or("guidance_embeds", false)?,
    })
}

/// The FLUX-only constraints of a config.
pub(crate) fn validate_config(c: &ModelConfig) -> Result<()> {
    for (key, v) in [("joint_attention_dim", c.joint_attention_dim), ("pooled_projection_dim", c.pooled_projection_dim)]
    {
        match v {
            Some(v) if (1..=MAX_DIM).contains(&v) => {}
            Some(v) => return Err(config_err(Some(key), format!("{v} is out of range 1..={MAX_DIM}"))),
            None => return Err(config_err(Some(key), "missing (a FluxTransformer2DModel needs it)")),
        }
    }
    if c.patch_size != 1 {
        return Err(config_err(
            Some("patch_size"),
            format!("{} is not supported (FLUX's pipeline packs the latents itself: 1)", c.patch_size),
        ));
    }
    if c.num_single_layers > crate::model::config::MAX_LAYERS {
        return Err(config_err(
            Some("num_single_layers"),
            format!("{} is out of range 0..={}", c.num_single_layers, crate::model::config::MAX_LAYERS),
        ));
    }
    let sum = c.axes_dims_rope.iter().try_fold(0usize, |a, &d| a.checked_add(d));
    if c.axes_dims_rope.iter().any(|d| !d.is_multiple_of(2) || *d == 0) || sum != Some(c.attention_head_dim) {
        return Err(config_err(
            Some("axes_dims_rope"),
            format!(
                "{:?} must be even, non-zero and sum to attention_head_dim = {}",
                c.axes_dims_rope, c.attention_head_dim
            ),
        ));
    }
    Ok(())
}

/// The config as diffusers writes it.
pub(crate) fn config_to_json(c: &ModelConfig) -> Value {
    serde_json::json!({
        "_class_name": Family::Flux.name(),
        "patch_size": c.patch_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "num_layers": c.num_layers,
        "num_single_layers": c.num_single_layers,
        "attention_head_dim": c.attention_head_dim,
        "num_attention_heads": c.num_attention_heads,
        "joint_attention_dim": c.joint_attention_dim,
        "pooled_projection_dim": c.pooled_projection_dim,
        "guidance_embeds": c.guidance_embeds,
        "axes_dims_rope": c.axes_dims_rope,
    })
}

/// The RoPE table of `FluxPosEmbed` for the positions `ids` (`[n, axes]`, txt then img):
/// `[n, head_dim]` with (cos, sin) of each adjacent pair of a head, frequencies and angles in f64
/// (as diffusers computes them), rounded to f32.
pub(crate) fn rope_table(axes: &[usize], ids: &[f32], n: usize) -> Vec<f32> {
    let head_dim: usize = axes.iter().sum();
    let mut out = Vec::with_capacity(n * head_dim);
    for r in 0..n {
        for (a, &dim) in axes.iter().enumerate() {
            let pos = ids[r * axes.len() + a] as f64;
            for i in (0..dim).step_by(2) {
                let freq = 1.0 / THETA.powf(i as f64 / dim as f64);
                let angle = pos * freq;
                out.push(angle.cos() as f32);
                out.push(angle.sin() as f32);
            }
        }
    }
    out
}

/// FluxPipeline's `_prepare_latent_image_ids`: `(0, r, c)` for each token of an h×w grid.
pub(crate) fn image_ids(h: usize, w: usize) -> Vec<f32> {
    (0..h).flat_map(|r| (0..w).flat_map(move |c| [0.0, r as f32, c as f32])).collect()
}

/// FluxPipeline's `_pack_latents`: `[n, C, H, W]` latents → `[n, (H/2)·(W/2), 4·C]` tokens, the
/// channel of a token `4·c + 2·dy + dx` for pixel (dy, dx) of its 2×2 patch. H and W even.
pub(crate) fn pack_latents(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let (gh, gw) = (h / 2, w / 2);
    let mut out = vec![0.0; n * gh * gw * 4 * c];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..2 * gh {
                for xx in 0..2 * gw {
                    let tok = (y / 2) * gw + xx / 2;
                    let k = 4 * ch + 2 * (y % 2) + xx % 2;
                    out[(b * gh * gw + tok) * 4 * c + k] = x[((b * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    out
}

/// FluxPipeline's `_unpack_latents`: `[n, gh·gw, 4·C]` tokens of a gh × gw grid →
/// `[n, C, 2·gh, 2·gw]` latents (the inverse of [`pack_latents`]).
pub(crate) fn unpack_latents(x: &[f32], n: usize, c4: usize, (gh, gw): (usize, usize)) -> Vec<f32> {
    let c = c4 / 4;
    let (h, w) = (2 * gh, 2 * gw);
    let mut out = vec![0.0; n * c * h * w];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let tok = (y / 2) * gw + xx / 2;
                    let k = 4 * ch + 2 * (y % 2) + xx % 2;
                    out[((b * c + ch) * h + y) * w + xx] = x[(b * gh * gw + tok) * c4 + k];
                }
            }
        }
    }
    out
}

/// A FLUX transformer's weights.
pub(crate) struct Model<B: Backend> {
    x_embedder: Linear<B>,
    time: Mlp<B>,
    guidance: Option<Mlp<B>>,
    text: Mlp<B>,
    context_embedder: Linear<B>,
    double: Vec<DoubleBlock<B>>,
    single: Vec<SingleBlock<B>>,
    norm_out: Linear<B>,
    proj_out: Linear<B>,
    axes: Vec<usize>,
}

/// Per-run tensors: the embedded context, pooled text (+ guidance) and the RoPE table.
pub(crate) struct RunCtx<B: Backend> {
    /// context_embedder(encoder_hidden_states) [batch·L, D]: the context stream at boundary 0
    context0: Tensor<B>,
    /// text_embedder(pooled) [batch, D]
    pooled: Tensor<B>,
    /// dev: guidance_embedder(1000·g) [batch, D], added after the timestep embedding
    guidance: Option<Tensor<B>>,
    /// f32 [L + N, head_dim]: txt positions, then img
    rope: Tensor<B>,
    text_len: usize,
}

/// The scratch activations of a forward.
pub(crate) struct Scratch<B: Backend> {
    pub(crate) text_len: usize,
    pub(crate) x_in: Tensor<B>,
    pub(crate) out_tokens: Tensor<B>,
    pub(crate) t_freq: Tensor<B>,
    pub(crate) t_hidden: Tensor<B>,
    pub(crate) cond: Tensor<B>,
    pub(crate) cond_silu: Tensor<B>,
    pub(crate) final_mod: Tensor<B>,
    /// the current double block's modulation rows [batch, 6D] (image, context)
    pub(crate) mod_img: Tensor<B>,
    pub(crate) mod_ctx: Tensor<B>,
    /// the current single block's modulation rows [batch, 3D]
    pub(crate) mod_single: Tensor<B>,
    pub(crate) img: StreamScratch<B>,
    pub(crate) ctx: StreamScratch<B>,
    /// the joint Q|K|V over [context, image] per sample [batch·(L + N), 3D]
    pub(crate) joint_qkv: Tensor<B>,
    /// the joint attention output [batch·(L + N), D]
    pub(crate) joint_out: Tensor<B>,
}

/// One stream's activations inside a block.
pub(crate) struct StreamScratch<B: Backend> {
    pub(crate) norm: Tensor<B>,
    pub(crate) qkv: Tensor<B>,
    pub(crate) attn: Tensor<B>,
    pub(crate) proj: Tensor<B>,
    /// the single blocks' MLP half of proj_out
    pub(crate) proj2: Tensor<B>,
    pub(crate) ff: Tensor<B>,
    /// the single blocks' one projection output [rows, 3D + 4D]: Q | K | V | MLP
    pub(crate) fused: Tensor<B>,
}

impl<B: Backend> StreamScratch<B> {
    fn new(be: &B, rows: usize, d: usize) -> Result<Self> {
        let dt = be.act_dtype();
        Ok(StreamScratch {
            norm: be.alloc(&[rows, d], dt)?,
            qkv: be.alloc(&[rows, 3 * d], dt)?,
            attn: be.alloc(&[rows, d], dt)?,
            proj: be.alloc(&[rows, d], dt)?,
            proj2: be.alloc(&[rows, d], dt)?,
            ff: be.alloc(&[rows, 4 * d], dt)?,
            fused: be.alloc(&[rows, 7 * d], dt)?,
        })
    }
}

impl<B: Backend> Model<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.inner_dim();
        let joint = cfg.joint_attention_dim.unwrap_or(0);
        let pooled = cfg.pooled_projection_dim.unwrap_or(0);
        let double = (0..cfg.num_layers).map(|i| DoubleBlock::load(l, cfg, i)).collect::<Result<Vec<_>>>()?;
        let ns = cfg.num_single_layers;
        let single = (0..ns).map(|j| SingleBlock::load(l, cfg, j, j + 1 == ns)).collect::<Result<Vec<_>>>()?;
        let te = "time_text_embed";
        Ok(Model {
            x_embedder: l.linear("x_embedder", d, cfg.in_channels, true)?,
            time: Mlp::load(l, &format!("{te}.timestep_embedder"), TIME_PROJ_DIM, d, d)?,
            guidance: if cfg.guidance_embeds {
                Some(Mlp::load(l, &format!("{te}.guidance_embedder"), TIME_PROJ_DIM, d, d)?)
            } else {
                None
            },
            text: Mlp::load(l, &format!("{te}.text_embedder"), pooled, d, d)?,
            context_embedder: l.linear("context_embedder", d, joint, true)?,
            double,
            single,
            norm_out: l.linear("norm_out.linear", 2 * d, d, true)?,
            proj_out: l.linear("proj_out", cfg.out_channels, d, true)?,
            axes: cfg.axes_dims_rope.clone(),
        })
    }
}

/// `[n, 3]` position ids `name`, checked.
fn ids_of<'a>(name: &str, ids: Option<&'a Vec<f32>>, n: usize, axes: usize) -> Result<Option<&'a [f32]>> {
    match ids {
        None => Ok(None),
        Some(v) if v.len() == n * axes => Ok(Some(v)),
        Some(v) => Err(Error::input(name, format!("expected [{n}, {axes}], found {} values", v.len()))),
    }
}

impl<B: Backend> Arch<B> for Model<B> {
    fn num_blocks(&self) -> usize {
        self.double.len() + self.single.len()
    }

    fn streams(&self) -> &'static [&'static str] {
        IMAGE_AND_CONTEXT
    }

    /// The last block does not update the context: after it only the image stream is read.
    fn live_streams(&self, boundary: usize) -> usize {
        if boundary >= self.num_blocks() {
            1
        } else {
            2
        }
    }

    fn latent_shape(&self, cfg: &ModelConfig, batch: usize, height: usize, width: usize, output: bool) -> Vec<usize> {
        let c = if output { cfg.out_channels } else { cfg.in_channels };
        vec![batch, height * width, c]
    }

    fn model_timestep(&self, t: f32) -> f32 {
        // FluxTransformer2DModel.forward: timestep.to(dtype) * 1000
        t * 1000.0
    }

    fn context(&self, be: &B, cfg: &ModelConfig, c: &Conditioning) -> Result<Box<dyn Any + Send + Sync>> {
        let (d, b) = (cfg.inner_dim(), c.batch);
        let dt = be.act_dtype();
        let n = c.height * c.width;
        let text = c.text.as_ref().ok_or_else(|| {
            Error::input("encoder_hidden_states", "FLUX needs text embeddings [B, L, joint_attention_dim]")
        })?;
        if text.mask.is_some() {
            return Err(Error::input(
                "encoder_attention_mask",
                "FLUX attends to every context token: the model takes no text mask",
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
            Error::input("pooled_projections", "FLUX needs pooled text embeddings [B, pooled_projection_dim]")
        })?;
        let pf = self.text.l1.in_features();
        if pooled_in.len() != b * pf {
            return Err(Error::input(
                "pooled_projections",
                format!("expected [{b}, {pf}], found {} values", pooled_in.len()),
            ));
        }
        let guidance = match (&self.guidance, &c.guidance) {
            (Some(mlp), Some(g)) => {
                if g.len() != b {
                    return Err(Error::input("guidance", format!("expected [{b}], found {} values", g.len())));
                }
                crate::error::check_finite("guidance", g)?;
                // guidance.to(dtype) * 1000, then Timesteps(256, flip_sin_to_cos, shift 0)
                let g: Vec<f32> = g.iter().map(|&v| v * 1000.0).collect();
                let gt = be.upload(&g, &[b], DType::F32)?;
                let mut freq = be.alloc(&[b, TIME_PROJ_DIM], dt)?;
                be.timestep_embedding(&gt, true, 0.0, &mut freq)?;
                let (mut hidden, mut out) = (be.alloc(&[b, d], dt)?, be.alloc(&[b, d], dt)?);
                mlp.run(be, &freq, Activation::Silu, &mut hidden, &mut out)?;
                Some(out)
            }
            (Some(_), None) => {
                return Err(Error::input("guidance", "FLUX.1-dev (guidance_embeds) needs the guidance scale [B]"))
            }
            (None, Some(_)) => {
                return Err(Error::input(
                    "guidance",
                    "this model has no guidance embedding (guidance_embeds false, e.g. FLUX.1-schnell)",
                ))
            }
            (None, None) => None,
        };
        let axes = self.axes.len();
        let txt = ids_of("txt_ids", c.text_ids.as_ref(), l, axes)?;
        let img = ids_of("img_ids", c.image_ids.as_ref(), n, axes)?;
        let mut ids = match txt {
            Some(t) => t.to_vec(),
            None => vec![0.0; l * axes],
        };
        match img {
            Some(i) => ids.extend_from_slice(i),
            None if axes == 3 => ids.extend(image_ids(c.height, c.width)),
            None => return Err(Error::input("img_ids", format!("needed for {axes} RoPE axes"))),
        }
        crate::error::check_finite("img_ids", &ids)?;
        let hd = cfg.attention_head_dim;
        let table = rope_table(&self.axes, &ids, l + n);
        let rope = be.upload(&table, &[l + n, hd], DType::F32)?;
        let enc = be.upload(&text.embeds, &[b * l, feat], dt)?;
        let mut context0 = be.alloc(&[b * l, d], dt)?;
        let ce = &self.context_embedder;
        be.linear(&enc, &ce.w, ce.b.as_ref(), Activation::None, &mut context0)?;
        let pooled = self.text.run_host(be, b, pooled_in, Activation::Silu)?;
        Ok(Box::new(RunCtx { context0, pooled, guidance, rope, text_len: l }))
    }

    fn workspace(
        &self,
        be: &B,
        cfg: &ModelConfig,
        ctx: &Context<B>,
        tokens: usize,
    ) -> Result<(Vec<Tensor<B>>, Box<dyn Any + Send + Sync>)> {
        let run: &RunCtx<B> = family_part(&*ctx.family)?;
        let (b, d, l) = (ctx.batch, cfg.inner_dim(), run.text_len);
        let (rows, rows_c) = (b * tokens, b * l);
        let dt = be.act_dtype();
        let a = |shape: &[usize]| be.alloc(shape, dt);
        let scratch = Scratch {
            text_len: l,
            x_in: a(&[rows, cfg.in_channels])?,
            out_tokens: a(&[rows, cfg.out_channels])?,
            t_freq: a(&[b, TIME_PROJ_DIM])?,
            t_hidden: a(&[b, d])?,
            cond: a(&[b, d])?,
            cond_silu: a(&[b, d])?,
            final_mod: a(&[b, 2 * d])?,
            mod_img: a(&[b, 6 * d])?,
            mod_ctx: a(&[b, 6 * d])?,
            mod_single: a(&[b, 3 * d])?,
            img: StreamScratch::new(be, rows, d)?,
            ctx: StreamScratch::new(be, rows_c, d)?,
            joint_qkv: a(&[rows + rows_c, 3 * d])?,
            joint_out: a(&[rows + rows_c, d])?,
        };
        Ok((vec![a(&[rows, d])?, a(&[rows_c, d])?], Box::new(scratch)))
    }

    fn embed(&self, be: &B, cfg: &ModelConfig, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()> {
        let run: &RunCtx<B> = family_part(&*ctx.family)?;
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        // Packed tokens [B, N, C] (f32) → [B·N, C] in the activation dtype: patchify of a
        // [B·N, C, 1, 1] view with patch 1 is exactly that conversion.
        let shape = ws.model_in.shape().to_vec();
        let (rows, c) = (ws.batch * ws.tokens, cfg.in_channels);
        ws.model_in.reshape(&[rows, c, 1, 1])?;
        let r = be.patchify(&ws.model_in, 1, &mut s.x_in);
        ws.model_in.reshape(&shape)?;
        r?;
        let (img, rest) = ws.streams.split_at_mut(1);
        let xe = &self.x_embedder;
        be.linear(&s.x_in, &xe.w, xe.b.as_ref(), Activation::None, &mut img[0])?;
        be.copy(&run.context0, &mut rest[0])?;
        // c = TimestepEmbedding(Timesteps(256, flip_sin_to_cos, shift 0)(1000·t)) [+ guidance] + pooled
        // (ws.t already holds 1000·t: Arch::model_timestep)
        be.timestep_embedding(&ws.t, true, 0.0, &mut s.t_freq)?;
        self.time.run(be, &s.t_freq, Activation::Silu, &mut s.t_hidden, &mut s.cond)?;
        if let Some(g) = &run.guidance {
            be.residual(&mut s.cond, g, None, CacheWrite::None)?;
        }
        be.residual(&mut s.cond, &run.pooled, None, CacheWrite::None)?;
        be.activation(&s.cond, None, Activation::Silu, &mut s.cond_silu)
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
        let (img, rest) = ws.streams.split_at_mut(1);
        let (w_img, w_ctx) = (super::take_write(writes, 0), super::take_write(writes, 1));
        let sizes = (ws.batch, ws.tokens);
        let streams = (&mut img[0], &mut rest[0]);
        match self.double.get(k) {
            Some(blk) => blk.forward(be, cfg, streams, s, &run.rope, sizes, (w_img, w_ctx), io),
            None => {
                let blk = &self.single[k - self.double.len()];
                blk.forward(be, cfg, streams, s, &run.rope, sizes, (w_img, w_ctx), io)
            }
        }
    }

    fn finish(&self, be: &B, cfg: &ModelConfig, ws: &mut Workspace<B>) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        // AdaLayerNormContinuous: chunks (scale, shift)
        let no = &self.norm_out;
        be.linear(&s.cond_silu, &no.w, no.b.as_ref(), Activation::None, &mut s.final_mod)?;
        be.norm_modulate(&ws.streams[0], &s.final_mod, 1, 0, 1e-6, &mut s.img.norm)?;
        let po = &self.proj_out;
        be.linear(&s.img.norm, &po.w, po.b.as_ref(), Activation::None, &mut s.out_tokens)?;
        // [B·N, C] → f32 [B, N, C]: unpatchify into a [B·N, C, 1, 1] view with patch 1.
        let shape = ws.model_out.shape().to_vec();
        ws.model_out.reshape(&[ws.batch * ws.tokens, cfg.out_channels, 1, 1])?;
        let r = be.unpatchify(&s.out_tokens, 1, &mut ws.model_out);
        ws.model_out.reshape(&shape)?;
        r
    }

    fn probe_block0_input(&self, be: &B, _cfg: &ModelConfig, ws: &mut Workspace<B>, out: &mut Tensor<B>) -> Result<()> {
        let s: &mut Scratch<B> = family_part_mut(&mut *ws.scratch)?;
        match self.double.first() {
            Some(blk) => {
                let m = blk.modulate_image(be, s)?;
                be.norm_modulate(&ws.streams[0], m, block::SHIFT_MSA, block::SCALE_MSA, 1e-6, out)
            }
            None => {
                let m = self.single[0].modulation(be, s)?;
                be.norm_modulate(&ws.streams[0], m, block::SHIFT_MSA, block::SCALE_MSA, 1e-6, out)
            }
        }
    }

    fn branch_slots(&self, k: usize) -> Vec<usize> {
        match self.double.get(k) {
            Some(_) => vec![0, 0, 1, 1],
            None => self.single[k - self.double.len()].branch_slots(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pack_latents, unpack_latents};

    /// `_pack_latents` by hand on a 4×4 image of values 0..16: token (0, 0) holds pixels
    /// (0,0), (0,1), (1,0), (1,1), token (0, 1) the next 2×2 patch to the right; a second channel's
    /// four values follow the first's in each token. Unpacking inverts it.
    #[test]
    fn pack_and_unpack_latents_as_flux_pipeline() {
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let p = pack_latents(&x, [1, 1, 4, 4]);
        assert_eq!(&p[..8], &[0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
        assert_eq!(&p[8..], &[8.0, 9.0, 12.0, 13.0, 10.0, 11.0, 14.0, 15.0]);
        let two: Vec<f32> = (0..2 * 2 * 2 * 6).map(|v| v as f32).collect(); // [2, 2, 2, 6]
        let p = pack_latents(&two, [2, 2, 2, 6]);
        // sample 0, token 0: channel 0's patch (0, 1, 6, 7), then channel 1's (12, 13, 18, 19)
        assert_eq!(&p[..8], &[0.0, 1.0, 6.0, 7.0, 12.0, 13.0, 18.0, 19.0]);
        assert_eq!(unpack_latents(&p, 2, 8, (1, 3)), two);
    }
}
