#!/usr/bin/env python3
"""One whole diffusers pipeline call, native against deltadit-accelerated.

Times `pipe(...)` end to end — transformer forwards, classifier-free guidance, the scheduler's
steps and the VAE decode — first with the pipeline's own transformer, then after
`deltadit.diffusers.accelerate(pipe, cache=...)` for each policy asked for: the same components
(one pipeline, the transformer replaced in place), the same prompt embeddings or class labels,
the same generator seed. Prints the median time of each, its ratio to the native call, the
block evaluations, and how far the final latents move from the native ones (relative L2).
Text encoding is not part of it: the prompts come as `prompt_embeds` (random, fixed seed).

Weights are random (scaled like a trained model's), so the numbers are latency only.

    .venv/bin/python bench/pipeline_bench.py --preset pixart-cpu-small              # CPU, f32
    .venv/bin/python bench/pipeline_bench.py --preset sd35-cpu-small                # SD3.5 layout, CPU
    .venv/bin/python bench/pipeline_bench.py --preset sd3-tiny --runs 1             # seconds: a smoke run
    .venv/bin/python bench/pipeline_bench.py --preset flux-cpu-small                # FLUX.1-dev layout, CPU
    .venv/bin/python bench/pipeline_bench.py --preset pixart-alpha-1024 --device cuda --dtype f16

Presets mirror `deltadit bench --list-presets` (same transformer shapes, steps, guidance and
flow-matching shift; `sd3-tiny` is this script's own); the CPU presets decode with a small VAE,
the GPU ones with Stable Diffusion's VAE layout (SD3's: 16 latent channels). SD3 presets run
StableDiffusion3Pipeline with FlowMatchEulerDiscreteScheduler, prompt and pooled embeddings given.
FLUX presets run FluxPipeline (no CFG batch, dev's guidance embedded; dev's scheduler shifts
dynamically, schnell's does not) with FLUX's VAE layout (16 latent channels, packed 2×2).
Needs the package installed (`pip install .`, scripts/test-python.sh).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torch

@dataclass(frozen=True)
class Preset:
    family: str  # pixart, dit, sd3 or flux
    layers: int
    heads: int
    head_dim: int
    sample_size: int
    latent: int  # latent side (pixels / 8)
    scheduler: str
    steps: int
    guidance: float
    vae: str  # small (CPU) or sd (Stable Diffusion's layout)
    caption_channels: int = 0  # PixArt: T5 features
    micro: bool = False  # PixArt-α micro-conditions
    text_len: int = 0  # text tokens
    joint: int = 0  # SD3: joint_attention_dim
    pooled: int = 0  # SD3: pooled_projection_dim
    pos_max: int = 0  # SD3: pos_embed_max_size
    qk_norm: bool = False  # SD3.5
    dual: Tuple[int, ...] = ()  # SD3.5: dual_attention_layers
    shift: float = 1.0  # flow matching: the static shift
    channels: int = 4  # latent channels
    single: int = 0  # FLUX: single-stream blocks (after `layers` double-stream ones)
    guidance_embeds: bool = False  # FLUX.1-dev: the guidance scale embedded
    dynamic: bool = False  # flow matching: dynamic shifting (μ from the image tokens)

    def describe(self, steps):
        tokens = (self.latent // 2) ** 2
        extra = f" + {self.text_len} text" if self.family in ("sd3", "flux") else ""
        blocks = f"{self.layers} + {self.single}" if self.family == "flux" else f"{self.layers}"
        g = "guidance (embedded)" if self.family == "flux" else "CFG"
        return (f"{self.family}, {blocks} blocks × {self.heads * self.head_dim}, {tokens}{extra} tokens, "
                f"{steps} {self.scheduler} steps, {g} {self.guidance}, VAE {self.vae}")


def _sd3(layers, heads, joint, pooled, pos_max, sample, latent, text_len, steps, guidance, vae, *, qk_norm=False,
         dual=(), head_dim=64):
    return Preset("sd3", layers, heads, head_dim, sample, latent, "flow-match-euler", steps, guidance, vae,
                  text_len=text_len, joint=joint, pooled=pooled, pos_max=pos_max, qk_norm=qk_norm, dual=tuple(dual),
                  shift=3.0, channels=16)


def _flux(double, single, heads, latent, text_len, steps, guidance, vae, *, dev=True, joint=4096, pooled=768):
    return Preset("flux", double, heads, 128, 128, latent, "flow-match-euler", steps, guidance, vae, text_len=text_len,
                  joint=joint, pooled=pooled, shift=3.0 if dev else 1.0, channels=16, single=single,
                  guidance_embeds=dev, dynamic=dev)


PRESETS = {
    "pixart-cpu-small": Preset("pixart", 28, 4, 72, 32, 16, "dpm-solver++", 20, 4.5, "small", caption_channels=256,
                               text_len=32),
    "dit-cpu-small": Preset("dit", 28, 4, 72, 16, 16, "ddim", 20, 4.0, "small"),
    "pixart-alpha-1024": Preset("pixart", 28, 16, 72, 128, 128, "dpm-solver++", 20, 4.5, "sd", caption_channels=4096,
                                micro=True, text_len=120),
    "pixart-alpha-512": Preset("pixart", 28, 16, 72, 64, 64, "dpm-solver++", 20, 4.5, "sd", caption_channels=4096,
                               text_len=120),
    "pixart-sigma-1024": Preset("pixart", 28, 16, 72, 128, 128, "dpm-solver++", 20, 4.5, "sd", caption_channels=4096,
                                text_len=300),
    "dit-xl-2-256": Preset("dit", 28, 16, 72, 32, 32, "ddim", 50, 4.0, "sd"),
    "dit-xl-2-512": Preset("dit", 28, 16, 72, 64, 64, "ddim", 50, 4.0, "sd"),
    # SD3 / SD3.5 (StableDiffusion3Pipeline, FlowMatch Euler shift 3)
    "sd3-tiny": _sd3(4, 2, 64, 32, 16, 16, 16, 16, 8, 5.0, "small", head_dim=32),
    "sd35-cpu-small": _sd3(24, 4, 256, 128, 32, 32, 16, 32, 20, 4.5, "small", qk_norm=True, dual=range(13)),
    "sd3-medium-1024": _sd3(24, 24, 4096, 2048, 192, 128, 128, 333, 28, 7.0, "sd"),
    "sd35-medium-1024": _sd3(24, 24, 4096, 2048, 384, 128, 128, 333, 40, 4.5, "sd", qk_norm=True, dual=range(13)),
    "sd35-large-1024": _sd3(38, 38, 4096, 2048, 192, 128, 128, 333, 28, 3.5, "sd", qk_norm=True),
    # FLUX.1 (FluxPipeline; dev: embedded guidance 3.5, dynamic shifting; schnell: 4 steps, 256 text tokens)
    "flux-cpu-small": _flux(4, 8, 2, 16, 32, 20, 3.5, "small", joint=256, pooled=128),
    "flux-dev-1024": _flux(19, 38, 24, 128, 512, 28, 3.5, "sd"),
    "flux-schnell-1024": _flux(19, 38, 24, 128, 256, 4, 0.0, "sd", dev=False),
}

SCHEDULERS = {
    "dpm-solver++": (
        "DPMSolverMultistepScheduler",
        dict(algorithm_type="dpmsolver++", beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
             solver_order=2, lower_order_final=True, timestep_spacing="linspace"),
    ),
    "ddim": (
        "DDIMScheduler",
        dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
             timestep_spacing="leading"),
    ),
    "lcm": ("LCMScheduler", dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, timestep_spacing="leading")),
    "flow-match-euler": ("FlowMatchEulerDiscreteScheduler", {}),
}


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            fan_in = math.prod(p.shape[1:]) if p.ndim >= 2 else 0
            std = 1.0 / math.sqrt(fan_in) if fan_in else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def build(p: Preset, device, dtype):
    import diffusers

    if p.family == "pixart":
        tr = diffusers.PixArtTransformer2DModel(
            num_attention_heads=p.heads, attention_head_dim=p.head_dim, in_channels=4, out_channels=8,
            num_layers=p.layers, cross_attention_dim=p.heads * p.head_dim, caption_channels=p.caption_channels,
            sample_size=p.sample_size, patch_size=2, use_additional_conditions=p.micro,
        )
    elif p.family == "flux":
        tr = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=4 * p.channels, num_layers=p.layers, num_single_layers=p.single,
            attention_head_dim=p.head_dim, num_attention_heads=p.heads, joint_attention_dim=p.joint,
            pooled_projection_dim=p.pooled, guidance_embeds=p.guidance_embeds, axes_dims_rope=(16, 56, 56),
        )
    elif p.family == "sd3":
        tr = diffusers.SD3Transformer2DModel(
            sample_size=p.sample_size, patch_size=2, in_channels=p.channels, out_channels=p.channels,
            num_layers=p.layers, attention_head_dim=p.head_dim, num_attention_heads=p.heads,
            joint_attention_dim=p.joint, caption_projection_dim=p.heads * p.head_dim, pooled_projection_dim=p.pooled,
            pos_embed_max_size=p.pos_max, qk_norm="rms_norm" if p.qk_norm else None,
            dual_attention_layers=p.dual,
        )
    else:
        tr = diffusers.DiTTransformer2DModel(
            num_attention_heads=p.heads, attention_head_dim=p.head_dim, in_channels=4, out_channels=8,
            num_layers=p.layers, sample_size=p.sample_size, patch_size=2, num_embeds_ada_norm=1000,
        )
    randomize(tr, 0)
    # SD3's VAE: 16 latent channels, a shift and scale of its own, no quant convs
    sd3_vae = dict(shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False,
                   use_post_quant_conv=False) if p.family == "sd3" else {}
    if p.family == "flux":  # FLUX's VAE: SD3's layout with its own shift and scale
        sd3_vae = dict(sd3_vae, shift_factor=0.1159, scaling_factor=0.3611)
    if p.vae == "sd":  # Stable Diffusion's VAE layout (what PixArt and DiT decode with; SD3's has 16 channels)
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=p.channels,
            norm_num_groups=32, **sd3_vae,
        )
    else:  # small: the same 8× upsampling, a few channels
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=p.channels, norm_num_groups=8,
            **sd3_vae,
        )
    torch.manual_seed(0)
    randomize(vae, 1)
    cls, cfg = SCHEDULERS[p.scheduler]
    if p.scheduler == "flow-match-euler" and p.dynamic:  # FLUX.1-dev's scheduler_config.json
        scheduler = getattr(diffusers, cls)(num_train_timesteps=1000, shift=p.shift, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    elif p.scheduler == "flow-match-euler":
        scheduler = getattr(diffusers, cls)(num_train_timesteps=1000, shift=p.shift)
    else:
        scheduler = getattr(diffusers, cls)(num_train_timesteps=1000, **cfg)
    if p.family == "pixart":
        pipe_cls = diffusers.PixArtAlphaPipeline if p.micro else diffusers.PixArtSigmaPipeline
        pipe = pipe_cls(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=scheduler)
    elif p.family == "flux":
        none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"])
        pipe = diffusers.FluxPipeline(transformer=tr, scheduler=scheduler, vae=vae, **none)
    elif p.family == "sd3":
        none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"])
        pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, scheduler=scheduler, vae=vae, **none)
    else:
        pipe = diffusers.DiTPipeline(transformer=tr, vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device=device, dtype=dtype)
    return pipe


class Recorder:
    """The final latents (what vae.decode gets), kept for the comparison."""

    def __init__(self, pipe):
        self.last = None
        decode = pipe.vae.decode

        def rec(z, *a, **k):
            self.last = z.detach().float().cpu()
            return decode(z, *a, **k)

        pipe.vae.decode = rec


def make_call(pipe, p: Preset, device, dtype, steps, seed):
    if p.family == "dit":
        labels = [207]

        def call():
            gen = torch.Generator(device="cpu").manual_seed(seed)
            return pipe(class_labels=labels, guidance_scale=p.guidance, generator=gen, num_inference_steps=steps,
                        output_type="pt")

        return call
    g = torch.Generator().manual_seed(1)
    px = p.latent * 8
    if p.family == "flux":
        cond = torch.randn(1, p.text_len, p.joint, generator=g).to(device=device, dtype=dtype)
        cpool = torch.randn(1, p.pooled, generator=g).to(device=device, dtype=dtype)

        def call():
            gen = torch.Generator(device="cpu").manual_seed(seed)
            return pipe(prompt_embeds=cond, pooled_prompt_embeds=cpool, guidance_scale=p.guidance,
                        num_inference_steps=steps, height=px, width=px, generator=gen,
                        max_sequence_length=p.text_len, output_type="pt")

        return call
    if p.family == "sd3":
        emb = torch.randn(2, 1, p.text_len, p.joint, generator=g)
        pooled = torch.randn(2, 1, p.pooled, generator=g)
        cond, uncond = (e.to(device=device, dtype=dtype) for e in emb)
        cpool, upool = (e.to(device=device, dtype=dtype) for e in pooled)

        def call():
            gen = torch.Generator(device="cpu").manual_seed(seed)
            return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, pooled_prompt_embeds=cpool,
                        negative_pooled_prompt_embeds=upool, guidance_scale=p.guidance, num_inference_steps=steps,
                        height=px, width=px, generator=gen, output_type="pt")

        return call
    emb = torch.randn(2, 1, p.text_len, p.caption_channels, generator=g)
    mask = torch.ones(2, 1, p.text_len)
    mask[:, :, p.text_len // 2 :] = 0  # prompts padded to the text length, as T5's are
    cond, uncond = (e.to(device=device, dtype=dtype) for e in emb)
    cmask, umask = (m.to(device) for m in mask)

    def call():
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return pipe(prompt=None, negative_prompt=None, prompt_embeds=cond, prompt_attention_mask=cmask,
                    negative_prompt_embeds=uncond, negative_prompt_attention_mask=umask, guidance_scale=p.guidance,
                    num_inference_steps=steps, height=px, width=px, generator=gen, use_resolution_binning=False,
                    output_type="pt")

    return call


def timed(call, device, runs, warmup):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit():
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
        return sha.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="the pipeline's dtype: f32 (CPU default), f16 or bf16 (GPU default f16)")
    ap.add_argument("--policies", default="none;delta", help="cache policies to run, ';'-separated (CLI specs)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch and deltadit's GEMMs (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)

    import deltadit
    import deltadit.diffusers as dd

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = a.preset or ("pixart-alpha-1024" if device == "cuda" else "pixart-cpu-small")
    preset = PRESETS[name]
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[
        a.dtype or ("f16" if device == "cuda" else "f32")
    ]
    if a.threads:
        torch.set_num_threads(a.threads)
    steps = a.steps or preset.steps
    threads = a.threads or torch.get_num_threads()
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"pipeline bench: preset {name} ({preset.describe(steps)}), {device} {str(dtype).removeprefix('torch.')}, "
          f"{threads} threads")
    print(f"machine: {machine}; torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, "
          f"deltadit {deltadit.__version__}, commit {commit()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    pipe = build(preset, device, dtype)
    rec = Recorder(pipe)
    call = make_call(pipe, preset, device, dtype, steps, a.seed)
    rows = []
    t = timed(call, device, a.runs, a.warmup)
    ref = rec.last
    native = statistics.median(t)
    rows.append(dict(variant="diffusers (native)", median_s=native, times=t, ratio=1.0,
                     blocks=steps * (preset.layers + preset.single), rel_l2=0.0))
    for pol in [p.strip() for p in a.policies.split(";") if p.strip()]:
        dd.accelerate(pipe, device="cuda" if device == "cuda" else "cpu", cache=pol, threads=a.threads)
        t = timed(call, device, a.runs, a.warmup)
        st = dd.stats(pipe)
        m = statistics.median(t)
        lat = rec.last
        rel = float((lat.double() - ref.double()).norm() / ref.double().norm())
        rows.append(dict(variant=f"deltadit cache={pol} ({pipe.transformer.deltadit.dtype})", median_s=m, times=t,
                         ratio=native / m, blocks=sum(s["blocks_run"] for s in st), rel_l2=rel))
    w = max(len(r["variant"]) for r in rows)
    print(f"{'variant':<{w}}  {'median':>9}  {'runs':>23}  {'vs native':>9}  {'blocks':>6}  {'rel L2':>8}")
    for r in rows:
        runs = " ".join(f"{v:.3f}" for v in r["times"])
        print(f"{r['variant']:<{w}}  {r['median_s']:>8.3f}s  {runs:>23}  {r['ratio']:>8.2f}×  {r['blocks']:>6}  "
              f"{r['rel_l2']:>8.1e}")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(preset=name, device=device, dtype=str(dtype), steps=steps,
                                                threads=threads, machine=machine, commit=commit(), rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
