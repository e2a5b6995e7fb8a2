"""The exceptions of deltadit: one class per kind of fault, all subclasses of :class:`Error`.

The native module raises these for the library's errors (``deltadit::Error`` and its
``BackendErrorKind``s), and the Python side raises them for what it rejects itself (a transformer
class, an attention processor or a setting that is not supported). Each carries:

- ``kind``: what the library calls the fault (``config``, ``missing_weight``, ``input``,
  ``param``, ``backend``, ``unsupported_class``, ...);
- ``backend_kind``: for backend failures, the ``BackendErrorKind`` (``out_of_memory``,
  ``no_device``, ``not_built``, ``unsupported_head_dim``, ``unsupported_dtype``, ...), else None;
- ``details``: a dict of the fields a program may act on (``key``, ``name``, ``head_dim``, ...).
"""

from __future__ import annotations

__all__ = [
    "Error",
    "ConfigError",
    "WeightError",
    "InputError",
    "ParameterError",
    "UnsupportedError",
    "FileError",
    "CachePlanError",
    "BackendError",
    "DeviceUnavailableError",
    "OutOfMemoryError",
]


class Error(Exception):
    """Base class of every deltadit exception."""

    kind: str | None = None
    backend_kind: str | None = None
    details: dict = {}

    def __init__(self, message: str = "", *, kind: str | None = None, backend_kind: str | None = None, **details):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if backend_kind is not None:
            self.backend_kind = backend_kind
        self.details = dict(details)


class ConfigError(Error, ValueError):
    """A model config that is malformed or asks for something the runtime cannot run."""


class WeightError(Error, ValueError):
    """A weight that is missing, of the wrong shape or dtype, or not finite; a malformed file."""


class InputError(Error, ValueError):
    """An input tensor of the wrong shape, dtype or place, missing, or not finite."""


class ParameterError(Error, ValueError):
    """A parameter out of range: a cache spec, a device or dtype name, a step index."""


class UnsupportedError(Error, ValueError):
    """Something this runtime does not implement: another transformer class, an attention
    processor, a head dim or dtype the chosen device has no kernel for."""


class FileError(Error, OSError):
    """A file or folder that could not be read."""


class CachePlanError(Error, RuntimeError):
    """A cache policy returned a plan the engine cannot execute."""


class BackendError(Error, RuntimeError):
    """A backend failed while it ran (a kernel, the driver, an invalid use)."""


class DeviceUnavailableError(BackendError):
    """No usable device: no CUDA driver or GPU, or the kernels (or the sim shim) not built."""


class OutOfMemoryError(BackendError):
    """A device allocation failed for lack of memory."""
