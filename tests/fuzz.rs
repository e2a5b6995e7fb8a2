//! Property tests of the library's contract on user data: whatever the config, safetensors file,
//! input tensors, cache spec or user-written cache policy, a call returns an `Err` or a correct
//! result, never a panic. Each property runs a bounded number of generated cases
//! (`PROPTEST_CASES` overrides it); inputs that pass validation are run through the CPU backend on
//! small models and their results checked (finite outputs, the shapes asked for).

use deltadit::backend::cpu::Cpu;
use deltadit::cache::{CacheNeeds, CachePolicy, CacheSpec, Calibrator, Probe, Quantity, StepInfo, StepPlan};
use deltadit::io::{write_safetensors, HostTensor, Inputs};
use deltadit::model::{Checkpoint, Conditioning, Family, ModelConfig, RandomWeights, TextInput, Transformer};
use deltadit::pipeline::{self, Denoiser, ForwardInputs, SampleConfig, SampleInputs};
use deltadit::sampler::SchedulerName;
use deltadit::{Backend, Error};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Cases per property (the test command keeps them few; a nightly job may raise them).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

thread_local! {
    /// Cases of the running property that reached a result and had it checked.
    static CHECKED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts a case whose result was checked (not merely rejected as an error).
fn checked<T>(r: Result<T, String>) -> Result<T, String> {
    if r.is_ok() {
        CHECKED.with(|c| c.set(c.get() + 1));
    }
    r
}

/// Runs `strategy` through `test` `n` times; a panic inside `test` fails the property with the
/// generated input that caused it. At least `min_checked` percent of the cases must reach a result
/// that is checked (`checked`), so a property cannot degenerate into rejecting every input.
fn check<S: Strategy>(name: &str, n: u32, min_checked: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug + Clone,
{
    CHECKED.with(|c| c.set(0));
    // A fixed seed: the same cases on every run (a failure reproduces; CI cannot flake).
    let config = Config { cases: cases(n), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let result = runner.run(&strategy, |v| {
        let shown = format!("{v:?}");
        match catch_unwind(AssertUnwindSafe(|| test(v))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(TestCaseError::fail(format!("{msg} (input {shown:.400})"))),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(TestCaseError::fail(format!("panicked: {msg} (input {shown:.400})")))
            }
        }
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let (done, total) = (CHECKED.with(|c| c.get()), cases(n));
    println!("{name}: {done} of {total} cases reached a checked result");
    assert!(100 * done >= min_checked * total, "{name}: only {done} of {total} cases reached a checked result");
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn be() -> Cpu {
    Cpu::new(1)
}

/// No value beyond ±1e4 (inputs whose results cannot overflow f32 through the model).
fn moderate(v: &[f32]) -> bool {
    v.iter().all(|x| x.abs() < 1e4)
}

fn finite(v: &[f32]) -> Result<(), String> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(format!("an Ok result holds {} at element {i}", v[i])),
    }
}

// ---------------------------------------------------------------- configs

/// A JSON value of any type, biased towards the edge cases of numbers.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..10).prop_map(|v| json!(v)),
        prop_oneof![Just(0u64), Just(1), Just(3), Just(4), Just(7), Just(65_537), Just(u64::MAX)]
            .prop_map(|v| json!(v)),
        (-5i64..0).prop_map(|v| json!(v)),
        prop_oneof![Just(-1e-6f64), Just(0.0), Just(1e-6), Just(2.5), Just(1e300), Just(-1e300)].prop_map(|v| json!(v)),
        "[a-z_-]{0,12}".prop_map(Value::String),
        Just(json!([1, 2])),
        Just(json!({"x": 1})),
    ]
}

const CONFIG_KEYS: &[&str] = &[
    "_class_name",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "num_layers",
    "patch_size",
    "sample_size",
    "cross_attention_dim",
    "caption_channels",
    "norm_eps",
    "interpolation_scale",
    "use_additional_conditions",
    "num_embeds_ada_norm",
    "attention_bias",
    "norm_type",
    "activation_fn",
    "norm_elementwise_affine",
    "attention_type",
    "joint_attention_dim",
    "caption_projection_dim",
    "pooled_projection_dim",
    "pos_embed_max_size",
    "qk_norm",
    "dual_attention_layers",
];

/// A small valid config, then some keys replaced by arbitrary values or removed.
fn config_json() -> impl Strategy<Value = Value> {
    let base = prop_oneof![
        Just(json!({
            "_class_name": "PixArtTransformer2DModel", "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": 2, "out_channels": 4, "num_layers": 2, "patch_size": 2, "sample_size": 8,
            "cross_attention_dim": 16, "caption_channels": 8, "norm_eps": 1e-6, "use_additional_conditions": false
        })),
        Just(json!({
            "_class_name": "DiTTransformer2DModel", "num_attention_heads": 1, "attention_head_dim": 12,
            "in_channels": 1, "out_channels": 2, "num_layers": 2, "patch_size": 2, "sample_size": 8,
            "num_embeds_ada_norm": 3, "norm_type": "ada_norm_zero"
        })),
        Just(json!({"_class_name": "Transformer2DModel", "norm_type": "ada_norm_single", "num_layers": 1,
            "num_attention_heads": 1, "attention_head_dim": 12, "sample_size": 8, "in_channels": 1,
            "cross_attention_dim": 4, "caption_channels": 4})),
        Just(json!({
            "_class_name": "SD3Transformer2DModel", "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": 2, "out_channels": 2, "num_layers": 2, "patch_size": 2, "sample_size": 8,
            "joint_attention_dim": 12, "caption_projection_dim": 16, "pooled_projection_dim": 6,
            "pos_embed_max_size": 6, "qk_norm": null, "dual_attention_layers": []
        })),
        Just(json!({
            "_class_name": "SD3Transformer2DModel", "num_attention_heads": 1, "attention_head_dim": 12,
            "in_channels": 1, "num_layers": 3, "patch_size": 1, "sample_size": 8,
            "joint_attention_dim": 5, "caption_projection_dim": 12, "pooled_projection_dim": 3,
            "pos_embed_max_size": 10, "qk_norm": "rms_norm", "dual_attention_layers": [0, 2]
        })),
    ];
    let edits = prop::collection::vec((0..CONFIG_KEYS.len(), prop::option::of(any_value())), 0..4);
    (base, edits).prop_map(|(mut v, edits)| {
        let o = v.as_object_mut().unwrap();
        for (k, val) in edits {
            match val {
                Some(x) => o.insert(CONFIG_KEYS[k].to_string(), x),
                None => o.remove(CONFIG_KEYS[k]),
            };
        }
        v
    })
}

/// A config either is an error that names a key or file, or builds a model whose forward is
/// finite (small configs only: sizes of a validated config can still be large).
#[test]
fn configs_error_or_run() {
    check("configs", 160, 15, config_json(), |v| {
        let text = v.to_string();
        let cfg = match ModelConfig::from_json_str(&text) {
            Err(e) => {
                let msg = e.to_string();
                return if msg.is_empty() { Err("an empty error message".into()) } else { Ok(()) };
            }
            Ok(c) => c,
        };
        if cfg.inner_dim() % 4 != 0 || !(cfg.norm_eps.is_finite() && cfg.norm_eps > 0.0) {
            return Err(format!("accepted a config the model cannot run: {cfg:?}"));
        }
        let small = cfg.inner_dim() <= 64
            && cfg.num_layers <= 4
            && cfg.sample_size <= 16
            && cfg.in_channels <= 8
            && cfg.joint_attention_dim.unwrap_or(0) <= 64
            && cfg.pooled_projection_dim.unwrap_or(0) <= 64
            && cfg.pos_embed_max_size.unwrap_or(0) <= 64;
        if !small || cfg.patch_size > cfg.sample_size {
            return Ok(());
        }
        let be = be();
        let model = match Transformer::from_source(&be, cfg.clone(), &RandomWeights { seed: 1 }) {
            Ok(m) => m,
            Err(e) => return Err(format!("a validated config failed to build with random weights: {e}")),
        };
        let p = cfg.patch_size;
        // SD3 crops its position table: a latent larger than it is an error, not a forward
        let grid = (cfg.sample_size / p).max(1).min(cfg.pos_embed_max_size.unwrap_or(usize::MAX));
        let side = grid * p;
        let mut cond = Conditioning { batch: 2, height: side, width: side, ..Default::default() };
        match cfg.family {
            Family::PixArt => {
                let feat = cfg.caption_channels.or(cfg.cross_attention_dim).unwrap_or(1);
                cond.text = Some(TextInput {
                    embeds: vec![0.5; 2 * 3 * feat],
                    mask: Some(vec![1.0, 1.0, 0.0, 1.0, 0.0, 0.0]),
                    len: 3,
                });
                if cfg.use_additional_conditions {
                    cond.resolution = Some(vec![64.0; 4]);
                    cond.aspect_ratio = Some(vec![1.0; 2]);
                }
            }
            Family::DiT => cond.class_labels = Some(vec![0, cfg.num_embeds_ada_norm]),
            _ => {
                let (feat, pooled) = (cfg.joint_attention_dim.unwrap_or(1), cfg.pooled_projection_dim.unwrap_or(1));
                cond.text = Some(TextInput { embeds: vec![0.5; 2 * 3 * feat], mask: None, len: 3 });
                cond.pooled = Some((0..2 * pooled).map(|i| (i as f32 * 0.7).cos()).collect());
            }
        }
        let n = 2 * cfg.in_channels * side * side;
        let inp = ForwardInputs {
            hidden_states: (0..n).map(|i| (i as f32 * 0.37).sin()).collect(),
            shape: vec![2, cfg.in_channels, side, side],
            timestep: vec![10.0, 900.0],
            cond,
        };
        match pipeline::forward(&be, &model, &inp) {
            Ok((out, shape)) => {
                if shape != [2, cfg.out_channels, side, side] || out.len() != shape.iter().product::<usize>() {
                    return Err(format!("output shape {shape:?} with {} values", out.len()));
                }
                checked(finite(&out))
            }
            Err(e) => Err(format!("a valid forward failed: {e}")),
        }
    });
}

// ---------------------------------------------------------------- safetensors

/// A safetensors file: an 8-byte header length, a JSON header, data; built from parts that are
/// each sometimes wrong.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        4 => Just(("F32", 4usize)),
        2 => Just(("F16", 2)),
        2 => Just(("BF16", 2)),
        1 => Just(("I64", 8)),
        1 => Just(("I32", 4)),
        1 => Just(("U8", 1)),
        1 => Just(("BOOL", 1)),
        1 => Just(("F64", 8)),
        1 => Just(("F8_E4M3", 1)),
        1 => Just(("C64", 8)),
        1 => Just(("XX", 1)),
    ];
    let tensor = (dtype, prop::collection::vec(0usize..5, 0..4));
    let tensors = prop::collection::vec(("[a-z_.]{1,20}", tensor), 0..4);
    let huge = prop_oneof![Just(usize::MAX / 2), Just(1usize << 40), Just(usize::MAX)];
    (tensors, any::<u8>(), 0usize..300, huge).prop_map(|(tensors, mode, cut, huge)| {
        // A valid file: contiguous offsets, as many data bytes as the header says.
        let mut header = Map::new();
        let mut data = Vec::new();
        for (i, (name, ((dt, size), mut shape))) in tensors.into_iter().enumerate() {
            let n: usize = shape.iter().product::<usize>() * size;
            let start = data.len();
            data.extend((0..n).map(|k| (k * 37 + i * 11) as u8));
            let mut end = data.len();
            // Then one corruption, half of the time.
            match mode % 12 {
                1 => end += 1,                             // offsets past the data
                2 if !shape.is_empty() => shape[0] = huge, // a dimension that overflows
                3 => end = start.saturating_sub(1),        // offsets backwards
                _ => {}
            }
            header.insert(name, json!({ "dtype": dt, "shape": shape, "data_offsets": [start, end] }));
        }
        let mut h = Value::Object(header).to_string().into_bytes();
        if mode % 12 == 4 {
            h.truncate(cut.min(h.len())); // malformed JSON
        }
        let len = match mode % 12 {
            5 => u64::MAX,
            6 => (h.len() + 3) as u64,
            _ => h.len() as u64,
        };
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend(h);
        bytes.extend(data);
        if mode % 12 == 7 {
            bytes.truncate(cut.min(bytes.len()));
        }
        bytes
    })
}

