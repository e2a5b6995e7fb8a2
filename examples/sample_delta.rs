//! Sampling with and without the Δ-DiT cache on the same noise, side by side: block evaluations,
//! time, and how far the cached latents move from the uncached ones.
//!
//! ```sh
//! cargo run --release --example sample_delta -- tests/data/pixart-tiny-delta-n2-nc4-b12
//! ```
//!
//! The folder holds a diffusers checkpoint and `inputs.safetensors` with the sampling tensors
//! (`latents`, and `cond_embeds`/`cond_mask`/`uncond_embeds`/`uncond_mask` for PixArt or
//! `class_labels` for DiT), as `deltadit sample --inputs` reads them.

use deltadit::backend::cpu::Cpu;
use deltadit::cache::CacheSpec;
use deltadit::io::Inputs;
use deltadit::model::Transformer;
use deltadit::pipeline::{sample, SampleConfig, SampleInputs};
use deltadit::sampler::SchedulerName;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: sample_delta MODEL_DIR (with inputs.safetensors)");
        return ExitCode::from(2);
    };
    match run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path) -> deltadit::Result<()> {
    let be = Cpu::default();
    let model = Transformer::load(&be, dir)?;
    let inputs = SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors"))?, model.config())?;
    let family = model.config().family;
    let cfg = SampleConfig::new(
        SchedulerName::DpmSolverPP,
        20,
        SampleConfig::default_guidance(family, SchedulerName::DpmSolverPP),
    );

    let mut runs = Vec::new();
    for spec in ["none", "delta"] {
        // `delta` is the paper's preset for this depth and step count (see CacheSpec).
        let policy = spec.parse::<CacheSpec>()?.build(family, model.num_blocks(), cfg.steps)?;
        let params = policy.params();
        let start = Instant::now();
        let out = sample(&be, &model, &inputs, &cfg, policy, &mut |_, _| {})?;
        let blocks: usize = out.blocks_run.iter().sum();
        println!(
            "{spec:<6} {params:<16} {blocks:>4} block evaluations, {:>7.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        runs.push(out.latents);
    }
    let (none, delta) = (&runs[0], &runs[1]);
    let num: f64 = none.iter().zip(delta).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = none.iter().map(|&a| (a as f64).powi(2)).sum();
    println!("cached latents vs uncached: relative L2 {:.3e}", (num / den.max(f64::MIN_POSITIVE)).sqrt());
    Ok(())
}
