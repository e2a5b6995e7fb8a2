"""deltadit as the transformer backend of diffusers pipelines, in one line::

    pipe = PixArtAlphaPipeline.from_pretrained("PixArt-alpha/PixArt-XL-2-1024-MS", torch_dtype=torch.float16)
    pipe.to("cuda")
    deltadit.diffusers.accelerate(pipe, device="cuda", cache="delta")
    image = pipe("a small cactus with a happy face in the Sahara desert").images[0]
    deltadit.diffusers.stats(pipe)      # per step of that call: plan, blocks run, time

:func:`accelerate` replaces ``pipe.transformer`` (a ``PixArtTransformer2DModel``,
``DiTTransformer2DModel``, ``SD3Transformer2DModel`` or ``FluxTransformer2DModel``:
PixArtAlphaPipeline, PixArtSigmaPipeline, DiTPipeline, StableDiffusion3Pipeline, FluxPipeline, or
any pipeline with one of them; the classes and their
forward signatures come from the table of :mod:`deltadit._classes`) by a module of the same class
name, config, dtype and device whose forward runs in deltadit; the pipeline's text encoders, VAE,
scheduler and prompts stay as they are. The cache policy follows the pipeline's own step loop:
the step index is the current timestep's index in ``pipe.scheduler.timesteps``, and each call of
the pipeline starts a new run; each ``transformer.cache_context(name)`` (FluxPipeline's ``cond``
and ``uncond`` branches under true CFG) keeps a cache state of its own.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import weakref
from typing import Optional

import torch

from ._classes import ModelClass, by_class_name
from ._errors import ParameterError, UnsupportedError
from ._transformer import Transformer, _output, _unwrap, check_module

__all__ = ["accelerate", "stats", "is_accelerated"]


class _Run:
    """One pass over the scheduler's timesteps: a pipeline call, or (outside one) a loop of the
    caller's that starts at the first timestep."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.timesteps: Optional[list] = None
        self.next = 0
        self.stats: list = []


def _host_timesteps(scheduler) -> Optional[list]:
    ts = getattr(scheduler, "timesteps", None)
    if ts is None:
        return None
    if isinstance(ts, torch.Tensor):
        return [float(v) for v in ts.detach().reshape(-1).cpu().tolist()]
    try:
        return [float(v) for v in ts]
    except TypeError:
        return None


def _host_scalar(timestep) -> Optional[float]:
    """The first timestep value when reading it costs no device synchronisation."""
    if isinstance(timestep, (int, float)):
        return float(timestep)
    if isinstance(timestep, torch.Tensor) and timestep.device.type == "cpu" and timestep.numel() > 0:
        return float(timestep.reshape(-1)[0])
    return None


class _State:
    """What the accelerated module keeps besides the runtime: the pipeline it serves, the cache
    spec, the run in progress and the last run's per-step stats."""

    def __init__(self, native: Transformer, pipe, cache: str, dtype: torch.dtype, device: torch.device):
        self.native = native
        # what the pipeline passes as `timestep`, per scheduler timestep (FluxPipeline: t / 1000)
        self.timestep_scale = native._class.timestep_scale
        # the cache state of this forward (diffusers' `cache_context` name; None outside one)
        self.context: Optional[str] = None
        self.pipe = weakref.ref(pipe)
        self.cache = cache
        self.dtype = dtype
        self.device = device
        self.run: Optional[_Run] = None
        self.in_call = False
        self.last_stats: list = []

    def scheduler(self):
        pipe = self.pipe()
        return getattr(pipe, "scheduler", None) if pipe is not None else None

    def begin(self, pipe) -> None:
        self.run = _Run(pipe.scheduler)
        self.in_call = True
        self.last_stats = self.run.stats

    def end(self) -> None:
        self.in_call = False
        self.run = None

    def locate(self, timestep):
        """(step index, steps, timestep value) of this forward."""
        run = self.run
        if run is None or (not self.in_call and run.next == 0):
            run = self.run = _Run(self.scheduler())
            self.last_stats = run.stats
        if run.timesteps is None:
            run.timesteps = _host_timesteps(run.scheduler)
        ts = run.timesteps
        tv = _host_scalar(timestep)
        i = None
        if ts and tv is not None:
            scale = self.timestep_scale
            if scale == 1.0:
                found = [k for k, v in enumerate(ts) if v == tv]
            else:
                found = [k for k, v in enumerate(ts) if abs(v * scale - tv) <= 1e-6 * max(1.0, abs(tv))]
            if found:
                i = next((k for k in found if k >= run.next), found[0])
        if i is None:
            # the timestep is not readable without a device sync (or not among the scheduler's):
            # the scheduler's step index, its begin index before its first step (FluxPipeline sets
            # it: every forward of step 0, true CFG's two included), else the next step
            si = getattr(run.scheduler, "step_index", None)
            if not isinstance(si, int):
                si = getattr(run.scheduler, "begin_index", None)
            i = si if isinstance(si, int) else run.next
        steps = len(ts) if ts else None
        if steps is not None and i >= steps:
            raise ParameterError(
                f"step {i} is past the scheduler's {steps} timesteps (one transformer call per timestep is expected)",
                kind="param",
                name="step",
                value=str(i),
            )
        if i == 0 and run.next > 1:
            # a new pass over the timesteps within the same call or loop: a new run (a second
            # forward at the same step, e.g. SD3's skip-layer guidance pass, is not one)
            run.stats.clear()
        run.next = i + 1
        if steps is not None and run.next >= steps and not self.in_call:
            run.next = 0
        return run, i, steps, (ts[i] if ts and i < len(ts) else tv)


