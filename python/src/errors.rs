//! `deltadit::Error` → the Python exceptions of `deltadit._errors` (one class per kind of fault,
//! each a subclass of `deltadit.Error` and of the matching built-in: `ValueError` for what the
//! caller can fix, `RuntimeError` for backend failures, `OSError` for files).

use deltadit::{BackendErrorKind, Error};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The exception class (in `deltadit._errors`), the error's kind and, for backend failures,
/// the backend failure's kind, as the Python side names them.
fn classify(e: &Error) -> (&'static str, &'static str, Option<&'static str>) {
    match e {
        Error::Io { .. } => ("FileError", "io", None),
        Error::Safetensors { .. } => ("WeightError", "safetensors", None),
        Error::Config { .. } => ("ConfigError", "config", None),
        Error::UnknownModelClass(_) => ("UnsupportedError", "unknown_model_class", None),
        Error::MissingWeight { .. } => ("WeightError", "missing_weight", None),
        Error::WeightShape { .. } => ("WeightError", "weight_shape", None),
        Error::WeightDType { .. } => ("WeightError", "weight_dtype", None),
        Error::NonFiniteWeight { .. } => ("WeightError", "non_finite_weight", None),
        Error::Input { .. } => ("InputError", "input", None),
        Error::NonFiniteInput { .. } => ("InputError", "non_finite_input", None),
        Error::MissingInput { .. } => ("InputError", "missing_input", None),
        Error::Shape { .. } => ("InputError", "shape", None),
        Error::DType { .. } => ("InputError", "dtype", None),
        Error::Param { .. } => ("ParameterError", "param", None),
        Error::CachePlan { .. } => ("CachePlanError", "cache_plan", None),
        Error::Backend(b) => {
            let (class, kind) = match b.kind() {
                BackendErrorKind::OutOfMemory { .. } => ("OutOfMemoryError", "out_of_memory"),
                BackendErrorKind::KernelLaunch { .. } => ("BackendError", "kernel_launch"),
                BackendErrorKind::NotBuilt => ("DeviceUnavailableError", "not_built"),
                BackendErrorKind::NoDevice => ("DeviceUnavailableError", "no_device"),
                BackendErrorKind::UnsupportedDevice => ("UnsupportedError", "unsupported_device"),
                BackendErrorKind::UnsupportedDType { .. } => ("UnsupportedError", "unsupported_dtype"),
                BackendErrorKind::UnsupportedHeadDim { .. } => ("UnsupportedError", "unsupported_head_dim"),
                BackendErrorKind::UnsupportedKernel => ("UnsupportedError", "unsupported_kernel"),
                BackendErrorKind::UnsupportedLayout => ("UnsupportedError", "unsupported_layout"),
                BackendErrorKind::InvalidUse => ("BackendError", "invalid_use"),
                BackendErrorKind::Driver => ("BackendError", "driver"),
                _ => ("BackendError", "other"),
            };
            (class, "backend", Some(kind))
        }
        _ => ("Error", "other", None),
    }
}

/// Fields a program may act on, by kind.
fn details<'py>(py: Python<'py>, e: &Error) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match e {
        Error::Io { path, .. } | Error::Safetensors { path, .. } => d.set_item("path", path.display().to_string())?,
        Error::Config { key, .. } => d.set_item("key", key.clone())?,
        Error::UnknownModelClass(c) => d.set_item("class_name", c)?,
        Error::MissingWeight { key, .. } | Error::WeightDType { key, .. } => d.set_item("key", key)?,
        Error::WeightShape { key, expected, found } => {
            d.set_item("key", key)?;
            d.set_item("expected", expected.clone())?;
            d.set_item("found", found.clone())?;
        }
        Error::NonFiniteWeight { key, index, .. } => {
            d.set_item("key", key)?;
            d.set_item("index", index)?;
        }
        Error::Input { name, .. } | Error::MissingInput { name, .. } => d.set_item("name", name)?,
        Error::NonFiniteInput { name, index, .. } => {
            d.set_item("name", name)?;
            d.set_item("index", index)?;
        }
        Error::Param { name, value, .. } => {
            d.set_item("name", name)?;
            d.set_item("value", value)?;
        }
        Error::CachePlan { policy, step, plan, .. } => {
            d.set_item("policy", policy)?;
            d.set_item("step", step)?;
            d.set_item("plan", plan)?;
        }
        Error::Backend(b) => {
            d.set_item("backend", b.backend())?;
            match b.kind() {
                BackendErrorKind::OutOfMemory { requested } => d.set_item("requested_bytes", requested)?,
                BackendErrorKind::KernelLaunch { kernel } => d.set_item("kernel", kernel)?,
                BackendErrorKind::UnsupportedDType { dtype } => d.set_item("dtype", dtype.name())?,
                BackendErrorKind::UnsupportedHeadDim { head_dim } => d.set_item("head_dim", head_dim)?,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(d)
}

/// A Python exception of class `class` (in `deltadit._errors`) with `message` and attributes
/// `kind`, `backend_kind` and `details`.
pub fn py_error(
    py: Python<'_>,
    class: &str,
    message: String,
    kind: &str,
    backend_kind: Option<&str>,
    details: Option<Bound<'_, PyDict>>,
) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let cls = py.import("deltadit._errors")?.getattr(class)?;
        let exc = cls.call1((message.clone(),))?;
        exc.setattr("kind", kind)?;
        exc.setattr("backend_kind", backend_kind)?;
        exc.setattr("details", details.clone().unwrap_or_else(|| PyDict::new(py)))?;
        Ok(PyErr::from_value(exc))
    };
    make().unwrap_or_else(|_| PyRuntimeError::new_err(message.clone()))
}

/// The Python exception of a library error.
pub fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    let (class, kind, backend_kind) = classify(e);
    let d = details(py, e).ok();
    py_error(py, class, e.chain(), kind, backend_kind, d)
}

/// `deltadit::Error` → `PyErr` (takes the GIL for the conversion).
pub fn err(e: Error) -> PyErr {
    Python::attach(|py| to_py(py, &e))
}

/// A `deltadit.UnsupportedError` raised by the binding itself (what the library would only find
/// at the first forward).
pub fn unsupported(py: Python<'_>, kind: &str, message: String, details: Option<Bound<'_, PyDict>>) -> PyErr {
    py_error(py, "UnsupportedError", message, kind, None, details)
}

/// A `deltadit.InputError` raised by the binding itself.
pub fn input_error(py: Python<'_>, name: &str, message: String) -> PyErr {
    let d = PyDict::new(py);
    let _ = d.set_item("name", name);
    py_error(py, "InputError", format!("input `{name}`: {message}"), "input", None, Some(d))
}

/// `Result<T, deltadit::Error>` → `PyResult<T>`.
pub trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for deltadit::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(err)
    }
}
