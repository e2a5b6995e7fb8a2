//! `deltadit._native`: the Python package's native module. Two classes:
//!
//! - `Runtime`: a model (PixArt, DiT, SD3/SD3.5 or FLUX.1) loaded on a backend (`cpu` f32, `sim` or `cuda` bf16/f16), from a
//!   diffusers folder (`Runtime.load`) or from a loaded torch module's tensors
//!   (`Runtime.from_weights`, a [`WeightSource`](deltadit::model::WeightSource) over them).
//! - `Session`: the runtime bound to one run's conditioning and cache policy
//!   ([`Denoiser`]), stepped one forward at a time on tensors handed over through DLPack:
//!   host tensors are read and written in place; CUDA tensors are copied device to device on the
//!   backend's stream, ordered after and before the caller's stream.
//!
//! The GIL is released while the runtime computes (loading a folder, building a run's context,
//! every forward). Everything else (torch conversions, the step bookkeeping of a diffusers
//! pipeline) is the Python side's (python/deltadit/).

mod dlpack;
mod errors;
mod weights;

use deltadit::backend::cpu::Cpu;
use deltadit::backend::cuda::Cuda;
use deltadit::backend::sim::Sim;
use deltadit::backend::AttentionKernel;
use deltadit::cache::{CachePolicy, CacheSpec, StepReport};
use deltadit::device::{AnyBackend, Device};
use deltadit::model::{Checkpoint, Conditioning, Family, ModelConfig, TextInput, Transformer, WeightSource};
use deltadit::pipeline::Denoiser;
use deltadit::{Backend, DType, Tensor};
use dlpack::{import_f32, F32View};
use errors::{input_error, unsupported, IntoPy};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A model and the backend it lives on.
struct Loaded<B: Backend> {
    be: B,
    /// shared with the denoisers of the runs (`Denoiser::shared`)
    model: Arc<Transformer<B>>,
}

enum AnyLoaded {
    Cpu(Arc<Loaded<Cpu>>),
    Sim(Arc<Loaded<Sim>>),
    Cuda(Arc<Loaded<Cuda>>),
}

macro_rules! with_loaded {
    ($any:expr, |$l:ident| $body:expr) => {
        match $any {
            AnyLoaded::Cpu($l) => $body,
            AnyLoaded::Sim($l) => $body,
            AnyLoaded::Cuda($l) => $body,
        }
    };
}

macro_rules! with_session {
    ($any:expr, |$r:ident| $body:expr) => {
        match $any {
            SessionInner::Cpu($r) => $body,
            SessionInner::Sim($r) => $body,
            SessionInner::Cuda($r) => $body,
        }
    };
}
/// `cpu`, `sim`, `cuda`, `cuda:N` (also `gpu`).
fn parse_device(s: &str) -> deltadit::Result<(Device, usize)> {
    let s = s.trim();
    if let Some(n) = s.strip_prefix("cuda:") {
        let ord = n.parse::<usize>().map_err(|_| deltadit::Error::param("device", s, "cpu, sim, cuda or cuda:N"))?;
        return Ok((Device::Cuda, ord));
    }
    let d: Device =
        s.parse().map_err(|_: deltadit::Error| deltadit::Error::param("device", s, "cpu, sim, cuda or cuda:N"))?;
    Ok((d, 0))
}

fn device_name(d: Device, ordinal: usize) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Sim => "sim".into(),
        _ => format!("cuda:{ordinal}"),
    }
}

fn make_backend(device: Device, ordinal: usize, dtype: Option<DType>, threads: Option<usize>) -> deltadit::Result<AnyBackend> {
    match device {
        Device::Cuda if ordinal != 0 => Ok(AnyBackend::Cuda(Cuda::new(ordinal, dtype.unwrap_or(device.default_dtype()))?)),
        Device::Cpu if dtype.is_none_or(|d| d == DType::F32) && threads.is_none() => Ok(AnyBackend::Cpu(Cpu::default())),
        _ => AnyBackend::new(device, dtype, threads),
    }
}