/// Opening a checkpoint or an inputs file of arbitrary bytes, then reading every tensor and
/// loading a model from it: errors, never panics.
#[test]
fn safetensors_files_error_or_read() {
    let dir = scratch("safetensors");
    std::fs::copy(data("pixart-tiny").join("config.json"), dir.join("config.json")).unwrap();
    let file = dir.join("diffusion_pytorch_model.safetensors");
    check("safetensors", 200, 20, safetensors_bytes(), |bytes| {
        std::fs::write(&file, &bytes).map_err(|e| e.to_string())?;
        if let Ok(inputs) = Inputs::open(&file) {
            for (name, shape) in inputs.shapes() {
                if let Ok((v, s)) = inputs.f32(&name, shape.len()) {
                    if v.len() != s.iter().product::<usize>() {
                        return Err(format!("{name}: {} values for shape {s:?}", v.len()));
                    }
                    checked(Ok(()))?;
                }
                let _ = inputs.i64(&name, shape.len());
            }
            let _ = ForwardInputs::from_inputs(&inputs, &ModelConfig::from_file(&dir.join("config.json")).unwrap());
        }
        if let Ok(ckpt) = Checkpoint::open_dir(&dir) {
            let _ = ckpt.num_parameters();
            let _ = Transformer::load(&be(), &dir);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- input tensors

fn tiny_pixart() -> &'static Transformer<Cpu> {
    static M: OnceLock<Transformer<Cpu>> = OnceLock::new();
    M.get_or_init(|| Transformer::load(&be(), &data("pixart-tiny")).unwrap())
}

fn tiny_dit() -> &'static Transformer<Cpu> {
    static M: OnceLock<Transformer<Cpu>> = OnceLock::new();
    M.get_or_init(|| Transformer::load(&be(), &data("dit-tiny")).unwrap())
}

/// SD3.5 layout: qk norm, dual attention, text features 64, pooled 48, a 32×32 position table.
fn tiny_sd3() -> &'static Transformer<Cpu> {
    static M: OnceLock<Transformer<Cpu>> = OnceLock::new();
    M.get_or_init(|| Transformer::load(&be(), &data("sd35-tiny-nonsquare")).unwrap())
}

/// The model of a fuzz case's kind: 0 PixArt, 1 DiT, 2 SD3.
fn tiny_model(kind: u8) -> &'static Transformer<Cpu> {
    match kind {
        0 => tiny_pixart(),
        1 => tiny_dit(),
        _ => tiny_sd3(),
    }
}

