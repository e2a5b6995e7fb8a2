//! A memory-mapped safetensors file: checkpoints and input files are read through it.

use crate::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
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