/// The kernel backends have attention kernels for a few head dims only; say so before any
/// weight is read (the library would find out at the first forward).
fn check_head_dim(py: Python<'_>, device: Device, cfg: &ModelConfig) -> PyResult<()> {
    if device == Device::Cpu {
        return Ok(());
    }
    let dims: Vec<usize> = AttentionKernel::default().head_dims().collect();
    let d = cfg.attention_head_dim;
    if dims.contains(&d) {
        return Ok(());
    }
    let details = PyDict::new(py);
    details.set_item("head_dim", d)?;
    details.set_item("supported", dims.clone())?;
    Err(unsupported(
        py,
        "unsupported_head_dim",
        format!(
            "attention_head_dim {d} has no attention kernel on the {} device (its kernels support head dims {}; \
             the cpu device runs any)",
            device_name(device, 0).trim_end_matches(":0"),
            dims.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        ),
        Some(details),
    ))
}

fn load_any(be: AnyBackend, cfg: ModelConfig, src: &dyn WeightSource) -> deltadit::Result<AnyLoaded> {
    Ok(match be {
        AnyBackend::Cpu(be) => {
            let model = Transformer::from_source(&be, cfg, src)?;
            AnyLoaded::Cpu(Arc::new(Loaded { be, model: Arc::new(model) }))
        }
        AnyBackend::Sim(be) => {
            let model = Transformer::from_source(&be, cfg, src)?;
            AnyLoaded::Sim(Arc::new(Loaded { be, model: Arc::new(model) }))
        }
        AnyBackend::Cuda(be) => {
            let model = Transformer::from_source(&be, cfg, src)?;
            AnyLoaded::Cuda(Arc::new(Loaded { be, model: Arc::new(model) }))
        }
    })
}

/// A diffusers transformer loaded on a backend.
#[pyclass(frozen, module = "deltadit._native")]
struct Runtime {
    inner: AnyLoaded,
    device: String,
}

impl Runtime {
    fn family_of(&self) -> Family {
        with_loaded!(&self.inner, |l| l.model.config().family)
    }
}

