//! FLUX's two kinds of block (diffusers `FluxTransformerBlock`, `FluxSingleTransformerBlock`
//! with `FluxAttnProcessor`), both on the image stream `h` and the context stream `c`:
//!
//! ```text
//! double: n_h = LN(h)·(1 + scale_msa) + shift_msa ; n_c likewise with norm1_context
//!         q, k, v = to_q/k/v(n_h) | add_q/k/v_proj(n_c), RMS qk norm per head, RoPE (fused op)
//!         a_c, a_h = split(attention over [context, image])
//!         h += gate_msa·to_out(a_h) ; h += gate_mlp·FF(LN(h)·(1 + scale_mlp) + shift_mlp)
//!         c += c_gate_msa·to_add_out(a_c) ; c += c_gate_mlp·FF_c(LN(c)·(1 + c_scale_mlp) + c_shift_mlp)
//! single: n = LN(s)·(1 + scale) + shift                     (AdaLayerNormZeroSingle, s = [c, h])
//!         a = attention(to_q/k/v(n), qk norm, RoPE) ; m = GELU_tanh(proj_mlp(n))
//!         s += gate·proj_out([a, m])
//! ```
//!
//! The single block runs row-wise on each stream. to_q, to_k, to_v and proj_mlp are stacked at
//! load into one `[3D + M, D]` weight (M = 4D, the MLP width), so one GEMM gives each row's
//! `[Q | K | V | MLP input]` (`[T, 3D + M]`); the RMS norm and RoPE run on Q and K in place, the
//! joint attention gathers only the Q|K|V columns, GELU runs on the MLP columns in place, and
//! proj_out([a, m]) = a·W_aᵀ + b + m·W_mᵀ, with proj_out's weight split by columns into W_a [D, D]
//! and W_m [D, M], reads m in place from the MLP columns (row stride 3D + M): no concatenation.

use super::super::no_context_write;
use super::{Scratch, StreamScratch};
use crate::backend::{Activation, AttentionShape, CacheWrite, ColSlice, Rope};
use crate::model::layers::branch;
use crate::model::{BranchIo, Linear, Loader, ModelConfig};
use crate::{Backend, Result, Tensor};

/// Rows of AdaLayerNormZero's modulation (AdaLayerNormZeroSingle: the first three).
pub const SHIFT_MSA: usize = 0;
pub const SCALE_MSA: usize = 1;
pub const GATE_MSA: usize = 2;
pub const SHIFT_MLP: usize = 3;
pub const SCALE_MLP: usize = 4;
pub const GATE_MLP: usize = 5;

const EPS: f32 = 1e-6;

/// Fused Q|K|V with the per-head RMS weights of Q and K.
struct Attn<B: Backend> {
    qkv: Linear<B>,
    wq: Tensor<B>,
    wk: Tensor<B>,
}

impl<B: Backend> Attn<B> {
    fn load(l: &Loader<'_, B>, cfg: &ModelConfig, proj: [&str; 3], norms: [&str; 2]) -> Result<Self> {
        let (d, hd) = (cfg.inner_dim(), cfg.attention_head_dim);
        Ok(Attn {
            qkv: l.fused_linear(&proj, d, d, true)?,
            wq: l.tensor(&format!("{}.weight", norms[0]), &[hd])?,
            wk: l.tensor(&format!("{}.weight", norms[1]), &[hd])?,
        })
    }

    /// qkv = [Q | K | V](x), Q and K RMS-normalised per head and rotated at the positions
    /// `offset + r % tokens` of the run's RoPE table.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        be: &B,
        cfg: &ModelConfig,
        x: &Tensor<B>,
        qkv: &mut Tensor<B>,
        table: &Tensor<B>,
        tokens: usize,
        offset: usize,
    ) -> Result<()> {
        be.linear(x, &self.qkv.w, self.qkv.b.as_ref(), Activation::None, qkv)?;
        let (h, hd, d) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.inner_dim());
        be.qk_norm_rope(qkv, 0, d, h, hd, &self.wq, &self.wk, EPS, Rope { table, tokens, offset })
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