/// `n` values, a quarter of the time with one NaN, infinity or huge value at a random place.
fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    let bad = prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(-1e30f32)];
    (prop::collection::vec(-3.0f32..3.0, n..=n), prop::option::weighted(0.25, (any::<prop::sample::Index>(), bad)))
        .prop_map(|(mut v, bad)| {
            if let (Some((i, x)), false) = (bad, v.is_empty()) {
                let k = i.index(v.len());
                v[k] = x;
            }
            v
        })
}

/// Forward inputs files for the tiny PixArt and DiT models with shapes and values around the
/// valid ones (wrong batch, channels, sizes, missing or extra tensors, NaN values).
/// A tensor to write: name, values, shape.
type Named = (String, Vec<f32>, Vec<usize>);

fn forward_file() -> impl Strategy<Value = (u8, Vec<Named>)> {
    let dims = (
        prop_oneof![3 => Just(1usize), 3 => Just(2usize), 1 => 0usize..4],
        prop_oneof![6 => Just(4usize), 1 => 1usize..6],
        prop_oneof![4 => Just(16usize), 2 => Just(12usize), 1 => 0usize..18],
        prop_oneof![6 => Just(16usize), 1 => 1usize..20],
    );
    (
        0u8..3,
        dims,
        prop_oneof![6 => Just(12usize), 1 => 0usize..14],
        prop_oneof![6 => Just(64usize), 1 => 1usize..70],
        any::<u8>(),
        prop_oneof![6 => Just(48usize), 1 => 0usize..50],
    )
        .prop_flat_map(|(kind, (b, c, h, w), l, feat, drop, pooled)| {
            let n = b * c * h * w;
            (
                Just(kind),
                Just((b, c, h, w, l, feat, drop, pooled)),
                values(n.min(4096)),
                values(b.max(1)),
                values((b * l * feat).min(8192)),
                values((b * pooled).min(512)),
            )
        })
        .prop_map(|(kind, (b, c, h, w, l, feat, drop, pooled), x, t, e, pv)| {
            let mut v = Vec::new();
            let full = |d: Vec<f32>, s: Vec<usize>| {
                let n: usize = s.iter().product();
                let mut d = d;
                d.resize(n, 0.25);
                (d, s)
            };
            let (x, xs) = full(x, vec![b, c, h, w]);
            v.push(("hidden_states".to_string(), x, xs));
            if drop % 3 != 0 {
                let (t, ts) = full(t, vec![b]);
                v.push(("timestep".into(), t, ts));
            }
            if kind == 1 {
                v.push((
                    "class_labels".into(),
                    (0..b).map(|i| ((i * 700 + drop as usize) % 1200) as f32).collect(),
                    vec![b],
                ));
            } else {
                let (e, es) = full(e, vec![b, l, feat]);
                v.push(("encoder_hidden_states".into(), e, es));
                // a mask is an error for SD3 (it attends to every context token)
                if drop % 2 == 0 && (kind == 0 || drop % 7 == 0) {
                    v.push(("encoder_attention_mask".into(), vec![1.0; b * l], vec![b, l]));
                }
                if kind == 2 && drop % 5 != 0 {
                    let (p, ps) = full(pv, vec![b, pooled]);
                    v.push(("pooled_projections".into(), p, ps));
                }
                if kind == 2 && drop % 11 == 0 {
                    v.push(("skip_layers".into(), vec![(drop % 4) as f32], vec![1]));
                }
            }
            (kind, v)
        })
}