#[pymethods]
impl Runtime {
    /// Loads a diffusers transformer folder (`config.json` + safetensors weights).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", dtype = None, threads = None))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: Option<&str>, threads: Option<usize>) -> PyResult<Self> {
        let (dev, ord) = parse_device(device).py()?;
        let dtype = dtype.map(str::parse::<DType>).transpose().py()?;
        let cfg = ModelConfig::from_file(&path.join("config.json")).py()?;
        check_head_dim(py, dev, &cfg)?;
        let inner = py
            .detach(|| -> deltadit::Result<AnyLoaded> {
                let ckpt = Checkpoint::open_dir(&path)?;
                let be = make_backend(dev, ord, dtype, threads)?;
                load_any(be, cfg, &ckpt)
            })
            .py()?;
        Ok(Runtime { inner, device: device_name(dev, ord) })
    }

    /// Builds the model of `config_json` (a diffusers config) from tensors handed over by
    /// `fetch(key)` (a contiguous float32 host tensor per diffusers key among `keys`).
    #[staticmethod]
    #[pyo3(signature = (config_json, keys, fetch, describe, device = "cpu", dtype = None, threads = None))]
    #[allow(clippy::too_many_arguments)]
    fn from_weights(
        py: Python<'_>,
        config_json: &str,
        keys: Vec<String>,
        fetch: Bound<'_, PyAny>,
        describe: String,
        device: &str,
        dtype: Option<&str>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let (dev, ord) = parse_device(device).py()?;
        let dtype = dtype.map(str::parse::<DType>).transpose().py()?;
        let cfg = ModelConfig::from_json_str(config_json).py()?;
        check_head_dim(py, dev, &cfg)?;
        let be = py.detach(|| make_backend(dev, ord, dtype, threads)).py()?;
        let src = weights::TorchWeights::new(fetch, keys, describe);
        // The GIL stays held: the source calls back into Python for every tensor.
        let inner = match load_any(be, cfg, &src) {
            Ok(l) => l,
            Err(e) => return Err(src.py_err.take().unwrap_or_else(|| errors::err(e))),
        };
        Ok(Runtime { inner, device: device_name(dev, ord) })
    }

    /// The model's config as diffusers writes it (JSON).
    fn config_json(&self) -> String {
        with_loaded!(&self.inner, |l| l.model.config().to_json().to_string())
    }

    /// The family's short name (`Family::short_name`): `pixart`, `dit`, `sd3` or `flux`.
    #[getter]
    fn family(&self) -> &'static str {
        self.family_of().short_name()
    }

    /// The diffusers class the family is (`Family::name`): `PixArtTransformer2DModel`, ...
    #[getter]
    fn class_name(&self) -> &'static str {
        self.family_of().name()
    }

    /// Whether the model is trained for flow matching (SD3, FLUX: velocity prediction, σ schedules).
    #[getter]
    fn flow_matching(&self) -> bool {
        self.family_of().flow_matching()
    }

    #[getter]
    fn num_blocks(&self) -> usize {
        with_loaded!(&self.inner, |l| l.model.num_blocks())
    }

    /// `cpu`, `sim` or `cuda:N`.
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    /// The compute dtype: `f32`, `bf16` or `f16`.
    #[getter]
    fn dtype(&self) -> &'static str {
        with_loaded!(&self.inner, |l| l.be.act_dtype().name())
    }

    /// Where the weights came from.
    #[getter]
    fn weights_desc(&self) -> String {
        with_loaded!(&self.inner, |l| l.model.weights_desc().to_string())
    }

    /// Checks a cache spec for this model and `steps`; returns the policy as `name:params`.
    fn check_cache(&self, spec: &str, steps: usize) -> PyResult<String> {
        let policy = build_policy(&self.inner, spec, steps)?;
        Ok(policy_desc(&*policy))
    }

    /// Binds the model to one run: its conditioning (the whole model batch, CFG copies
    /// included, as contiguous float32 host tensors) and a cache policy for `steps` steps.
    #[pyo3(signature = (batch, height, width, *, encoder_hidden_states = None, encoder_attention_mask = None,
                        resolution = None, aspect_ratio = None, class_labels = None, pooled_projections = None,
                        skip_layers = None, image_ids = None, text_ids = None, guidance = None,
                        cache = "none", steps = 1))]
    #[allow(clippy::too_many_arguments)]
    fn session(
        &self,
        py: Python<'_>,
        batch: usize,
        height: usize,
        width: usize,
        encoder_hidden_states: Option<Bound<'_, PyAny>>,
        encoder_attention_mask: Option<Bound<'_, PyAny>>,
        resolution: Option<Bound<'_, PyAny>>,
        aspect_ratio: Option<Bound<'_, PyAny>>,
        class_labels: Option<Vec<i64>>,
        pooled_projections: Option<Bound<'_, PyAny>>,
        skip_layers: Option<Vec<i64>>,
        image_ids: Option<Bound<'_, PyAny>>,
        text_ids: Option<Bound<'_, PyAny>>,
        guidance: Option<Bound<'_, PyAny>>,
        cache: &str,
        steps: usize,
    ) -> PyResult<Session> {
        let mut cond = Conditioning { batch, height, width, ..Default::default() };
        if let Some(e) = encoder_hidden_states {
            let v = host_view(py, &e, "encoder_hidden_states")?;
            if v.shape.len() != 3 || v.shape[0] != batch {
                return Err(input_error(
                    py,
                    "encoder_hidden_states",
                    format!("expected [{batch}, tokens, features], found {:?}", v.shape),
                ));
            }
            let len = v.shape[1];
            let mask = match encoder_attention_mask {
                None => None,
                Some(m) => {
                    let mv = host_view(py, &m, "encoder_attention_mask")?;
                    if mv.shape != [batch, len] {
                        return Err(input_error(
                            py,
                            "encoder_attention_mask",
                            format!("expected [{batch}, {len}], found {:?}", mv.shape),
                        ));
                    }
                    // SAFETY: a host tensor kept alive by `mv`; the GIL is held.
                    Some(unsafe { mv.host_slice() }.to_vec())
                }
            };
            // SAFETY: as above
            cond.text = Some(TextInput { embeds: unsafe { v.host_slice() }.to_vec(), mask, len });
        }
        if let Some(r) = resolution {
            let v = host_view(py, &r, "resolution")?;
            if v.numel() != 2 * batch {
                return Err(input_error(py, "resolution", format!("expected [{batch}, 2], found {:?}", v.shape)));
            }
            // SAFETY: as above
            cond.resolution = Some(unsafe { v.host_slice() }.to_vec());
        }
        if let Some(a) = aspect_ratio {
            let v = host_view(py, &a, "aspect_ratio")?;
            if v.numel() != batch {
                return Err(input_error(py, "aspect_ratio", format!("expected [{batch}, 1], found {:?}", v.shape)));
            }
            // SAFETY: as above
            cond.aspect_ratio = Some(unsafe { v.host_slice() }.to_vec());
        }
        if let Some(labels) = class_labels {
            if labels.len() != batch {
                return Err(input_error(py, "class_labels", format!("expected {batch} labels, found {}", labels.len())));
            }
            let l: Option<Vec<usize>> = labels.iter().map(|&v| usize::try_from(v).ok()).collect();
            cond.class_labels = Some(l.ok_or_else(|| input_error(py, "class_labels", "negative label".into()))?);
        }
        if let Some(p) = pooled_projections {
            let v = host_view(py, &p, "pooled_projections")?;
            let dim = with_loaded!(&self.inner, |l| l.model.config().pooled_projection_dim);
            let want = dim.map(|d| vec![batch, d]);
            if v.shape.len() != 2 || v.shape[0] != batch || want.as_ref().is_some_and(|w| *w != v.shape) {
                let cols = dim.map_or("pooled_projection_dim".to_string(), |d| d.to_string());
                return Err(input_error(py, "pooled_projections", format!("expected [{batch}, {cols}], found {:?}", v.shape)));
            }
            // SAFETY: as above
            cond.pooled = Some(unsafe { v.host_slice() }.to_vec());
        }
        if let Some(layers) = skip_layers {
            let l: Option<Vec<usize>> = layers.iter().map(|&v| usize::try_from(v).ok()).collect();
            cond.skip_layers = l.ok_or_else(|| input_error(py, "skip_layers", "negative block index".into()))?;
        }
        // FLUX: RoPE positions [N, 3] / [L, 3] and dev's embedded guidance [batch] (sizes are
        // checked against the model when the run's context is built)
        for (v, name, slot) in [
            (image_ids, "img_ids", &mut cond.image_ids),
            (text_ids, "txt_ids", &mut cond.text_ids),
            (guidance, "guidance", &mut cond.guidance),
        ] {
            if let Some(v) = v {
                let view = host_view(py, &v, name)?;
                // SAFETY: as above
                *slot = Some(unsafe { view.host_slice() }.to_vec());
            }
        }
        let policy = build_policy(&self.inner, cache, steps)?;
        let policy_name = policy_desc(&*policy);
        let inner = match &self.inner {
            AnyLoaded::Cpu(l) => {
                let l = l.clone();
                SessionInner::Cpu(py.detach(move || Run::new(l, &cond, policy)).py()?)
            }
            AnyLoaded::Sim(l) => {
                let l = l.clone();
                SessionInner::Sim(py.detach(move || Run::new(l, &cond, policy)).py()?)
            }
            AnyLoaded::Cuda(l) => {
                let l = l.clone();
                SessionInner::Cuda(py.detach(move || Run::new(l, &cond, policy)).py()?)
            }
        };
        let (input_shape, output_shape, batch) = with_session!(&inner, |r| (
            r.denoiser.input_shape(),
            r.denoiser.output_shape(),
            r.denoiser.batch()
        ));
        Ok(Session { inner: Mutex::new(inner), input_shape, output_shape, batch, policy: policy_name, steps })
    }
}

