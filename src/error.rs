//! The crate's one error type. Every variant names what is at fault (tensor, key, shape,
//! parameter, file) so the CLI can print one clear line.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: invalid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error(
        "unknown model class `{0}` (expected PixArtTransformer2DModel, DiTTransformer2DModel or Transformer2DModel)"
    )]
    UnknownModelClass(String),

    #[error("missing weight `{key}` in {source_desc}")]
    MissingWeight { key: String, source_desc: String },

    #[error("weight `{key}`: expected shape {expected:?}, found {found:?}")]
    WeightShape { key: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("weight `{key}`: unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    WeightDType { key: String, dtype: String },

    #[error("input `{name}`: {msg}")]
    Input { name: String, msg: String },

    #[error("missing input tensor `{name}` in {path}")]
    MissingInput { name: String, path: PathBuf },

    #[error("{op}: tensor `{tensor}`: expected shape {expected}, found {found:?}")]
    Shape { op: &'static str, tensor: &'static str, expected: String, found: Vec<usize> },

    #[error("{op}: tensor `{tensor}`: expected dtype {expected}, found {found}")]
    DType { op: &'static str, tensor: &'static str, expected: crate::DType, found: crate::DType },

    #[error("invalid parameter `{name}` = {value}: {allowed}")]
    Param { name: String, value: String, allowed: String },

    #[error("{backend} backend: {msg}")]
    Backend { backend: &'static str, msg: String },

    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn param(name: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        Error::Param { name: name.into(), value: value.to_string(), allowed: allowed.into() }
    }

    pub fn input(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Input { name: name.into(), msg: msg.into() }
    }

    pub fn backend(backend: &'static str, msg: impl Into<String>) -> Self {
        Error::Backend { backend, msg: msg.into() }
    }
}
