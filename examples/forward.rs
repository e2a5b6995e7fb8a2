//! One transformer forward on a diffusers checkpoint folder, on the CPU backend.
//!
//! ```sh
//! cargo run --release --example forward -- tests/data/pixart-tiny
//! ```
//!
//! Reads the checkpoint's config, builds random but fixed inputs of the model's shape (a batch of
//! two, as classifier-free guidance runs it), runs the forward and prints the output's shape and
//! statistics. A folder holding `inputs.safetensors` (the tensors of the diffusers forward call)
//! is run on those inputs instead.

use deltadit::backend::cpu::Cpu;
use deltadit::io::Inputs;
use deltadit::model::{Conditioning, Family, TextInput, Transformer};
use deltadit::pipeline::{forward, ForwardInputs};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: forward MODEL_DIR");
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
    let cfg = model.config();
    println!("{} with {} blocks from {}", cfg.family.name(), model.num_blocks(), model.weights_desc());

    let inputs = match dir.join("inputs.safetensors") {
        f if f.is_file() => ForwardInputs::from_inputs(&Inputs::open(&f)?, cfg)?,
        _ => {
            // A batch of two at the model's native size, with a deterministic pattern.
            let (b, c, s) = (2, cfg.in_channels, cfg.sample_size);
            let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
            let mut cond = Conditioning { batch: b, height: s, width: s, ..Default::default() };
            match cfg.family {
                Family::DiT => cond.class_labels = Some(vec![1, cfg.num_embeds_ada_norm]),
                _ => {
                    let feat = cfg.caption_channels.or(cfg.cross_attention_dim).unwrap_or(cfg.inner_dim());
                    cond.text = Some(TextInput { embeds: wave(b * 8 * feat, 0.7), mask: None, len: 8 });
                    if cfg.use_additional_conditions {
                        cond.resolution = Some(vec![(8 * s) as f32; 2 * b]);
                        cond.aspect_ratio = Some(vec![1.0; b]);
                    }
                }
            }
            ForwardInputs {
                hidden_states: wave(b * c * s * s, 0.37),
                shape: vec![b, c, s, s],
                timestep: vec![500.0; b],
                cond,
            }
        }
    };
    let (out, shape) = forward(&be, &model, &inputs)?;
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64;
    let rms = (out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / out.len() as f64).sqrt();
    println!("sample {shape:?}: mean {mean:.4}, rms {rms:.4}");
    Ok(())
}
