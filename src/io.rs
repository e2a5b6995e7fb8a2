//! Reading and writing safetensors files: checkpoints (memory-mapped), the CLI's input tensors
//! and its outputs.

use crate::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A memory-mapped safetensors file with its parsed, validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// One tensor's raw view.
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is mapped read-only; like every memory-mapped reader we rely on it not
        // being truncated or rewritten by another process while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: describe(&e) })?;
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, data_start: 8 + header_len, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.metadata.tensors().into_keys().collect();
        v.sort();
        v
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.metadata.info(name)?;
        let (s, e) = info.data_offsets;
        Some(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            bytes: &self.mmap[self.data_start + s..self.data_start + e],
        })
    }
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    match e {
        safetensors::SafeTensorError::MetadataIncompleteBuffer => {
            "truncated: the data is shorter than the header says".into()
        }
        safetensors::SafeTensorError::HeaderTooSmall | safetensors::SafeTensorError::InvalidHeaderLength => {
            "truncated or not a safetensors file (header length out of range)".into()
        }
        other => other.to_string(),
    }
}

impl RawTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts any float or integer dtype to f32 (integers exactly up to 2^24).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let b = self.bytes;
        macro_rules! conv {
            ($t:ty, $f:expr) => {
                b.chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| $f(<$t>::from_le_bytes(c.try_into().unwrap())))
                    .collect()
            };
        }
        Ok(match self.dtype {
            Dtype::F32 => conv!(f32, |v: f32| v),
            Dtype::F64 => conv!(f64, |v: f64| v as f32),
            Dtype::F16 => conv!(u16, |v: u16| half::f16::from_bits(v).to_f32()),
            Dtype::BF16 => conv!(u16, |v: u16| half::bf16::from_bits(v).to_f32()),
            Dtype::I64 => conv!(i64, |v: i64| v as f32),
            Dtype::I32 => conv!(i32, |v: i32| v as f32),
            Dtype::I16 => conv!(i16, |v: i16| v as f32),
            Dtype::I8 => conv!(i8, |v: i8| v as f32),
            Dtype::U8 | Dtype::BOOL => b.iter().map(|&v| v as f32).collect(),
            other => return Err(Error::input(name, format!("unsupported dtype {other:?}"))),
        })
    }

    /// Integer view (class labels): integer dtypes, or floats holding integers.
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        let b = self.bytes;
        match self.dtype {
            Dtype::I64 => Ok(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            Dtype::I32 => Ok(b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect()),
            _ => self
                .to_f32(name)?
                .into_iter()
                .map(|v| {
                    if v.fract() == 0.0 {
                        Ok(v as i64)
                    } else {
                        Err(Error::input(name, format!("expected integers, found {v}")))
                    }
                })
                .collect(),
        }
    }
}

/// A host tensor to write.
pub enum HostTensor {
    F32(Vec<f32>, Vec<usize>),
    F16(Vec<half::f16>, Vec<usize>),
    BF16(Vec<half::bf16>, Vec<usize>),
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
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Inputs { file: SafetensorsFile::open(path)? })
    }

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

    pub fn f32_opt(&self, name: &str, rank: usize) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        if self.has(name) {
            self.f32(name, rank).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn i64(&self, name: &str, rank: usize) -> Result<(Vec<i64>, Vec<usize>)> {
        let t = self.raw(name)?;
        if t.shape.len() != rank {
            return Err(Error::input(name, format!("expected {rank} dimensions, found shape {:?}", t.shape)));
        }
        Ok((t.to_i64(name)?, t.shape.to_vec()))
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