pub struct DoubleBlock<B: Backend> {
    norm1: Linear<B>,
    norm1_context: Linear<B>,
    attn: Attn<B>,
    add: Attn<B>,
    to_out: Linear<B>,
    to_add_out: Linear<B>,
    ff: Ff<B>,
    ff_context: Ff<B>,
}

/// FORA slots of a double block: image attention, image MLP, context attention, context MLP.
const SLOT_ATTN: usize = 0;
const SLOT_FF: usize = 1;
const SLOT_C_ATTN: usize = 2;
const SLOT_C_FF: usize = 3;

impl<B: Backend> DoubleBlock<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig, i: usize) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = format!("transformer_blocks.{i}");
        let a = format!("{p}.attn");
        Ok(DoubleBlock {
            norm1: l.linear(&format!("{p}.norm1.linear"), 6 * d, d, true)?,
            norm1_context: l.linear(&format!("{p}.norm1_context.linear"), 6 * d, d, true)?,
            attn: Attn::load(
                l,
                cfg,
                [&format!("{a}.to_q"), &format!("{a}.to_k"), &format!("{a}.to_v")],
                [&format!("{a}.norm_q"), &format!("{a}.norm_k")],
            )?,
            add: Attn::load(
                l,
                cfg,
                [&format!("{a}.add_q_proj"), &format!("{a}.add_k_proj"), &format!("{a}.add_v_proj")],
                [&format!("{a}.norm_added_q"), &format!("{a}.norm_added_k")],
            )?,
            to_out: l.linear(&format!("{a}.to_out.0"), d, d, true)?,
            to_add_out: l.linear(&format!("{a}.to_add_out"), d, d, true)?,
            ff: Ff::load(l, &format!("{p}.ff"), d)?,
            ff_context: Ff::load(l, &format!("{p}.ff_context"), d)?,
        })
    }

    /// Block 0's image modulation rows for the cache probes.
    pub fn modulate_image<'s>(&self, be: &B, s: &'s mut Scratch<B>) -> Result<&'s Tensor<B>> {
        be.linear(&s.cond_silu, &self.norm1.w, self.norm1.b.as_ref(), Activation::None, &mut s.mod_img)?;
        Ok(&s.mod_img)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        cfg: &ModelConfig,
        (h, c): (&mut Tensor<B>, &mut Tensor<B>),
        s: &mut Scratch<B>,
        rope: &Tensor<B>,
        (batch, tokens): (usize, usize),
        (w_img, w_ctx): (CacheWrite<'_, B>, CacheWrite<'_, B>),
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        let Scratch { cond_silu, mod_img, mod_ctx, img, ctx: cs, joint_qkv, joint_out, text_len, .. } = s;
        be.linear(cond_silu, &self.norm1.w, self.norm1.b.as_ref(), Activation::None, mod_img)?;
        let nc = &self.norm1_context;
        be.linear(cond_silu, &nc.w, nc.b.as_ref(), Activation::None, mod_ctx)?;
        let (m_img, m_ctx) = (&*mod_img, &*mod_ctx);

        if let BranchIo::Reuse(cache) = &io {
            cache.residual(be, h, SLOT_ATTN, Some((m_img, GATE_MSA)), CacheWrite::None)?;
            cache.residual(be, h, SLOT_FF, Some((m_img, GATE_MLP)), w_img)?;
            cache.residual(be, c, SLOT_C_ATTN, Some((m_ctx, GATE_MSA)), CacheWrite::None)?;
            return cache.residual(be, c, SLOT_C_FF, Some((m_ctx, GATE_MLP)), w_ctx);
        }
        let mut io = io;
        let d = cfg.inner_dim();
        let (n, l) = (tokens, *text_len);

        be.norm_modulate(h, m_img, SHIFT_MSA, SCALE_MSA, EPS, &mut img.norm)?;
        be.norm_modulate(c, m_ctx, SHIFT_MSA, SCALE_MSA, EPS, &mut cs.norm)?;
        // RoPE positions: the context first (0..L), then the image (L..L + N)
        self.attn.project(be, cfg, &img.norm, &mut img.qkv, rope, n, l)?;
        self.add.project(be, cfg, &cs.norm, &mut cs.qkv, rope, l, 0)?;
        let (src, attn) = ((&img.qkv, &cs.qkv), (&mut img.attn, &mut cs.attn));
        joint_attention(be, cfg, (batch, n, l, d), src, attn, joint_qkv, joint_out)?;

        // Image stream.
        let slot = io.slot(SLOT_ATTN, &mut img.proj)?;
        branch(be, &self.to_out, &img.attn, slot, h, Some((m_img, GATE_MSA)), CacheWrite::None)?;
        be.norm_modulate(h, m_img, SHIFT_MLP, SCALE_MLP, EPS, &mut img.norm)?;
        be.linear(&img.norm, &self.ff.l1.w, self.ff.l1.b.as_ref(), Activation::GeluTanh, &mut img.ff)?;
        branch(be, &self.ff.l2, &img.ff, io.slot(SLOT_FF, &mut img.proj)?, h, Some((m_img, GATE_MLP)), w_img)?;

        // Context stream.
        let slot = io.slot(SLOT_C_ATTN, &mut cs.proj)?;
        branch(be, &self.to_add_out, &cs.attn, slot, c, Some((m_ctx, GATE_MSA)), CacheWrite::None)?;
        be.norm_modulate(c, m_ctx, SHIFT_MLP, SCALE_MLP, EPS, &mut cs.norm)?;
        let fc = &self.ff_context;
        be.linear(&cs.norm, &fc.l1.w, fc.l1.b.as_ref(), Activation::GeluTanh, &mut cs.ff)?;
        branch(be, &fc.l2, &cs.ff, io.slot(SLOT_C_FF, &mut cs.proj)?, c, Some((m_ctx, GATE_MLP)), w_ctx)
    }
}

