//! Layers several families share.

use super::weights::{Linear, Loader};
use crate::backend::Activation;
use crate::{Backend, Result, Tensor};

/// Width of the sinusoidal timestep (and size) embedding, `Timesteps(256, …)`.
pub const TIME_PROJ_DIM: usize = 256;

/// A 2-layer MLP with an activation between (diffusers `TimestepEmbedding`,
/// `PixArtAlphaTextProjection`).
pub struct Mlp<B: Backend> {
    pub l1: Linear<B>,
    pub l2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `{prefix}.linear_1` [hidden, inp] and `{prefix}.linear_2` [out, hidden], with biases.
    pub fn load(l: &Loader<'_, B>, prefix: &str, inp: usize, hidden: usize, out: usize) -> Result<Self> {
        Ok(Mlp {
            l1: l.linear(&format!("{prefix}.linear_1"), hidden, inp, true)?,
            l2: l.linear(&format!("{prefix}.linear_2"), out, hidden, true)?,
        })
    }

    pub fn run(
        &self,
        be: &B,
        x: &Tensor<B>,
        act: Activation,
        hidden: &mut Tensor<B>,
        out: &mut Tensor<B>,
    ) -> Result<()> {
        be.linear(x, &self.l1.w, self.l1.b.as_ref(), act, hidden)?;
        be.linear(hidden, &self.l2.w, self.l2.b.as_ref(), Activation::None, out)
    }

    /// Runs on a fresh [rows, inp] host input (once-per-run embeddings).
    pub fn run_host(&self, be: &B, rows: usize, input: &[f32], act: Activation) -> Result<Tensor<B>> {
        let dt = be.act_dtype();
        let x = be.upload(input, &[rows, self.l1.in_features()], dt)?;
        let mut h = be.alloc(&[rows, self.l1.out_features()], dt)?;
        let mut o = be.alloc(&[rows, self.l2.out_features()], dt)?;
        self.run(be, &x, act, &mut h, &mut o)?;
        Ok(o)
    }
}

/// The patch embedding's conv `{prefix}.proj` [D, C, p, p] as a Linear over patchified latents.
pub fn patch_embedding<B: Backend>(l: &Loader<'_, B>, prefix: &str, d: usize, c: usize, p: usize) -> Result<Linear<B>> {
    let mut w = l.tensor(&format!("{prefix}.weight"), &[d, c, p, p])?;
    w.reshape(&[d, c * p * p])?;
    Ok(Linear { w, b: Some(l.tensor(&format!("{prefix}.bias"), &[d])?) })
}

/// Patch embedding of the f32 latents `model_in` into `x` `[batch·tokens, D]`, plus the position
/// table `pos` `[tokens·D]` of this latent size on every sample.
pub fn embed_patches<B: Backend>(
    be: &B,
    proj: &Linear<B>,
    pos: &Tensor<B>,
    p: usize,
    model_in: &Tensor<B>,
    patches: &mut Tensor<B>,
    x: &mut Tensor<B>,
) -> Result<()> {
    be.patchify(model_in, p, patches)?;
    be.linear(patches, &proj.w, proj.b.as_ref(), Activation::None, x)?;
    let shape = x.shape().to_vec();
    let batch = model_in.shape()[0];
    x.reshape(&[batch, x.numel() / batch])?;
    let r = be.add_bcast(x, pos);
    x.reshape(&shape)?;
    r
}

/// One branch's output projection into `out`, then the (gated) residual x += gate ⊙ out with the
/// Δ-cache write `tap`.
pub fn branch<B: Backend>(
    be: &B,
    proj: &Linear<B>,
    input: &Tensor<B>,
    out: &mut Tensor<B>,
    x: &mut Tensor<B>,
    gate: Option<(&Tensor<B>, usize)>,
    tap: crate::backend::CacheWrite<'_, B>,
) -> Result<()> {
    be.linear(input, &proj.w, proj.b.as_ref(), Activation::None, out)?;
    be.residual(x, out, gate, tap)
}