/// Forward input files: a valid one runs to a finite output of the right shape, anything else is
/// an error naming a tensor.
#[test]
fn forward_inputs_error_or_run() {
    let dir = scratch("forward");
    let path = dir.join("inputs.safetensors");
    check("forward inputs", 150, 10, forward_file(), |(kind, tensors)| {
        let model = tiny_model(kind);
        let list: Vec<(&str, HostTensor)> =
            tensors.iter().map(|(n, d, s)| (n.as_str(), HostTensor::F32(d.clone(), s.clone()))).collect();
        write_safetensors(&path, &list).map_err(|e| e.to_string())?;
        let inputs = Inputs::open(&path).map_err(|e| e.to_string())?;
        let parsed = match ForwardInputs::from_inputs(&inputs, model.config()) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        match pipeline::forward(&be(), model, &parsed) {
            Ok((out, shape)) => {
                let (b, h, w) = (parsed.shape[0], parsed.shape[2], parsed.shape[3]);
                if shape != [b, model.config().out_channels, h, w] {
                    return Err(format!("output shape {shape:?}"));
                }
                // Finite inputs near f32's range may overflow in any implementation (diffusers
                // too); moderate ones must give a finite output.
                if tensors.iter().all(|(_, d, _)| moderate(d)) {
                    checked(finite(&out))
                } else {
                    Ok(())
                }
            }
            Err(Error::NonFiniteInput { .. } | Error::Input { .. } | Error::MissingInput { .. }) => Ok(()),
            Err(e) => {
                // Sizes the model cannot run are errors too; they must say what is wrong.
                if e.to_string().is_empty() {
                    Err("an empty error".into())
                } else {
                    Ok(())
                }
            }
        }
    });
}

