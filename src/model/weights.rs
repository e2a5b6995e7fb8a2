//! Where weights come from: a diffusers checkpoint folder (single or sharded safetensors, f32/f16/
//! bf16, memory-mapped) or seeded random values for in-memory presets. Either way they reach the
//! backend through [`Loader`], converted to the backend's dtype once.

use crate::io::SafetensorsFile;
use crate::rng::Rng;
use crate::{Backend, Error, Result, Tensor};
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A named-tensor source.
pub trait WeightSource {
    /// f32 values of `key`, which must have shape `shape`.
    fn get(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether `key` exists (optional tensors).
    fn contains(&self, key: &str) -> bool;
    /// Storage dtype(s), for `info`.
    fn describe(&self) -> String;
}

/// A diffusers checkpoint: `diffusion_pytorch_model.safetensors`, a sharded
/// `*.safetensors.index.json`, or a folder with exactly one `.safetensors` file.
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    index: HashMap<String, usize>,
    desc: String,
}

impl Checkpoint {
    /// Opens the weights of a diffusers model folder (memory-mapped; nothing is read yet).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found")));
        }
        let single = dir.join("diffusion_pytorch_model.safetensors");
        if single.is_file() {
            return Self::from_files(vec![single]);
        }
        let entries: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        if let Some(index) = entries.iter().find(|p| p.to_string_lossy().ends_with(".safetensors.index.json")) {
            return Self::from_index(index);
        }
        let mut st: Vec<PathBuf> =
            entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
        st.sort();
        match st.len() {
            1 => Self::from_files(st),
            0 => Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no .safetensors weights in the model folder"),
            )),
            n => Err(Error::io(
                dir,
                std::io::Error::other(format!(
                    "{n} .safetensors files but no *.safetensors.index.json to say which holds what"
                )),
            )),
        }
    }

    fn from_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: index_path.into(),
            key: None,
            msg: format!("not JSON: {e}"),
        })?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Config {
            path: index_path.into(),
            key: Some("weight_map".into()),
            msg: "missing, or not an object".into(),
        })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
        shards.sort();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        Self::from_files(files)
    }

    fn from_files(paths: Vec<PathBuf>) -> Result<Self> {
        let files = paths.iter().map(|p| SafetensorsFile::open(p)).collect::<Result<Vec<_>>>()?;
        let mut index = HashMap::new();
        let mut dtypes = std::collections::BTreeSet::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                if let Some(info) = f.info(&name) {
                    dtypes.insert(format!("{:?}", info.dtype));
                }
                index.insert(name, i);
            }
        }
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let desc = format!("{} ({})", names.join(", "), dtypes.into_iter().collect::<Vec<_>>().join("/"));
        Ok(Checkpoint { files, index, desc })
    }

    /// Tensors over all files.
    pub fn num_tensors(&self) -> usize {
        self.index.len()
    }

    /// Elements over all tensors (as stored: DiT's per-block copies of the embedders count).
    pub fn num_parameters(&self) -> usize {
        self.index.iter().map(|(k, &i)| self.files[i].info(k).map_or(0, |t| t.shape.iter().product::<usize>())).sum()
    }

    /// The files and their dtypes.
    pub fn describe_dtypes(&self) -> String {
        self.desc.clone()
    }
}

impl WeightSource for Checkpoint {
    fn get(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let file = self
            .index
            .get(key)
            .map(|&i| &self.files[i])
            .ok_or_else(|| Error::MissingWeight { key: key.into(), source_desc: self.desc.clone() })?;
        let raw =
            file.get(key).ok_or_else(|| Error::MissingWeight { key: key.into(), source_desc: self.desc.clone() })?;
        if raw.shape != shape {
            return Err(Error::WeightShape { key: key.into(), expected: shape.to_vec(), found: raw.shape.to_vec() });
        }
        match raw.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => raw.to_f32(key),
            other => Err(Error::WeightDType { key: key.into(), dtype: format!("{other:?}") }),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }
}

/// Seeded random weights for presets built in memory (latency does not depend on the values).
/// Each tensor's values derive from the seed and its key, so they do not depend on load order.
/// Scaled like a trained model's (≈ 1/√fan_in) so activations stay in range through many blocks.
pub struct RandomWeights {
    /// the seed every tensor's values derive from
    pub seed: u64,
}

impl WeightSource for RandomWeights {
    fn get(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut rng = Rng::new(self.seed ^ h);
        let n: usize = shape.iter().product();
        let fan_in = if shape.len() >= 2 { shape[1..].iter().product::<usize>() } else { 0 };
        let std = if fan_in > 0 { 1.0 / (fan_in as f32).sqrt() } else { 0.02 };
        Ok(rng.normal_vec(n, std))
    }

    fn contains(&self, _key: &str) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }
}

/// Uploads weights from a source to a backend in its activation dtype.
pub struct Loader<'a, B: Backend> {
    pub backend: &'a B,
    pub source: &'a dyn WeightSource,
}

/// A PyTorch Linear: weight `[out, in]`, optional bias `[out]`.
pub struct Linear<B: Backend> {
    pub w: Tensor<B>,
    pub b: Option<Tensor<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn out_features(&self) -> usize {
        self.w.shape()[0]
    }
    pub fn in_features(&self) -> usize {
        self.w.shape()[1]
    }
}

impl<B: Backend> Loader<'_, B> {
    /// The values of `key`, checked: as many as `shape` holds, all finite (a source is user
    /// code, and a NaN weight would only show as NaN images).
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.source.get(key, shape)?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(Error::WeightShape { key: key.into(), expected: shape.to_vec(), found: vec![data.len()] });
        }
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteWeight { key: key.into(), index, value: data[index] });
        }
        Ok(data)
    }

    pub fn tensor(&self, key: &str, shape: &[usize]) -> Result<Tensor<B>> {
        let data = self.get(key, shape)?;
        self.backend.upload(&data, shape, self.backend.act_dtype())
    }

    pub fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        self.fused_linear(&[prefix], out, inp, bias)
    }

    /// Several Linears with the same input, stacked along the output dimension (fused Q/K/V and
    /// K/V projections: one GEMM instead of three).
    pub fn fused_linear(&self, prefixes: &[&str], out_each: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        let parts: Vec<(&str, usize)> = prefixes.iter().map(|&p| (p, out_each)).collect();
        self.stacked_linear(&parts, inp, bias)
    }

    /// Linears with the same input and any output sizes `(prefix, out)`, stacked along the output
    /// dimension in that order into one `[Σ out, inp]` weight (FLUX's single block: Q, K, V and
    /// the MLP input in one GEMM). The parts are not kept separately.
    pub fn stacked_linear(&self, parts: &[(&str, usize)], inp: usize, bias: bool) -> Result<Linear<B>> {
        let n: usize = parts.iter().map(|&(_, out)| out).sum();
        let mut w = Vec::with_capacity(n * inp);
        let mut b = Vec::with_capacity(n);
        for &(p, out) in parts {
            w.extend(self.get(&format!("{p}.weight"), &[out, inp])?);
            if bias {
                b.extend(self.get(&format!("{p}.bias"), &[out])?);
            }
        }
        let dt = self.backend.act_dtype();
        Ok(Linear {
            w: self.backend.upload(&w, &[n, inp], dt)?,
            b: if bias { Some(self.backend.upload(&b, &[n], dt)?) } else { None },
        })
    }
}
