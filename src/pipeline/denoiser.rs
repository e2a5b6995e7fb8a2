//! A model bound to one run: the per-run context (text K/V, labels), the activations and a cache
//! policy, stepped one forward at a time — by [`super::sample`]'s loop, or by a caller's own (a
//! diffusers pipeline calling the transformer at every step of its scheduler).

use crate::cache::{CacheEngine, CachePolicy, NoCache, StepReport};
use crate::error::check_finite;
use crate::model::{Conditioning, Context, Transformer, Workspace};
use crate::{Backend, Error, Result, Tensor};
use std::sync::Arc;

/// A [`Transformer`] with one run's conditioning and cache state.
///
/// Each call of [`Denoiser::forward`] is one model evaluation at step `step` of `steps`; the cache
/// policy decides from the step index (and its probes) which blocks run. Steps come in order;
/// step 0 starts a new run (the policy's state and the cached deviations are dropped), so the
/// same denoiser serves several runs with the same conditioning.
pub struct Denoiser<'m, B: Backend> {
    model: ModelRef<'m, B>,
    ctx: Context<B>,
    ws: Workspace<B>,
    engine: CacheEngine<B>,
    /// the step expected next (steps come in order; 0 also starts a new run)
    next_step: usize,
}

impl<B: Backend> Denoiser<'static, B> {
    /// As [`Denoiser::new`], holding a share of `model`: the denoiser owns what it runs, so it
    /// can be stored beside the model's other users (no borrow to outlive).
    pub fn shared(
        be: &B,
        model: Arc<Transformer<B>>,
        cond: &Conditioning,
        policy: Box<dyn CachePolicy>,
    ) -> Result<Self> {
        Self::bind(be, ModelRef::Shared(model), cond, policy)
    }
}

/// The model a denoiser runs: borrowed, or shared with its other users (a denoiser that must
/// outlive the caller's stack frame, e.g. one held by a Python object).
enum ModelRef<'m, B: Backend> {
    Borrowed(&'m Transformer<B>),
    Shared(Arc<Transformer<B>>),
}

impl<B: Backend> std::ops::Deref for ModelRef<'_, B> {
    type Target = Transformer<B>;
    fn deref(&self) -> &Transformer<B> {
        match self {
            ModelRef::Borrowed(m) => m,
            ModelRef::Shared(m) => m,
        }
    }
}

impl<'m, B: Backend> Denoiser<'m, B> {
    /// Binds `model` to the conditioning `cond` of a run (its batch includes the CFG copies) with
    /// cache `policy`.
    pub fn new(be: &B, model: &'m Transformer<B>, cond: &Conditioning, policy: Box<dyn CachePolicy>) -> Result<Self> {
        Self::bind(be, ModelRef::Borrowed(model), cond, policy)
    }

    fn bind(be: &B, model: ModelRef<'m, B>, cond: &Conditioning, policy: Box<dyn CachePolicy>) -> Result<Self> {
        cond.validate()?;
        let ctx = model.context(be, cond)?;
        let ws = model.workspace(be, &ctx)?;
        let engine = CacheEngine::new(be, &model, &ws, policy)?;
        Ok(Denoiser { model, ctx, ws, engine, next_step: 0 })
    }

    /// Without a cache: every block runs on every forward.
    pub fn uncached(be: &B, model: &'m Transformer<B>, cond: &Conditioning) -> Result<Self> {
        Self::new(be, model, cond, Box::new(NoCache))
    }

    /// The model batch (CFG copies included).
    pub fn batch(&self) -> usize {
        self.ctx.batch
    }

    /// Shape of the model input, `[batch, C, H, W]` (FLUX: packed `[batch, N, C]`).
    pub fn input_shape(&self) -> Vec<usize> {
        self.model.latent_shape(self.ctx.batch, self.ctx.height, self.ctx.width, false)
    }

    /// Shape of the model output, `[batch, C_out, H, W]` (FLUX: packed `[batch, N, C_out]`).
    pub fn output_shape(&self) -> Vec<usize> {
        self.model.latent_shape(self.ctx.batch, self.ctx.height, self.ctx.width, true)
    }

    /// The cache policy.
    pub fn policy(&self) -> &dyn CachePolicy {
        self.engine.policy()
    }

    /// Starts a new run: the policy forgets its state and the cached deviations are stale.
    pub fn reset(&mut self) {
        self.engine.reset();
        self.next_step = 0;
    }

    /// One forward at step `step` of `steps` on host latents ([`Denoiser::input_shape`]) and the
    /// forward's per-sample `timestep` input `[batch]`; the output stays on the backend
    /// ([`Denoiser::output`]).
    pub fn forward(
        &mut self,
        be: &B,
        latents: &[f32],
        timesteps: &[f32],
        step: usize,
        steps: usize,
    ) -> Result<StepReport> {
        check_finite("latents", latents)?;
        check_finite("timestep", timesteps)?;
        be.write(&mut self.ws.model_in, latents).map_err(|_| {
            Error::input(
                "latents",
                format!(
                    "expected shape {:?} ({} values), found {} values",
                    self.input_shape(),
                    self.ws.model_in.numel(),
                    latents.len()
                ),
            )
        })?;
        be.write(&mut self.ws.t, &self.model.model_timesteps(timesteps)).map_err(|_| {
            Error::input("timestep", format!("expected {} values, found {}", self.batch(), timesteps.len()))
        })?;
        self.forward_written(be, step, steps)
    }

    /// One forward on the input already written into [`Denoiser::input_mut`] and
    /// [`Denoiser::timesteps_mut`] (device-side writes: no host round trip).
    pub fn forward_written(&mut self, be: &B, step: usize, steps: usize) -> Result<StepReport> {
        self.forward_written_then(be, step, steps, &mut |_, _| Ok(()))
    }

    /// [`Denoiser::forward_written`], then `tail` on the output inside the same unit of work (on
    /// the CUDA backend, the same graph): how a sampling loop fuses its guidance into the step.
    pub fn forward_written_then(
        &mut self,
        be: &B,
        step: usize,
        steps: usize,
        tail: &mut (dyn FnMut(&B, &Tensor<B>) -> Result<()> + Send),
    ) -> Result<StepReport> {
        if steps == 0 || step >= steps {
            return Err(Error::param("step", step, format!("0..{steps} (steps = {steps})")));
        }
        if step == 0 {
            self.engine.reset();
        } else if step != self.next_step {
            return Err(Error::param(
                "step",
                step,
                format!("{} (steps run in order; step 0 starts a new run)", self.next_step),
            ));
        }
        let report = self
            .engine
            .step(be, &self.model, &self.ctx, &mut self.ws, step, steps, &mut |be, ws| tail(be, &ws.model_out))?;
        self.next_step = if step + 1 == steps { 0 } else { step + 1 };
        Ok(report)
    }

    /// The f32 model output ([`Denoiser::output_shape`]) of the last forward.
    pub fn output(&self) -> &Tensor<B> {
        &self.ws.model_out
    }

    /// The f32 model input ([`Denoiser::input_shape`]) the next [`Denoiser::forward_written`] reads.
    pub fn input_mut(&mut self) -> &mut Tensor<B> {
        &mut self.ws.model_in
    }

    /// The f32 timesteps `[batch]` the next [`Denoiser::forward_written`] reads, as the blocks see
    /// them ([`Transformer::model_timesteps`] of the forward's input: FLUX's are 1000·t).
    pub fn timesteps_mut(&mut self) -> &mut Tensor<B> {
        &mut self.ws.t
    }
}
