//! Checkpoint formats: sharded safetensors with an index, and f16/bf16 storage converted at load.

mod common;

use common::rel_l2;
use deltadit::backend::cpu::Cpu;
use deltadit::internals::SafetensorsFile;
use deltadit::io::{write_safetensors, HostTensor, Inputs};
use deltadit::model::Transformer;
use deltadit::pipeline::{self, ForwardInputs};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deltadit-ckpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(data("pixart-tiny").join("config.json"), dir.join("config.json")).unwrap();
    dir
}

fn golden_weights() -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let f = SafetensorsFile::open(&data("pixart-tiny").join("diffusion_pytorch_model.safetensors")).unwrap();
    f.names()
        .into_iter()
        .map(|k| {
            let t = f.get(&k).unwrap();
            (k.clone(), t.to_f32(&k).unwrap(), t.shape.to_vec())
        })
        .collect()
}

fn forward(dir: &Path) -> Vec<f32> {
    let be = Cpu::default();
    let model = Transformer::load(&be, dir).unwrap();
    let inputs = Inputs::open(&data("pixart-tiny").join("inputs.safetensors")).unwrap();
    pipeline::forward(&be, &model, &ForwardInputs::from_inputs(&inputs, model.config()).unwrap()).unwrap().0
}

#[test]
fn sharded_checkpoint_with_index_loads_like_a_single_file() {
    let dir = scratch("sharded");
    let w = golden_weights();
    let (a, b) = w.split_at(w.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let tensors: Vec<(&str, HostTensor)> =
            part.iter().map(|(k, v, s)| (k.as_str(), HostTensor::F32(v.clone(), s.clone()))).collect();
        write_safetensors(&dir.join(shard), &tensors).unwrap();
        for (k, _, _) in part {
            map.insert(k.clone(), shard.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    let expected = SafetensorsFile::open(&data("pixart-tiny").join("expected.safetensors"))
        .unwrap()
        .get("sample")
        .unwrap()
        .to_f32("sample")
        .unwrap();
    let e = rel_l2(&forward(&dir), &expected);
    assert!(e <= 1e-5, "sharded: rel err {e:.2e}");
}

#[test]
fn f16_and_bf16_weights_convert_exactly_at_load() {
    let w = golden_weights();
    type Convert = Box<dyn Fn(&[f32], &[usize]) -> (Vec<f32>, HostTensor)>;
    let cases: [(&str, Convert); 2] = [
        (
            "f16",
            Box::new(|v: &[f32], s: &[usize]| {
                let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                (h.iter().map(|x| x.to_f32()).collect(), HostTensor::F16(h, s.to_vec()))
            }),
        ),
        (
            "bf16",
            Box::new(|v: &[f32], s: &[usize]| {
                let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                (h.iter().map(|x| x.to_f32()).collect(), HostTensor::BF16(h, s.to_vec()))
            }),
        ),
    ];
    for (name, conv) in cases {
        let (half_dir, f32_dir) = (scratch(&format!("{name}-stored")), scratch(&format!("{name}-as-f32")));
        let mut stored = Vec::new();
        let mut widened = Vec::new();
        for (k, v, s) in &w {
            let (rounded, t) = conv(v, s);
            stored.push((k.as_str(), t));
            widened.push((k.as_str(), HostTensor::F32(rounded, s.clone())));
        }
        write_safetensors(&half_dir.join("diffusion_pytorch_model.safetensors"), &stored).unwrap();
        write_safetensors(&f32_dir.join("diffusion_pytorch_model.safetensors"), &widened).unwrap();
        let (a, b) = (forward(&half_dir), forward(&f32_dir));
        assert_eq!(a, b, "{name}-stored weights must load as exactly their f32 values");
    }
}
