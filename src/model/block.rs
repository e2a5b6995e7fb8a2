//! One transformer block (diffusers BasicTransformerBlock with adaLN-single or adaLN-Zero), as
//! MODEL_SPEC.md §2.4 and §4.3 write it:
//!
//! ```text
//! n = LN(x)·(1 + scale_msa) + shift_msa;   x = x + gate_msa ⊙ attn1(n)
//! x = x + attn2(x, text, bias)                              (PixArt only: no norm, no gate)
//! n = LN(x)·(1 + scale_mlp) + shift_mlp;   x = x + gate_mlp ⊙ ff(n)
//! ```

use super::weights::{Linear, Loader};
use super::{ModelConfig, Workspace};
use crate::backend::{Activation, AttentionShape, CacheWrite, ColSlice};
use crate::model::config::Family;
use crate::{Backend, Error, Result, Tensor};

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

/// Where a block's branch outputs (attention, cross-attention and MLP, before gating) go: the
/// workspace, or per-block cache buffers (FORA stores them on full steps and reuses them).
pub enum BranchIo<'a, B: Backend> {
    Compute,
    Store(&'a mut BranchCache<B>),
    Reuse(&'a BranchCache<B>),
}

/// A block's view of the per-run text: its K|V projection [batch·L, 2D], the f32 key bias and L.
pub struct CrossKv<'a, B: Backend> {
    pub kv: &'a Tensor<B>,
    pub bias: Option<&'a Tensor<B>>,
    pub text_len: usize,
}

/// One block's cached branch outputs, `[rows, D]` each.
pub struct BranchCache<B: Backend> {
    pub attn: Tensor<B>,
    pub cross: Option<Tensor<B>>,
    pub ff: Tensor<B>,
}

impl<B: Backend> Block<B> {
    pub fn load(l: &Loader<'_, B>, cfg: &ModelConfig, i: usize, embedder: usize) -> Result<Self> {
        let d = cfg.inner_dim();
        let p = format!("transformer_blocks.{i}");
        let bias = cfg.attention_bias;
        let modulation = match cfg.family {
            Family::PixArt => Modulation::Table(l.tensor(&format!("{p}.scale_shift_table"), &[6, d])?),
            Family::DiT => Modulation::AdaLnZero(l.linear(&format!("{p}.norm1.linear"), 6 * d, d, true)?, embedder),
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

    /// The block's modulation vectors into `ws.modv` `[batch, 6D]`.
    pub fn modulate(&self, be: &B, ws: &mut Workspace<B>) -> Result<()> {
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

    /// Runs the block on `ws.x` in place. `tap` is fused into the last residual update.
    pub fn forward(
        &self,
        be: &B,
        cfg: &ModelConfig,
        ws: &mut Workspace<B>,
        cross_kv: Option<CrossKv<'_, B>>,
        tap: CacheWrite<'_, B>,
        io: BranchIo<'_, B>,
    ) -> Result<()> {
        self.modulate(be, ws)?;
        let ws = &mut *ws;
        let eps1 = match cfg.family {
            Family::PixArt => cfg.norm_eps,
            Family::DiT => 1e-6, // AdaLayerNormZero hard-codes it
        };
        if let BranchIo::Reuse(c) = &io {
            be.residual(&mut ws.x, &c.attn, Some((&ws.modv, GATE_MSA)), CacheWrite::None)?;
            if let Some(cross) = &c.cross {
                be.residual(&mut ws.x, cross, None, CacheWrite::None)?;
            }
            return be.residual(&mut ws.x, &c.ff, Some((&ws.modv, GATE_MLP)), tap);
        }
        let (batch, tokens, heads, hd) = (ws.batch, ws.tokens, cfg.num_attention_heads, cfg.attention_head_dim);
        let d = cfg.inner_dim();
        let scale = (hd as f32).powf(-0.5);
        let mut io = io;

        // Self-attention.
        be.norm_modulate(&ws.x, &ws.modv, SHIFT_MSA, SCALE_MSA, eps1, &mut ws.norm)?;
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
        branch(be, &self.attn_out, &ws.attn, io.slot(Slot::Attn, &mut ws.proj)?, &mut ws.x, gate, CacheWrite::None)?;

        // Cross-attention to the text (no norm, no gate).
        if let (Some((to_q, to_out)), Some(CrossKv { kv, bias, text_len })) = (&self.cross, cross_kv) {
            be.linear(&ws.x, &to_q.w, to_q.b.as_ref(), Activation::None, &mut ws.norm)?;
            let shape = AttentionShape { batch, heads, head_dim: hd, nq: tokens, nk: text_len, scale };
            be.attention(
                &shape,
                ColSlice::new(&ws.norm, 0),
                ColSlice::new(kv, 0),
                ColSlice::new(kv, d),
                bias,
                &mut ws.attn,
            )?;
            branch(be, to_out, &ws.attn, io.slot(Slot::Cross, &mut ws.proj)?, &mut ws.x, None, CacheWrite::None)?;
        }

        // Feed-forward: Linear → GELU(tanh) → Linear.
        be.norm_modulate(&ws.x, &ws.modv, SHIFT_MLP, SCALE_MLP, cfg.norm_eps, &mut ws.norm)?;
        be.linear(&ws.norm, &self.ff1.w, self.ff1.b.as_ref(), Activation::GeluTanh, &mut ws.ff)?;
        let gate = Some((&ws.modv, GATE_MLP));
        branch(be, &self.ff2, &ws.ff, io.slot(Slot::Ff, &mut ws.proj)?, &mut ws.x, gate, tap)
    }
}

/// A block's three branches, by the cache slot FORA keeps each one's output in.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Attn,
    Cross,
    Ff,
}

impl<B: Backend> BranchIo<'_, B> {
    /// Where branch `slot`'s output goes: its cache buffer when storing, else `scratch`.
    fn slot<'s>(&'s mut self, slot: Slot, scratch: &'s mut Tensor<B>) -> Result<&'s mut Tensor<B>> {
        match self {
            BranchIo::Store(c) => match slot {
                Slot::Attn => Ok(&mut c.attn),
                Slot::Ff => Ok(&mut c.ff),
                Slot::Cross => c.cross.as_mut().ok_or_else(|| {
                    Error::param("branch cache", "no cross-attention buffer", "a buffer for every branch of the block")
                }),
            },
            _ => Ok(scratch),
        }
    }
}

/// One branch's output projection into `out`, then the (gated) residual x += gate ⊙ out with the
/// Δ-cache write `tap`.
fn branch<B: Backend>(
    be: &B,
    proj: &Linear<B>,
    input: &Tensor<B>,
    out: &mut Tensor<B>,
    x: &mut Tensor<B>,
    gate: Option<(&Tensor<B>, usize)>,
    tap: CacheWrite<'_, B>,
) -> Result<()> {
    be.linear(input, &proj.w, proj.b.as_ref(), Activation::None, out)?;
    be.residual(x, out, gate, tap)
}
