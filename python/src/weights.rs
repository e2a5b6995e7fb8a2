//! A [`WeightSource`] over the parameters of a loaded torch module: `fetch(key)` (a Python
//! callable) returns the tensor of a diffusers key as a contiguous f32 host tensor, which is read
//! in place through DLPack. No file is written or read.

use crate::dlpack::import_f32;
use deltadit::model::WeightSource;
use deltadit::{Error, Result};
use pyo3::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;

pub struct TorchWeights<'py> {
    /// key → contiguous float32 CPU tensor (raises for what cannot be read, e.g. meta tensors)
    fetch: Bound<'py, PyAny>,
    keys: HashSet<String>,
    desc: String,
    /// The first Python exception a fetch raised: re-raised as is instead of the library error
    /// it was reported as.
    pub py_err: RefCell<Option<PyErr>>,
}

impl<'py> TorchWeights<'py> {
    pub fn new(fetch: Bound<'py, PyAny>, keys: Vec<String>, desc: String) -> Self {
        TorchWeights { fetch, keys: keys.into_iter().collect(), desc, py_err: RefCell::new(None) }
    }

    fn stash(&self, key: &str, e: PyErr) -> Error {
        let msg = e.to_string();
        self.py_err.borrow_mut().get_or_insert(e);
        Error::Io { path: key.into(), source: std::io::Error::other(format!("reading the torch tensor: {msg}")) }
    }
}

impl WeightSource for TorchWeights<'_> {
    fn get(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if !self.keys.contains(key) {
            return Err(Error::MissingWeight { key: key.into(), source_desc: self.desc.clone() });
        }
        let t = self.fetch.call1((key,)).map_err(|e| self.stash(key, e))?;
        let view = import_f32(&t, key).map_err(|e| self.stash(key, e))?;
        if view.shape != shape {
            return Err(Error::WeightShape { key: key.into(), expected: shape.to_vec(), found: view.shape.clone() });
        }
        if view.is_cuda() {
            let e = pyo3::exceptions::PyValueError::new_err(format!("{key}: fetch returned a CUDA tensor"));
            return Err(self.stash(key, e));
        }
        // SAFETY: a host tensor kept alive by `view` (and `t`); nothing writes it meanwhile (the
        // GIL is held and no Python code runs while the slice is copied).
        Ok(unsafe { view.host_slice() }.to_vec())
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }
}