/// Sampling inputs of every kind of wrongness, through a few solver steps with guidance given as
/// any number (NaN and infinities included).
#[test]
fn sampling_inputs_error_or_run() {
    let guidance = prop_oneof![Just(4.5f32), Just(0.0), Just(1.0), Just(f32::NAN), Just(f32::INFINITY), -10.0f32..10.0];
    let strategy =
        (0u8..3, 1usize..3, prop_oneof![6 => Just(16usize), 1 => 1usize..18], 1usize..4, guidance, any::<u8>(), 0u8..4)
            .prop_flat_map(|(kind, n, h, steps, g, bits, sched)| {
                (Just((kind, n, h, steps, g, bits, sched)), values(n * 4 * h * 16), values(n * 12 * 64), values(n * 48))
            });
    check("sampling inputs", 80, 15, strategy, |((kind, n, h, steps, g, bits, sched), lat, emb, pooled)| {
        let (model, dit, sd3) = (tiny_model(kind), kind == 1, kind == 2);
        // SD3 attends to every context token: a mask is an error there (bits & 16 adds one)
        let masked = if sd3 { bits & 16 != 0 } else { bits & 1 == 0 };
        let text = |e: &[f32]| TextInput { embeds: e.to_vec(), mask: masked.then(|| vec![1.0; n * 12]), len: 12 };
        let inp = SampleInputs {
            latents: lat,
            shape: vec![n, 4, h, 16],
            cond: (!dit).then(|| text(&emb)),
            uncond: (!dit && bits & 2 == 0).then(|| text(&emb)),
            resolution: None,
            class_labels: dit.then(|| (0..n).map(|i| i * 600 + (bits as usize & 4) * 100).collect()),
            pooled: (sd3 && bits & 32 == 0).then(|| pooled.clone()),
            uncond_pooled: (sd3 && bits & 64 == 0).then(|| pooled.iter().map(|v| -v).collect()),
            noise: (bits & 8 == 0).then(|| vec![0.1; steps.saturating_sub(1) * n * 4 * h * 16]),
            image_ids: None,
        };
        // each family's own solvers, and now and then another family's (an error)
        let scheduler = match (sd3, sched) {
            (true, 0) | (false, 3) => SchedulerName::DpmSolverPP,
            (true, _) => SchedulerName::FlowMatchEuler,
            (false, _) => [SchedulerName::DpmSolverPP, SchedulerName::Ddim, SchedulerName::Lcm][sched as usize],
        };
        let cfg = SampleConfig::new(scheduler, steps, g);
        let policy = "delta".parse::<CacheSpec>().unwrap().build(model.config().family, model.num_blocks(), steps);
        let Ok(policy) = policy else { return Ok(()) };
        match pipeline::sample(&be(), model, &inp, &cfg, policy, &mut |_, _| {}) {
            Ok(out) => {
                if out.latents.len() != inp.latents.len() || out.blocks_run.len() != steps {
                    return Err(format!("{} latents, {} steps", out.latents.len(), out.blocks_run.len()));
                }
                if moderate(&inp.latents) && moderate(&emb) {
                    checked(finite(&out.latents))
                } else {
                    Ok(())
                }
            }
            Err(_) => Ok(()),
        }
    });
}

