"""`deltadit.Transformer`: a PixArt, DiT, SD3/SD3.5 or FLUX.1 transformer run by the deltadit runtime, called
like the diffusers transformer's forward on torch tensors (numpy arrays too). Which classes, and
their forward signatures: the table of :mod:`deltadit._classes`."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import _native
from ._classes import MODEL_CLASSES, ModelClass, by_class_name, by_family, class_names
from ._errors import InputError, ParameterError, UnsupportedError

__all__ = ["Transformer", "StepReport"]

_DTYPE_NAMES = {
    "f32": "f32",
    "float32": "f32",
    "fp32": "f32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "f16",
    "float16": "f16",
    "fp16": "f16",
    "half": "f16",
}
_TORCH_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _dtype_name(dtype) -> Optional[str]:
    """None, a torch dtype or a name → `f32` / `bf16` / `f16` (None stays None)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in _TORCH_DTYPES:
            return _TORCH_DTYPES[dtype]
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower().removeprefix("torch.")]
    raise ParameterError(
        f"invalid parameter `dtype` = {dtype}: f32, bf16 or f16 (or torch.float32, torch.bfloat16, torch.float16)",
        kind="param",
        name="dtype",
        value=str(dtype),
    )


def _device_name(device) -> str:
    """`cpu`, `sim`, `cuda`, `cuda:N` or a torch.device → the runtime's device name."""
    if isinstance(device, torch.device):
        if device.type == "cuda":
            return f"cuda:{device.index if device.index is not None else torch.cuda.current_device() if torch.cuda.is_available() else 0}"
        return device.type
    if isinstance(device, int):
        return f"cuda:{device}"
    if isinstance(device, str):
        d = device.strip().lower()
        if d in ("cpu", "sim"):
            return d
        if d in ("cuda", "gpu"):
            return "cuda:0"
        if d.startswith("cuda:") and d[5:].isdigit():
            return d
    raise ParameterError(
        f"invalid parameter `device` = {device}: cpu, sim, cuda or cuda:N", kind="param", name="device", value=str(device)
    )


class _Config(dict):
    """A model config (the diffusers config.json's keys) with attribute access, read-only."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _readonly(self, *a, **k):
        raise TypeError("the config of a loaded model is read-only")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = _readonly


@dataclass(frozen=True)
class StepReport:
    """What one forward ran: the cache plan (`full`, `full+front+rear`, `cached-rear-4`, ...),
    the block evaluations, the policy's probe (None without one) and the wall time of the call
    into the runtime (on the cuda device: until the work is queued, not until it finishes)."""

    plan: str
    blocks_run: int
    num_blocks: int
    probe: Optional[float]
    time_s: float


# The diffusers forward signatures by runtime family (from the class table).
FORWARD_SIGNATURES = {c.family: c.forward for c in MODEL_CLASSES}


def _output(sample: torch.Tensor, return_dict: bool):
    if not return_dict:
        return (sample,)
    try:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput
    except ImportError:  # diffusers is optional for the plain Transformer

        @dataclass
        class Transformer2DModelOutput:  # noqa: N801 - diffusers' name
            sample: torch.Tensor

    return Transformer2DModelOutput(sample=sample)


def _as_tensor(x, name: str) -> torch.Tensor:
    """A torch tensor of `x` (numpy arrays shared, not copied, where writeable)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None and isinstance(x, np.ndarray):
        if not x.flags.writeable:
            x = x.copy()
        return torch.from_numpy(x)
    if np is not None and isinstance(x, np.generic):
        return torch.as_tensor(x.item())
    if isinstance(x, (int, float, bool, list, tuple)):
        return torch.as_tensor(x)
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise InputError(
        f"input `{name}`: expected a torch tensor or a numpy array, found {type(x).__name__}", kind="input", name=name
    )


