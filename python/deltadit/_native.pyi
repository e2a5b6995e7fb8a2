"""Type stub of ``deltadit._native``, the package's native module (PyO3, python/src/lib.rs).

Tensors are handed over through DLPack: contiguous float32 torch tensors (or numpy arrays, or
anything with ``__dlpack__``), on the host or, for ``Session.forward`` on the cuda device, on the
GPU. Failures raise the exceptions of :mod:`deltadit._errors`.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__version__: str

class Runtime:
    """A diffusers transformer (PixArt, DiT, SD3/SD3.5 or FLUX.1) loaded on a backend."""

    @staticmethod
    def load(path: str, device: str = "cpu", dtype: Optional[str] = None, threads: Optional[int] = None) -> "Runtime":
        """Loads a diffusers transformer folder (``config.json`` + safetensors weights)."""
    @staticmethod
    def from_weights(
        config_json: str,
        keys: List[str],
        fetch: Callable[[str], Any],
        describe: str,
        device: str = "cpu",
        dtype: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> "Runtime":
        """Builds the model of ``config_json`` from ``fetch(key)``: a contiguous float32 host
        tensor per diffusers key among ``keys``."""
    def config_json(self) -> str:
        """The model's config as diffusers writes it (JSON)."""
    @property
    def family(self) -> str:
        """The library's ``Family::short_name``: ``pixart``, ``dit``, ``sd3`` or ``flux``."""
    @property
    def class_name(self) -> str:
        """The library's ``Family::name``: the diffusers class name."""
    @property
    def flow_matching(self) -> bool:
        """Whether the model is trained for flow matching (SD3, FLUX)."""
    @property
    def num_blocks(self) -> int: ...
    @property
    def device(self) -> str:
        """``cpu``, ``sim`` or ``cuda:N``."""
    @property
    def dtype(self) -> str:
        """The compute dtype: ``f32``, ``bf16`` or ``f16``."""
    @property
    def weights_desc(self) -> str:
        """Where the weights came from."""
    def check_cache(self, spec: str, steps: int) -> str:
        """Checks a cache spec for this model and ``steps``; returns the policy as ``name:params``."""
    def session(
        self,
        batch: int,
        height: int,
        width: int,
        *,
        encoder_hidden_states: Any = None,
        encoder_attention_mask: Any = None,
        resolution: Any = None,
        aspect_ratio: Any = None,
        class_labels: Optional[Sequence[int]] = None,
        pooled_projections: Any = None,
        skip_layers: Optional[Sequence[int]] = None,
        image_ids: Any = None,
        text_ids: Any = None,
        guidance: Any = None,
        cache: str = "none",
        steps: int = 1,
    ) -> "Session":
        """Binds the model to one run: its conditioning (the whole model batch, CFG copies
        included, as contiguous float32 host tensors) and a cache policy for ``steps`` steps.
        PixArt: ``encoder_hidden_states`` [B, L, C], ``encoder_attention_mask`` [B, L],
        ``resolution`` [B, 2], ``aspect_ratio`` [B, 1]; DiT: ``class_labels``; SD3:
        ``encoder_hidden_states`` [B, L, joint_attention_dim], ``pooled_projections``
        [B, pooled_projection_dim], ``skip_layers`` (uncached runs only); FLUX: packed latents
        (``height`` × ``width`` the token grid; N × 1 with the forward's own ``image_ids``),
        ``encoder_hidden_states``, ``pooled_projections``, ``image_ids`` [N, 3], ``text_ids``
        [L, 3], ``guidance`` [B] (FLUX.1-dev)."""

class Session:
    """One run: the model bound to a conditioning and a cache policy."""

    def forward(
        self, hidden_states: Any, timestep: Any, out: Any, step: int, steps: int, stream: int = 0
    ) -> Tuple[str, int, Optional[float], float]:
        """One forward at step ``step`` of ``steps``: ``hidden_states`` [B, C, H, W] (FLUX: packed
        [B, N, C]) and ``timestep`` [B] into ``out`` [B, C_out, H, W] (FLUX: [B, N, C_out]) (contiguous float32, all on the host or
        all on the CUDA device, with ``stream`` the caller's current stream). Returns (plan,
        blocks run, probe, seconds)."""
    def reset(self) -> None:
        """Starts a new run (the cache forgets its state; step 0 does this too)."""
    @property
    def input_shape(self) -> List[int]: ...
    @property
    def output_shape(self) -> List[int]: ...
    @property
    def batch(self) -> int: ...
    @property
    def policy(self) -> str:
        """The cache policy, ``name:params``."""
    @property
    def steps(self) -> int:
        """The steps the policy was built for."""

def parse_cache(spec: str) -> str:
    """Parses a cache spec without a model; returns its canonical text."""

def build_info() -> Dict[str, Any]:
    """``cuda_kernels``, ``sim``, ``kernel_head_dims``, ``version``."""

def cuda_status() -> Tuple[bool, str]:
    """Whether a CUDA device is usable by the cuda backend, with the reason when not."""
