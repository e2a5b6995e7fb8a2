//! A tensor: a shape, a dtype and a buffer owned by a backend.

use crate::backend::Backend;
use crate::{DType, Error, Result};

/// Row-major, contiguous. The buffer lives wherever the backend keeps its data (host memory for
/// the CPU and sim backends, device memory for CUDA); it is read back only through
/// [`Backend::download`].
pub struct Tensor<B: Backend> {
    pub(crate) buf: B::Buf,
    shape: Vec<usize>,
    dtype: DType,
}

impl<B: Backend> Tensor<B> {
    pub(crate) fn from_parts(buf: B::Buf, shape: &[usize], dtype: DType) -> Self {
        Tensor { buf, shape: shape.to_vec(), dtype }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Elements (the product of the shape, which backends check fits in memory at allocation).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The backend's storage (a device address on the CUDA backend: [`CudaBuf::device_ptr`]),
    /// for interoperation with other runtimes.
    ///
    /// [`CudaBuf::device_ptr`]: crate::backend::cuda::CudaBuf::device_ptr
    pub fn buf(&self) -> &B::Buf {
        &self.buf
    }

    /// Size of the last dimension (the row length of a [rows, cols] view).
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }

    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }

    /// Reinterprets the shape (same number of elements).
    pub fn reshape(&mut self, shape: &[usize]) -> Result<()> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(self.numel()) {
            return Err(Error::Shape {
                op: "reshape",
                tensor: "tensor",
                expected: format!("{} elements", self.numel()),
                found: shape.to_vec(),
            });
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// Checks the shape, naming the op and tensor in the error.
    pub fn expect_shape(&self, op: &'static str, tensor: &'static str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(Error::Shape { op, tensor, expected: format!("{shape:?}"), found: self.shape.clone() });
        }
        Ok(())
    }

    /// Checks the dtype, naming the op and tensor in the error.
    pub fn expect_dtype(&self, op: &'static str, tensor: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DType { op, tensor, expected: dtype, found: self.dtype });
        }
        Ok(())
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor<{}>({:?}, {})", B::NAME, self.shape, self.dtype)
    }
}