fn build_policy(inner: &AnyLoaded, spec: &str, steps: usize) -> PyResult<Box<dyn CachePolicy>> {
    let spec: CacheSpec = spec.parse().py()?;
    let (family, layers) = with_loaded!(inner, |l| (l.model.config().family, l.model.num_blocks()));
    spec.build(family, layers, steps).py()
}

fn policy_desc(p: &dyn CachePolicy) -> String {
    let params = p.params();
    if params.is_empty() {
        p.name().to_string()
    } else {
        format!("{}:{params}", p.name())
    }
}

/// A host tensor (the Python side moves conditioning to the host before a session is built).
fn host_view<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>, what: &str) -> PyResult<F32View<'py>> {
    let v = import_f32(obj, what)?;
    if v.is_cuda() {
        return Err(input_error(py, what, "expected a host tensor here".into()));
    }
    Ok(v)
}

/// The backend's f32 output copied into a host slice of the same size.
trait HostOutput: Backend {
    fn output_into(&self, t: &Tensor<Self>, dst: &mut [f32]) -> deltadit::Result<()> {
        let v = self.download(t)?;
        if v.len() != dst.len() {
            return Err(deltadit::Error::input("out", format!("expected {} values, found {}", v.len(), dst.len())));
        }
        dst.copy_from_slice(&v);
        Ok(())
    }
}

impl HostOutput for Cpu {
    /// Straight from the workspace (host memory): one copy, none through an intermediate buffer.
    fn output_into(&self, t: &Tensor<Self>, dst: &mut [f32]) -> deltadit::Result<()> {
        let src: &[f32] = t.buf();
        if src.len() != dst.len() {
            return Err(deltadit::Error::input("out", format!("expected {} values, found {}", src.len(), dst.len())));
        }
        dst.copy_from_slice(src);
        Ok(())
    }
}
impl HostOutput for Sim {}
impl HostOutput for Cuda {}

