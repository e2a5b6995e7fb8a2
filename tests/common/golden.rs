//! The golden cases of tests/data (diffusers 0.42.1, f32), run on any backend.

use deltadit::cache::CacheSpec;
use deltadit::internals::{rel_l2, SafetensorsFile};
use deltadit::io::Inputs;
use deltadit::model::Transformer;
use deltadit::pipeline::{forward, sample, ForwardInputs, SampleConfig, SampleInputs, SampleOutput};
use deltadit::sampler::{SchedulerConfig, SchedulerName};
use deltadit::Backend;
use std::path::PathBuf;

pub const FORWARD_CASES: &[&str] = &[
    "pixart-tiny",
    "pixart-tiny-nonsquare-ar",
    "pixart-tiny-bf16-weights",
    "dit-tiny",
    "sd3-tiny",
    "sd35-tiny-nonsquare",
];
pub const SAMPLING_CASES: &[&str] = &[
    "pixart-tiny-dpmpp20-cfg",
    "dit-tiny-ddim10-cfg",
    "pixart-tiny-lcm4",
    "pixart-tiny-delta-n2-nc4-b12",
    "sd3-tiny-flowmatch12-cfg",
];

/// `$DELTADIT_TEST_DATA/<name>` when set (the GPU bundle runs the test binaries away from the
/// checkout), else `tests/data/<name>`.
pub fn case_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("DELTADIT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    root.join(name)
}

pub fn expected_f32(name: &str, tensor: &str) -> Vec<f32> {
    let f = SafetensorsFile::open(&case_dir(name).join("expected.safetensors")).unwrap();
    f.get(tensor).unwrap_or_else(|| panic!("{name}: no expected `{tensor}`")).to_f32(tensor).unwrap()
}

pub fn expected_i64(name: &str, tensor: &str) -> Vec<i64> {
    let f = SafetensorsFile::open(&case_dir(name).join("expected.safetensors")).unwrap();
    f.get(tensor).unwrap_or_else(|| panic!("{name}: no expected `{tensor}`")).to_i64(tensor).unwrap()
}

/// The model folder of a case: the case folder itself, or the repository folder its case.json
/// names under `"model"` (the trained models of models/, shared by several cases).
pub fn model_dir(name: &str) -> PathBuf {
    let dir = case_dir(name);
    // A case.json that is there must parse: a silent fallback to the case folder would hide it.
    let case: serde_json::Value = match std::fs::read_to_string(dir.join("case.json")) {
        Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{name}: case.json: {e}")),
        Err(_) => serde_json::Value::Null,
    };
    match case.get("model").and_then(|m| m.as_str()) {
        // The repository path: beside the GPU bundle's data/ (bundle/models), above a
        // checkout's tests/data, or in the source tree.
        Some(m) => {
            let mut candidates = Vec::new();
            if let Some(root) = std::env::var_os("DELTADIT_TEST_DATA").map(PathBuf::from) {
                candidates.push(root.join("..").join(m));
                candidates.push(root.join("../..").join(m));
            }
            candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(m));
            let fallback = candidates[candidates.len() - 1].clone();
            candidates.into_iter().find(|c| c.join("config.json").is_file()).unwrap_or(fallback)
        }
        None => dir,
    }
}

/// Relative error of one forward case on `be`.
pub fn forward_case<B: Backend>(be: &B, name: &str) -> f64 {
    let dir = case_dir(name);
    let model = Transformer::load(be, &model_dir(name)).unwrap();
    let inputs = Inputs::open(&dir.join("inputs.safetensors")).unwrap();
    let inputs = ForwardInputs::from_inputs(&inputs, model.config()).unwrap();
    let (out, _) = forward(be, &model, &inputs).unwrap();
    let e = rel_l2(&out, &expected_f32(name, "sample"));
    println!("{name} on {}: rel err {e:.3e}", B::NAME);
    e
}

pub struct SamplingCase {
    pub scheduler: SchedulerName,
    pub steps: usize,
    pub guidance: f32,
    pub cache: CacheSpec,
    pub scheduler_config: SchedulerConfig,
}

pub fn read_case(name: &str) -> SamplingCase {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir(name).join("case.json")).unwrap()).unwrap();
    let scheduler = match v["scheduler"]["_class_name"].as_str().unwrap() {
        "DPMSolverMultistepScheduler" => "dpm-solver++",
        "DDIMScheduler" => "ddim",
        "LCMScheduler" => "lcm",
        "FlowMatchEulerDiscreteScheduler" => "flow-match-euler",
        other => panic!("unknown scheduler {other}"),
    };
    let scheduler_config = SchedulerConfig::from_json_str(&v["scheduler"].to_string()).unwrap();
    let cache = match v.get("cache") {
        // the reference (the Δ-DiT paper's method) reuses the cached Δ as stored
        Some(c) => format!("delta:n={},nc={},b={},calibrator=none", c["N"], c["Nc"], c["b"]).parse().unwrap(),
        None => CacheSpec::none(),
    };
    SamplingCase {
        scheduler: scheduler.parse().unwrap(),
        steps: v["steps"].as_u64().unwrap() as usize,
        guidance: v["guidance_scale"].as_f64().unwrap() as f32,
        cache,
        scheduler_config,
    }
}

/// Runs a sampling case on `be`; returns (relative error of the final latents, the output).
/// Checks the timesteps and, where the case has them, `blocks_run`.
pub fn sampling_case<B: Backend>(be: &B, name: &str) -> (f64, SampleOutput) {
    let dir = case_dir(name);
    let model = Transformer::load(be, &model_dir(name)).unwrap();
    let case = read_case(name);
    let inputs =
        SampleInputs::from_inputs(&Inputs::open(&dir.join("inputs.safetensors")).unwrap(), model.config()).unwrap();
    let mut cfg = SampleConfig::new(case.scheduler, case.steps, case.guidance);
    cfg.keep_per_step = true;
    cfg.scheduler_config = case.scheduler_config.clone();
    let policy = case.cache.build(model.config().family, model.num_blocks(), case.steps).unwrap();
    let out = sample(be, &model, &inputs, &cfg, policy, &mut |_, _| {}).unwrap();
    assert_eq!(out.timesteps, expected_f32(name, "timesteps"), "{name}: timesteps");
    if let Some(sigmas) = &out.sigmas {
        assert_eq!(sigmas, &expected_f32(name, "sigmas"), "{name}: sigmas");
    }
    if SafetensorsFile::open(&dir.join("expected.safetensors")).unwrap().get("blocks_run").is_some() {
        let blocks: Vec<i64> = out.blocks_run.iter().map(|&b| b as i64).collect();
        assert_eq!(blocks, expected_i64(name, "blocks_run"), "{name}: blocks_run per step");
    }
    let e = rel_l2(&out.latents, &expected_f32(name, "latents"));
    println!("{name} on {}: final latents rel err {e:.3e}", B::NAME);
    (e, out)
}