// ---------------------------------------------------------------- cache specs and policies

/// `--cache` strings around the grammar: known and unknown policies, keys and values.
fn cache_spec() -> impl Strategy<Value = String> {
    let policy = prop_oneof![
        Just("none"),
        Just("delta"),
        Just("delta-adaptive"),
        Just("fora"),
        Just("first-block"),
        Just("dbcache"),
        Just("teacache"),
        Just(""),
    ];
    let key = prop_oneof![
        Just("n"),
        Just("nc"),
        Just("b"),
        Just("threshold"),
        Just("warmup"),
        Just("max-cached"),
        Just("max_cached"),
        Just("fn"),
        Just("bn"),
        Just("max-continuous"),
        Just("calibrator"),
        Just("verify"),
        Just("zz")
    ];
    let val = prop_oneof![
        (0u64..30).prop_map(|v| v.to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("0.05".to_string()),
        Just("none".to_string()),
        Just("taylor1".to_string()),
        Just("taylor2".to_string()),
        Just("taylor3".to_string()),
        Just("18446744073709551616".to_string()),
        Just("".to_string())
    ];
    (policy, prop::collection::vec((key, val), 0..4), any::<bool>()).prop_map(|(p, kv, eq)| {
        let kv: Vec<String> =
            kv.into_iter().map(|(k, v)| if eq { format!("{k}={v}") } else { format!("{k}{v}") }).collect();
        if kv.is_empty() {
            p.to_string()
        } else {
            format!("{p}:{}", kv.join(","))
        }
    })
}

/// Specs parse or error; built policies give a schedule for any depth and step count, and run a
/// few steps on the tiny model.
#[test]
fn cache_specs_error_or_run() {
    check("cache specs", 200, 8, (cache_spec(), 0usize..40, 0usize..40), |(s, layers, steps)| {
        let Ok(spec) = s.parse::<CacheSpec>() else { return Ok(()) };
        if spec.to_string().parse::<CacheSpec>().ok() != Some(spec.clone()) {
            return Err(format!("`{spec}` does not parse back to itself"));
        }
        let Ok(mut policy) = spec.build(Family::PixArt, layers, steps) else { return Ok(()) };
        for p in deltadit::cache::schedule(&mut *policy, steps, layers) {
            if p.blocks_run(layers) > layers {
                return Err(format!("{p:?} runs more than {layers} blocks"));
            }
        }
        let model = tiny_pixart();
        if let Ok(policy) = spec.build(Family::PixArt, model.num_blocks(), 4) {
            if run_policy(model, policy, 4)? {
                checked(Ok(()))?;
            }
        }
        Ok(())
    });
}

/// A user-written policy that returns whatever plan it was given and declares whatever needs.
#[derive(Debug)]
struct Arbitrary {
    needs: CacheNeeds,
    probe: Probe,
    plans: Vec<StepPlan>,
}

impl CachePolicy for Arbitrary {
    fn name(&self) -> &'static str {
        "arbitrary"
    }
    fn params(&self) -> String {
        String::new()
    }
    fn probe(&self) -> Probe {
        self.probe
    }
    fn needs(&self) -> CacheNeeds {
        self.needs
    }
    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        self.plans[info.step % self.plans.len()]
    }
}

fn any_plan() -> impl Strategy<Value = StepPlan> {
    prop_oneof![
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(f, r, b, s)| StepPlan::Full {
            store_front: f,
            store_rear: r,
            store_branches: b,
            store_rest: s
        }),
        (0usize..9).prop_map(StepPlan::CachedRear),
        (0usize..9).prop_map(StepPlan::CachedFront),
        Just(StepPlan::ReuseBranches),
        Just(StepPlan::CachedAfterFirst),
    ]
}