pub struct SingleBlock<B: Backend> {
    /// norm.linear: [3D, D] (shift, scale, gate)
    norm: Linear<B>,
    /// to_q | to_k | to_v | proj_mlp stacked: [3D + M, D] with their biases
    proj: Linear<B>,
    /// the per-head RMS weights of Q and K
    wq: Tensor<B>,
    wk: Tensor<B>,
    /// proj_out's attention columns [D, D] with its bias
    out_attn: Linear<B>,
    /// proj_out's MLP columns [D, 4D], no bias
    out_mlp: Linear<B>,
    /// the last block: the context is not read after it, so it is not updated
    last: bool,
}

impl<B: Backend> SingleBlock<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig, j: usize, last: bool) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = format!("single_transformer_blocks.{j}");
        let a = format!("{p}.attn");
        let w = l.get(&format!("{p}.proj_out.weight"), &[d, 5 * d])?;
        let (mut wa, mut wm) = (Vec::with_capacity(d * d), Vec::with_capacity(4 * d * d));
        for row in w.chunks_exact(5 * d) {
            wa.extend_from_slice(&row[..d]);
            wm.extend_from_slice(&row[d..]);
        }
        let dt = l.backend.act_dtype();
        Ok(SingleBlock {
            norm: l.linear(&format!("{p}.norm.linear"), 3 * d, d, true)?,
            proj: l.stacked_linear(
                &[
                    (&format!("{a}.to_q"), d),
                    (&format!("{a}.to_k"), d),
                    (&format!("{a}.to_v"), d),
                    (&format!("{p}.proj_mlp"), 4 * d),
                ],
                d,
                true,
            )?,
            wq: l.tensor(&format!("{a}.norm_q.weight"), &[cfg.attention_head_dim])?,
            wk: l.tensor(&format!("{a}.norm_k.weight"), &[cfg.attention_head_dim])?,
            out_attn: Linear {
                w: l.backend.upload(&wa, &[d, d], dt)?,
                b: Some(l.tensor(&format!("{p}.proj_out.bias"), &[d])?),
            },
            out_mlp: Linear { w: l.backend.upload(&wm, &[d, 4 * d], dt)?, b: None },
            last,
        })
    }

    /// The stream of each FORA slot: the gated proj_out output of each stream updated.
    pub fn branch_slots(&self) -> Vec<usize> {
        if self.last {
            vec![0]
        } else {
            vec![0, 1]
        }
    }

    /// This block's modulation rows (shift, scale, gate) into the scratch.
    pub fn modulation<'s>(&self, be: &B, s: &'s mut Scratch<B>) -> Result<&'s Tensor<B>> {
        be.linear(&s.cond_silu, &self.norm.w, self.norm.b.as_ref(), Activation::None, &mut s.mod_single)?;
        Ok(&s.mod_single)
    }

    /// n and `st.fused = [Q | K | V | GELU(proj_mlp(n))]` of one stream from one GEMM, Q and K
    /// normed and rotated in place, the GELU on the MLP columns in place.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        be: &B,
        cfg: &ModelConfig,
        x: &Tensor<B>,
        m: &Tensor<B>,
        st: &mut StreamScratch<B>,
        rope: &Tensor<B>,
        tokens: usize,
        offset: usize,
    ) -> Result<()> {
        let (h, hd, d) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.inner_dim());
        be.norm_modulate(x, m, SHIFT_MSA, SCALE_MSA, EPS, &mut st.norm)?;
        be.linear(&st.norm, &self.proj.w, self.proj.b.as_ref(), Activation::None, &mut st.fused)?;
        let rope = Rope { table: rope, tokens, offset };
        be.qk_norm_rope(&mut st.fused, 0, d, h, hd, &self.wq, &self.wk, EPS, rope)?;
        let mlp = self.proj.out_features() - 3 * d;
        be.activation_cols(&mut st.fused, 3 * d, mlp, Activation::GeluTanh)
    }

    /// proj_out([a, m]) into `out` (the branch output before its gate): the attention half
    /// with the bias, plus the MLP half reading m in place from the MLP columns of `fused`.
    fn project_out(
        &self,
        be: &B,
        d: usize,
        a: &Tensor<B>,
        fused: &Tensor<B>,
        part: &mut Tensor<B>,
        out: &mut Tensor<B>,
    ) -> Result<()> {
        be.linear(a, &self.out_attn.w, self.out_attn.b.as_ref(), Activation::None, out)?;
        be.linear_cols(ColSlice::new(fused, 3 * d), &self.out_mlp.w, None, Activation::None, part)?;
        be.residual(out, part, None, CacheWrite::None)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        cfg: &ModelConfig,
        (h, c): (&mut Tensor<B>, &mut Tensor<B>),
        s: &mut Scratch<B>,
        rope: &Tensor<B>,
        (batch, tokens): (usize, usize),
        (w_img, w_ctx): (CacheWrite<'_, B>, CacheWrite<'_, B>),
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        let Scratch { cond_silu, mod_single, img, ctx: cs, joint_qkv, joint_out, text_len, .. } = s;
        be.linear(cond_silu, &self.norm.w, self.norm.b.as_ref(), Activation::None, mod_single)?;
        let m = &*mod_single;
        if let BranchIo::Reuse(cache) = &io {
            cache.residual(be, h, 0, Some((m, GATE_MSA)), w_img)?;
            return match self.last {
                false => cache.residual(be, c, 1, Some((m, GATE_MSA)), w_ctx),
                true => no_context_write(w_ctx),
            };
        }
        let mut io = io;
        let d = cfg.inner_dim();
        let (n, l) = (tokens, *text_len);
        self.prepare(be, cfg, h, m, img, rope, n, l)?;
        self.prepare(be, cfg, c, m, cs, rope, l, 0)?;
        let (src, attn) = ((&img.fused, &cs.fused), (&mut img.attn, &mut cs.attn));
        joint_attention(be, cfg, (batch, n, l, d), src, attn, joint_qkv, joint_out)?;

        let out = io.slot(0, &mut img.proj)?;
        self.project_out(be, d, &img.attn, &img.fused, &mut img.proj2, out)?;
        be.residual(h, out, Some((m, GATE_MSA)), w_img)?;
        if self.last {
            return no_context_write(w_ctx);
        }
        let out = io.slot(1, &mut cs.proj)?;
        self.project_out(be, d, &cs.attn, &cs.fused, &mut cs.proj2, out)?;
        be.residual(c, out, Some((m, GATE_MSA)), w_ctx)
    }
}