def _host_f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A contiguous float32 CPU tensor of `t`: `t` itself when it is one already (no copy)."""
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _ident(t) -> Any:
    """What identifies a conditioning tensor without reading it (object, version, storage)."""
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return (id(t), t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device)
    return ("value", repr(t))



def _check_steps(spec: str) -> int:
    """The step count a spec is checked against when it is set: the length of its per-step mask
    (a schedule's ``mask``, dbcache's ``steps-mask``), else 1000 (far from any limit)."""
    name, _, rest = spec.partition(":")
    masks = {"schedule": "mask", "dbcache": "steps-mask"}
    if name.strip() in masks:
        for kv in rest.split(","):
            k, _, v = kv.partition("=")
            if k.strip().replace("_", "-") == masks[name.strip()] and v.strip():
                return len(v.strip())
    return 1000


class Transformer:
    """A `PixArtTransformer2DModel`, `DiTTransformer2DModel`, `SD3Transformer2DModel` or
    `FluxTransformer2DModel` run by
    deltadit (the classes of :data:`deltadit._classes.MODEL_CLASSES`).

    Call it with the diffusers forward's arguments, as torch tensors or numpy arrays:
    ``hidden_states``, ``encoder_hidden_states``, ``timestep``, ``added_cond_kwargs``,
    ``encoder_attention_mask`` for PixArt; ``hidden_states``, ``timestep``, ``class_labels`` for
    DiT; ``hidden_states``, ``encoder_hidden_states``, ``pooled_projections``, ``timestep``,
    ``skip_layers`` for SD3; ``hidden_states`` (packed [B, N, C]), ``encoder_hidden_states``,
    ``pooled_projections``, ``timestep`` (σ: the model multiplies by 1000), ``img_ids``,
    ``txt_ids``, ``guidance`` (FLUX.1-dev) for FLUX; ``return_dict``. The result is a torch tensor on the input's device, in
    the input's floating dtype, as ``Transformer2DModelOutput(sample=...)`` or ``(sample,)``.

    With a cache policy (``cache="delta"``, ...), pass ``step=`` and ``num_steps=`` as well: the
    policy decides from the step index which blocks run, and step 0 starts a new run. A
    diffusers pipeline does this by itself through :func:`deltadit.diffusers.accelerate`. An SD3
    forward with ``skip_layers`` (skip-layer guidance) runs uncached, beside the cached run.
    """

    def __init__(self, runtime: "_native.Runtime", config: dict, *, cache: str = "none"):
        self._rt = runtime
        self._config = _Config(config)
        self._class: ModelClass = by_family(runtime.family)
        self._lock = threading.Lock()
        # the runs bound to a conditioning, most recent first: at most one without and one with
        # the class's `uncached_with` argument (SD3's skip-layer guidance pass)
        self._runs: list = []
        self.last_report: Optional[StepReport] = None
        self._cache = "none"
        self.cache = cache
        self._lib_config = json.loads(runtime.config_json())
        self._in_channels = int(self._lib_config["in_channels"])

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path,
        device="cpu",
        dtype=None,
        *,
        subfolder: Optional[str] = None,
        cache: str = "none",
        threads: Optional[int] = None,
    ) -> "Transformer":
        """Loads a diffusers transformer folder (``config.json`` and safetensors weights, f32/f16/
        bf16, memory-mapped), or a pipeline folder's ``transformer/`` (``subfolder`` picks
        another). ``device``: ``cpu`` (f32), ``cuda`` / ``cuda:N`` or ``sim`` (bf16 or f16; the
        CUDA kernels on the CPU). ``dtype``: the compute dtype (default: the device's)."""
        p = Path(path)
        if subfolder:
            p = p / subfolder
        elif not (p / "config.json").is_file() and (p / "transformer" / "config.json").is_file():
            p = p / "transformer"
        rt = _native.Runtime.load(str(p), _device_name(device), _dtype_name(dtype), threads)
        try:
            config = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):  # pragma: no cover - read by the runtime just before
            config = json.loads(rt.config_json())
        return cls(rt, config, cache=cache)

    @classmethod
    def from_diffusers(
        cls, module, device=None, dtype=None, *, cache: str = "none", threads: Optional[int] = None
    ) -> "Transformer":
        """Takes the weights of a loaded diffusers ``PixArtTransformer2DModel``,
        ``DiTTransformer2DModel``, ``SD3Transformer2DModel`` or ``FluxTransformer2DModel`` (any
        device and dtype) straight from
        its tensors: no file is written. ``device`` defaults to the module's (``cuda`` for a
        module on a GPU, else ``cpu``); ``dtype`` to f32 on the CPU and to the module's half dtype
        (else bf16) on a kernel device. Raises :class:`UnsupportedError` for another class, an attention
        processor other than diffusers' default ones, LoRA adapters not fused, or weights on the
        meta device."""
        module = _unwrap(module)
        check_module(module)
        params = list(module.parameters())
        if device is None:
            devs = {p.device for p in params}
            cuda = [d for d in devs if d.type == "cuda"]
            device = cuda[0] if cuda else "cpu"
        device = _device_name(device)
        if dtype is None and device != "cpu":
            half = [p.dtype for p in params if p.dtype in (torch.bfloat16, torch.float16)]
            dtype = half[0] if half else None
        state = module.state_dict()
        keys = list(state.keys())

        def fetch(key: str) -> torch.Tensor:
            t = state[key]
            if t.is_meta:
                raise UnsupportedError(
                    f"weight `{key}` is on the meta device (sequential CPU offload, or a model built "
                    "without weights): load its weights before accelerating",
                    kind="meta_weights",
                    key=key,
                )
            return t.detach().to(device="cpu", dtype=torch.float32).contiguous()

        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
        devices = sorted({str(t.device) for t in state.values()})
        desc = f"torch {type(module).__name__} ({'/'.join(dtypes)} on {'/'.join(devices)})"
        config = json.loads(module.to_json_string())
        rt = _native.Runtime.from_weights(
            json.dumps(config), keys, fetch, desc, device, _dtype_name(dtype), threads
        )
        return cls(rt, dict(module.config), cache=cache)

    # -- properties --------------------------------------------------------------------------

    @property
    def config(self) -> _Config:
        """The model's diffusers config (read-only, attribute access as in diffusers)."""
        return self._config

    @property
    def family(self) -> str:
        """The runtime's family: ``pixart``, ``dit``, ``sd3`` or ``flux``."""
        return self._rt.family

    @property
    def class_name(self) -> str:
        """The diffusers class: ``PixArtTransformer2DModel``, ``DiTTransformer2DModel`` or
        ``SD3Transformer2DModel``."""
        return self._class.name

    @property
    def _session(self):
        """The session of the last forward (None before the first)."""
        return self._runs[0].session if self._runs else None

    @property
    def num_blocks(self) -> int:
        return self._rt.num_blocks

    @property
    def device(self) -> str:
        """Where the runtime computes: ``cpu``, ``sim`` or ``cuda:N``."""
        return self._rt.device

    @property
    def dtype(self) -> str:
        """The compute dtype: ``f32``, ``bf16`` or ``f16``."""
        return self._rt.dtype

    @property
    def weights(self) -> str:
        """Where the weights came from."""
        return self._rt.weights_desc

    @property
    def cache(self) -> str:
        """The cache policy spec (``none``, ``delta``, ``delta:n=3,nc=5,b=6``,
        ``delta-adaptive:threshold=0.1``, ``fora:n=3``, ``first-block:threshold=0.2``,
        ``schedule:mask=1101…``)."""
        return self._cache

    @cache.setter
    def cache(self, spec: str) -> None:
        spec = str(spec)
        _native.parse_cache(spec)
        # bound to this model (block count) with a step count far from any limit on it (a
        # schedule's mask: its own length, the one step count it runs with); the
        # step-dependent checks (b ≤ steps, the mask's length) run when a run's step count is known
        self._rt.check_cache(spec, _check_steps(spec))
        with self._lock:
            self._cache = spec
            self._runs = []

    def check_cache(self, spec: str, steps: int) -> str:
        """The policy ``spec`` builds for this model and ``steps`` steps, as ``name:params``
        (raises :class:`ParameterError` for a bad spec)."""
        return self._rt.check_cache(str(spec), int(steps))

    def __repr__(self) -> str:
        return (
            f"deltadit.Transformer({self.class_name}, {self.num_blocks} blocks, "
            f"device={self.device}, dtype={self.dtype}, cache={self.cache!r})"
        )

    # -- forward -------------------------------------------------------------------------------

    def __call__(
        self, *args, step: Optional[int] = None, num_steps: Optional[int] = None, context: Optional[str] = None, **kwargs
    ):
        try:
            bound = self._class.forward.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.class_name}.forward: {e}") from None
        bound.apply_defaults()
        a = dict(bound.arguments)
        return_dict = a.pop("return_dict")
        sample = self.forward_sample(step=step, num_steps=num_steps, context=context, **a)
        return _output(sample, return_dict)

    forward = __call__

    def forward_sample(
        self,
        hidden_states,
        timestep=None,
        *,
        step: Optional[int] = None,
        num_steps: Optional[int] = None,
        out_dtype: Optional[torch.dtype] = None,
        context: Optional[str] = None,
        **inputs,
    ) -> torch.Tensor:
        """The forward's ``sample`` tensor (what ``__call__`` wraps); ``inputs``: the forward's
        other arguments, by name. ``context`` names a cache state (diffusers' ``cache_context``:
        FluxPipeline's ``cond`` / ``uncond`` branches): each name keeps its own run."""
        cls = self._class
        unknown = sorted(set(inputs) - set(cls.inputs))
        if unknown:
            raise TypeError(f"{cls.name}.forward: unexpected arguments {unknown}")
        cls.check_arguments(inputs)
        x = _as_tensor(hidden_states, "hidden_states")
        want = 3 if cls.packed else 4
        if x.ndim != want:
            layout = "[batch, tokens, channels]" if cls.packed else "[batch, channels, height, width]"
            raise InputError(
                f"input `hidden_states`: expected {layout}, found shape {list(x.shape)}",
                kind="input",
                name="hidden_states",
            )
        if cls.packed:
            # the tokens as an N × 1 grid: their positions are the forward's img_ids
            b, n, c = x.shape
            h, w = n, 1
            if inputs.get("img_ids") is None:
                raise InputError(
                    "input `img_ids`: missing (the RoPE positions [tokens, 3] of the packed latents)",
                    kind="missing_input",
                    name="img_ids",
                )
        else:
            b, c, h, w = x.shape
        if c != self._in_channels:
            raise InputError(
                f"input `hidden_states`: expected {self._in_channels} channels, found shape {list(x.shape)}",
                kind="input",
                name="hidden_states",
            )
        if out_dtype is None:
            out_dtype = x.dtype if x.is_floating_point() else torch.float32
        if timestep is None:
            raise InputError("input `timestep`: missing", kind="missing_input", name="timestep")
        t = _as_tensor(timestep, "timestep").reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        elif t.numel() != b:
            raise InputError(
                f"input `timestep`: expected 1 or {b} values, found shape {list(t.shape)}", kind="input", name="timestep"
            )
        cond = cls.conditioning(b, {**inputs, "_tokens": h * w} if cls.packed else inputs, self._lib_config)
        uncached = cls.uncached_with is not None and bool(cond.get(cls.uncached_with))
        if self._cache == "none" or step is None or uncached:
            if self._cache != "none" and step is None and not uncached:
                raise ParameterError(
                    f"cache {self._cache!r} needs step= and num_steps= (the step index of a sampling loop); "
                    "a diffusers pipeline passes them through deltadit.diffusers.accelerate",
                    kind="param",
                    name="step",
                )
            spec, step, num_steps = "none", 0, 1
        else:
            if num_steps is None:
                raise ParameterError("step= needs num_steps=", kind="param", name="num_steps")
            spec = self._cache
        with self._lock:
            slot = (context, uncached)
            return self._run(x, t, b, h, w, cond, spec, int(step), int(num_steps), out_dtype, slot)

    def _session_for(self, b, h, w, cond, spec, steps, slot):
        skey = (b, h, w, spec, steps)
        key = (skey, slot) + tuple((k, _ident(cond[k])) for k in sorted(cond))
        runs = self._runs
        for i, r in enumerate(runs):
            if r.key == key:
                runs.insert(0, runs.pop(i))
                return r.session
        host = {k: _host_value(v) for k, v in cond.items()}
        for i, r in enumerate(runs):
            if r.skey == skey and r.slot == slot and _same_values(host, r.snapshot):
                r.key, r.refs = key, list(cond.values())
                runs.insert(0, runs.pop(i))
                return r.session
        sess = self._rt.session(b, h, w, cache=spec, steps=steps, **host)
        snap = {}
        for k, v in host.items():
            src = cond[k]
            own = isinstance(v, torch.Tensor) and src.device.type == "cpu" and v.data_ptr() == src.data_ptr()
            snap[k] = v.clone() if own else v
        # one run per slot: the new one replaces the slot's old one (and its memory)
        self._runs = [_Bound(sess, key, list(cond.values()), skey, snap, slot)] + [r for r in runs if r.slot != slot]
        return sess

    def _run(self, x, t, b, h, w, cond, spec, step, steps, out_dtype, slot=(None, False)) -> torch.Tensor:
        sess = self._session_for(b, h, w, cond, spec, steps, slot)
        in_device = x.device
        rt_cuda = self.device.startswith("cuda")
        if rt_cuda and x.device.type == "cuda" and x.device.index == int(self.device.split(":")[1]):
            # device to device on the caller's stream, float32 made by torch on the device
            with torch.cuda.device(x.device):
                xd = x.to(dtype=torch.float32).contiguous()
                td = t.to(device=x.device, dtype=torch.float32).contiguous()
                out = torch.empty(sess.output_shape, dtype=torch.float32, device=x.device)
                stream = torch.cuda.current_stream(x.device).cuda_stream
                plan, blocks, probe, secs = sess.forward(xd, td, out, step, steps, stream)
        else:
            # host tensors read and written in place (contiguous float32 CPU tensors: no copy)
            xh = x.to(device="cpu", dtype=torch.float32).contiguous()
            th = t.to(device="cpu", dtype=torch.float32).contiguous()
            out = torch.empty(sess.output_shape, dtype=torch.float32)
            plan, blocks, probe, secs = sess.forward(xh, th, out, step, steps)
        self.last_report = StepReport(plan, blocks, self.num_blocks, probe, secs)
        return out.to(device=in_device, dtype=out_dtype)


