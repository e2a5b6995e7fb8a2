//! The MMDiT joint block (diffusers `JointTransformerBlock` with `JointAttnProcessor2_0`):
//!
//! ```text
//! n_h = LN(h)·(1 + scale_msa) + shift_msa             norm1 (AdaLayerNormZero; 9 chunks with dual attention)
//! n_c = LN(c)·(1 + c_scale_msa) + c_shift_msa         norm1_context (AdaLayerNormContinuous in the last block)
//! q, k, v = to_q/k/v(n_h) | add_q/k/v_proj(n_c)       [qk RMSNorm per head]
//! a_h, a_c = split(attention over [image, context])
//! h += gate_msa·to_out(a_h)
//! dual: h += gate_msa2·attn2(LN(h_in)·(1 + scale_msa2) + shift_msa2)
//! h += gate_mlp·FF(LN(h)·(1 + scale_mlp) + shift_mlp)
//! c += c_gate_msa·to_add_out(a_c); c += c_gate_mlp·FF_c(LN(c)·(1 + c_scale_mlp) + c_shift_mlp)   (not in the last block)
//! ```
//!
//! The joint attention gathers each sample's image and context Q|K|V rows into one buffer and
//! splits the output back (copies: the attention kernels read one source today).

use super::super::no_context_write;
use super::{Scratch, StreamScratch};
use crate::backend::{Activation, AttentionShape, CacheWrite, ColSlice};
use crate::model::layers::branch;
use crate::model::{BranchIo, Linear, Loader, ModelConfig};
use crate::{Backend, Result, Tensor};

/// Rows of AdaLayerNormZero's modulation (SD35AdaLayerNormZeroX adds the last three).
pub const SHIFT_MSA: usize = 0;
pub const SCALE_MSA: usize = 1;
pub const GATE_MSA: usize = 2;
pub const SHIFT_MLP: usize = 3;
pub const SCALE_MLP: usize = 4;
pub const GATE_MLP: usize = 5;
pub const SHIFT_MSA2: usize = 6;
pub const SCALE_MSA2: usize = 7;
pub const GATE_MSA2: usize = 8;

const EPS: f32 = 1e-6;

/// Q|K|V of one attention, its optional per-head RMS weights of Q and K, and its output.
struct Attn<B: Backend> {
    qkv: Linear<B>,
    qk_norm: Option<(Tensor<B>, Tensor<B>)>,
}

impl<B: Backend> Attn<B> {
    fn load(l: &Loader<'_, B>, cfg: &ModelConfig, proj: [&str; 3], norms: [&str; 2]) -> Result<Self> {
        let d = cfg.inner_dim();
        let qkv = l.fused_linear(&proj, d, d, true)?;
        let qk_norm = if cfg.qk_norm {
            let hd = cfg.attention_head_dim;
            Some((l.tensor(&format!("{}.weight", norms[0]), &[hd])?, l.tensor(&format!("{}.weight", norms[1]), &[hd])?))
        } else {
            None
        };
        Ok(Attn { qkv, qk_norm })
    }

    /// qkv = [Q | K | V](x), with Q and K RMS-normalised per head where the model asks.
    fn project(&self, be: &B, cfg: &ModelConfig, x: &Tensor<B>, qkv: &mut Tensor<B>) -> Result<()> {
        be.linear(x, &self.qkv.w, self.qkv.b.as_ref(), Activation::None, qkv)?;
        if let Some((wq, wk)) = &self.qk_norm {
            let (h, hd, d) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.inner_dim());
            be.qk_norm(qkv, 0, d, h, hd, wq, wk, EPS)?;
        }
        Ok(())
    }
}

/// A feed-forward: Linear(D, 4D) → GELU(tanh) → Linear(4D, D).
struct Ff<B: Backend> {
    l1: Linear<B>,
    l2: Linear<B>,
}

impl<B: Backend> Ff<B> {
    fn load(l: &Loader<'_, B>, prefix: &str, d: usize) -> Result<Self> {
        Ok(Ff {
            l1: l.linear(&format!("{prefix}.net.0.proj"), 4 * d, d, true)?,
            l2: l.linear(&format!("{prefix}.net.2"), d, 4 * d, true)?,
        })
    }
}

/// The context side of a block that updates the context (every block but the last).
struct ContextUpdate<B: Backend> {
    to_add_out: Linear<B>,
    ff: Ff<B>,
}

pub struct JointBlock<B: Backend> {
    /// norm1.linear: [6D or 9D, D]
    norm1: Linear<B>,
    /// norm1_context.linear: [6D, D], or [2D, D] (AdaLayerNormContinuous) in the last block
    norm1_context: Linear<B>,
    attn: Attn<B>,
    add: Attn<B>,
    to_out: Linear<B>,
    /// MMDiT-X: the image-only attention and its output projection
    attn2: Option<(Attn<B>, Linear<B>)>,
    ff: Ff<B>,
    /// None in the last (context-pre-only) block
    context: Option<ContextUpdate<B>>,
}

/// FORA slots: image attention, [image attn2,] image MLP, [context attention, context MLP].
const SLOT_ATTN: usize = 0;

