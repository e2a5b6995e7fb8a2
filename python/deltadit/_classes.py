"""The diffusers transformer classes deltadit runs, in ONE table (:data:`MODEL_CLASSES`): for each,
the runtime family (``Family::short_name`` of the library), the diffusers forward signature
(positional order included), the attention processors the runtime computes exactly, the
pipelines that use it, which forward arguments are the run's conditioning, which ones are
rejected, and how the conditioning is read from the arguments.

Everything else in the package (``Transformer.__call__``, ``from_diffusers``'s checks, the
accelerated module's ``forward`` in :mod:`deltadit.diffusers`, the docs) looks classes up here;
nothing tests a class name by its prefix. A new family is one more row.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from ._errors import InputError, UnsupportedError

__all__ = ["ModelClass", "MODEL_CLASSES", "by_class_name", "by_family", "class_names"]

# -- the diffusers forward signatures (``self`` left out; names, order and defaults as diffusers) --


def _pixart_forward(
    hidden_states,
    encoder_hidden_states=None,
    timestep=None,
    added_cond_kwargs=None,
    cross_attention_kwargs=None,
    attention_mask=None,
    encoder_attention_mask=None,
    return_dict=True,
):  # pragma: no cover - a signature only
    pass


def _dit_forward(
    hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None, return_dict=True
):  # pragma: no cover - a signature only
    pass


def _sd3_forward(
    hidden_states,
    encoder_hidden_states=None,
    pooled_projections=None,
    timestep=None,
    block_controlnet_hidden_states=None,
    joint_attention_kwargs=None,
    return_dict=True,
    skip_layers=None,
):  # pragma: no cover - a signature only
    pass


def _flux_forward(
    hidden_states,
    encoder_hidden_states=None,
    pooled_projections=None,
    timestep=None,
    img_ids=None,
    txt_ids=None,
    guidance=None,
    joint_attention_kwargs=None,
    controlnet_block_samples=None,
    controlnet_single_block_samples=None,
    return_dict=True,
    controlnet_blocks_repeat=False,
):  # pragma: no cover - a signature only
    pass


# -- reading a run's conditioning from the forward's arguments -------------------------------------


def _tensor(x, name: str) -> torch.Tensor:
    from ._transformer import _as_tensor

    return _as_tensor(x, name)


def _text(b: int, ehs, what: str) -> torch.Tensor:
    if ehs is None:
        raise InputError(
            f"input `encoder_hidden_states`: missing ({what} needs the text embeddings)",
            kind="missing_input",
            name="encoder_hidden_states",
        )
    ehs = _tensor(ehs, "encoder_hidden_states")
    if ehs.ndim != 3:
        raise InputError(
            f"input `encoder_hidden_states`: expected [batch, tokens, features], found {list(ehs.shape)}",
            kind="input",
            name="encoder_hidden_states",
        )
    if ehs.shape[0] != b:
        raise InputError(
            f"input `encoder_hidden_states`: batch {ehs.shape[0]}, hidden_states has {b}",
            kind="input",
            name="encoder_hidden_states",
        )
    return ehs


def _added_cond_kwargs(added) -> dict:
    if added is None:
        return {}
    if not isinstance(added, Mapping):
        raise InputError(
            f"input `added_cond_kwargs`: expected a dict, found {type(added).__name__}",
            kind="input",
            name="added_cond_kwargs",
        )
    return dict(added)


def _pixart_conditioning(b: int, a: Dict[str, Any], lib_config: Mapping) -> Dict[str, Any]:
    ehs = _text(b, a.get("encoder_hidden_states"), "PixArt")
    mask = a.get("encoder_attention_mask")
    if mask is not None:
        mask = _tensor(mask, "encoder_attention_mask")
        if mask.ndim != 2:
            raise InputError(
                "input `encoder_attention_mask`: expected a [batch, tokens] 1 (keep) / 0 (discard) mask, "
                f"found shape {list(mask.shape)}",
                kind="input",
                name="encoder_attention_mask",
            )
    res = ar = None
    if lib_config.get("use_additional_conditions", False):
        added = _added_cond_kwargs(a.get("added_cond_kwargs"))
        res, ar = added.get("resolution"), added.get("aspect_ratio")
        if res is None or ar is None:
            raise InputError(
                "input `added_cond_kwargs`: this model uses micro-conditions: pass `resolution` "
                "[batch, 2] and `aspect_ratio` [batch, 1]",
                kind="missing_input",
                name="added_cond_kwargs",
            )
        res, ar = _tensor(res, "resolution"), _tensor(ar, "aspect_ratio")
    return {"encoder_hidden_states": ehs, "encoder_attention_mask": mask, "resolution": res, "aspect_ratio": ar}


def _dit_conditioning(b: int, a: Dict[str, Any], lib_config: Mapping) -> Dict[str, Any]:
    labels = a.get("class_labels")
    if labels is None:
        raise InputError(
            "input `class_labels`: missing (DiT needs the class labels)", kind="missing_input", name="class_labels"
        )
    labels = _tensor(labels, "class_labels").reshape(-1)
    if labels.is_floating_point() or labels.is_complex():
        raise InputError("input `class_labels`: expected integers", kind="input", name="class_labels")
    if labels.numel() != b:
        raise InputError(
            f"input `class_labels`: expected {b} labels, found {labels.numel()}", kind="input", name="class_labels"
        )
    return {"class_labels": labels}


def _skip_layers(v) -> Tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, torch.Tensor):
        v = v.reshape(-1).tolist()
    try:
        out = tuple(int(k) for k in v)
    except (TypeError, ValueError):
        out = None
    if out is None or any(k < 0 for k in out):
        raise InputError(
            f"input `skip_layers`: expected a list of non-negative block indices, found {v!r}",
            kind="input",
            name="skip_layers",
        )
    return tuple(sorted(set(out)))


def _sd3_conditioning(b: int, a: Dict[str, Any], lib_config: Mapping) -> Dict[str, Any]:
    ehs = _text(b, a.get("encoder_hidden_states"), "SD3")
    pooled = a.get("pooled_projections")
    if pooled is None:
        raise InputError(
            "input `pooled_projections`: missing (SD3 needs the pooled text embeddings)",
            kind="missing_input",
            name="pooled_projections",
        )
    pooled = _tensor(pooled, "pooled_projections")
    if pooled.ndim != 2 or pooled.shape[0] != b:
        raise InputError(
            f"input `pooled_projections`: expected [{b}, features], found shape {list(pooled.shape)}",
            kind="input",
            name="pooled_projections",
        )
    return {"encoder_hidden_states": ehs, "pooled_projections": pooled, "skip_layers": _skip_layers(a.get("skip_layers"))}


def _ids(v, name: str, rows: Optional[int]) -> Optional[torch.Tensor]:
    """FLUX's RoPE positions: [rows, axes] (diffusers' deprecated [1, rows, axes] too)."""
    if v is None:
        return None
    v = _tensor(v, name)
    if v.ndim == 3 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 2 or (rows is not None and v.shape[0] != rows):
        want = f"[{rows if rows is not None else 'tokens'}, axes]"
        raise InputError(f"input `{name}`: expected {want}, found shape {list(v.shape)}", kind="input", name=name)
    return v.to(torch.float32)


def _flux_conditioning(b: int, a: Dict[str, Any], lib_config: Mapping) -> Dict[str, Any]:
    ehs = _text(b, a.get("encoder_hidden_states"), "FLUX")
    pooled = a.get("pooled_projections")
    if pooled is None:
        raise InputError(
            "input `pooled_projections`: missing (FLUX needs the pooled text embeddings)",
            kind="missing_input",
            name="pooled_projections",
        )
    pooled = _tensor(pooled, "pooled_projections")
    if pooled.ndim != 2 or pooled.shape[0] != b:
        raise InputError(
            f"input `pooled_projections`: expected [{b}, features], found shape {list(pooled.shape)}",
            kind="input",
            name="pooled_projections",
        )
    n = a.get("_tokens")
    guidance = a.get("guidance")
    if guidance is not None:
        guidance = _tensor(guidance, "guidance").reshape(-1).to(torch.float32)
        if guidance.numel() == 1:
            guidance = guidance.expand(b)
        elif guidance.numel() != b:
            raise InputError(
                f"input `guidance`: expected 1 or {b} values, found {guidance.numel()}", kind="input", name="guidance"
            )
    return {
        "encoder_hidden_states": ehs,
        "pooled_projections": pooled,
        "image_ids": _ids(a.get("img_ids"), "img_ids", n),
        "text_ids": _ids(a.get("txt_ids"), "txt_ids", ehs.shape[1]),
        "guidance": guidance,
    }


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelClass:
    """One supported diffusers transformer class."""

    #: the diffusers class name (``type(module).__name__``, ``config.json``'s ``_class_name``)
    name: str
    #: the runtime's family (``Runtime.family``, the library's ``Family::short_name``)
    family: str
    #: the diffusers ``forward`` signature without ``self``
    forward: inspect.Signature
    #: the diffusers pipelines built on it (documentation; any pipeline holding the class works)
    pipelines: Tuple[str, ...]
    #: attention processors the runtime computes exactly (diffusers' defaults for the class)
    processors: Tuple[str, ...]
    #: forward arguments that must be None (with the reason)
    reject_if_set: Tuple[Tuple[str, str], ...]
    #: forward arguments that must be None or empty (with the reason)
    reject_if_nonempty: Tuple[Tuple[str, str], ...]
    #: (batch, forward arguments, the runtime's config) → ``Runtime.session`` keyword arguments
    conditioning: Callable[[int, Dict[str, Any], Mapping], Dict[str, Any]]
    #: a forward argument whose value makes that forward run uncached, beside the cached run
    #: (SD3's ``skip_layers``: skip-layer guidance), or None
    uncached_with: Optional[str] = None
    #: latents packed as tokens, ``hidden_states`` [B, N, C] (FLUX), instead of [B, C, H, W]
    packed: bool = False
    #: what the pipelines pass as ``timestep``, times the scheduler's timestep (FluxPipeline: t / 1000)
    timestep_scale: float = 1.0

    @property
    def inputs(self) -> Tuple[str, ...]:
        """The forward's arguments besides ``hidden_states``, ``timestep`` and ``return_dict``."""
        return tuple(n for n in self.forward.parameters if n not in ("hidden_states", "timestep", "return_dict"))

    def check_arguments(self, a: Mapping[str, Any]) -> None:
        """Raises :class:`UnsupportedError` for an argument this runtime does not implement."""
        for name, why in self.reject_if_set:
            if a.get(name) is not None:
                raise UnsupportedError(
                    f"{self.name}: {name} is not supported ({why})", kind="unsupported_argument", name=name
                )
        for name, why in self.reject_if_nonempty:
            v = a.get(name)
            if v:
                keys = sorted(v) if isinstance(v, Mapping) else v
                raise UnsupportedError(
                    f"{self.name}: {name} {keys} are not supported ({why})", kind="unsupported_argument", name=name
                )