/// A denoiser (holding a share of the model) and the backend it runs on.
struct Run<B: Backend> {
    denoiser: Denoiser<'static, B>,
    loaded: Arc<Loaded<B>>,
    /// the blocks see other timesteps than the forward's input (FLUX: 1000·t,
    /// `Transformer::model_timesteps`): device inputs go through the host
    scaled_t: bool,
}

impl<B: Backend + HostOutput> Run<B> {
    fn new(loaded: Arc<Loaded<B>>, cond: &Conditioning, policy: Box<dyn CachePolicy>) -> deltadit::Result<Self> {
        let denoiser = Denoiser::shared(&loaded.be, loaded.model.clone(), cond, policy)?;
        let scaled_t = loaded.model.model_timesteps(&[1.0, 0.5]) != [1.0, 0.5];
        Ok(Run { denoiser, loaded, scaled_t })
    }

    fn host_forward(
        &mut self,
        x: &[f32],
        t: &[f32],
        out: &mut [f32],
        step: usize,
        steps: usize,
    ) -> deltadit::Result<StepReport> {
        let be = &self.loaded.be;
        let report = self.denoiser.forward(be, x, t, step, steps)?;
        be.output_into(self.denoiser.output(), out)?;
        Ok(report)
    }
}

impl Run<Cuda> {
    /// Device to device on the backend's stream, after the work queued on `stream` so far; the
    /// caller's stream then waits for ours (also after a failure, for the copies already queued).
    fn device_forward(
        &mut self,
        x: u64,
        t: u64,
        out: u64,
        stream: *mut c_void,
        step: usize,
        steps: usize,
    ) -> deltadit::Result<StepReport> {
        let be = &self.loaded.be;
        for p in [x, t, out] {
            be.check_device_ptr(p)?;
        }
        // SAFETY: `stream` is the caller's current stream on this device (torch's, by the Python
        // side); the addresses are live device tensors of the sizes the copies read and write
        // (checked by the caller against the session's shapes) and stay allocated until the
        // caller's stream has waited for ours (signal_stream below).
        unsafe { be.wait_for_stream(stream)? };
        let r = (|| -> deltadit::Result<StepReport> {
            unsafe {
                be.copy_from_device_ptr(x, self.denoiser.input_mut())?;
                be.copy_from_device_ptr(t, self.denoiser.timesteps_mut())?;
            }
            if self.scaled_t {
                // the forward's timesteps → the blocks' (a [batch] round trip through the host)
                let host = be.download(self.denoiser.timesteps_mut())?;
                let model_t = self.loaded.model.model_timesteps(&host);
                be.write(self.denoiser.timesteps_mut(), &model_t)?;
            }
            let report = self.denoiser.forward_written(be, step, steps)?;
            unsafe { be.copy_to_device_ptr(self.denoiser.output(), out)? };
            Ok(report)
        })();
        let signalled = unsafe { be.signal_stream(stream) };
        let report = r?;
        signalled?;
        Ok(report)
    }
}

enum SessionInner {
    Cpu(Run<Cpu>),
    Sim(Run<Sim>),
    Cuda(Run<Cuda>),
}

/// One run: the model bound to a conditioning and a cache policy, stepped forward by forward.
#[pyclass(frozen, module = "deltadit._native")]
struct Session {
    inner: Mutex<SessionInner>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    batch: usize,
    policy: String,
    steps: usize,
}

fn disjoint(a: &F32View<'_>, b: &F32View<'_>) -> bool {
    let (ra, rb) = (a.byte_range(), b.byte_range());
    ra.is_empty() || rb.is_empty() || ra.end <= rb.start || rb.end <= ra.start
}