/// Steps `policy` through a run on the tiny PixArt model: every step is an error or finite.
/// Returns whether the whole run completed (no policy error).
fn run_policy(model: &Transformer<Cpu>, policy: Box<dyn CachePolicy>, steps: usize) -> Result<bool, String> {
    let be = be();
    let mut cond = Conditioning { batch: 1, height: 16, width: 16, ..Default::default() };
    cond.text = Some(TextInput { embeds: vec![0.3; 12 * 64], mask: None, len: 12 });
    let Ok(mut d) = Denoiser::new(&be, model, &cond, policy) else { return Ok(false) };
    let lat: Vec<f32> = (0..4 * 256).map(|i| (i as f32 * 0.1).cos()).collect();
    for step in 0..steps {
        match d.forward(&be, &lat, &[999.0 - 100.0 * step as f32], step, steps) {
            Ok(r) => {
                if r.blocks_run > model.num_blocks() {
                    return Err(format!("{:?}: {} blocks", r.plan, r.blocks_run));
                }
                finite(&be.download(d.output()).map_err(|e| e.to_string())?)?;
            }
            Err(Error::CachePlan { .. }) => return Ok(false),
            Err(e) => return Err(format!("a policy's plan failed with {e} instead of a CachePlan error")),
        }
    }
    Ok(true)
}

/// Whatever a user policy declares and plans, the engine runs it or rejects it with a
/// `CachePlan` error; it never panics or produces NaN from an unwritten cache.
#[test]
fn user_policies_error_or_run() {
    let needs = (prop::option::of(0usize..9), prop::option::of(0usize..9), any::<bool>(), any::<bool>())
        .prop_map(|(front, rear, branches, first_block)| CacheNeeds { front, rear, branches, first_block });
    let probe = prop_oneof![Just(Probe::None), Just(Probe::Block0InputChange), Just(Probe::Block0ResidualDiff)];
    // Half the policies are consistent: what they plan, they declare, and they store everything on
    // a first full step; the rest declare and plan anything.
    let strategy = (needs, probe, prop::collection::vec(any_plan(), 1..5), any::<bool>()).prop_map(
        |(needs, probe, mut plans, consistent)| {
            if !consistent {
                return (needs, probe, plans);
            }
            let mut n = CacheNeeds::default();
            // First-Block-Cache stands alone: its policies plan full steps and cached-after-first.
            if plans.contains(&StepPlan::CachedAfterFirst) {
                for p in &mut plans {
                    if !matches!(p, StepPlan::Full { .. }) {
                        *p = StepPlan::CachedAfterFirst;
                    }
                }
            }
            for p in &plans {
                match *p {
                    StepPlan::CachedRear(k) => n.rear = Some(k.clamp(1, 6)),
                    StepPlan::CachedFront(k) => n.front = Some(k.clamp(1, 6)),
                    StepPlan::ReuseBranches => n.branches = true,
                    StepPlan::CachedAfterFirst => n.first_block = true,
                    _ => {}
                }
            }
            for p in &mut plans {
                match p {
                    StepPlan::CachedRear(k) => *k = n.rear.unwrap_or(1),
                    StepPlan::CachedFront(k) => *k = n.front.unwrap_or(1),
                    StepPlan::Full { store_front, store_rear, store_branches, store_rest } => {
                        (*store_front, *store_rear) = (n.front.is_some(), n.rear.is_some());
                        (*store_branches, *store_rest) = (n.branches, n.first_block);
                    }
                    _ => {}
                }
            }
            let all = StepPlan::Full {
                store_front: n.front.is_some(),
                store_rear: n.rear.is_some(),
                store_branches: n.branches,
                store_rest: n.first_block,
            };
            plans.insert(0, all);
            let probe = if n.first_block { Probe::Block0ResidualDiff } else { probe };
            (n, if !n.first_block && probe == Probe::Block0ResidualDiff { Probe::None } else { probe }, plans)
        },
    );
    check("user policies", 80, 20, strategy, |(needs, probe, plans)| {
        if run_policy(tiny_pixart(), Box::new(Arbitrary { needs, probe, plans }), 4)? {
            checked(Ok(()))?;
        }
        Ok(())
    });
}

/// A user-written policy of cached quantities (`quantities()`, `Compute`/`Reuse` plans) that
/// declares and plans whatever it was given.
#[derive(Debug)]
struct ArbitraryQuantities {
    quantities: Vec<Quantity>,
    probe: Probe,
    plans: Vec<StepPlan>,
}

impl CachePolicy for ArbitraryQuantities {
    fn name(&self) -> &'static str {
        "arbitrary-quantities"
    }
    fn params(&self) -> String {
        String::new()
    }
    fn probe(&self) -> Probe {
        self.probe
    }
    fn quantities(&self, _layers: usize) -> Vec<Quantity> {
        self.quantities.clone()
    }
    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        self.plans[info.step % self.plans.len()]
    }
}