_LORA = "LoRA scales, IP-adapter inputs, ...: fuse LoRA weights first"

MODEL_CLASSES: Tuple[ModelClass, ...] = (
    ModelClass(
        name="PixArtTransformer2DModel",
        family="pixart",
        forward=inspect.signature(_pixart_forward),
        pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
        processors=("AttnProcessor2_0", "AttnProcessor"),
        reject_if_set=(("attention_mask", "a mask over the image tokens; encoder_attention_mask is supported"),),
        reject_if_nonempty=(("cross_attention_kwargs", _LORA),),
        conditioning=_pixart_conditioning,
    ),
    ModelClass(
        name="DiTTransformer2DModel",
        family="dit",
        forward=inspect.signature(_dit_forward),
        pipelines=("DiTPipeline",),
        processors=("AttnProcessor2_0", "AttnProcessor"),
        reject_if_set=(),
        reject_if_nonempty=(("cross_attention_kwargs", _LORA),),
        conditioning=_dit_conditioning,
    ),
    ModelClass(
        name="SD3Transformer2DModel",
        family="sd3",
        forward=inspect.signature(_sd3_forward),
        pipelines=("StableDiffusion3Pipeline",),
        processors=("JointAttnProcessor2_0",),
        reject_if_set=(("block_controlnet_hidden_states", "ControlNet residuals"),),
        reject_if_nonempty=(("joint_attention_kwargs", _LORA),),
        conditioning=_sd3_conditioning,
        uncached_with="skip_layers",
    ),
    ModelClass(
        name="FluxTransformer2DModel",
        family="flux",
        forward=inspect.signature(_flux_forward),
        pipelines=("FluxPipeline",),
        processors=("FluxAttnProcessor", "FluxAttnProcessor2_0"),
        reject_if_set=(
            ("controlnet_block_samples", "ControlNet residuals"),
            ("controlnet_single_block_samples", "ControlNet residuals"),
        ),
        reject_if_nonempty=(
            ("joint_attention_kwargs", _LORA),
            ("controlnet_blocks_repeat", "ControlNet residuals"),
        ),
        conditioning=_flux_conditioning,
        packed=True,
        timestep_scale=1e-3,
    ),
)

_BY_NAME = {c.name: c for c in MODEL_CLASSES}
_BY_FAMILY = {c.family: c for c in MODEL_CLASSES}


def class_names() -> Tuple[str, ...]:
    return tuple(c.name for c in MODEL_CLASSES)


def by_class_name(name: str) -> Optional[ModelClass]:
    """The row of diffusers class `name`, or None."""
    return _BY_NAME.get(name)


def by_family(family: str) -> ModelClass:
    """The row of the runtime family `family` (``Runtime.family``)."""
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise UnsupportedError(
            f"the runtime's family {family!r} has no entry in deltadit's class table "
            f"({', '.join(sorted(_BY_FAMILY))}): this package is older than its native module",
            kind="unsupported_class",
            family=family,
        ) from None
