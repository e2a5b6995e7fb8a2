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
    .venv/bin/python bench/pipeline_bench.py --preset pixart-alpha-1024 --device cuda --dtype f16

Presets mirror `deltadit bench --list-presets` (same transformer shapes, steps and guidance); the
CPU presets decode with a small VAE (--vae small), the GPU ones with Stable Diffusion's VAE
layout (--vae sd). Needs the package installed (`pip install .`, scripts/test-python.sh).
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
from pathlib import Path

import torch

# name: (family, layers, heads, head_dim, sample_size, caption_channels, micro, latent, text_len,
#        scheduler, steps, guidance, vae)
PRESETS = {
    "pixart-cpu-small": ("pixart", 28, 4, 72, 32, 256, False, 16, 32, "dpm-solver++", 20, 4.5, "small"),
    "dit-cpu-small": ("dit", 28, 4, 72, 16, 0, False, 16, 0, "ddim", 20, 4.0, "small"),
    "pixart-alpha-1024": ("pixart", 28, 16, 72, 128, 4096, True, 128, 120, "dpm-solver++", 20, 4.5, "sd"),
    "pixart-alpha-512": ("pixart", 28, 16, 72, 64, 4096, False, 64, 120, "dpm-solver++", 20, 4.5, "sd"),
    "pixart-sigma-1024": ("pixart", 28, 16, 72, 128, 4096, False, 128, 300, "dpm-solver++", 20, 4.5, "sd"),
    "dit-xl-2-256": ("dit", 28, 16, 72, 32, 0, False, 32, 0, "ddim", 50, 4.0, "sd"),
    "dit-xl-2-512": ("dit", 28, 16, 72, 64, 0, False, 64, 0, "ddim", 50, 4.0, "sd"),
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
}


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            fan_in = math.prod(p.shape[1:]) if p.ndim >= 2 else 0
            std = 1.0 / math.sqrt(fan_in) if fan_in else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def build(preset, device, dtype):
    import diffusers

    fam, layers, heads, hd, sample, caption, micro, latent, text_len, sched, steps, guidance, vae_kind = preset
    if fam == "pixart":
        tr = diffusers.PixArtTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=hd, in_channels=4, out_channels=8, num_layers=layers,
            cross_attention_dim=heads * hd, caption_channels=caption, sample_size=sample, patch_size=2,
            use_additional_conditions=micro,
        )
    else:
        tr = diffusers.DiTTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=hd, in_channels=4, out_channels=8, num_layers=layers,
            sample_size=sample, patch_size=2, num_embeds_ada_norm=1000,
        )
    randomize(tr, 0)
    if vae_kind == "sd":  # Stable Diffusion's VAE layout (what PixArt and DiT decode with)
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
        )
    else:  # small: the same 8× upsampling, a few channels
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        )
    torch.manual_seed(0)
    randomize(vae, 1)
    cls, cfg = SCHEDULERS[sched]
    scheduler = getattr(diffusers, cls)(num_train_timesteps=1000, **cfg)
    if fam == "pixart":
        pipe_cls = diffusers.PixArtAlphaPipeline if micro else diffusers.PixArtSigmaPipeline
        pipe = pipe_cls(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=scheduler)
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


def make_call(pipe, preset, device, dtype, steps, seed):
    fam, layers, heads, hd, sample, caption, micro, latent, text_len, sched, _, guidance, _ = preset
    if fam == "dit":
        labels = [207]

        def call():
            gen = torch.Generator(device="cpu").manual_seed(seed)
            return pipe(class_labels=labels, guidance_scale=guidance, generator=gen, num_inference_steps=steps,
                        output_type="pt")

        return call
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 1, text_len, caption, generator=g)
    mask = torch.ones(2, 1, text_len)
    mask[:, :, text_len // 2 :] = 0  # prompts padded to the text length, as T5's are
    cond, uncond = (e.to(device=device, dtype=dtype) for e in emb)
    cmask, umask = (m.to(device) for m in mask)
    px = latent * 8

    def call():
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return pipe(prompt=None, negative_prompt=None, prompt_embeds=cond, prompt_attention_mask=cmask,
                    negative_prompt_embeds=uncond, negative_prompt_attention_mask=umask, guidance_scale=guidance,
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
    steps = a.steps or preset[10]
    threads = a.threads or torch.get_num_threads()
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"pipeline bench: preset {name} ({preset[0]}, {preset[1]} blocks × "
          f"{preset[2] * preset[3]}, {(preset[7] // 2) ** 2} tokens, {steps} {preset[9]} steps, CFG {preset[11]}, "
          f"VAE {preset[12]}), {device} {str(dtype).removeprefix('torch.')}, {threads} threads")
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
                     blocks=steps * preset[1], rel_l2=0.0))
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