class _AcceleratedModule:
    """Mixed in before the diffusers class: the module the pipeline sees."""

    _dd: _State

    # what ModelMixin derives from parameters (there are none here)
    @property
    def dtype(self) -> torch.dtype:
        return self._dd.dtype

    @property
    def device(self) -> torch.device:
        return self._dd.device

    @property
    def deltadit(self) -> Transformer:
        """The deltadit runtime behind this module."""
        return self._dd.native

    def to(self, *args, **kwargs):
        """Records the device and dtype the module reports (and returns outputs in): the runtime
        stays where :func:`accelerate` put it, and takes inputs from any device."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            if not (dtype.is_floating_point or dtype.is_complex):
                raise TypeError(f"nn.Module.to only accepts floating point or complex dtypes, but got desired dtype={dtype}")
            if dtype.is_complex:
                raise UnsupportedError(f"dtype {dtype} is not supported", kind="unsupported_dtype")
            self._dd.dtype = dtype
        if device is not None:
            self._dd.device = torch.device(device)
        return self

    def cuda(self, device=None):
        return self.to(torch.device("cuda", device) if isinstance(device, int) else (device or "cuda"))

    def cpu(self):
        return self.to("cpu")

    def float(self):
        return self.to(torch.float32)

    def half(self):
        return self.to(torch.float16)

    def bfloat16(self):
        return self.to(torch.bfloat16)

    def double(self):
        return self.to(torch.float64)

    def type(self, dst_type):
        return self.to(dst_type)

    @contextlib.contextmanager
    def cache_context(self, name: str):
        """diffusers' ``CacheMixin.cache_context``: the forwards inside run with the cache state of
        `name` (FluxPipeline's ``cond`` and ``uncond`` branches keep separate runs)."""
        st = self._dd
        prev, st.context = st.context, str(name)
        try:
            yield
        finally:
            st.context = prev

    def extra_repr(self) -> str:
        n = self._dd.native
        return f"deltadit: device={n.device}, compute dtype={n.dtype}, cache={self._dd.cache!r}, blocks={n.num_blocks}"

    def _dd_forward(self, return_dict: bool, timestep, **kw):
        st = self._dd
        run, i, steps, tval = st.locate(timestep)
        if st.cache == "none" or steps is None:
            if st.cache != "none":
                raise ParameterError(
                    f"cache {st.cache!r} needs the scheduler's timesteps (pipe.scheduler.timesteps) to know the step",
                    kind="param",
                    name="step",
                )
            step, n = None, None
        else:
            step, n = i, steps
        start = time.perf_counter()
        native = st.native
        sample = native.forward_sample(
            timestep=timestep, step=step, num_steps=n, out_dtype=st.dtype, context=st.context, **kw
        )
        elapsed = time.perf_counter() - start
        r = native.last_report
        run.stats.append(
            {
                "step": i,
                "timestep": tval,
                "plan": r.plan,
                "blocks_run": r.blocks_run,
                "num_blocks": r.num_blocks,
                "probe": r.probe,
                "time_s": elapsed,
                "runtime_s": r.time_s,
            }
        )
        return _output(sample, return_dict)


def _forward_for(row: ModelClass):
    """The accelerated module's ``forward``: the diffusers signature of `row` (bound exactly as
    diffusers would bind it), handed to the runtime by name."""
    sig = row.forward

    def forward(self, *args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{row.name}.forward: {e}") from None
        bound.apply_defaults()
        a = dict(bound.arguments)
        return_dict = a.pop("return_dict")
        timestep = a.pop("timestep")
        return self._dd_forward(return_dict, timestep, **a)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = sig.replace(parameters=[self_param, *sig.parameters.values()])
    return forward


@functools.lru_cache(maxsize=None)
def _module_class(cls):
    """The accelerated module class for diffusers class `cls`: same name, a subclass of it."""
    row = by_class_name(cls.__name__)
    if row is None:  # pragma: no cover - check_module ran before
        raise UnsupportedError(f"{cls.__name__} is not supported", kind="unsupported_class")
    forward = _forward_for(row)
    functools.update_wrapper(forward, cls.forward, assigned=("__doc__",), updated=())
    return type(
        cls.__name__,
        (_AcceleratedModule, cls),
        {"forward": forward, "__module__": __name__, "__qualname__": cls.__qualname__, "_deltadit_base": cls},
    )


@functools.lru_cache(maxsize=None)
def _pipeline_class(cls):
    """`cls` whose __call__ starts a new cache run (and a new stats list) at every call."""

    @functools.wraps(cls.__call__)
    def __call__(self, *args, **kwargs):
        tr = self.__dict__.get("transformer")
        st = tr._dd if isinstance(tr, _AcceleratedModule) else None
        if st is not None:
            st.begin(self)
        try:
            return cls.__call__(self, *args, **kwargs)
        finally:
            if st is not None:
                st.end()

    return type(
        cls.__name__,
        (cls,),
        {"__call__": __call__, "__module__": __name__, "__qualname__": cls.__qualname__, "_deltadit_base": cls},
    )


def is_accelerated(pipe) -> bool:
    """Whether `pipe.transformer` runs in deltadit."""
    return isinstance(getattr(pipe, "transformer", None), _AcceleratedModule)


def _make_module(orig, native: Transformer, pipe, cache: str):
    cls = _module_class(type(orig))
    m = cls.__new__(cls)
    torch.nn.Module.__init__(m)
    # ConfigMixin.config reads _internal_dict: the pipeline sees the very same FrozenDict
    m.__dict__["_internal_dict"] = orig._internal_dict
    for k, v in vars(orig).items():
        if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, type(None))):
            m.__dict__[k] = v
    m.training = orig.training
    params = list(orig.parameters())
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    if device.type == "meta":
        device = torch.device("cpu")
    m.__dict__["_dd"] = _State(native, pipe, cache, dtype, device)
    return m


