//! The `deltadit` binary end to end: forward and sample on golden cases, info, and the error
//! paths (one clear line on stderr and a non-zero exit, never a panic).

mod common;

use common::rel_l2;
use deltadit::internals::SafetensorsFile;
use deltadit::io::{write_safetensors, HostTensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deltadit"))
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deltadit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run deltadit")
}

/// Asserts failure with exactly one stderr line that contains every `needles` item.
#[track_caller]
fn fails_with(out: Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` missing from: {err}");
    }
}

fn read(path: &Path, name: &str) -> Vec<f32> {
    SafetensorsFile::open(path).unwrap().get(name).unwrap().to_f32(name).unwrap()
}

#[test]
fn forward_writes_sample_matching_diffusers() {
    let out = tmp("forward.safetensors");
    let dir = data("pixart-tiny");
    let o = run(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = rel_l2(&read(&out, "sample"), &read(&dir.join("expected.safetensors"), "sample"));
    assert!(e <= 1e-5, "rel err {e:.2e}");
}

#[test]
fn sample_with_delta_cache_writes_latents_timesteps_and_blocks_run() {
    let out = tmp("sample.safetensors");
    let dir = data("pixart-tiny-delta-n2-nc4-b12");
    let o = run(&[
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--scheduler",
        "dpm-solver++",
        "--steps",
        "20",
        "--guidance",
        "4.5",
        "--cache",
        "delta:n=2,nc=4,b=12,calibrator=none",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exp = dir.join("expected.safetensors");
    assert!(rel_l2(&read(&out, "latents"), &read(&exp, "latents")) <= 1e-4);
    assert_eq!(read(&out, "blocks_run"), read(&exp, "blocks_run"));
    assert_eq!(read(&out, "timesteps"), read(&exp, "timesteps"));
}

/// `--cache schedule:mask=…`: the full steps of the mask run every block, the others none (the
/// whole stack's Δ reused); an all-ones mask is the uncached run exactly; bad masks are one error
/// line naming `mask`.
#[test]
fn sample_with_a_schedule_mask() {
    let dir = data("pixart-tiny-dpmpp20-cfg");
    let inputs = dir.join("inputs.safetensors");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let layers = cfg["num_layers"].as_u64().unwrap() as f32;
    let sample = |cache: &str, name: &str| {
        let out = tmp(name);
        let o = run(&[
            "sample",
            "--model",
            dir.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--scheduler",
            "dpm-solver++",
            "--steps",
            "20",
            "--guidance",
            "4.5",
            "--cache",
            cache,
        ]);
        assert!(o.status.success(), "{cache}: {}", String::from_utf8_lossy(&o.stderr));
        (read(&out, "latents"), read(&out, "blocks_run"))
    };
    let mask = "11011010110101101011";
    let (lat, blocks) = sample(&format!("schedule:mask={mask}"), "schedule.safetensors");
    let want: Vec<f32> = mask.chars().map(|c| if c == '1' { layers } else { 0.0 }).collect();
    assert_eq!(blocks, want);
    let (none, _) = sample("none", "schedule-none.safetensors");
    let e = rel_l2(&lat, &none);
    assert!(e > 1e-6 && e < 0.5, "cached steps change the result, a little: {e:.2e}");
    let (ones, all) = sample(&format!("schedule:mask={}", "1".repeat(20)), "schedule-ones.safetensors");
    assert_eq!(ones, none, "an all-ones mask is the uncached run");
    assert!(all.iter().all(|&b| b == layers));
    let base = [
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--output",
        "/tmp/x.safetensors",
    ];
    let with = |c: &str| run(&[&base[..], &["--cache", c]].concat());
    fails_with(with("schedule:mask=1101"), &["mask", "1101", "20 bits"]);
    fails_with(with(&format!("schedule:mask=0{}", "1".repeat(19))), &["mask", "first bit is 1"]);
    fails_with(with("schedule:mask=11a1"), &["mask", "11a1"]);
    fails_with(with("schedule"), &["mask"]);
}

#[test]
fn info_reports_parameters_and_macs() {
    let o = run(&["info", "--model", data("dit-tiny").to_str().unwrap()]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("DiTTransformer2DModel") && s.contains("parameters") && s.contains("MACs"), "{s}");
}

// ------------------------------------------------------------------ errors

/// A copy of a golden model folder with a changed config or weights.
fn model_copy(name: &str, case: &str) -> PathBuf {
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(data(case).join(f), dir.join(f)).unwrap();
    }
    dir
}

fn forward_args<'a>(model: &'a str, inputs: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["forward", "--model", model, "--inputs", inputs, "--output", out]
}

#[test]
fn missing_model_folder() {
    let inputs = data("pixart-tiny").join("inputs.safetensors");
    fails_with(
        run(&forward_args("/nonexistent/model", inputs.to_str().unwrap(), "/tmp/x.safetensors")),
        &["/nonexistent/model"],
    );
}

#[test]
fn missing_inputs_file() {
    let m = data("pixart-tiny");
    fails_with(
        run(&forward_args(m.to_str().unwrap(), "/nonexistent/in.safetensors", "/tmp/x.safetensors")),
        &["/nonexistent/in.safetensors"],
    );
}

#[test]
fn truncated_weights() {
    let dir = model_copy("truncated", "pixart-tiny");
    let w = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let inputs = data("pixart-tiny").join("inputs.safetensors");
    fails_with(
        run(&forward_args(dir.to_str().unwrap(), inputs.to_str().unwrap(), "/tmp/x.safetensors")),
        &["truncated", "diffusion_pytorch_model.safetensors"],
    );
}

#[test]
fn unknown_class_name() {
    let dir = model_copy("unknown-class", "pixart-tiny");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("PixArtTransformer2DModel", "UNet2DConditionModel");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let inputs = data("pixart-tiny").join("inputs.safetensors");
    fails_with(
        run(&forward_args(dir.to_str().unwrap(), inputs.to_str().unwrap(), "/tmp/x.safetensors")),
        &["UNet2DConditionModel"],
    );
}

#[test]
fn hub_class_name_is_remapped_by_norm_type() {
    let dir = model_copy("hub-class", "dit-tiny");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("DiTTransformer2DModel", "Transformer2DModel");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let out = tmp("hub.safetensors");
    let inputs = data("dit-tiny").join("inputs.safetensors");
    let o = run(&forward_args(dir.to_str().unwrap(), inputs.to_str().unwrap(), out.to_str().unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(rel_l2(&read(&out, "sample"), &read(&data("dit-tiny").join("expected.safetensors"), "sample")) <= 1e-5);
}

/// Rewrites the golden weights without one key, or with one key reshaped.
fn weights_edit(name: &str, case: &str, drop: Option<&str>, reshape: Option<(&str, Vec<usize>)>) -> PathBuf {
    let dir = model_copy(name, case);
    let src = SafetensorsFile::open(&data(case).join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for k in src.names() {
        if Some(k.as_str()) == drop {
            continue;
        }
        let t = src.get(&k).unwrap();
        let mut shape = t.shape.to_vec();
        if let Some((rk, s)) = &reshape {
            if *rk == k {
                shape = s.clone();
            }
        }
        tensors.push((k.clone(), HostTensor::F32(t.to_f32(&k).unwrap(), shape)));
    }
    let named: Vec<(&str, HostTensor)> = tensors.into_iter().map(|(k, t)| (&*k.leak(), t)).collect();
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &named).unwrap();
    dir
}

#[test]
fn missing_weight_names_the_key() {
    let key = "transformer_blocks.1.attn2.to_k.weight";
    let dir = weights_edit("missing-key", "pixart-tiny", Some(key), None);
    let inputs = data("pixart-tiny").join("inputs.safetensors");
    fails_with(run(&forward_args(dir.to_str().unwrap(), inputs.to_str().unwrap(), "/tmp/x.safetensors")), &[key]);
}

#[test]
fn wrong_weight_shape_names_expected_and_found() {
    let key = "transformer_blocks.0.ff.net.2.weight";
    let dir = weights_edit("bad-shape", "pixart-tiny", None, Some((key, vec![576, 144])));
    let inputs = data("pixart-tiny").join("inputs.safetensors");
    fails_with(
        run(&forward_args(dir.to_str().unwrap(), inputs.to_str().unwrap(), "/tmp/x.safetensors")),
        &[key, "[144, 576]", "[576, 144]"],
    );
}

#[test]
fn input_of_wrong_shape_or_missing_is_named() {
    let m = data("pixart-tiny");
    let src = SafetensorsFile::open(&m.join("inputs.safetensors")).unwrap();
    let get = |k: &str| src.get(k).unwrap().to_f32(k).unwrap();
    // hidden_states with 3 channels
    let bad = tmp("bad-inputs.safetensors");
    write_safetensors(
        &bad,
        &[
            ("hidden_states", HostTensor::F32(get("hidden_states")[..2 * 3 * 16 * 16].to_vec(), vec![2, 3, 16, 16])),
            ("timestep", HostTensor::F32(get("timestep"), vec![2])),
            ("encoder_hidden_states", HostTensor::F32(get("encoder_hidden_states"), vec![2, 12, 64])),
        ],
    )
    .unwrap();
    fails_with(
        run(&forward_args(m.to_str().unwrap(), bad.to_str().unwrap(), "/tmp/x.safetensors")),
        &["hidden_states", "[2, 3, 16, 16]"],
    );
    // encoder states missing
    let missing = tmp("missing-inputs.safetensors");
    write_safetensors(
        &missing,
        &[
            ("hidden_states", HostTensor::F32(get("hidden_states"), vec![2, 4, 16, 16])),
            ("timestep", HostTensor::F32(get("timestep"), vec![2])),
        ],
    )
    .unwrap();
    fails_with(
        run(&forward_args(m.to_str().unwrap(), missing.to_str().unwrap(), "/tmp/x.safetensors")),
        &["encoder_hidden_states"],
    );
    // text features of the wrong width
    let wide = tmp("wide-inputs.safetensors");
    write_safetensors(
        &wide,
        &[
            ("hidden_states", HostTensor::F32(get("hidden_states"), vec![2, 4, 16, 16])),
            ("timestep", HostTensor::F32(get("timestep"), vec![2])),
            (
                "encoder_hidden_states",
                HostTensor::F32(get("encoder_hidden_states")[..2 * 12 * 32].to_vec(), vec![2, 12, 32]),
            ),
        ],
    )
    .unwrap();
    fails_with(
        run(&forward_args(m.to_str().unwrap(), wide.to_str().unwrap(), "/tmp/x.safetensors")),
        &["encoder_hidden_states"],
    );
}

#[test]
fn input_of_wrong_dtype_is_named() {
    let m = data("dit-tiny");
    let src = SafetensorsFile::open(&m.join("inputs.safetensors")).unwrap();
    let get = |k: &str| src.get(k).unwrap().to_f32(k).unwrap();
    let bad = tmp("fractional-labels.safetensors");
    write_safetensors(
        &bad,
        &[
            ("hidden_states", HostTensor::F32(get("hidden_states"), vec![2, 4, 16, 16])),
            ("timestep", HostTensor::F32(get("timestep"), vec![2])),
            ("class_labels", HostTensor::F32(vec![1.5, 3.0], vec![2])),
        ],
    )
    .unwrap();
    fails_with(
        run(&forward_args(m.to_str().unwrap(), bad.to_str().unwrap(), "/tmp/x.safetensors")),
        &["class_labels", "integers"],
    );
}

#[test]
fn bad_cache_spec_and_device_options() {
    let dir = data("pixart-tiny-dpmpp20-cfg");
    let inputs = dir.join("inputs.safetensors");
    let base = [
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--output",
        "/tmp/x.safetensors",
    ];
    let with = |extra: &[&str]| run(&[&base[..], extra].concat());
    fails_with(with(&["--cache", "delta:nc=1,b=99"]), &["b", "99", "0 ≤ b ≤ 20"]);
    fails_with(with(&["--cache", "teacache"]), &["teacache", "delta"]);
    fails_with(with(&["--scheduler", "euler"]), &["scheduler", "euler"]);
    fails_with(with(&["--dtype", "bf16"]), &["dtype", "f32"]);
    fails_with(with(&["--device", "tpu"]), &["device", "tpu"]);
    fails_with(with(&["--steps", "0"]), &["steps"]);
}

/// DELTADIT_ATTENTION picks the kernel backends' attention kernel: an unknown value is one error
/// line naming the variable; `wgmma` on the shim labels the bench's backend (so that joined tables
/// keep such runs apart from the default kernel's).
#[cfg(deltadit_sim)]
#[test]
fn attention_kernel_environment_variable() {
    let json = tmp("bench-wgmma.json");
    let args = [
        "bench",
        "--device",
        "sim",
        "--preset",
        "pixart-cpu-small",
        "--steps",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--policies",
        "none",
    ];
    let bench = |value: &str, json: Option<&Path>| {
        let mut c = bin();
        c.args(args).env("DELTADIT_ATTENTION", value);
        if let Some(j) = json {
            c.arg("--json").arg(j);
        }
        c.output().expect("run deltadit")
    };
    fails_with(bench("flash", None), &["DELTADIT_ATTENTION", "flash", "mma, wgmma, wgmma-qregs, wgmma-qregs3"]);
    let out = bench("wgmma", Some(&json));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["backend"], "sim (wgmma attention)");
    assert_eq!(report["rows"][0]["blocks"].as_u64(), Some(28), "one step of all 28 blocks");
}

fn models(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

/// Runs `bench --device cpu --model models/<model> --images N --steps S --runs 1 --warmup 0
/// --policies P` followed by `extra`: the quality kit on a trained model, one timed run.
fn bench_model(model: &str, images: usize, steps: usize, policies: &str, extra: &[&str]) -> Output {
    let (model, images, steps) = (models(model), images.to_string(), steps.to_string());
    let mut args = vec!["bench", "--device", "cpu", "--model", model.to_str().unwrap(), "--images", &images];
    args.extend(["--steps", &steps, "--runs", "1", "--warmup", "0", "--policies", policies]);
    args.extend(extra);
    run(&args)
}

/// `sample --image` on the golden DiT-digits case writes a PNG of the samples; on a latent model
/// it is one error line saying that decoding needs a VAE.
#[test]
fn sample_writes_a_png_grid_of_pixel_space_samples() {
    let case = data("dit-digits-ddim20-cfg");
    let (out, png) = (tmp("digits.safetensors"), tmp("digits.png"));
    let o = run(&[
        "sample",
        "--model",
        models("dit-digits").to_str().unwrap(),
        "--inputs",
        case.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--scheduler",
        "ddim",
        "--steps",
        "20",
        "--image",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // Two 16×16 samples drawn 4× with one-pixel borders, side by side: 2·65 + 1 by 65 + 2.
    let (w, h) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (131, 66));

    let latent = data("pixart-tiny-dpmpp20-cfg");
    let o = run(&[
        "sample",
        "--model",
        latent.to_str().unwrap(),
        "--inputs",
        latent.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--image",
        png.to_str().unwrap(),
    ]);
    fails_with(o, &["image", "4 latent channels", "VAE"]);
}

/// `bench --model` on a trained model judges the samples: PSNR/SSIM/accuracy columns, the
/// fewer-steps baseline rows, and the JSON with every row's quality.
#[test]
fn bench_on_a_trained_model_reports_quality_and_the_fewer_steps_baseline() {
    let json = tmp("bench-digits.json");
    let o = bench_model("dit-digits", 4, 8, "none;delta:n=2,nc=4,b=4", &["--json", json.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{}", text, String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("SSIM") && text.contains("acc %") && text.contains("fewer-steps"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["quality"]["psnr_mean"], 100.0, "none against itself");
    let delta = &rows[1];
    assert!(delta["block_ratio"].as_f64().unwrap() < 1.0);
    let q = delta["quality"]["psnr_mean"].as_f64().unwrap();
    assert!(q > 10.0 && q < 100.0, "delta's PSNR {q}");
    // The fewer-steps row at delta's compute: steps = round(8 · block ratio).
    let k = (8.0 * delta["block_ratio"].as_f64().unwrap()).round() as u64;
    assert!(rows.iter().any(|r| r["policy"] == "fewer-steps" && r["steps"] == k), "{v}");
}

/// `calibrate` sweeps every kind of policy and names the cheapest setting over a target.
#[test]
fn calibrate_prints_the_frontier_and_the_choice() {
    let json = tmp("calibrate.json");
    let o = run(&[
        "calibrate",
        "--device",
        "cpu",
        "--model",
        models("dit-digits").to_str().unwrap(),
        "--images",
        "2",
        "--steps",
        "8",
        "--target-psnr",
        "25",
        "--budget",
        "0.5",
        "--json",
        json.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{}", text, String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("frontier") && text.contains("PSNR ≥ 25") && text.contains("within 50% compute"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let settings = v["settings"].as_array().unwrap();
    let kinds: std::collections::BTreeSet<&str> = settings.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    // searched schedules: full steps first and last, compute = full steps / steps
    let sched: Vec<&serde_json::Value> = settings.iter().filter(|s| s["kind"] == "schedule").collect();
    assert!(!sched.is_empty());
    for s in &sched {
        let mask = s["spec"].as_str().unwrap().strip_prefix("schedule:mask=").unwrap();
        assert!(mask.len() == 8 && mask.starts_with('1') && mask.ends_with('1'), "{mask}");
        let ones = mask.chars().filter(|&c| c == '1').count() as f64;
        assert!((s["compute"].as_f64().unwrap() - ones / 8.0).abs() < 1e-9, "{s}");
    }
    assert!(settings.iter().any(|s| s["frontier"] == true));
    // The two choices, checked against the JSON: the setting printed under each heading (its
    // kind first, its spec in the line; the longest spec that fits, as specs extend each other).
    let chosen = |heading: &str| -> &serde_json::Value {
        let line = text.lines().skip_while(|l| !l.starts_with(heading)).nth(1).unwrap_or_else(|| panic!("{text}"));
        settings
            .iter()
            .filter(|s| line.starts_with(s["kind"].as_str().unwrap()) && line.contains(s["spec"].as_str().unwrap()))
            .max_by_key(|s| s["spec"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("no setting of the JSON in `{line}`"))
    };
    let f = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap();
    let cheapest = chosen("cheapest setting with PSNR ≥ 25 dB");
    let min_compute = settings.iter().filter(|s| f(s, "psnr") >= 25.0).map(|s| f(s, "compute")).fold(2.0, f64::min);
    assert!(f(cheapest, "psnr") >= 25.0 && f(cheapest, "compute") == min_compute, "{cheapest}");
    // (a default and a swept setting can be the same spec: the same plans, the same images)
    let same = |a: &serde_json::Value, b: &serde_json::Value| {
        ["kind", "spec", "steps", "compute", "psnr"].iter().all(|k| a[*k] == b[*k])
    };
    assert!(same(&v["cheapest_over_target"], cheapest), "the JSON's choice is the printed one");
    let best = chosen("best setting within 50% compute");
    let max_psnr = settings.iter().filter(|s| f(s, "compute") <= 0.5).map(|s| f(s, "psnr")).fold(f64::MIN, f64::max);
    assert!(f(best, "compute") <= 0.5 && f(best, "psnr") == max_psnr, "{best}");
    assert!(same(&v["best_within_budget"], best), "the JSON's choice is the printed one");
    fails_with(run(&["calibrate", "--model", models("dit-digits").to_str().unwrap(), "--budget", "2"]), &["budget"]);
}

/// SD3 through the CLI: `sample` with the flow-match scheduler from `--scheduler-config` (the
/// diffusers scheduler_config.json of the golden case) reproduces diffusers' latents, timesteps
/// and sigmas.
#[test]
fn sample_sd3_with_a_scheduler_config_matches_diffusers() {
    let dir = data("sd3-tiny-flowmatch12-cfg");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let sched = tmp("sd3-scheduler_config.json");
    std::fs::write(&sched, case["scheduler"].to_string()).unwrap();
    let out = tmp("sd3-sample.safetensors");
    let o = run(&[
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--scheduler-config",
        sched.to_str().unwrap(),
        "--steps",
        "12",
        "--guidance",
        "5.0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exp = dir.join("expected.safetensors");
    let e = rel_l2(&read(&out, "latents"), &read(&exp, "latents"));
    assert!(e <= 1e-4, "rel err {e:.2e}");
    assert_eq!(read(&out, "timesteps"), read(&exp, "timesteps"));
    assert_eq!(read(&out, "sigmas"), read(&exp, "sigmas"));
    // a DDPM solver on a flow-matching model is an error that names the scheduler
    let o = run(&[
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--scheduler",
        "ddim",
    ]);
    fails_with(o, &["scheduler", "flow-match-euler"]);
}

/// FLUX.1-dev through the CLI: `sample` on packed latents with the prompt embeddings and pooled
/// text, the guidance scale embedded (`--guidance`), FluxPipeline's linear sigmas with μ from the
/// image tokens; without a scheduler config FLUX.1's default (dynamic shifting) applies.
#[test]
fn sample_flux_dev_with_embedded_guidance_matches_diffusers() {
    let dir = data("flux-dev-tiny-sampling8");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let sched = tmp("flux-scheduler_config.json");
    std::fs::write(&sched, case["scheduler"].to_string()).unwrap();
    let out = tmp("flux-sample.safetensors");
    let exp = dir.join("expected.safetensors");
    let inputs = dir.join("inputs.safetensors");
    for with_config in [true, false] {
        let mut args = vec![
            "sample",
            "--model",
            dir.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--steps",
            "8",
            "--guidance",
            "3.5",
        ];
        if with_config {
            args.extend(["--scheduler-config", sched.to_str().unwrap()]);
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e = rel_l2(&read(&out, "latents"), &read(&exp, "latents"));
        assert!(e <= 1e-4, "scheduler config {with_config}: rel err {e:.2e}");
        assert_eq!(read(&out, "timesteps"), read(&exp, "timesteps"));
        assert_eq!(read(&out, "sigmas"), read(&exp, "sigmas"));
    }
    assert!(fails_on_image(&dir, &out), "a PNG grid of packed latents is an error");
}

/// `sample --image` on packed latents: an error, not a panic.
fn fails_on_image(dir: &Path, out: &Path) -> bool {
    let png = tmp("flux.png");
    let o = run(&[
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--image",
        png.to_str().unwrap(),
    ]);
    !o.status.success()
}

/// `bench` on the trained SD3 model judges its samples, and the table's columns stay aligned
/// whatever the length of a policy's spec.
#[test]
fn bench_on_sd3_digits_keeps_its_columns_aligned() {
    let o = bench_model(
        "sd3-digits",
        2,
        6,
        "none;delta-adaptive:threshold=0.05,warmup=1,max-cached=2,nc=3,b=3;fora:n=2",
        &["--no-baseline"],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{}", text, String::from_utf8_lossy(&o.stderr));
    let table: Vec<&str> =
        text.lines().skip_while(|l| !l.starts_with("policy")).take_while(|l| !l.starts_with("PSNR/SSIM")).collect();
    assert_eq!(table.len(), 4, "{text}");
    let width = table[0].chars().count();
    assert!(table.iter().all(|l| l.chars().count() == width), "rows of unequal width:\n{}", table.join("\n"));
    assert!(text.contains("acc %"), "{text}");
}

/// The FLUX presets are listed, and `bench --preset flux-cpu-small` runs FluxPipeline's loop on
/// random weights: batch 1 (no CFG batch, the guidance embedded), 64 packed tokens, all 12 blocks
/// a step uncached, fewer with `delta`.
#[test]
fn bench_lists_and_runs_the_flux_presets() {
    let o = run(&["bench", "--list-presets"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for name in ["flux-dev-1024", "flux-schnell-1024", "flux-cpu-small"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing from\n{text}");
    }
    let json = tmp("bench-flux-preset.json");
    let o = run(&[
        "bench",
        "--device",
        "cpu",
        "--preset",
        "flux-cpu-small",
        "--steps",
        "4",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--policies",
        "none;delta",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((v["batch"].as_u64(), v["tokens"].as_u64(), v["layers"].as_u64()), (Some(1), Some(64), Some(12)));
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["blocks"].as_u64(), Some(4 * 12));
    assert!(rows[1]["blocks"].as_u64().unwrap() < 4 * 12, "{}", rows[1]);
}

/// `bench --model models/flux-digits` judges FLUX's samples: the packed [n, 64, 4] latents are
/// unpacked to 16×16 images (the grids are 16×16 images drawn 4×) and the classifier reads them.
#[test]
fn bench_on_flux_digits_unpacks_and_judges_the_samples() {
    let (json, grids) = (tmp("bench-flux-digits.json"), tmp("flux-grids"));
    let o = bench_model(
        "flux-digits",
        2,
        6,
        "none;fora:n=2",
        &["--no-baseline", "--json", json.to_str().unwrap(), "--grids", grids.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{}", text, String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("acc %") && text.contains("batch 2 × 64 tokens"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["quality"]["psnr_mean"], 100.0, "none against itself");
    let acc = rows[0]["quality"]["accuracy"].as_f64().expect("a classifier accuracy");
    assert!((0.0..=1.0).contains(&acc));
    let q = rows[1]["quality"]["psnr_mean"].as_f64().unwrap();
    assert!(q > 10.0 && q < 100.0, "fora's PSNR {q}");
    let bytes = std::fs::read(grids.join("01-none.png")).unwrap();
    let (w, h) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (131, 66), "two 16×16 images side by side");
}

/// FLUX true CFG through the CLI: `sample --true-cfg 2` with the negative prompt's
/// `uncond_embeds`/`uncond_pooled` in the inputs equals FluxPipeline(true_cfg_scale=2.0) (golden
/// flux-digits-truecfg20), two full calls a step; without a negative prompt it is an error naming
/// the missing tensor.
#[test]
fn sample_flux_true_cfg_matches_diffusers() {
    let dir = data("flux-digits-truecfg20");
    let out = tmp("flux-truecfg.safetensors");
    let model = models("flux-digits");
    let args = |inputs: &Path| {
        run(&[
            "sample",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--steps",
            "20",
            "--guidance",
            "3.5",
            "--true-cfg",
            "2.0",
        ])
    };
    let o = args(&dir.join("inputs.safetensors"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exp = dir.join("expected.safetensors");
    let e = rel_l2(&read(&out, "latents"), &read(&exp, "latents"));
    assert!(e <= 1e-4, "rel err {e:.2e}");
    assert_eq!(read(&out, "timesteps"), read(&exp, "timesteps"));
    let blocks = deltadit::io::Inputs::open(&out).unwrap().i64("blocks_run", 1).unwrap().0;
    assert_eq!(blocks, vec![12; 20], "two calls of 6 blocks a step");
    fails_with(args(&data("flux-digits-sampling20").join("inputs.safetensors")), &["uncond_embeds", "true CFG"]);
}