impl<B: Backend> JointBlock<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig, i: usize, last: bool, dual: bool) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = format!("transformer_blocks.{i}");
        let a = format!("{p}.attn");
        let attn = Attn::load(
            l,
            cfg,
            [&format!("{a}.to_q"), &format!("{a}.to_k"), &format!("{a}.to_v")],
            [&format!("{a}.norm_q"), &format!("{a}.norm_k")],
        )?;
        let add = Attn::load(
            l,
            cfg,
            [&format!("{a}.add_q_proj"), &format!("{a}.add_k_proj"), &format!("{a}.add_v_proj")],
            [&format!("{a}.norm_added_q"), &format!("{a}.norm_added_k")],
        )?;
        let attn2 = if dual {
            let a2 = format!("{p}.attn2");
            Some((
                Attn::load(
                    l,
                    cfg,
                    [&format!("{a2}.to_q"), &format!("{a2}.to_k"), &format!("{a2}.to_v")],
                    [&format!("{a2}.norm_q"), &format!("{a2}.norm_k")],
                )?,
                l.linear(&format!("{a2}.to_out.0"), d, d, true)?,
            ))
        } else {
            None
        };
        let context = if last {
            None
        } else {
            Some(ContextUpdate {
                to_add_out: l.linear(&format!("{a}.to_add_out"), d, d, true)?,
                ff: Ff::load(l, &format!("{p}.ff_context"), d)?,
            })
        };
        let chunks = if dual { 9 } else { 6 };
        Ok(JointBlock {
            norm1: l.linear(&format!("{p}.norm1.linear"), chunks * d, d, true)?,
            norm1_context: l.linear(&format!("{p}.norm1_context.linear"), if last { 2 } else { 6 } * d, d, true)?,
            attn,
            add,
            to_out: l.linear(&format!("{a}.to_out.0"), d, d, true)?,
            attn2,
            ff: Ff::load(l, &format!("{p}.ff"), d)?,
            context,
        })
    }

    fn slot_ff(&self) -> usize {
        SLOT_ATTN + 1 + usize::from(self.attn2.is_some())
    }

    /// The stream of each FORA slot.
    pub fn branch_slots(&self) -> Vec<usize> {
        let mut v = vec![0; self.slot_ff() + 1];
        if self.context.is_some() {
            v.extend([1, 1]);
        }
        v
    }

    /// The image modulation rows of this block (6 or 9 chunks) computed from `cond_silu` into
    /// the buffer of that width.
    fn image_mod<'s>(
        &self,
        be: &B,
        cond_silu: &Tensor<B>,
        mod6: &'s mut Tensor<B>,
        mod9: &'s mut Tensor<B>,
    ) -> Result<&'s Tensor<B>> {
        let m = if self.attn2.is_some() { mod9 } else { mod6 };
        be.linear(cond_silu, &self.norm1.w, self.norm1.b.as_ref(), Activation::None, m)?;
        Ok(m)
    }

    /// Block 0's input modulation for the cache probes: its image modulation rows.
    pub fn modulate_image<'s>(&self, be: &B, s: &'s mut Scratch<B>) -> Result<&'s Tensor<B>> {
        self.image_mod(be, &s.cond_silu, &mut s.mod6, &mut s.mod9)
    }

    /// Runs the block on the streams `h` (image) and `c` (context) in place; `w_img` and
    /// `w_ctx` are fused into each stream's last residual update.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        cfg: &ModelConfig,
        (h, c): (&mut Tensor<B>, &mut Tensor<B>),
        s: &mut Scratch<B>,
        (batch, tokens): (usize, usize),
        (w_img, w_ctx): (CacheWrite<'_, B>, CacheWrite<'_, B>),
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        let Scratch {
            cond_silu,
            mod6,
            mod9,
            mod_ctx,
            mod_ctx_last,
            img,
            ctx: cs,
            norm2,
            joint_qkv,
            joint_out,
            text_len,
            ..
        } = s;
        let m_img = self.image_mod(be, cond_silu, mod6, mod9)?;
        let m_ctx: &mut Tensor<B> = if self.context.is_some() { mod_ctx } else { mod_ctx_last };
        let nc = &self.norm1_context;
        be.linear(cond_silu, &nc.w, nc.b.as_ref(), Activation::None, m_ctx)?;
        let m_ctx = &*m_ctx;
        let dual = self.attn2.is_some();
        let slot_ff = self.slot_ff();

        if let BranchIo::Reuse(cache) = &io {
            cache.residual(be, h, SLOT_ATTN, Some((m_img, GATE_MSA)), CacheWrite::None)?;
            if dual {
                cache.residual(be, h, SLOT_ATTN + 1, Some((m_img, GATE_MSA2)), CacheWrite::None)?;
            }
            cache.residual(be, h, slot_ff, Some((m_img, GATE_MLP)), w_img)?;
            return match self.context {
                Some(_) => {
                    cache.residual(be, c, slot_ff + 1, Some((m_ctx, GATE_MSA)), CacheWrite::None)?;
                    cache.residual(be, c, slot_ff + 2, Some((m_ctx, GATE_MLP)), w_ctx)
                }
                None => no_context_write(w_ctx),
            };
        }
        let mut io = io;
        let (heads, hd, d) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.inner_dim());
        let (n, l) = (tokens, *text_len);
        let scale = (hd as f32).powf(-0.5);

        // Both streams' modulated inputs (the second image one from the same h, before any update).
        be.norm_modulate(h, m_img, SHIFT_MSA, SCALE_MSA, EPS, &mut img.norm)?;
        if dual {
            be.norm_modulate(h, m_img, SHIFT_MSA2, SCALE_MSA2, EPS, norm2)?;
        }
        match self.context {
            Some(_) => be.norm_modulate(c, m_ctx, SHIFT_MSA, SCALE_MSA, EPS, &mut cs.norm)?,
            // AdaLayerNormContinuous: chunks (scale, shift)
            None => be.norm_modulate(c, m_ctx, 1, 0, EPS, &mut cs.norm)?,
        }
        self.attn.project(be, cfg, &img.norm, &mut img.qkv)?;
        self.add.project(be, cfg, &cs.norm, &mut cs.qkv)?;
        joint_attention(be, (batch, n, l, d), (heads, hd, scale), (img, cs), joint_qkv, joint_out)?;

        // Image stream.
        branch(
            be,
            &self.to_out,
            &img.attn,
            io.slot(SLOT_ATTN, &mut img.proj)?,
            h,
            Some((m_img, GATE_MSA)),
            CacheWrite::None,
        )?;
        if let Some((a2, out2)) = &self.attn2 {
            a2.project(be, cfg, norm2, &mut img.qkv)?;
            let shape = AttentionShape { batch, heads, head_dim: hd, nq: n, nk: n, scale };
            let q = &img.qkv;
            be.attention(
                &shape,
                ColSlice::new(q, 0),
                ColSlice::new(q, d),
                ColSlice::new(q, 2 * d),
                None,
                &mut img.attn,
            )?;
            let slot = io.slot(SLOT_ATTN + 1, &mut img.proj)?;
            branch(be, out2, &img.attn, slot, h, Some((m_img, GATE_MSA2)), CacheWrite::None)?;
        }
        be.norm_modulate(h, m_img, SHIFT_MLP, SCALE_MLP, EPS, &mut img.norm)?;
        be.linear(&img.norm, &self.ff.l1.w, self.ff.l1.b.as_ref(), Activation::GeluTanh, &mut img.ff)?;
        branch(be, &self.ff.l2, &img.ff, io.slot(slot_ff, &mut img.proj)?, h, Some((m_img, GATE_MLP)), w_img)?;

        // Context stream (not updated by the last block).
        let Some(cu) = &self.context else { return no_context_write(w_ctx) };
        let slot = io.slot(slot_ff + 1, &mut cs.proj)?;
        branch(be, &cu.to_add_out, &cs.attn, slot, c, Some((m_ctx, GATE_MSA)), CacheWrite::None)?;
        be.norm_modulate(c, m_ctx, SHIFT_MLP, SCALE_MLP, EPS, &mut cs.norm)?;
        be.linear(&cs.norm, &cu.ff.l1.w, cu.ff.l1.b.as_ref(), Activation::GeluTanh, &mut cs.ff)?;
        branch(be, &cu.ff.l2, &cs.ff, io.slot(slot_ff + 2, &mut cs.proj)?, c, Some((m_ctx, GATE_MLP)), w_ctx)
    }
}