@dataclass
class _Bound:
    """A session and what it was built for."""

    session: Any
    key: Any  # identity of the conditioning (objects, versions, storage), with the run's shape
    refs: list  # keeps those tensors alive (so their ids stay theirs)
    skey: tuple  # (batch, height, width, cache, steps)
    snapshot: dict  # host copies of the conditioning, to compare by value
    slot: tuple  # (cache context name, built with the class's `uncached_with` argument (SD3: skip_layers))


def _host_value(v):
    """A conditioning value as the native session takes it: float tensors as contiguous float32
    host tensors, integer tensors as lists of ints, anything else as is."""
    if isinstance(v, torch.Tensor):
        if v.is_floating_point():
            return _host_f32(v)
        return [int(k) for k in v.reshape(-1).cpu().tolist()]
    return v


def _same_values(host: dict, snap: dict) -> bool:
    if host.keys() != snap.keys():
        return False
    for k, v in host.items():
        s = snap[k]
        if isinstance(v, torch.Tensor) or isinstance(s, torch.Tensor):
            if not (isinstance(v, torch.Tensor) and isinstance(s, torch.Tensor)):
                return False
            if v.shape != s.shape or not torch.equal(v, s):
                return False
        elif v != s:
            return False
    return True


# -- what a diffusers module must be for its weights to be taken -------------------------------------