/// Whatever quantities (any block range, branch outputs, TaylorSeer of any order), probe
/// (front blocks of any count) and plans a policy of quantities gives, the engine runs it or
/// rejects it with a `CachePlan` error: no panic, no NaN from an unwritten snapshot.
#[test]
fn user_quantity_policies_error_or_run() {
    let calibrator = prop_oneof![
        Just(Calibrator::None),
        Just(Calibrator::Taylor(1)),
        Just(Calibrator::Taylor(2)),
        Just(Calibrator::Taylor(3))
    ];
    let quantity = prop_oneof![
        4 => (0usize..3, 1usize..4, calibrator, prop::option::weighted(0.25, prop_oneof![Just(1e-30f32), Just(0.5), Just(1e30), Just(-1.0)]))
            .prop_map(|(from, to, c, v)| {
                let q = Quantity::blocks(from, to).calibrated(c);
                match v {
                    Some(t) => q.verified(t),
                    None => q,
                }
            }),
        1 => Just(Quantity::branches()),
    ];
    let plan = prop_oneof![
        (0u32..8).prop_map(|store| StepPlan::Compute { store }),
        (0usize..4, 0usize..5, 0usize..5).prop_map(|(quantity, from, to)| StepPlan::Reuse { quantity, from, to }),
        Just(StepPlan::FULL),
    ];
    let probe =
        prop_oneof![Just(Probe::None), Just(Probe::Block0InputChange), (0usize..4).prop_map(Probe::FrontResidualDiff)];
    let strategy = (
        prop::collection::vec(quantity, 0..3),
        probe,
        prop::collection::vec(plan, 1..5),
        prop::collection::vec(any::<bool>(), 4),
    )
        .prop_map(|(quantities, probe, mut plans, reuse)| {
            // Half the policies are consistent: a first full step stores every quantity, and the
            // reuses name a declared quantity over its own range.
            if reuse[0] && !quantities.is_empty() {
                plans.insert(0, StepPlan::Compute { store: (1 << quantities.len()) - 1 });
                for (i, p) in plans.iter_mut().enumerate().skip(1) {
                    if reuse[i % 4] {
                        let q = i % quantities.len();
                        let (from, to) = quantities[q].range(tiny_pixart().num_blocks());
                        *p = StepPlan::Reuse { quantity: q, from, to };
                    }
                }
            }
            (quantities, probe, plans)
        });
    check("user quantity policies", 160, 5, strategy, |(quantities, probe, plans)| {
        if run_policy(tiny_pixart(), Box::new(ArbitraryQuantities { quantities, probe, plans }), 6)? {
            checked(Ok(()))?;
        }
        Ok(())
    });
}

/// Sizes the process cannot hold are errors that name the size, checked when the run's context
/// is built, before anything is allocated (a latent of 2^20 × 2^20, a text of 2^20 tokens, a
/// batch whose activations overflow), on each family; an SD3 latent larger than its position
/// table is an error too.
#[test]
fn huge_sizes_are_errors_not_aborts() {
    let be = be();
    for model in [tiny_pixart(), tiny_dit(), tiny_sd3()] {
        let family = model.config().family;
        let text = |len: usize| Some(TextInput { embeds: vec![0.1; len * 64], mask: None, len });
        let mut huge_latent = Conditioning { batch: 1, height: 1 << 20, width: 1 << 20, ..Default::default() };
        huge_latent.text = text(4);
        huge_latent.class_labels = Some(vec![0]);
        huge_latent.pooled = Some(vec![0.1; 48]);
        let e = model.context(&be, &huge_latent).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("tokens"), "{family:?}: a 2^20 × 2^20 latent: `{e}`");
        let mut huge_batch = Conditioning { batch: usize::MAX / 2, height: 16, width: 16, ..Default::default() };
        huge_batch.text = text(4);
        let e = model.context(&be, &huge_batch).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("batch"), "{family:?}: a huge batch: `{e}`");
        let mut long_text = Conditioning { batch: 1, height: 16, width: 16, ..Default::default() };
        long_text.text = Some(TextInput { embeds: Vec::new(), mask: None, len: 1 << 20 });
        if family != Family::DiT {
            let e = model.context(&be, &long_text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("text tokens"), "{family:?}: 2^20 text tokens: `{e}`");
        }
    }
    let mut too_large = Conditioning { batch: 1, height: 66, width: 16, ..Default::default() };
    too_large.text = Some(TextInput { embeds: vec![0.1; 4 * 64], mask: None, len: 4 });
    too_large.pooled = Some(vec![0.1; 48]);
    let e = tiny_sd3().context(&be, &too_large).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("position table"), "an SD3 latent larger than its position table: `{e}`");
}