def accelerate(pipe, *, device=None, dtype=None, cache: str = "none", threads: Optional[int] = None):
    """Runs ``pipe.transformer`` in deltadit; returns ``pipe``.

    - ``device``: ``cpu`` (f32), ``cuda`` / ``cuda:N`` (bf16/f16 kernels), ``sim`` (the CUDA kernels
      on the CPU, for tests); default: where the transformer's weights are.
    - ``dtype``: the compute dtype (``f32``, ``bf16``, ``f16`` or a torch dtype); default f32 on the
      CPU, the transformer's half dtype (else bf16) on a kernel device. The module keeps reporting
      the transformer's own dtype, and inputs and outputs stay in it.
    - ``cache``: the CLI's policy spec: ``none``, ``delta`` (the paper's preset for the model and
      step count), ``delta:n=3,nc=5,b=6``, ``delta-adaptive:threshold=0.1,warmup=2,max-cached=1``,
      ``fora:n=3``, ``first-block:threshold=0.2``, ``schedule:mask=1101…`` (one bit per step,
      1 = full step; ``deltadit calibrate`` searches masks).

    Raises :class:`deltadit.UnsupportedError` (a ``ValueError``) for a transformer class other
    than ``PixArtTransformer2DModel`` / ``DiTTransformer2DModel`` / ``SD3Transformer2DModel`` /
    ``FluxTransformer2DModel``, an
    attention processor other than diffusers' default, unfused LoRA adapters, a head dim the
    device has no kernel for;
    :class:`deltadit.ParameterError` for a bad device, dtype or cache spec. An already
    accelerated pipeline only takes a new ``cache`` (and the same device and dtype).
    """
    tr = getattr(pipe, "transformer", None)
    if tr is None:
        raise UnsupportedError(
            f"{type(pipe).__name__} has no transformer (deltadit replaces a pipeline's `transformer`)",
            kind="unsupported_pipeline",
        )
    if isinstance(tr, _AcceleratedModule):
        st = tr._dd
        from ._transformer import _device_name, _dtype_name

        if (device is not None and _device_name(device) != st.native.device) or (
            dtype is not None and _dtype_name(dtype) != st.native.dtype
        ):
            raise UnsupportedError(
                f"the pipeline already runs in deltadit on {st.native.device} ({st.native.dtype}); "
                "build the pipeline again to change the device or dtype",
                kind="already_accelerated",
            )
        st.native.cache = str(cache)
        st.cache = str(cache)
        return pipe
    orig = _unwrap(tr)
    check_module(orig)
    native = Transformer.from_diffusers(orig, device=device, dtype=dtype, cache=str(cache), threads=threads)
    new = _make_module(orig, native, pipe, str(cache))
    # straight into the instance dict: pipe.config keeps describing the pipeline's own class
    pipe.__dict__["transformer"] = new
    if not hasattr(type(pipe), "_deltadit_base"):
        pipe.__class__ = _pipeline_class(type(pipe))
    return pipe


def stats(pipe) -> list:
    """Per step of the pipeline's last call (or of the loop in progress): ``step``,
    ``timestep``, ``plan`` (``full``, ``full+front+rear``, ``cached-rear-4``, ...),
    ``blocks_run`` of ``num_blocks``, the policy's ``probe`` (None without one), ``time_s``
    (wall time of the transformer call, conversions included) and ``runtime_s`` (inside the
    runtime; on the cuda device both end when the work is queued, not when it finishes)."""
    tr = getattr(pipe, "transformer", None)
    if not isinstance(tr, _AcceleratedModule):
        raise ParameterError(
            "the pipeline is not accelerated (call deltadit.diffusers.accelerate(pipe) first)",
            kind="param",
            name="pipe",
        )
    return [dict(r) for r in tr._dd.last_stats]
