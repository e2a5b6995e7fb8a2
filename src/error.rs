//! The crate's one error type. Every variant names what is at fault (tensor, key, shape,
//! parameter, file), so the CLI can print one clear line, and backend failures carry a
//! [`BackendErrorKind`] a program can act on (out of memory, no device, …) with the driver's own
//! error as their [`source`](std::error::Error::source).

use crate::DType;
use std::path::PathBuf;

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by what is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// the file or folder
        path: PathBuf,
        /// what the operating system said
        source: std::io::Error,
    },

    /// A safetensors file is malformed.
    #[error("{}: invalid safetensors file: {msg}", path.display())]
    Safetensors {
        /// the file
        path: PathBuf,
        /// what is wrong with it
        msg: String,
    },

    /// A `config.json` (or a sharded checkpoint's index) is malformed or asks for something the
    /// runtime cannot run.
    #[error("{}: invalid config{}: {msg}", path.display(), key.as_ref().map(|k| format!(" key `{k}`")).unwrap_or_default())]
    Config {
        /// the file
        path: PathBuf,
        /// the offending key, where one is at fault
        key: Option<String>,
        /// what is wrong
        msg: String,
    },

    /// `_class_name` names a model this crate does not implement.
    #[error(
        "unknown model class `{0}` (expected PixArtTransformer2DModel, DiTTransformer2DModel or Transformer2DModel)"
    )]
    UnknownModelClass(String),

    /// A checkpoint lacks a weight the model needs.
    #[error("missing weight `{key}` in {source_desc}")]
    MissingWeight {
        /// the diffusers key
        key: String,
        /// the checkpoint's files
        source_desc: String,
    },

    /// A weight has another shape than the config implies.
    #[error("weight `{key}`: expected shape {expected:?}, found {found:?}")]
    WeightShape {
        /// the diffusers key
        key: String,
        /// the shape the config implies
        expected: Vec<usize>,
        /// the stored shape
        found: Vec<usize>,
    },

    /// A weight is stored in a dtype the loader does not convert.
    #[error("weight `{key}`: unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    WeightDType {
        /// the diffusers key
        key: String,
        /// the stored dtype
        dtype: String,
    },

    /// A weight holds a NaN or an infinity.
    #[error("weight `{key}`: element {index} is {value} (weights must be finite)")]
    NonFiniteWeight {
        /// the diffusers key
        key: String,
        /// flat index of the first such element
        index: usize,
        /// its value
        value: f32,
    },

    /// An input tensor is malformed (shape, batch, missing companion tensor, …).
    #[error("input `{name}`: {msg}")]
    Input {
        /// the tensor's name (the diffusers argument or CLI tensor name)
        name: String,
        /// what is wrong
        msg: String,
    },

    /// An input tensor holds a NaN or an infinity.
    #[error("input `{name}`: element {index} is {value} (inputs must be finite)")]
    NonFiniteInput {
        /// the tensor's name
        name: String,
        /// flat index of the first such element
        index: usize,
        /// its value
        value: f32,
    },

    /// An inputs file lacks a tensor the model needs.
    #[error("missing input tensor `{name}` in {}", path.display())]
    MissingInput {
        /// the tensor's name
        name: String,
        /// the inputs file
        path: PathBuf,
    },

    /// An op got a tensor of the wrong shape.
    #[error("{op}: tensor `{tensor}`: expected shape {expected}, found {found:?}")]
    Shape {
        /// the op
        op: &'static str,
        /// which of its tensors
        tensor: &'static str,
        /// the shape it needs
        expected: String,
        /// the shape it got
        found: Vec<usize>,
    },

    /// An op got a tensor of the wrong dtype.
    #[error("{op}: tensor `{tensor}`: expected dtype {expected}, found {found}")]
    DType {
        /// the op
        op: &'static str,
        /// which of its tensors
        tensor: &'static str,
        /// the dtype it needs
        expected: DType,
        /// the dtype it got
        found: DType,
    },

    /// A parameter (CLI option, cache policy setting, sampling setting) is out of range.
    #[error("invalid parameter `{name}` = {value}: {allowed}")]
    Param {
        /// the parameter
        name: String,
        /// the value given
        value: String,
        /// what is allowed
        allowed: String,
    },

    /// A cache policy returned a plan the engine cannot execute (a user-implemented
    /// [`CachePolicy`](crate::cache::CachePolicy), or a policy bug).
    #[error("cache policy `{policy}` at step {step}: plan {plan}: {msg}")]
    CachePlan {
        /// the policy's name
        policy: String,
        /// the step it was asked about
        step: usize,
        /// the plan, as `StepPlan::variant` names it
        plan: String,
        /// why it cannot run
        msg: String,
    },

    /// A backend failed or cannot do what was asked; [`BackendError::kind`] says which.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What kind of backend failure an [`Error::Backend`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// A device allocation failed for lack of memory.
    OutOfMemory {
        /// bytes asked for
        requested: usize,
    },
    /// A kernel failed to launch, or faulted while it ran.
    KernelLaunch {
        /// the kernel's entry point
        kernel: String,
    },
    /// The kernels (CUDA backend: nvcc's fatbins; sim backend: the SIMT shim) are not in this
    /// build.
    NotBuilt,
    /// No CUDA driver, no device, or not the device asked for.
    NoDevice,
    /// The device or driver is too old for the kernels.
    UnsupportedDevice,
    /// The backend does not compute in this dtype.
    UnsupportedDType {
        /// the dtype asked for
        dtype: DType,
    },
    /// No attention kernel for this head dim.
    UnsupportedHeadDim {
        /// the head dim asked for
        head_dim: usize,
    },
    /// The attention kernel asked for is not available on this device.
    UnsupportedKernel,
    /// Sizes, strides or alignments beyond what a kernel can address.
    UnsupportedLayout,
    /// The backend was used in a way it does not allow (a host read inside a captured unit, …).
    InvalidUse,
    /// Any other driver or library failure.
    Driver,
}

