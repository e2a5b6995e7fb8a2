"""Tiny random diffusers models and pipelines for the tests (no hub access): PixArt-α with
micro-conditions, PixArt-Σ, DiT, SD3 and SD3.5 (RMS qk norm, MMDiT-X dual attention), FLUX.1 dev and schnell in FluxPipeline, a tiny
AutoencoderKL, the schedulers the CLI implements (the configs of the golden cases in
tests/data), and the CLI's inputs for the same run."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("DELTADIT_CLI", REPO / "target" / "release" / "deltadit"))

# The scheduler configs of the golden cases (tests/data/*/case.json): what the CLI computes.
DPM_CONFIG = dict(
    algorithm_type="dpmsolver++",
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    lower_order_final=True,
    num_train_timesteps=1000,
    prediction_type="epsilon",
    solver_order=2,
    solver_type="midpoint",
    steps_offset=0,
    thresholding=False,
    timestep_spacing="linspace",
    use_karras_sigmas=False,
)
DDIM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    thresholding=False,
    timestep_spacing="leading",
    rescale_betas_zero_snr=False,
)
LCM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    original_inference_steps=50,
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    thresholding=False,
    timestep_spacing="leading",
    timestep_scaling=10.0,
    rescale_betas_zero_snr=False,
)
# sd3-tiny-flowmatch12-cfg's: SD3's static shift 3.0
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
# name (the CLI's --scheduler) → (diffusers class, config)
SCHEDULERS = {
    "dpm-solver++": ("DPMSolverMultistepScheduler", DPM_CONFIG),
    "ddim": ("DDIMScheduler", DDIM_CONFIG),
    "lcm": ("LCMScheduler", LCM_CONFIG),
    "flow-match-euler": ("FlowMatchEulerDiscreteScheduler", FLOW_CONFIG),
}
# the SD3 pipelines of `pipeline`: kind → SD3.5 layout (RMS qk norm, dual attention in block 0)
SD3_KINDS = {"sd3": False, "sd35": True}
SD3_JOINT, SD3_POOLED, SD3_TOKENS = 48, 40, 7


def scheduler(name: str):
    import diffusers

    cls, cfg = SCHEDULERS[name]
    return getattr(diffusers, cls)(**cfg)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random and non-zero, scaled like a trained model's (≈ 1/√fan_in), so that no
    zero-initialised part (adaLN, output projections) hides a difference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            fan_in = math.prod(p.shape[1:]) if p.ndim >= 2 else 0
            std = 1.0 / math.sqrt(fan_in) if fan_in else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std + (0.0 if fan_in else 0.01))
    return module.eval()


def pixart(
    *,
    layers=4,
    heads=2,
    head_dim=72,
    caption_channels=64,
    sample_size=16,
    micro=None,
    seed=0,
):
    """A PixArtTransformer2DModel; `micro` (use_additional_conditions) defaults to
    sample_size == 128, as in diffusers (and PixArtAlphaPipeline passes micro-conditions exactly
    when sample_size == 128)."""
    from diffusers import PixArtTransformer2DModel

    m = PixArtTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=layers,
        cross_attention_dim=heads * head_dim,
        caption_channels=caption_channels,
        sample_size=sample_size,
        patch_size=2,
        use_additional_conditions=micro,
    )
    return randomize(m, seed)


def dit(*, layers=4, heads=2, head_dim=72, sample_size=8, seed=0):
    from diffusers import DiTTransformer2DModel

    m = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    return randomize(m, seed)


def sd3(*, layers=4, heads=2, head_dim=32, sample_size=16, sd35=False, seed=0):
    """An SD3Transformer2DModel: SD3's layout, or SD3.5's (`sd35`: qk_norm="rms_norm" and
    MMDiT-X dual attention in block 0); 4 latent channels, a 16×16 position table."""
    from diffusers import SD3Transformer2DModel

    extra = dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if sd35 else {}
    m = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=SD3_JOINT,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=SD3_POOLED,
        pos_embed_max_size=16,
        **extra,
    )
    return randomize(m, seed)


def vae(seed=0):
    """A tiny AutoencoderKL: 2 blocks of 8 channels (vae_scale_factor 2)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    return m.eval()


