//! One transformer block (diffusers BasicTransformerBlock with adaLN-single or adaLN-Zero), as
//! MODEL_SPEC.md §2.4 and §4.3 write it:
//!
//! ```text
//! n = LN(x)·(1 + scale_msa) + shift_msa;   x = x + gate_msa ⊙ attn1(n)
//! x = x + attn2(x, text, bias)                              (PixArt only: no norm, no gate)
//! n = LN(x)·(1 + scale_mlp) + shift_mlp;   x = x + gate_mlp ⊙ ff(n)
//! ```

use super::Scratch;
use crate::backend::{Activation, AttentionShape, CacheWrite, ColSlice};
use crate::model::layers::branch;
use crate::model::{BranchIo, Family, Linear, Loader, ModelConfig};
use crate::{Backend, Result, Tensor};

/// Rows of the per-block modulation vectors.
pub const SHIFT_MSA: usize = 0;
pub const SCALE_MSA: usize = 1;
pub const GATE_MSA: usize = 2;
pub const SHIFT_MLP: usize = 3;
pub const SCALE_MLP: usize = 4;
pub const GATE_MLP: usize = 5;

/// How a block's six modulation vectors are made.
pub enum Modulation<B: Backend> {
    /// PixArt: `scale_shift_table [6, D]` + the shared timestep projection.
    Table(Tensor<B>),
    /// DiT: `norm1.linear(SiLU(emb))` per block, with the block's embedder index.
    AdaLnZero(Linear<B>, usize),
}

pub struct Block<B: Backend> {
    pub modulation: Modulation<B>,
    /// to_q | to_k | to_v stacked: one GEMM, [3D, D].
    pub qkv: Linear<B>,
    pub attn_out: Linear<B>,
    /// PixArt cross-attention: to_q [D, D] and to_out [D, D]; to_k | to_v live in the per-run
    /// context (the text is the same on every step).
    pub cross: Option<(Linear<B>, Linear<B>)>,
    /// attn2.to_k | to_v stacked, [2D, cross_attention_dim]; applied once per run.
    pub cross_kv: Option<Linear<B>>,
    pub ff1: Linear<B>,
    pub ff2: Linear<B>,
}

/// A block's view of the per-run text: its K|V projection [batch·L, 2D], the f32 key bias and L.
pub struct CrossKv<'a, B: Backend> {
    pub kv: &'a Tensor<B>,
    pub bias: Option<&'a Tensor<B>>,
    pub text_len: usize,
}