impl std::fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendErrorKind::OutOfMemory { requested } => write!(f, "out of memory ({requested} bytes asked)"),
            BackendErrorKind::KernelLaunch { kernel } => write!(f, "kernel {kernel} failed"),
            BackendErrorKind::NotBuilt => f.write_str("not built"),
            BackendErrorKind::NoDevice => f.write_str("no device"),
            BackendErrorKind::UnsupportedDevice => f.write_str("unsupported device"),
            BackendErrorKind::UnsupportedDType { dtype } => write!(f, "dtype {dtype} unsupported"),
            BackendErrorKind::UnsupportedHeadDim { head_dim } => write!(f, "head dim {head_dim} unsupported"),
            BackendErrorKind::UnsupportedKernel => f.write_str("kernel unavailable"),
            BackendErrorKind::UnsupportedLayout => f.write_str("layout unsupported"),
            BackendErrorKind::InvalidUse => f.write_str("invalid use"),
            BackendErrorKind::Driver => f.write_str("driver error"),
        }
    }
}

/// A failure of one backend: its kind, what was being done, and the driver's or library's own
/// error where there is one.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {context}")]
pub struct BackendError {
    backend: &'static str,
    kind: BackendErrorKind,
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A failure of `backend` (`cpu`, `sim`, `cuda`, `kernels`) of `kind` while doing `context`.
    pub fn new(backend: &'static str, kind: BackendErrorKind, context: impl Into<String>) -> Self {
        BackendError { backend, kind, context: context.into(), source: None }
    }

    /// The same with the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The backend that failed.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> &BackendErrorKind {
        &self.kind
    }

    /// What was being done.
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl Error {
    /// The error's own message followed by those of its sources, `: `-separated (the CLI's one
    /// line).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            let msg = e.to_string();
            if !s.ends_with(&msg) {
                s.push_str(": ");
                s.push_str(&msg);
            }
            cur = e.source();
        }
        s
    }

    /// The backend failure kind, if this is one.
    pub fn backend_kind(&self) -> Option<&BackendErrorKind> {
        match self {
            Error::Backend(b) => Some(b.kind()),
            _ => None,
        }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// An [`Error::Param`]: `name` = `value` is not among `allowed`.
    pub fn param(name: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        Error::Param { name: name.into(), value: value.to_string(), allowed: allowed.into() }
    }

    /// An [`Error::Input`] on tensor `name`.
    pub fn input(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Input { name: name.into(), msg: msg.into() }
    }

    pub(crate) fn backend(backend: &'static str, kind: BackendErrorKind, context: impl Into<String>) -> Self {
        Error::Backend(BackendError::new(backend, kind, context))
    }
}

/// The first NaN or infinity of `data` as an [`Error::NonFiniteInput`] naming `name`.
pub(crate) fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFiniteInput { name: name.to_string(), index, value: data[index] }),
    }
}