def pipeline(kind: str, sched: str, *, transformer=None, **model_kw):
    """`alpha` (PixArtAlphaPipeline, micro-conditions: sample_size 128), `sigma`
    (PixArtSigmaPipeline) or `dit` (DiTPipeline), with a tiny VAE and no text encoder; `sd3` or
    `sd35` (StableDiffusion3Pipeline, scheduler `flow-match-euler`) with no text encoders,
    tokenizers or VAE (it is called with prompt embeddings and output_type="latent")."""
    import diffusers

    if kind in SD3_KINDS:
        tr = transformer or sd3(sd35=SD3_KINDS[kind], **model_kw)
        none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"])
        pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, scheduler=scheduler(sched), vae=None, **none)
    elif kind == "alpha":
        tr = transformer or pixart(sample_size=128, **model_kw)
        pipe = diffusers.PixArtAlphaPipeline(
            tokenizer=None, text_encoder=None, vae=vae(), transformer=tr, scheduler=scheduler(sched)
        )
    elif kind == "sigma":
        tr = transformer or pixart(sample_size=16, micro=False, **model_kw)
        pipe = diffusers.PixArtSigmaPipeline(
            tokenizer=None, text_encoder=None, vae=vae(), transformer=tr, scheduler=scheduler(sched)
        )
    elif kind == "dit":
        tr = transformer or dit(**model_kw)
        pipe = diffusers.DiTPipeline(transformer=tr, vae=vae(), scheduler=scheduler(sched))
    else:
        raise ValueError(kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompts(n=1, tokens=8, features=64, seed=1, padded=True):
    """Prompt and negative-prompt embeddings [n, tokens, features] and their masks, the prompts
    padded (trailing zeros in the mask) when `padded`."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, tokens, features, generator=g)
    uncond = torch.randn(n, tokens, features, generator=g)
    cmask = torch.ones(n, tokens)
    umask = torch.ones(n, tokens)
    if padded:
        for i in range(n):
            cmask[i, tokens - 2 - i :] = 0
        umask[:, tokens // 2 :] = 0
    return cond, cmask, uncond, umask


def sd3_prompts(n=1, tokens=SD3_TOKENS, seed=1):
    """SD3 prompt and negative-prompt embeddings [n, tokens, joint] and pooled ones [n, pooled]."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, tokens, SD3_JOINT, generator=g)
    uncond = torch.randn(n, tokens, SD3_JOINT, generator=g)
    pooled = torch.randn(n, SD3_POOLED, generator=g)
    upooled = torch.randn(n, SD3_POOLED, generator=g)
    return cond, pooled, uncond, upooled


class Recorder:
    """Records the latents each vae.decode call gets (the pipelines' final latents, scaled)."""

    def __init__(self, pipe):
        self.latents = []
        self.pipe = pipe
        decode = pipe.vae.decode

        def recording(z, *a, **k):
            self.latents.append(z.detach().clone() * pipe.vae.config.scaling_factor)
            return decode(z, *a, **k)

        pipe.vae.decode = recording

    @property
    def last(self):
        return self.latents[-1]


def run(pipe, kind, sched, *, steps, guidance, seed=0, height=16, width=24, n=1, padded=True, class_labels=None):
    """One pipeline call; returns (final latents [n, 4, h, w], images as a float tensor). SD3:
    `height` and `width` in pixels of the VAE-less pipeline (latents 8× smaller), and the
    latents twice (output_type="latent")."""
    if kind in SD3_KINDS:
        # on the pipeline's device: StableDiffusion3Pipeline does not move given embeddings
        cond, pooled, uncond, upooled = (e.to(pipe.device) for e in sd3_prompts(n))
        gen = torch.Generator().manual_seed(seed)
        out = pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=upooled,
            guidance_scale=guidance,
            num_inference_steps=steps,
            height=height,
            width=width,
            generator=gen,
            output_type="latent",
        )
        return out.images, out.images
    rec = getattr(pipe, "_test_recorder", None) or Recorder(pipe)
    pipe._test_recorder = rec
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # DiTPipeline's LCM steps draw from the global generator
    if kind == "dit":
        labels = class_labels if class_labels is not None else [1, 7][:n] + [3] * max(0, n - 2)
        out = pipe(class_labels=labels, guidance_scale=guidance, generator=gen, num_inference_steps=steps, output_type="np")
        images = torch.from_numpy(out.images)
        return rec.last, images
    cond, cmask, uncond, umask = prompts(n, padded=padded)
    out = pipe(
        prompt=None,
        negative_prompt=None,
        prompt_embeds=cond,
        prompt_attention_mask=cmask,
        negative_prompt_embeds=uncond,
        negative_prompt_attention_mask=umask,
        guidance_scale=guidance,
        num_inference_steps=steps,
        height=height,
        width=width,
        generator=gen,
        use_resolution_binning=False,
        output_type="pt",
    )
    return rec.last, out.images


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# -- FLUX.1: FluxTransformer2DModel in FluxPipeline ---------------------------------------------

FLUX_JOINT, FLUX_POOLED, FLUX_TOKENS = 32, 24, 5
FLUX_SIZE = 8  # pixels = latents (identity stand-in VAE): 4×4 packed tokens of 4 channels


class IdentityVae(torch.nn.Module):
    """Stands in for FluxPipeline's VAE: block_out_channels [1] gives vae_scale_factor 1; never
    called with output_type="latent"."""

    def __init__(self, device="cpu"):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(scaling_factor=1.0, shift_factor=0.0, block_out_channels=[1])
        self.device = torch.device(device)  # read by the pipeline's _execution_device
        self.dtype = torch.float32