impl<B: Backend> Block<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig, i: usize, embedder: usize) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = format!("transformer_blocks.{i}");
        let bias = cfg.attention_bias;
        let modulation = match cfg.family {
            Family::DiT => Modulation::AdaLnZero(l.linear(&format!("{p}.norm1.linear"), 6 * d, d, true)?, embedder),
            _ => Modulation::Table(l.tensor(&format!("{p}.scale_shift_table"), &[6, d])?),
        };
        let qkv = l.fused_linear(
            &[&format!("{p}.attn1.to_q"), &format!("{p}.attn1.to_k"), &format!("{p}.attn1.to_v")],
            d,
            d,
            bias,
        )?;
        let attn_out = l.linear(&format!("{p}.attn1.to_out.0"), d, d, true)?;
        let (cross, cross_kv) = match cfg.cross_attention_dim {
            Some(c) => (
                Some((
                    l.linear(&format!("{p}.attn2.to_q"), d, d, bias)?,
                    l.linear(&format!("{p}.attn2.to_out.0"), d, d, true)?,
                )),
                Some(l.fused_linear(&[&format!("{p}.attn2.to_k"), &format!("{p}.attn2.to_v")], d, c, bias)?),
            ),
            None => (None, None),
        };
        Ok(Block {
            modulation,
            qkv,
            attn_out,
            cross,
            cross_kv,
            ff1: l.linear(&format!("{p}.ff.net.0.proj"), 4 * d, d, true)?,
            ff2: l.linear(&format!("{p}.ff.net.2"), d, 4 * d, true)?,
        })
    }

    /// The block's modulation vectors into `s.modv` `[batch, 6D]`.
    pub fn modulate(&self, be: &B, s: &mut Scratch<B>) -> Result<()> {
        let ws = s;
        match &self.modulation {
            Modulation::Table(table) => {
                be.copy(&ws.tmod, &mut ws.modv)?;
                be.add_bcast(&mut ws.modv, table)
            }
            Modulation::AdaLnZero(lin, e) => {
                be.linear(&ws.cond_silu[*e], &lin.w, lin.b.as_ref(), Activation::None, &mut ws.modv)
            }
        }
    }

    /// Runs the block on the image stream `x` in place. `tap` is fused into the last residual
    /// update.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        cfg: &ModelConfig,
        x: &mut Tensor<B>,
        ws: &mut Scratch<B>,
        (batch, tokens): (usize, usize),
        cross_kv: Option<CrossKv<'_, B>>,
        tap: CacheWrite<'_, B>,
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        self.modulate(be, ws)?;
        let eps1 = match cfg.family {
            Family::DiT => 1e-6, // AdaLayerNormZero hard-codes it
            _ => cfg.norm_eps,
        };
        if let BranchIo::Reuse(c) = &io {
            c.residual(be, x, SLOT_ATTN, Some((&ws.modv, GATE_MSA)), CacheWrite::None)?;
            if self.cross.is_some() {
                c.residual(be, x, SLOT_CROSS, None, CacheWrite::None)?;
            }
            return c.residual(be, x, self.slot_ff(), Some((&ws.modv, GATE_MLP)), tap);
        }
        let (heads, hd) = (cfg.num_attention_heads, cfg.attention_head_dim);
        let d = cfg.inner_dim();
        let scale = (hd as f32).powf(-0.5);
        let mut io = io;

        // Self-attention.
        be.norm_modulate(x, &ws.modv, SHIFT_MSA, SCALE_MSA, eps1, &mut ws.norm)?;
        be.linear(&ws.norm, &self.qkv.w, self.qkv.b.as_ref(), Activation::None, &mut ws.qkv)?;
        let shape = AttentionShape { batch, heads, head_dim: hd, nq: tokens, nk: tokens, scale };
        be.attention(
            &shape,
            ColSlice::new(&ws.qkv, 0),
            ColSlice::new(&ws.qkv, d),
            ColSlice::new(&ws.qkv, 2 * d),
            None,
            &mut ws.attn,
        )?;
        let gate = Some((&ws.modv, GATE_MSA));
        branch(be, &self.attn_out, &ws.attn, io.slot(SLOT_ATTN, &mut ws.proj)?, x, gate, CacheWrite::None)?;

        // Cross-attention to the text (no norm, no gate).
        if let (Some((to_q, to_out)), Some(CrossKv { kv, bias, text_len })) = (&self.cross, cross_kv) {
            be.linear(x, &to_q.w, to_q.b.as_ref(), Activation::None, &mut ws.norm)?;
            let shape = AttentionShape { batch, heads, head_dim: hd, nq: tokens, nk: text_len, scale };
            be.attention(
                &shape,
                ColSlice::new(&ws.norm, 0),
                ColSlice::new(kv, 0),
                ColSlice::new(kv, d),
                bias,
                &mut ws.attn,
            )?;
            branch(be, to_out, &ws.attn, io.slot(SLOT_CROSS, &mut ws.proj)?, x, None, CacheWrite::None)?;
        }

        // Feed-forward: Linear → GELU(tanh) → Linear.
        be.norm_modulate(x, &ws.modv, SHIFT_MLP, SCALE_MLP, cfg.norm_eps, &mut ws.norm)?;
        be.linear(&ws.norm, &self.ff1.w, self.ff1.b.as_ref(), Activation::GeluTanh, &mut ws.ff)?;
        let gate = Some((&ws.modv, GATE_MLP));
        branch(be, &self.ff2, &ws.ff, io.slot(self.slot_ff(), &mut ws.proj)?, x, gate, tap)
    }

    /// The FORA slot of the MLP output: after the cross-attention's, where the block has one.
    pub fn slot_ff(&self) -> usize {
        if self.cross.is_some() {
            2
        } else {
            1
        }
    }
}

/// FORA cache slots of a block's branch outputs (all on the image stream).
pub const SLOT_ATTN: usize = 0;
pub const SLOT_CROSS: usize = 1;
