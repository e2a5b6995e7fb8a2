//! Everything outside the blocks that differs between PixArt and DiT: the timestep (and label or
//! micro-condition) embedding, the per-run text/label context, and the final layer's modulation.

use super::Scratch;
use crate::backend::Activation;
use crate::model::embed::sinusoid;
use crate::model::layers::{Mlp, TIME_PROJ_DIM};
use crate::model::{Conditioning, Family, Linear, Loader, ModelConfig};
use crate::{Backend, DType, Error, Result, Tensor};

// One per model: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Conditioner<B: Backend> {
    PixArt {
        time: Mlp<B>,
        /// adaln_single.linear: SiLU(cond) → the six shared modulation rows [B, 6D]
        adaln: Linear<B>,
        caption: Option<Mlp<B>>,
        /// resolution / aspect-ratio embedders (α micro-conditions)
        sizes: Option<(Mlp<B>, Mlp<B>)>,
        /// final layer scale_shift_table [2D]
        final_table: Tensor<B>,
    },
    DiT {
        /// Each block's norm1.emb holds its own timestep/label embedder (the converter copies
        /// one into all blocks; other checkpoints may differ): the distinct ones, deduplicated.
        embedders: Vec<DitEmbedder<B>>,
        /// embedder index of each block (the final layer uses block 0's)
        block_embedder: Vec<usize>,
        /// proj_out_1: SiLU(cond) → [shift | scale] of the final layer
        proj_out_1: Linear<B>,
    },
}

pub(crate) struct DitEmbedder<B: Backend> {
    time: Mlp<B>,
    /// class_embedder.embedding_table [num_classes + 1, D]
    class_table: Tensor<B>,
}

/// Step-invariant, per-run tensors: the text projected and turned into each block's K/V, the
/// key bias, the micro-condition or class embedding.
pub struct RunCtx<B: Backend> {
    /// [tokens · D] positional embedding of this latent size
    pub(crate) pos_embed: Tensor<B>,
    /// per block [batch · text_len, 2D]
    pub(crate) cross_kv: Vec<Tensor<B>>,
    /// f32 [batch, text_len]
    pub(crate) key_bias: Option<Tensor<B>>,
    pub(crate) text_len: usize,
    /// [batch, D] added to the timestep embedding every step, per embedder (PixArt
    /// micro-conditions, DiT class labels)
    pub(crate) extra: Vec<Tensor<B>>,
}