/// Attention over the concatenation [image tokens, context tokens] of each sample: the streams'
/// Q|K|V rows gathered into `joint_qkv`, attended, and the output split back into each stream's
/// `attn` (the context part only where the caller reads it, i.e. always here).
fn joint_attention<B: Backend>(
    be: &B,
    (batch, n, l, d): (usize, usize, usize, usize),
    (heads, hd, scale): (usize, usize, f32),
    (img, cs): (&mut StreamScratch<B>, &mut StreamScratch<B>),
    joint_qkv: &mut Tensor<B>,
    joint_out: &mut Tensor<B>,
) -> Result<()> {
    let (w3, j) = (3 * d, n + l);
    for b in 0..batch {
        be.copy_range(&img.qkv, b * n * w3, joint_qkv, b * j * w3, n * w3)?;
        be.copy_range(&cs.qkv, b * l * w3, joint_qkv, (b * j + n) * w3, l * w3)?;
    }
    let shape = AttentionShape { batch, heads, head_dim: hd, nq: j, nk: j, scale };
    let q = &*joint_qkv;
    be.attention(&shape, ColSlice::new(q, 0), ColSlice::new(q, d), ColSlice::new(q, 2 * d), None, joint_out)?;
    for b in 0..batch {
        be.copy_range(joint_out, b * j * d, &mut img.attn, b * n * d, n * d)?;
        be.copy_range(joint_out, (b * j + n) * d, &mut cs.attn, b * l * d, l * d)?;
    }
    Ok(())
}