#[pymethods]
impl Session {
    /// One forward at step `step` of `steps`: `hidden_states` `[B, C, H, W]` and `timestep`
    /// `[B]` (contiguous float32, both on the host or both on the CUDA device) into `out`
    /// `[B, C_out, H, W]` (float32, same place). CUDA tensors need the cuda backend and
    /// `stream`, the caller's current stream handle. Returns (plan, blocks run, probe, seconds).
    #[pyo3(signature = (hidden_states, timestep, out, step, steps, stream = 0))]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        py: Python<'_>,
        hidden_states: Bound<'_, PyAny>,
        timestep: Bound<'_, PyAny>,
        out: Bound<'_, PyAny>,
        step: usize,
        steps: usize,
        stream: usize,
    ) -> PyResult<(String, usize, Option<f32>, f64)> {
        let x = import_f32(&hidden_states, "hidden_states")?;
        let t = import_f32(&timestep, "timestep")?;
        let o = import_f32(&out, "out")?;
        if x.shape != self.input_shape {
            return Err(input_error(
                py,
                "hidden_states",
                format!("expected shape {:?} (this run's batch and size), found {:?}", self.input_shape, x.shape),
            ));
        }
        if t.numel() != self.batch {
            return Err(input_error(py, "timestep", format!("expected {} values, found {:?}", self.batch, t.shape)));
        }
        if o.shape != self.output_shape {
            return Err(input_error(py, "out", format!("expected shape {:?}, found {:?}", self.output_shape, o.shape)));
        }
        if !(disjoint(&o, &x) && disjoint(&o, &t)) {
            return Err(input_error(py, "out", "overlaps an input".into()));
        }
        let cuda = [x.is_cuda(), t.is_cuda(), o.is_cuda()];
        let inner = &self.inner;
        let start = Instant::now();
        let result = if cuda == [false; 3] {
            // SAFETY: host tensors kept alive by the views; `out` is disjoint from the inputs and
            // written only here. Other Python threads may run meanwhile (the GIL is released):
            // writing these tensors then is a data race of the caller's, as with torch's own ops.
            let (xs, ts, os) = unsafe { (x.host_slice(), t.host_slice(), o.host_slice_mut()) };
            py.detach(|| {
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                with_session!(&mut *g, |r| r.host_forward(xs, ts, os, step, steps))
            })
        } else if cuda == [true; 3] {
            let (xa, ta, oa) = (x.addr, t.addr, o.addr);
            py.detach(|| {
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                match &mut *g {
                    SessionInner::Cuda(r) => Some(r.device_forward(xa, ta, oa, stream as *mut c_void, step, steps)),
                    _ => None,
                }
            })
            .ok_or_else(|| {
                PyValueError::new_err("CUDA tensors need a session on the cuda device (move them to the host first)")
            })?
        } else {
            return Err(PyValueError::new_err(
                "hidden_states, timestep and out must all be on the host or all on the CUDA device",
            ));
        };
        let report = result.py()?;
        Ok((report.plan.variant(), report.blocks_run, report.probe, start.elapsed().as_secs_f64()))
    }

    /// Starts a new run (the cache forgets its state; step 0 does this too).
    fn reset(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        with_session!(&mut *g, |r| r.denoiser.reset())
    }

    #[getter]
    fn input_shape(&self) -> Vec<usize> {
        self.input_shape.clone()
    }

    #[getter]
    fn output_shape(&self) -> Vec<usize> {
        self.output_shape.clone()
    }

    #[getter]
    fn batch(&self) -> usize {
        self.batch
    }

    /// The cache policy, `name:params`.
    #[getter]
    fn policy(&self) -> String {
        self.policy.clone()
    }

    /// The steps the policy was built for.
    #[getter]
    fn steps(&self) -> usize {
        self.steps
    }
}

/// Parses a cache spec (`delta`, `delta:n=3,nc=5,b=6`, `fora:n=3`, …) without a model; returns
/// its canonical text.
#[pyfunction]
fn parse_cache(spec: &str) -> PyResult<String> {
    let s: CacheSpec = spec.parse().py()?;
    Ok(s.to_string())
}

/// What this build holds: `cuda_kernels` (nvcc's fatbins for the cuda device), `sim` (the SIMT
/// shim for the sim device), and the head dims the kernels support.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("cuda_kernels", deltadit::backend::cuda::kernels_built())?;
    d.set_item("sim", deltadit::backend::sim::is_built())?;
    d.set_item("kernel_head_dims", AttentionKernel::default().head_dims().collect::<Vec<_>>())?;
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    Ok(d)
}

/// Whether a CUDA device is usable by the cuda backend (driver, device, kernels), with the
/// reason when not.
#[pyfunction]
fn cuda_status() -> (bool, String) {
    match deltadit::backend::cuda::probe() {
        Ok(info) if deltadit::backend::cuda::kernels_built() => (true, info.to_string()),
        Ok(_) => (false, "a GPU is present but the CUDA kernels were not built into this package".into()),
        Err(e) => (false, e.chain()),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Runtime>()?;
    m.add_class::<Session>()?;
    m.add_function(wrap_pyfunction!(parse_cache, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_status, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