impl<B: Backend> Conditioner<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.inner_dim();
        match cfg.family {
            Family::PixArt => Ok(Conditioner::PixArt {
                time: Mlp::load(l, "adaln_single.emb.timestep_embedder", TIME_PROJ_DIM, d, d)?,
                adaln: l.linear("adaln_single.linear", 6 * d, d, true)?,
                caption: match cfg.caption_channels {
                    Some(c) => Some(Mlp::load(l, "caption_projection", c, d, d)?),
                    None => None,
                },
                sizes: if cfg.use_additional_conditions {
                    let s = d / 3;
                    Some((
                        Mlp::load(l, "adaln_single.emb.resolution_embedder", TIME_PROJ_DIM, s, s)?,
                        Mlp::load(l, "adaln_single.emb.aspect_ratio_embedder", TIME_PROJ_DIM, s, s)?,
                    ))
                } else {
                    None
                },
                final_table: l.tensor("scale_shift_table", &[2, d])?,
            }),
            _ => {
                let keys = |i: usize| -> Vec<(String, Vec<usize>)> {
                    let p = format!("transformer_blocks.{i}.norm1.emb");
                    vec![
                        (format!("{p}.timestep_embedder.linear_1.weight"), vec![d, TIME_PROJ_DIM]),
                        (format!("{p}.timestep_embedder.linear_1.bias"), vec![d]),
                        (format!("{p}.timestep_embedder.linear_2.weight"), vec![d, d]),
                        (format!("{p}.timestep_embedder.linear_2.bias"), vec![d]),
                        (format!("{p}.class_embedder.embedding_table.weight"), vec![cfg.num_embeds_ada_norm + 1, d]),
                    ]
                };
                let mut distinct: Vec<Vec<Vec<f32>>> = Vec::new();
                let mut block_embedder = Vec::with_capacity(cfg.num_layers);
                for i in 0..cfg.num_layers {
                    let values = keys(i).iter().map(|(k, s)| l.get(k, s)).collect::<Result<Vec<_>>>()?;
                    let idx = distinct.iter().position(|v| *v == values).unwrap_or_else(|| {
                        distinct.push(values);
                        distinct.len() - 1
                    });
                    block_embedder.push(idx);
                }
                let dt = l.backend.act_dtype();
                let embedders = distinct
                    .iter()
                    .map(|v| {
                        let t = |j: usize| l.backend.upload(&v[j], &keys(0)[j].1, dt);
                        Ok(DitEmbedder {
                            time: Mlp {
                                l1: Linear { w: t(0)?, b: Some(t(1)?) },
                                l2: Linear { w: t(2)?, b: Some(t(3)?) },
                            },
                            class_table: t(4)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Conditioner::DiT { embedders, block_embedder, proj_out_1: l.linear("proj_out_1", 2 * d, d, true)? })
            }
        }
    }

    /// Builds the per-run context. `cross_kv` projects the text for block k.
    pub fn context(&self, be: &B, cfg: &ModelConfig, c: &Conditioning, cross_kv: &[&Linear<B>]) -> Result<RunCtx<B>> {
        let d = cfg.inner_dim();
        let dt = be.act_dtype();
        let (b, p) = (c.batch, cfg.patch_size);
        let (th, tw) = (c.height / p, c.width / p);
        let pe = crate::model::embed::pos_embed_2d(d, th, tw, cfg.base_size(), cfg.interpolation_scale)?;
        let pos_embed = be.upload(&pe, &[th * tw * d], dt)?;
        let mut ctx = RunCtx { pos_embed, cross_kv: Vec::new(), key_bias: None, text_len: 0, extra: Vec::new() };
        match self {
            Conditioner::PixArt { caption, sizes, .. } => {
                let text = c
                    .text
                    .as_ref()
                    .ok_or_else(|| Error::input("encoder_hidden_states", "PixArt needs text embeddings"))?;
                let l = text.len;
                let feat = caption.as_ref().map_or(cfg.cross_attention_dim.unwrap_or(d), |m| m.l1.in_features());
                if text.embeds.len() != b * l * feat {
                    return Err(Error::input(
                        "encoder_hidden_states",
                        format!("expected [{b}, {l}, {feat}], found {} values", text.embeds.len()),
                    ));
                }
                let enc = match caption {
                    Some(m) => m.run_host(be, b * l, &text.embeds, Activation::GeluTanh)?,
                    None => be.upload(&text.embeds, &[b * l, feat], dt)?,
                };
                for kv in cross_kv {
                    let mut t = be.alloc(&[b * l, kv.out_features()], dt)?;
                    be.linear(&enc, &kv.w, kv.b.as_ref(), Activation::None, &mut t)?;
                    ctx.cross_kv.push(t);
                }
                ctx.text_len = l;
                if let Some(mask) = &text.mask {
                    if mask.len() != b * l {
                        return Err(Error::input(
                            "encoder_attention_mask",
                            format!("expected [{b}, {l}], found {} values", mask.len()),
                        ));
                    }
                    ctx.key_bias = Some(be.upload(&crate::model::embed::mask_to_bias(mask), &[b, l], DType::F32)?);
                }
                if let Some((res_mlp, ar_mlp)) = sizes {
                    let (res, ar) = match (&c.resolution, &c.aspect_ratio) {
                        (Some(r), Some(a)) => (r, a),
                        _ => return Err(Error::input("resolution", "this model uses resolution/aspect-ratio micro-conditions: give `resolution` [B,2] and `aspect_ratio` [B,1]")),
                    };
                    if res.len() != 2 * b || ar.len() != b {
                        return Err(Error::input(
                            "resolution",
                            format!("expected resolution [{b}, 2] and aspect_ratio [{b}, 1]"),
                        ));
                    }
                    let s = d / 3;
                    let re = res_mlp.run_host(be, 2 * b, &sinusoid(res, TIME_PROJ_DIM, true, 0.0), Activation::Silu)?;
                    let ae = ar_mlp.run_host(be, b, &sinusoid(ar, TIME_PROJ_DIM, true, 0.0), Activation::Silu)?;
                    // cond = t_emb + [res(height) | res(width) | ar] per sample
                    let mut extra = be.alloc(&[b, d], dt)?;
                    for i in 0..b {
                        be.copy_range(&re, 2 * i * s, &mut extra, i * d, 2 * s)?;
                        be.copy_range(&ae, i * s, &mut extra, i * d + 2 * s, s)?;
                    }
                    ctx.extra.push(extra);
                }
            }
            Conditioner::DiT { embedders, .. } => {
                let labels =
                    c.class_labels.as_ref().ok_or_else(|| Error::input("class_labels", "DiT needs class labels"))?;
                if labels.len() != b {
                    return Err(Error::input("class_labels", format!("expected {b} labels, found {}", labels.len())));
                }
                if let Some(&y) = labels.iter().find(|&&y| y > cfg.num_embeds_ada_norm) {
                    return Err(Error::input(
                        "class_labels",
                        format!(
                            "label {y} out of range 0..={} ({} is the null class)",
                            cfg.num_embeds_ada_norm, cfg.num_embeds_ada_norm
                        ),
                    ));
                }
                for e in embedders {
                    let mut extra = be.alloc(&[b, d], dt)?;
                    for (i, &y) in labels.iter().enumerate() {
                        be.copy_range(&e.class_table, y * d, &mut extra, i * d, d)?;
                    }
                    ctx.extra.push(extra);
                }
            }
        }
        Ok(ctx)
    }

    /// Number of distinct timestep embedders (the workspace keeps a conditioning per embedder).
    pub fn num_embedders(&self) -> usize {
        match self {
            Conditioner::PixArt { .. } => 1,
            Conditioner::DiT { embedders, .. } => embedders.len(),
        }
    }

    /// Which embedder's conditioning block `i` reads.
    pub fn block_embedder(&self, i: usize) -> usize {
        match self {
            Conditioner::PixArt { .. } => 0,
            Conditioner::DiT { block_embedder, .. } => block_embedder[i],
        }
    }

    /// Per-step conditioning from the timesteps `t`: `ws.cond[e]` (the embedded timestep +
    /// extra), `ws.cond_silu[e]` per embedder e, and for PixArt the shared modulation rows
    /// `ws.tmod`.
    pub fn step(&self, be: &B, ctx: &RunCtx<B>, t: &Tensor<B>, ws: &mut Scratch<B>) -> Result<()> {
        let (times, shift): (Vec<&Mlp<B>>, f32) = match self {
            Conditioner::PixArt { time, .. } => (vec![time], 0.0),
            Conditioner::DiT { embedders, .. } => (embedders.iter().map(|e| &e.time).collect(), 1.0),
        };
        be.timestep_embedding(t, true, shift, &mut ws.t_freq)?;
        for (e, time) in times.into_iter().enumerate() {
            time.run(be, &ws.t_freq, Activation::Silu, &mut ws.t_hidden, &mut ws.cond[e])?;
            if let Some(extra) = ctx.extra.get(e) {
                be.residual(&mut ws.cond[e], extra, None, crate::backend::CacheWrite::None)?;
            }
            be.activation(&ws.cond[e], None, Activation::Silu, &mut ws.cond_silu[e])?;
        }
        if let Conditioner::PixArt { adaln, .. } = self {
            be.linear(&ws.cond_silu[0], &adaln.w, adaln.b.as_ref(), Activation::None, &mut ws.tmod)?;
        }
        Ok(())
    }

    /// The final layer's [shift | scale] rows into `ws.final_mod` `[B, 2D]`.
    pub fn final_modulation(&self, be: &B, batch: usize, ws: &mut Scratch<B>) -> Result<()> {
        match self {
            Conditioner::PixArt { final_table, .. } => {
                // table[r] + embedded_timestep, for r = shift, scale
                let d = ws.cond[0].cols();
                for i in 0..batch {
                    be.copy_range(&ws.cond[0], i * d, &mut ws.final_mod, 2 * i * d, d)?;
                    be.copy_range(&ws.cond[0], i * d, &mut ws.final_mod, (2 * i + 1) * d, d)?;
                }
                be.add_bcast(&mut ws.final_mod, final_table)
            }
            Conditioner::DiT { proj_out_1, block_embedder, .. } => be.linear(
                &ws.cond_silu[block_embedder[0]],
                &proj_out_1.w,
                proj_out_1.b.as_ref(),
                Activation::None,
                &mut ws.final_mod,
            ),
        }
    }
}