SUPPORTED_CLASSES = class_names()


def _unwrap(module):
    """The module under a torch.compile wrapper."""
    return getattr(module, "_orig_mod", module)


def module_class(module) -> ModelClass:
    """The table row of `module` (exactly one of the diffusers classes of the table), else
    :class:`UnsupportedError`."""
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover
        raise UnsupportedError(f"from_diffusers needs diffusers: {e}", kind="unsupported_class") from None
    row = by_class_name(type(module).__name__)
    if row is None or getattr(diffusers, row.name, None) is not type(module):
        raise UnsupportedError(
            f"{type(module).__module__}.{type(module).__qualname__} is not supported: deltadit runs "
            f"{', '.join(SUPPORTED_CLASSES[:-1])} and {SUPPORTED_CLASSES[-1]} (exactly these classes)",
            kind="unsupported_class",
            class_name=type(module).__name__,
        )
    return row


def check_module(module) -> ModelClass:
    """Raises :class:`UnsupportedError` unless `module` is a diffusers transformer of the class
    table that this runtime computes exactly: the class, its attention processors, no unfused
    adapters. Returns its row of the table."""
    row = module_class(module)
    procs = getattr(module, "attn_processors", {}) or {}
    for layer, proc in procs.items():
        name = type(proc).__name__
        if name not in row.processors or type(proc).__module__.split(".")[0] != "diffusers":
            raise UnsupportedError(
                f"attention processor {type(proc).__module__}.{type(proc).__qualname__} at `{layer}` is not "
                f"implemented by deltadit (only diffusers' {' / '.join(row.processors)} for {row.name}; "
                "call module.set_default_attn_processor() or unfuse QKV projections first)",
                kind="unsupported_attention_processor",
                processor=name,
                layer=layer,
            )
    if getattr(module, "_hf_peft_config_loaded", False) or getattr(module, "peft_config", None):
        raise UnsupportedError(
            "the module carries PEFT/LoRA adapters: fuse them into the weights and unload the adapters "
            "(pipe.fuse_lora(); pipe.unload_lora_weights()) before accelerating",
            kind="unsupported_adapters",
        )
    return row
