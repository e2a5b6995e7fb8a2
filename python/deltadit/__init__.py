"""deltadit: a DiT / PixArt / SD3 / FLUX.1 transformer runtime with the Δ-DiT block cache, as a drop-in
backend for Hugging Face diffusers pipelines (the supported classes: ``deltadit._classes``).

- :class:`Transformer`: ``Transformer.from_pretrained(path, device=..., dtype=...)`` or
  ``Transformer.from_diffusers(module)``, called like the diffusers transformer's forward.
- :mod:`deltadit.diffusers`: ``accelerate(pipe, device=..., cache=...)`` and ``stats(pipe)``.
- :class:`Error` and its subclasses: every failure, as a Python exception.
"""

from ._errors import (
    BackendError,
    CachePlanError,
    ConfigError,
    DeviceUnavailableError,
    Error,
    FileError,
    InputError,
    OutOfMemoryError,
    ParameterError,
    UnsupportedError,
    WeightError,
)
from ._native import __version__, build_info, cuda_status
from ._transformer import StepReport, Transformer

__all__ = [
    "Transformer",
    "StepReport",
    "build_info",
    "cuda_status",
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
    "__version__",
]


def __getattr__(name):
    # `deltadit.diffusers` without importing diffusers at `import deltadit`
    if name == "diffusers":
        import importlib

        return importlib.import_module(".diffusers", __name__)
    raise AttributeError(f"module 'deltadit' has no attribute {name!r}")
