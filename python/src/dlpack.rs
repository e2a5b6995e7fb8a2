//! DLPack import: the f32 tensors the Python side hands over (torch tensors, or anything with
//! `__dlpack__`) read in place, on the host or on a CUDA device, without a copy.
//!
//! The capsule is the legacy `dltensor` one (DLPack 0.8 `DLManagedTensor`, what
//! `tensor.__dlpack__()` returns without `max_version`). It is not consumed (not renamed): the
//! view keeps it alive while the memory is read or written, and dropping it lets the producer's
//! capsule destructor release the tensor. Stream ordering is the caller's business: `__dlpack__`
//! is asked for no synchronisation (`stream=-1`) and the CUDA path orders its copies against the
//! caller's stream itself (`Cuda::wait_for_stream` / `Cuda::signal_stream`).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};
use std::ffi::c_void;

/// `kDLCPU`
pub const DEVICE_CPU: i32 = 1;
/// `kDLCUDA`
pub const DEVICE_CUDA: i32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// `kDLFloat`
const CODE_FLOAT: u8 = 2;

/// A contiguous f32 tensor read through its DLPack capsule (which this view keeps alive).
pub struct F32View<'py> {
    _capsule: Bound<'py, PyCapsule>,
    /// the first element's address (data + byte offset)
    pub addr: u64,
    pub shape: Vec<usize>,
    /// `kDLCPU` or `kDLCUDA`
    pub device_type: i32,
    #[allow(dead_code)] // kept for error messages and callers; the CUDA path checks addresses instead
    pub device_id: i32,
}

impl F32View<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_cuda(&self) -> bool {
        self.device_type == DEVICE_CUDA
    }

    /// The bytes `[addr, addr + 4·numel)`.
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.addr..self.addr + 4 * self.numel() as u64
    }

    /// The values, read in place.
    ///
    /// # Safety
    /// A host tensor (checked) whose memory nothing writes while the slice lives.
    pub unsafe fn host_slice(&self) -> &[f32] {
        assert_eq!(self.device_type, DEVICE_CPU, "host_slice of a device tensor");
        if self.numel() == 0 {
            return &[];
        }
        // SAFETY: the capsule (kept alive by self) owns numel contiguous, aligned f32 values at
        // addr (checked at import); no writer meanwhile is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.addr as *const f32, self.numel()) }
    }

    /// The values, written in place.
    ///
    /// # Safety
    /// As [`F32View::host_slice`], and no other slice of the same memory lives meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn host_slice_mut(&self) -> &mut [f32] {
        assert_eq!(self.device_type, DEVICE_CPU, "host_slice_mut of a device tensor");
        if self.numel() == 0 {
            return &mut [];
        }
        // SAFETY: as host_slice; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut f32, self.numel()) }
    }
}

/// Imports `obj` (a torch tensor, or anything with `__dlpack__`) as a contiguous f32 tensor on
/// the host or a CUDA device; `what` names it in errors.
pub fn import_f32<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<F32View<'py>> {
    let py = obj.py();
    if !obj.hasattr("__dlpack__")? {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected a torch tensor (or an object with __dlpack__), found {}",
            obj.get_type().name()?
        )));
    }
    let (dev_type, _dev_id): (i32, i32) = obj.call_method0("__dlpack_device__")?.extract()?;
    let capsule = if dev_type == DEVICE_CUDA {
        // no synchronisation: the CUDA path orders its work against the caller's stream
        let kw = PyDict::new(py);
        kw.set_item("stream", -1)?;
        obj.call_method("__dlpack__", (), Some(&kw))?
    } else {
        obj.call_method0("__dlpack__")?
    };
    let capsule = capsule
        .cast_into::<PyCapsule>()
        .map_err(|_| PyTypeError::new_err(format!("{what}: __dlpack__ did not return a capsule")))?;
    let ptr = capsule
        .pointer_checked(Some(c"dltensor"))
        .map_err(|_| PyValueError::new_err(format!("{what}: not a DLPack `dltensor` capsule (already consumed?)")))?;
    // SAFETY: a valid `dltensor` capsule holds a DLManagedTensor that lives as long as the
    // capsule, which `F32View` keeps.
    let t = unsafe { &(*ptr.as_ptr().cast::<DLManagedTensor>()).dl_tensor };
    let dt = t.dtype;
    if (dt.code, dt.bits, dt.lanes) != (CODE_FLOAT, 32, 1) {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected float32, found DLPack dtype code {} with {} bits × {} lanes",
            dt.code, dt.bits, dt.lanes
        )));
    }
    if t.device.device_type != DEVICE_CPU && t.device.device_type != DEVICE_CUDA {
        return Err(PyValueError::new_err(format!(
            "{what}: tensors on the host or a CUDA device only (DLPack device type {})",
            t.device.device_type
        )));
    }
    let ndim = usize::try_from(t.ndim).map_err(|_| PyValueError::new_err(format!("{what}: negative ndim")))?;
    // SAFETY: shape (and strides, where not null) hold ndim entries (DLPack's contract).
    let shape_i: &[i64] = if ndim == 0 { &[] } else { unsafe { std::slice::from_raw_parts(t.shape, ndim) } };
    let shape: Vec<usize> = shape_i
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| PyValueError::new_err(format!("{what}: negative dimension {d}"))))
        .collect::<PyResult<_>>()?;
    if !t.strides.is_null() && ndim > 0 {
        // SAFETY: as above
        let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
        let mut expect: i64 = 1;
        for (k, (&d, &s)) in shape_i.iter().zip(strides).enumerate().rev() {
            if d != 1 && s != expect {
                return Err(PyValueError::new_err(format!(
                    "{what}: not contiguous (shape {shape:?}, strides {strides:?}, dimension {k})"
                )));
            }
            expect = expect.saturating_mul(d);
        }
    }
    let addr = (t.data as u64).wrapping_add(t.byte_offset);
    let numel: usize = shape.iter().product();
    if numel > 0 && (t.data.is_null() || !addr.is_multiple_of(4)) {
        return Err(PyValueError::new_err(format!("{what}: data address {addr:#x} is null or misaligned for f32")));
    }
    Ok(F32View { _capsule: capsule, addr, shape, device_type: t.device.device_type, device_id: t.device.device_id })
}
