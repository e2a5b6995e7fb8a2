//! Unstable internals for the crate's own CLI, benches and tests (feature `internals`, on with
//! the default `cli` feature): kernel launchers and parameter structs, the CPU reference
//! functions, the SIMT shim's instruments, benchmark presets, and the environment variables of
//! the scripts. Not part of the public API: anything here may change in any release.

pub use crate::cache::engine::CacheEngine;
pub use crate::io::safetensors_file::{RawTensor, SafetensorsFile};
pub use crate::model::macs::ForwardMacs;
pub use crate::rng::{rel_l2, Rng};

/// The kernel launchers shared by the sim and CUDA backends, the kernel table and the
/// bindgen-generated parameter structs.
pub mod kernels {
    pub use crate::backend::kernels::table::{
        attention_variant, family, AttentionVariant, KernelFamily, KernelInfo, ATTENTION_VARIANTS, KERNELS,
    };
    pub use crate::backend::kernels::*;

    /// kernels/params.h in Rust (bindgen).
    pub mod params {
        pub use crate::backend::params::*;
    }

    /// The shape checks every backend shares.
    pub mod shapes {
        pub use crate::backend::shapes::*;
    }
}

/// The latency run and its presets, the quality harness and the calibrator.
pub mod bench {
    pub use crate::bench::*;
}

/// PSNR, SSIM, the digits classifier, PNG grids.
pub mod quality {
    pub use crate::quality::*;
}

/// What build.rs produced (fatbins, ptxas reports, whether the shim is linked).
pub mod build_info {
    pub use crate::backend::build_info::*;
}

/// The CPU backend's reference functions and its SIMD switch.
pub mod cpu {
    pub use crate::backend::cpu::attention_tiles::available as attention_tiles_run;
    pub use crate::backend::cpu::linear_tiles::{
        available as linear_tiles_run, MAX_DEPTH as LINEAR_TILES_MAX_DEPTH, MIN_ROWS as LINEAR_TILES_MIN_ROWS,
    };
    pub use crate::backend::cpu::memory::{
        copy_streaming, copy_vector, copy_vector_at, huge_pages, last_level_cache_bytes, set_huge_pages,
        streaming_copy_min_bytes,
    };
    pub use crate::backend::cpu::pool::on_worker;
    pub use crate::backend::cpu::reference::*;

    /// The element-wise loops' SIMD level.
    pub mod simd {
        pub use crate::backend::cpu::simd::*;
    }
}

/// The SIMT shim's instruments: warp order, shared-memory accounting, self-tests.
pub mod sim {
    pub use crate::backend::sim::instruments::*;

    /// The shim's self-test kernels.
    #[cfg(deltadit_sim)]
    pub mod selftest {
        pub use crate::backend::sim::selftest::*;
    }
}

/// CUDA events and graphs for the benchmarks.
pub mod cuda_timing {
    pub use crate::backend::cuda::timing::*;
}

use crate::backend::cuda::CudaOptions;
use crate::backend::kernels::AttentionKernel;
use crate::model::{Context, Transformer, Workspace};
use crate::{Backend, Error, Result, Tensor};
use std::ops::Range;

/// The cuts of a forward (embed, any block range, final layer) and the workspace's tensors, for
/// the benches and the tests that check the cache against an independent implementation.
pub trait ModelParts<B: Backend> {
    /// h_0 and the step's conditioning from the workspace's input and timesteps.
    fn embed_step(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()>;
    /// Blocks `range` on the hidden state, no cache taps.
    fn run_block_range(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>, range: Range<usize>) -> Result<()>;
    /// The final layer into the workspace's output.
    fn finish_step(&self, be: &B, ws: &mut Workspace<B>) -> Result<()>;
}

impl<B: Backend> ModelParts<B> for Transformer<B> {
    fn embed_step(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>) -> Result<()> {
        self.embed(be, ctx, ws)
    }
    fn run_block_range(&self, be: &B, ctx: &Context<B>, ws: &mut Workspace<B>, range: Range<usize>) -> Result<()> {
        self.run_blocks(be, ctx, ws, range, &mut [], crate::model::Branches::Compute)
    }
    fn finish_step(&self, be: &B, ws: &mut Workspace<B>) -> Result<()> {
        self.finish(be, ws)
    }
}

/// The workspace's tensors.
pub trait WorkspaceParts<B: Backend> {
    /// f32 model input `[batch, C, H, W]`
    fn input_mut(&mut self) -> &mut Tensor<B>;
    /// f32 timesteps `[batch]`
    fn timesteps_mut(&mut self) -> &mut Tensor<B>;
    /// the hidden state h `[batch·tokens, D]`
    fn hidden(&self) -> &Tensor<B>;
    /// the same, writable
    fn hidden_mut(&mut self) -> &mut Tensor<B>;
}

impl<B: Backend> WorkspaceParts<B> for Workspace<B> {
    fn input_mut(&mut self) -> &mut Tensor<B> {
        &mut self.model_in
    }
    fn timesteps_mut(&mut self) -> &mut Tensor<B> {
        &mut self.t
    }
    fn hidden(&self) -> &Tensor<B> {
        &self.streams[0]
    }
    fn hidden_mut(&mut self) -> &mut Tensor<B> {
        &mut self.streams[0]
    }
}

/// The environment variables of the scripts (the library itself reads none).
pub mod env {
    use super::*;