/// Attention over the concatenation [context tokens, image tokens] of each sample: the first
/// 3D columns (Q|K|V) of the streams' projection outputs `src` (image, context; as wide as the
/// block lays them out) gathered into `joint_qkv`, attended, and the output split back into each
/// stream's attention output `attn` (image, context).
#[allow(clippy::too_many_arguments)]
fn joint_attention<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    (batch, n, l, d): (usize, usize, usize, usize),
    (img_src, ctx_src): (&Tensor<B>, &Tensor<B>),
    (img_attn, ctx_attn): (&mut Tensor<B>, &mut Tensor<B>),
    joint_qkv: &mut Tensor<B>,
    joint_out: &mut Tensor<B>,
) -> Result<()> {
    let (heads, hd) = (cfg.num_attention_heads, cfg.attention_head_dim);
    let scale = (hd as f32).powf(-0.5);
    let (w3, j) = (3 * d, n + l);
    for b in 0..batch {
        for (src, rows, row, at) in [(ctx_src, l, b * l, b * j), (img_src, n, b * n, b * j + l)] {
            if src.cols() == w3 {
                // contiguous rows: one plain copy
                be.copy_range(src, row * w3, joint_qkv, at * w3, rows * w3)?;
            } else {
                be.copy_rows(src, (row, 0), joint_qkv, (at, 0), (rows, w3))?;
            }
        }
    }
    let shape = AttentionShape { batch, heads, head_dim: hd, nq: j, nk: j, scale };
    let q = &*joint_qkv;
    be.attention(&shape, ColSlice::new(q, 0), ColSlice::new(q, d), ColSlice::new(q, 2 * d), None, joint_out)?;
    for b in 0..batch {
        be.copy_range(joint_out, b * j * d, ctx_attn, b * l * d, l * d)?;
        be.copy_range(joint_out, (b * j + l) * d, img_attn, b * n * d, n * d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SingleBlock;
    use crate::backend::cpu::Cpu;
    use crate::model::{Loader, ModelConfig, RandomWeights};

    /// The single block's Q, K, V and MLP input come from one GEMM: to_q, to_k, to_v and
    /// proj_mlp are loaded as one stacked `[3D + 4D, D]` weight and nothing else projects the
    /// normalised input before attention (the block holds no other input projection).
    #[test]
    fn single_block_projects_q_k_v_and_mlp_with_one_gemm() {
        let cfg = ModelConfig::from_json_str(
            r#"{"_class_name": "FluxTransformer2DModel", "num_attention_heads": 2, "attention_head_dim": 8,
                "in_channels": 4, "num_layers": 1, "num_single_layers": 1, "joint_attention_dim": 8,
                "pooled_projection_dim": 8, "axes_dims_rope": [2, 2, 4]}"#,
        )
        .unwrap();
        let be = Cpu::default();
        let src = RandomWeights { seed: 1 };
        let l = Loader { backend: &be, source: &src };
        let blk = SingleBlock::load(&l, &cfg, 0, true).unwrap();
        let d = cfg.inner_dim();
        assert_eq!(blk.proj.w.shape(), &[3 * d + 4 * d, d]);
        assert_eq!(blk.proj.b.as_ref().map(|b| b.shape().to_vec()), Some(vec![7 * d]));
    }
}