def flux(dev: bool, head_dim=32, seed=0):
    """A FluxTransformer2DModel: FLUX.1-dev (guidance embedding) or schnell layout, 2 + 2 blocks."""
    from diffusers import FluxTransformer2DModel

    m = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=head_dim,
        num_attention_heads=2,
        joint_attention_dim=FLUX_JOINT,
        pooled_projection_dim=FLUX_POOLED,
        guidance_embeds=dev,
        axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),
    )
    return randomize(m, seed)


def flux_pipeline(dev: bool, transformer=None, head_dim=32, device="cpu"):
    """FluxPipeline without text encoders (called with prompt embeddings) and an identity
    stand-in VAE (vae_scale_factor 1: latents = pixels, FLUX_SIZE × FLUX_SIZE)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    sched = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=dev, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        transformer=transformer if transformer is not None else flux(dev, head_dim).to(device),
        scheduler=sched,
        vae=IdentityVae(device),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_embeds(seed, b=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    e, p = torch.randn(b, FLUX_TOKENS, FLUX_JOINT, generator=g), torch.randn(b, FLUX_POOLED, generator=g)
    return e.to(device), p.to(device)


def flux_run(pipe, steps, cfg, device="cpu"):
    """The pipeline's packed latents [1, (FLUX_SIZE/2)², 4]; `cfg`: true CFG (scale 2.5)."""
    e, p = flux_embeds(1, device=device)
    ne, np_ = flux_embeds(2, device=device)
    g = torch.Generator().manual_seed(7)
    lat = torch.randn(1, (FLUX_SIZE // 2) ** 2, 4, generator=g).to(device)
    extra = dict(negative_prompt_embeds=ne, negative_pooled_prompt_embeds=np_, true_cfg_scale=2.5) if cfg else {}
    with torch.no_grad():
        return pipe(
            prompt_embeds=e, pooled_prompt_embeds=p, latents=lat.clone(), height=FLUX_SIZE, width=FLUX_SIZE,
            num_inference_steps=steps, guidance_scale=3.5, output_type="latent", **extra,
        ).images



# -- the CLI on the same inputs --------------------------------------------------------------------


def cli_inputs(kind, sched, *, steps, seed=0, height=16, width=24, n=1, padded=True, vae_scale=2, labels=None):
    """The `deltadit sample` inputs of the run `run(...)` makes: the same initial noise (the
    pipelines draw it first from the generator), LCM's injected noise (drawn next, one per step
    but the last), the prompt embeddings and masks or the class labels."""
    from diffusers.utils.torch_utils import randn_tensor

    gen = torch.Generator().manual_seed(seed)
    if kind in SD3_KINDS:
        vae_scale = 8  # StableDiffusion3Pipeline without a VAE
    if kind == "dit":
        h = w = height
    else:
        h, w = height // vae_scale, width // vae_scale
    shape = (n, 4, h, w)
    t = {"latents": randn_tensor(shape, generator=gen, dtype=torch.float32).contiguous()}
    if sched == "lcm":
        if kind == "dit":
            raise ValueError("DiTPipeline's LCM noise comes from the global generator")
        t["noise"] = torch.stack([randn_tensor(shape, generator=gen) for _ in range(steps - 1)]).contiguous()
    if kind in SD3_KINDS:
        cond, pooled, uncond, upooled = sd3_prompts(n)
        t.update(cond_embeds=cond, cond_pooled=pooled, uncond_embeds=uncond, uncond_pooled=upooled)
    elif kind == "dit":
        lab = labels if labels is not None else [1, 7][:n] + [3] * max(0, n - 2)
        t["class_labels"] = torch.tensor(lab, dtype=torch.int64)
    else:
        cond, cmask, uncond, umask = prompts(n, padded=padded)
        t.update(cond_embeds=cond, cond_mask=cmask, uncond_embeds=uncond, uncond_mask=umask)
        t["resolution"] = torch.tensor([[float(height), float(width)]] * n)
    return t


def cli_sample(model_dir, inputs: dict, out_dir, *, sched, steps, guidance, cache):
    """Runs `deltadit sample`; returns its output tensors (latents, timesteps, blocks_run). The
    flow-matching scheduler's config (tiny.FLOW_CONFIG as diffusers completes it) goes in a
    scheduler_config.json (--scheduler-config)."""
    from safetensors.torch import load_file, save_file

    if not CLI.is_file():
        raise FileNotFoundError(f"{CLI} not found: build it with `cargo build --release` (scripts/test-python.sh does)")
    out_dir = Path(out_dir)
    inp, out = out_dir / "inputs.safetensors", out_dir / "out.safetensors"
    save_file(inputs, str(inp))
    cmd = [
        str(CLI),
        "sample",
        "--model",
        str(model_dir),
        "--inputs",
        str(inp),
        "--output",
        str(out),
        "--scheduler",
        sched,
        "--steps",
        str(steps),
        "--guidance",
        str(guidance),
        "--cache",
        cache,
    ]
    if sched == "flow-match-euler":
        scheduler(sched).save_config(str(out_dir / "scheduler"))
        cmd += ["--scheduler-config", str(out_dir / "scheduler" / "scheduler_config.json")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr}")
    return load_file(str(out))
