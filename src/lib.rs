//! Δ-DiT block caching on a minimal DiT/PixArt inference runtime.
//!
//! PixArt-α/Σ (`PixArtTransformer2DModel`) and DiT (`DiTTransformer2DModel`) from diffusers
//! checkpoints, sampled with DPM-Solver++, DDIM or LCM and classifier-free guidance, with a cache
//! policy that skips blocks at some steps (Δ-DiT and its peers). One model, written once over the
//! [`Backend`] op set, runs on three backends: [`backend::cpu::Cpu`] (f32, the reference),
//! [`backend::cuda::Cuda`] (hand-written kernels and cuBLASLt, bf16/f16) and
//! [`backend::sim::Sim`] (the same CUDA kernels run on the CPU by a SIMT shim).
//!
//! ```no_run
//! use deltadit::backend::cpu::Cpu;
//! use deltadit::cache::CacheSpec;
//! use deltadit::model::Transformer;
//! use deltadit::pipeline::{sample, SampleConfig, SampleInputs};
//! use deltadit::sampler::SchedulerName;
//!
//! # fn main() -> deltadit::Result<()> {
//! let be = Cpu::default();
//! let model = Transformer::load(&be, "PixArt-XL-2-1024-MS/transformer".as_ref())?;
//! # let inputs: SampleInputs = unimplemented!();
//! let cfg = SampleConfig::new(SchedulerName::DpmSolverPP, 20, 4.5);
//! let policy = "delta".parse::<CacheSpec>()?.build(model.config().family, model.num_blocks(), cfg.steps)?;
//! let out = sample(&be, &model, &inputs, &cfg, policy, &mut |_, _| {})?;
//! println!("{} block evaluations", out.blocks_run.iter().sum::<usize>());
//! # Ok(())
//! # }
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | [`model`] | [`model::Transformer`]: load a checkpoint (or any [`model::WeightSource`]), run a forward |
//! | [`pipeline`] | [`pipeline::sample`] (the sampling loop), [`pipeline::forward`], [`pipeline::Denoiser`] (step by step) |
//! | [`cache`] | the cache policies, [`cache::CachePolicy`] to write one, [`cache::CacheSpec`] to parse `delta:n=2,…` |
//! | [`sampler`] | the schedulers |
//! | [`backend`] | the [`Backend`] op set and the three backends |
//! | [`device`] | a backend chosen at run time ([`device::AnyBackend`]) |
//! | [`io`] | safetensors inputs and outputs |
//!
//! Every fallible call returns [`Result`]; an [`Error`] names the tensor, key, shape or parameter
//! at fault, and backend failures carry a [`BackendErrorKind`]. The library reads no
//! environment variables.
#![warn(missing_docs)]
// Without `internals`, the pieces only the CLI, benches and tests reach are unused.
#![cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]

pub mod backend;
pub mod cache;
pub mod device;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod sampler;

#[allow(missing_docs)] // crate internals (re-exported by `internals`)
mod bench;
mod dtype;
mod error;
#[allow(missing_docs)]
mod quality;
#[allow(missing_docs)]
mod rng;
mod tensor;

pub use backend::Backend;
pub use dtype::DType;
pub use error::{BackendError, BackendErrorKind, Error, Result};
pub use tensor::Tensor;

#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;

/// The examples of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
