//! Reading and writing safetensors files: checkpoints (memory-mapped), the CLI's input tensors
//! and its outputs.

#[allow(missing_docs)] // crate internals
pub(crate) mod safetensors_file;

pub(crate) use safetensors_file::{RawTensor, SafetensorsFile};

use crate::{Error, Result};
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::path::Path;

/// A host tensor to write: values and shape.
#[derive(Clone, Debug)]
pub enum HostTensor {
    /// f32 values
    F32(Vec<f32>, Vec<usize>),
    /// f16 values
    F16(Vec<half::f16>, Vec<usize>),
    /// bf16 values
    BF16(Vec<half::bf16>, Vec<usize>),
    /// i64 values (timesteps, labels, counts)
    I64(Vec<i64>, Vec<usize>),
}

/// Writes named tensors to a safetensors file (atomically: a temporary file, then a rename).
pub fn write_safetensors(path: &Path, tensors: &[(&str, HostTensor)]) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, shape, bytes): (Dtype, &[usize], &[u8]) = match t {
                HostTensor::F32(v, s) => (Dtype::F32, s, bytemuck::cast_slice(v)),
                HostTensor::F16(v, s) => (Dtype::F16, s, bytemuck::cast_slice(v)),
                HostTensor::BF16(v, s) => (Dtype::BF16, s, bytemuck::cast_slice(v)),
                HostTensor::I64(v, s) => (Dtype::I64, s, bytemuck::cast_slice(v)),
            };
            let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), bytes)
                .map_err(|e| Error::input(*name, format!("cannot serialise: {e}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The input tensors of a CLI call, by name.
pub struct Inputs {
    file: SafetensorsFile,
}

impl Inputs {
    /// Opens (memory-maps) a safetensors file and checks its header.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Inputs { file: SafetensorsFile::open(path)? })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Whether the file holds a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.file.info(name).is_some()
    }

    fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        self.file
            .get(name)
            .ok_or_else(|| Error::MissingInput { name: name.into(), path: self.file.path().to_path_buf() })
    }

    /// f32 data and shape; `rank` checks the number of dimensions.
    pub fn f32(&self, name: &str, rank: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self.raw(name)?;
        if t.shape.len() != rank {
            return Err(Error::input(name, format!("expected {rank} dimensions, found shape {:?}", t.shape)));
        }
        Ok((t.to_f32(name)?, t.shape.to_vec()))
    }

    /// [`Inputs::f32`] of an optional tensor.
    pub fn f32_opt(&self, name: &str, rank: usize) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        if self.has(name) {
            self.f32(name, rank).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Integer data (integer dtypes, or floats holding integers) and shape.
    pub fn i64(&self, name: &str, rank: usize) -> Result<(Vec<i64>, Vec<usize>)> {
        let t = self.raw(name)?;
        if t.shape.len() != rank {
            return Err(Error::input(name, format!("expected {rank} dimensions, found shape {:?}", t.shape)));
        }
        Ok((t.to_i64(name)?, t.shape.to_vec()))
    }

    /// [`Inputs::i64`] of an optional tensor.
    pub fn i64_opt(&self, name: &str, rank: usize) -> Result<Option<(Vec<i64>, Vec<usize>)>> {
        if self.has(name) {
            self.i64(name, rank).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Shapes of all tensors (for messages).
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.file
            .names()
            .into_iter()
            .map(|n| {
                let s = self.file.info(&n).map(|i| i.shape.clone()).unwrap_or_default();
                (n, s)
            })
            .collect()
    }
}
