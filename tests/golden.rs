//! The golden cases of tests/data (computed with diffusers 0.42.1 in f32) through the CPU
//! backend: forward cases within 1e-5 relative error, sampling cases within 1e-4.

mod common;

use common::rel_l2;
use deltadit::backend::cpu::Cpu;
use deltadit::cache::CacheSpec;
use deltadit::io::{Inputs, SafetensorsFile};
use deltadit::model::Transformer;
use deltadit::pipeline::{forward_inputs, sample, SampleConfig, SampleInputs};
use std::path::PathBuf;

pub fn case_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn expected(name: &str, tensor: &str) -> Vec<f32> {
    let f = SafetensorsFile::open(&case_dir(name).join("expected.safetensors")).unwrap();
    f.get(tensor).unwrap_or_else(|| panic!("{name}: no expected `{tensor}`")).to_f32(tensor).unwrap()
}

fn forward_case(name: &str) -> f64 {
    let be = Cpu::default();
    let dir = case_dir(name);
    let model = Transformer::load(&be, &dir).unwrap();
    let inputs = Inputs::open(&dir.join("inputs.safetensors")).unwrap();
    let (out, _) = forward_inputs(&be, &model, &inputs).unwrap();
    let e = rel_l2(&out, &expected(name, "sample"));
    println!("{name}: rel err {e:.3e}");
    e
}

#[test]
fn forward_pixart_tiny() {
    assert!(forward_case("pixart-tiny") <= 1e-5);
}

#[test]
fn forward_pixart_nonsquare_micro_conditions() {
    assert!(forward_case("pixart-tiny-nonsquare-ar") <= 1e-5);
}

#[test]
fn forward_pixart_bf16_weights() {
    assert!(forward_case("pixart-tiny-bf16-weights") <= 1e-5);
}

#[test]
fn forward_dit_tiny() {
    assert!(forward_case("dit-tiny") <= 1e-5);
}

struct SamplingCase {
    scheduler: deltadit::sampler::SchedulerName,
    steps: usize,
    guidance: f32,
    cache: CacheSpec,
}

fn read_case(name: &str) -> SamplingCase {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case_dir(name).join("case.json")).unwrap()).unwrap();
    let scheduler = match v["scheduler"]["_class_name"].as_str().unwrap() {
        "DPMSolverMultistepScheduler" => "dpm-solver++",
        "DDIMScheduler" => "ddim",
        "LCMScheduler" => "lcm",
        other => panic!("unknown scheduler {other}"),
    };
    let cache = match v.get("cache") {
        Some(c) => format!("delta:n={},nc={},b={}", c["N"], c["Nc"], c["b"]).parse().unwrap(),
        None => CacheSpec::none(),
    };
    SamplingCase {
        scheduler: scheduler.parse().unwrap(),
        steps: v["steps"].as_u64().unwrap() as usize,
        guidance: v["guidance_scale"].as_f64().unwrap() as f32,
        cache,
    }
}

/// Runs a sampling case; returns (relative error of the final latents, the output).
fn sampling_case(name: &str) -> (f64, deltadit::pipeline::SampleOutput) {
    let be = Cpu::default();
    let dir = case_dir(name);
    let model = Transformer::load(&be, &dir).unwrap();
    let case = read_case(name);
    let inputs = SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config.family).unwrap();
    let cfg = SampleConfig { scheduler: case.scheduler, steps: case.steps, guidance: case.guidance, keep_per_step: true };
    let policy = case.cache.build(model.config.family, model.num_blocks(), case.steps).unwrap();
    let out = sample(&be, &model, &inputs, &cfg, policy, &mut |_, _| {}).unwrap();
    let exp_t: Vec<i64> = {
        let f = SafetensorsFile::open(&dir.join("expected.safetensors")).unwrap();
        f.get("timesteps").unwrap().to_i64("timesteps").unwrap()
    };
    assert_eq!(out.timesteps, exp_t, "{name}: timesteps");
    let e = rel_l2(&out.latents, &expected(name, "latents"));
    println!("{name}: final latents rel err {e:.3e}");
    (e, out)
}

#[test]
fn sampling_pixart_dpm_solver_20_cfg() {
    let (e, out) = sampling_case("pixart-tiny-dpmpp20-cfg");
    let per_step = expected("pixart-tiny-dpmpp20-cfg", "latents_per_step");
    let n = out.latents.len();
    for (i, l) in out.latents_per_step.iter().enumerate() {
        let ei = rel_l2(l, &per_step[i * n..(i + 1) * n]);
        assert!(ei <= 1e-4, "step {i}: rel err {ei:.3e}");
    }
    assert!(e <= 1e-4);
}

#[test]
fn sampling_dit_ddim_10_cfg() {
    assert!(sampling_case("dit-tiny-ddim10-cfg").0 <= 1e-4);
}

#[test]
fn sampling_pixart_lcm_4_injected_noise() {
    assert!(sampling_case("pixart-tiny-lcm4").0 <= 1e-4);
}

#[test]
fn sampling_pixart_delta_dit_n2_nc4_b12() {
    let (e, out) = sampling_case("pixart-tiny-delta-n2-nc4-b12");
    let f = SafetensorsFile::open(&case_dir("pixart-tiny-delta-n2-nc4-b12").join("expected.safetensors")).unwrap();
    let blocks: Vec<i64> = f.get("blocks_run").unwrap().to_i64("blocks_run").unwrap();
    assert_eq!(out.blocks_run.iter().map(|&b| b as i64).collect::<Vec<_>>(), blocks, "blocks_run per step");
    assert!(e <= 1e-4);
}