    /// A boolean switch: unset → `default`; "0", "false", "off", "no" or "" → false; anything
    /// else → true.
    pub fn flag(name: &str, default: bool) -> bool {
        match std::env::var(name) {
            Err(_) => default,
            Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "off" | "no"),
        }
    }

    /// `DELTADIT_CUDA_POISON=1` (NaN-fill new tensors), `DELTADIT_CUDA_GRAPHS=0` (no CUDA graphs),
    /// `DELTADIT_CUDA_SYNC=1` (synchronise after every launch) over the defaults.
    pub fn cuda_options() -> CudaOptions {
        let d = CudaOptions::default();
        d.with_poison(flag("DELTADIT_CUDA_POISON", d.poison))
            .with_graphs(flag("DELTADIT_CUDA_GRAPHS", d.graphs))
            .with_sync_launches(flag("DELTADIT_CUDA_SYNC", d.sync_launches))
    }

    /// `DELTADIT_CPU_HUGE_PAGES=0` keeps the CPU backend's buffers on 4 KiB pages (default: large
    /// buffers are advised onto transparent huge pages; see [`super::cpu::set_huge_pages`]).
    /// `DELTADIT_CPU_SIMD=avx2` (or `baseline`, `avx512`) caps the CPU backend's instruction set
    /// below the detected one, to compare its code paths on one machine ([`super::cpu::simd::set_cap`];
    /// a cap above the CPU's level is lowered to it). `DELTADIT_CPU_WIDE_TILES=1` (or `0`) runs
    /// the 512-bit kernels (or the AVX2 register tiles) for the linear layer and attention on
    /// AVX-512 CPUs, whatever the CPU's FMA width ([`super::cpu::simd::set_wide_tiles`]; unset:
    /// chosen by the CPU).
    pub fn apply_cpu_options() -> Result<()> {
        use crate::backend::cpu::simd;
        crate::backend::cpu::memory::set_huge_pages(flag("DELTADIT_CPU_HUGE_PAGES", true));
        simd::set_wide_tiles(
            std::env::var("DELTADIT_CPU_WIDE_TILES").ok().map(|_| flag("DELTADIT_CPU_WIDE_TILES", false)),
        );
        match std::env::var("DELTADIT_CPU_SIMD") {
            Ok(v) if !v.trim().is_empty() => {
                let level = v.parse().map_err(|_| Error::param("DELTADIT_CPU_SIMD", &v, "baseline, avx2 or avx512"))?;
                simd::set_cap(Some(level));
            }
            _ => simd::set_cap(None),
        }
        Ok(())
    }

    /// `DELTADIT_ATTENTION` (mma | wgmma | wgmma-qregs | wgmma-qregs3), when set.
    pub fn attention_kernel() -> Result<Option<AttentionKernel>> {
        match std::env::var("DELTADIT_ATTENTION") {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some).map_err(|e| match e {
                Error::Param { allowed, .. } => Error::param("DELTADIT_ATTENTION", v, allowed),
                other => other,
            }),
            _ => Ok(None),
        }
    }

    /// The wgmma kernels the variable `var` lists (comma-separated), else all of them: how the
    /// GPU run (scripts/gpu-run.sh) confines its wgmma test and bench steps to one kernel, or to
    /// those whose tests passed.
    pub fn wgmma_kernels(var: &str) -> Result<Vec<AttentionKernel>> {
        match std::env::var(var) {
            Ok(v) => {
                let ks = AttentionKernel::parse_list(&v)
                    .map_err(|_| Error::param(var, &v, "wgmma, wgmma-qregs or wgmma-qregs3, comma-separated"))?;
                match ks.iter().find(|k| !k.is_wgmma()) {
                    Some(k) => Err(Error::param(var, k.name(), "wgmma kernels only")),
                    None => Ok(ks),
                }
            }
            Err(_) => Ok(AttentionKernel::wgmma_kernels()),
        }
    }
}
