#!/usr/bin/env python3
"""Golden cases on the trained reference models (models/pixart-digits, models/dit-digits): what
diffusers computes in float32 on the CPU from exactly the committed f16 checkpoints (loaded with
torch_dtype=torch.float32, low_cpu_mem_usage=False). Writes tests/data/<case>/{case.json, inputs.safetensors,
expected.safetensors}; the weights are not copied: case.json's "model" names the model folder
relative to the repository root.

  .venv/bin/python train/golden.py            # all four cases (a few seconds)
  .venv/bin/python train/golden.py check      # our loops against diffusers' own pipelines
  .venv/bin/python train/golden.py bf16       # diffusers' own bf16 drift on the sampling cases

Cases: pixart-digits-forward, pixart-digits-dpmpp20-cfg, dit-digits-forward, dit-digits-ddim20-cfg.
Per-step tensors are [steps, n, C, H, W] (step k: after the scheduler's k-th update).
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import (DDIM_CONFIG, DPM_CONFIG, NULL_CLASS, TRAIN_SCHEDULE, load_digits_16,  # noqa: E402
                   sample_dit, sample_pixart, setup)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spec(tensors):
    return {k: [list(v.shape), str(v.dtype)] for k, v in tensors.items()}


def json_value(v):
    """Non-finite floats (lambda_min_clipped = -inf) as the strings "inf"/"-inf"/"nan": strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def scheduler_json(sched):
    c = {k: json_value(v) for k, v in dict(sched.config).items() if not k.startswith("_")}
    c["_class_name"] = type(sched).__name__
    return c


def write_case(name, case, inputs, expected):
    d = os.path.join(REPO, "tests", "data", name)
    os.makedirs(d, exist_ok=True)
    inputs = {k: v.contiguous() for k, v in inputs.items()}
    expected = {k: v.contiguous() for k, v in expected.items()}
    case = dict(case, inputs=spec(inputs), expected=spec(expected))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2, allow_nan=False)
        f.write("\n")
    save_file(inputs, os.path.join(d, "inputs.safetensors"))
    save_file(expected, os.path.join(d, "expected.safetensors"))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1024:.0f} KiB, expected " + ", ".join(f"{k} {list(v.shape)}" for k, v in expected.items()))


def noisy_digits(classes, t, seed):
    """Real digits of the given classes noised to timestep t (DDPM forward process)."""
    from diffusers import DDPMScheduler

    x, y = load_digits_16()
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.nonzero(y == int(c))[int(torch.randint(0, 100, (1,), generator=g))][0] for c in classes])
    noise = torch.randn((len(classes), 1, 16, 16), generator=g)
    ab = DDPMScheduler(**TRAIN_SCHEDULE).alphas_cumprod[t].float()
    return ab.sqrt() * x[idx] + (1 - ab).sqrt() * noise


def versions():
    import diffusers

    return f"diffusers {diffusers.__version__}, torch {torch.__version__}, float32, CPU"


@torch.no_grad()
def pixart_cases():
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    rel = "models/pixart-digits"
    d = os.path.join(REPO, rel)
    model = PixArtTransformer2DModel.from_pretrained(d, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
    cap = load_file(os.path.join(d, "captions.safetensors"))
    embeds, mask = cap["embeds"], cap["mask"]

    # forward: [uncond (null caption, 2 of 8 tokens kept), cond (class 4, 7 of 8 kept)] at t = 500
    rows = torch.tensor([NULL_CLASS, 4])
    inputs = dict(hidden_states=noisy_digits([7, 4], 500, seed=11),
                  timestep=torch.tensor([500.0, 500.0]),
                  encoder_hidden_states=embeds[rows], encoder_attention_mask=mask[rows])
    sample = model(**inputs, added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    write_case("pixart-digits-forward", dict(
        kind="forward", family="pixart", model=rel,
        note=("PixArtTransformer2DModel forward on the trained pixart-digits weights (committed f16, run in f32): "
              "batch [null caption, caption of class 4], padded text (2 and 7 of 8 tokens kept; padded tokens hold "
              f"non-zero values), noisy real digits at t=500; {versions()}")),
        inputs, dict(sample=sample))

    # sampling: classes 3 and 8, DPM-Solver++ 2M, 20 steps, CFG 4.5, batch [uncond, cond]
    classes = torch.tensor([3, 8])
    latents = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(21))
    out, ts, lat_steps, eps_steps = sample_pixart(model, embeds, mask, classes, latents, steps=20, guidance=4.5, per_step=True)
    n = len(classes)
    sched = DPMSolverMultistepScheduler(**DPM_CONFIG)
    write_case("pixart-digits-dpmpp20-cfg", dict(
        kind="sampling", family="pixart", model=rel, scheduler=scheduler_json(sched), steps=20, guidance_scale=4.5,
        note=("PixArtAlphaPipeline denoising loop on the trained pixart-digits weights (committed f16, run in f32): "
              "classes 3 and 8 (captions keep 6 and 5 of 8 tokens, the null caption 2), batch [uncond, cond], CFG 4.5, "
              "no learned-sigma split (out_channels 1 = in_channels); latents_per_step and eps (guided) are "
              f"[steps, n, C, H, W]; {versions()}")),
        dict(latents=latents, cond_embeds=embeds[classes], cond_mask=mask[classes],
             uncond_embeds=embeds[torch.full((n,), NULL_CLASS)], uncond_mask=mask[torch.full((n,), NULL_CLASS)]),
        dict(latents=out, timesteps=ts.to(torch.int64), latents_per_step=torch.stack(lat_steps),
             eps=torch.stack(eps_steps)))


@torch.no_grad()
def dit_cases():
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    rel = "models/dit-digits"
    model = DiTTransformer2DModel.from_pretrained(os.path.join(REPO, rel), torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()

    # forward: [class 6, null class 10] at t = 500
    inputs = dict(hidden_states=noisy_digits([6, 2], 500, seed=12),
                  timestep=torch.tensor([500, 500], dtype=torch.int64),
                  class_labels=torch.tensor([6, NULL_CLASS], dtype=torch.int64))
    sample = model(**inputs).sample
    write_case("dit-digits-forward", dict(
        kind="forward", family="dit", model=rel,
        note=(f"DiTTransformer2DModel forward on the trained dit-digits weights (committed f16, run in f32): class 6 and "
              f"the null class {NULL_CLASS} (num_embeds_ada_norm 10), noisy real digits at t=500; {versions()}")),
        inputs, dict(sample=sample))

    classes = torch.tensor([1, 5], dtype=torch.int64)
    latents = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(22))
    out, ts, lat_steps, eps_steps = sample_dit(model, classes, latents, steps=20, guidance=4.0, per_step=True)
    write_case("dit-digits-ddim20-cfg", dict(
        kind="sampling", family="dit", model=rel, scheduler=scheduler_json(DDIMScheduler(**DDIM_CONFIG)), steps=20,
        guidance_scale=4.0,
        note=(f"DiTPipeline loop on the trained dit-digits weights (committed f16, run in f32): classes 1 and 5, batch "
              f"[cond, null] with the null class {NULL_CLASS} (DiTPipeline hard-codes 1000; this model has 10 classes), "
              "CFG 4.0 on eps, DDIM eta 0 stepping the doubled batch, no learned-sigma split (out_channels 1); "
              f"latents_per_step and eps (guided) are [steps, n, C, H, W]; {versions()}")),
        dict(latents=latents, class_labels=classes),
        dict(latents=out, timesteps=ts.to(torch.int64), latents_per_step=torch.stack(lat_steps),
             eps=torch.stack(eps_steps)))


class _StubVae(torch.nn.Module):
    """Stands in for the VAE of a pixel-space model: identity decode, scaling factor 1."""

    def __init__(self, scaling_factor=1.0):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(scaling_factor=scaling_factor, block_out_channels=[1])
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def decode(self, z, return_dict=True):
        from types import SimpleNamespace

        return SimpleNamespace(sample=z) if return_dict else (z,)


@torch.no_grad()
def check_pipelines():
    """Our loops (train.sample_pixart / sample_dit) against diffusers' own PixArtAlphaPipeline and
    DiTPipeline on the trained models (identity VAE; DiTPipeline's hard-coded null class 1000 mapped to
    10): PixArt must agree exactly, DiT to f32 rounding of the pipeline's output scaling."""
    from diffusers import (DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                           PixArtAlphaPipeline, PixArtTransformer2DModel)

    d = os.path.join(REPO, "models/pixart-digits")
    model = PixArtTransformer2DModel.from_pretrained(d, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
    cap = load_file(os.path.join(d, "captions.safetensors"))
    classes = torch.tensor([3, 8])
    latents = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(21))
    ours = sample_pixart(model, cap["embeds"], cap["mask"], classes, latents)[0]
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=_StubVae(), transformer=model,
                               scheduler=DPMSolverMultistepScheduler(**DPM_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    null = torch.full((2,), NULL_CLASS)
    theirs = pipe(negative_prompt=None, prompt_embeds=cap["embeds"][classes], prompt_attention_mask=cap["mask"][classes],
                  negative_prompt_embeds=cap["embeds"][null], negative_prompt_attention_mask=cap["mask"][null],
                  latents=latents, height=16, width=16, num_inference_steps=20, guidance_scale=4.5,
                  use_resolution_binning=False, output_type="latent").images
    e = ((ours - theirs).norm() / theirs.norm()).item()
    print(f"PixArtAlphaPipeline vs sample_pixart: rel err {e:.3e}")
    assert e == 0.0, e

    model = DiTTransformer2DModel.from_pretrained(os.path.join(REPO, "models/dit-digits"), torch_dtype=torch.float32,
                                                  low_cpu_mem_usage=False).eval()
    classes = torch.tensor([1, 5])
    latents = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(22))
    ours = sample_dit(model, classes, latents)[0]
    forward = model.forward
    model.forward = lambda x, timestep, class_labels, **kw: forward(
        x, timestep=timestep, class_labels=torch.where(class_labels == 1000, NULL_CLASS, class_labels), **kw)
    # scaling factor 1000: the pipeline's latents / 1000 / 2 + 0.5 stay inside its clamp to [0, 1]
    pipe = DiTPipeline(transformer=model, vae=_StubVae(1000.0), scheduler=DDIMScheduler(**DDIM_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    img = pipe(class_labels=classes.tolist(), guidance_scale=4.0, num_inference_steps=20,
               generator=torch.Generator().manual_seed(22), output_type="pt").images
    # DiTPipeline returns (x / scaling_factor / 2 + 0.5).clamp(0, 1) of the (identity-)decoded latents
    assert ours.abs().max() < 1000
    theirs = (img - 0.5) * 2 * 1000
    e = ((ours - theirs).norm() / ours.norm()).item()
    print(f"DiTPipeline vs sample_dit: rel err {e:.3e} (through the pipeline's / 1000 / 2 + 0.5, undone)")
    assert e < 1e-5, e


@torch.no_grad()
def bf16_drift():
    """How far diffusers' own bf16 run lands from the f32 golden sampling cases: the scale of the
    bf16 tolerance of tests/golden_trained.rs (model, caption embeddings and latents cast to bf16)."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    def case(name):
        d = os.path.join(REPO, "tests", "data", name)
        return load_file(os.path.join(d, "inputs.safetensors")), load_file(os.path.join(d, "expected.safetensors"))

    def rel(out, exp):
        return ((out.float() - exp).norm() / exp.norm()).item()

    d = os.path.join(REPO, "models/pixart-digits")
    model = PixArtTransformer2DModel.from_pretrained(d, torch_dtype=torch.bfloat16, low_cpu_mem_usage=False).eval()
    cap = load_file(os.path.join(d, "captions.safetensors"))
    inp, exp = case("pixart-digits-dpmpp20-cfg")
    out = sample_pixart(model, cap["embeds"].bfloat16(), cap["mask"], torch.tensor([3, 8]), inp["latents"].bfloat16())[0]
    print(f"pixart-digits-dpmpp20-cfg: diffusers bf16 vs f32, relative L2 {rel(out, exp['latents']):.3e}")
    model = DiTTransformer2DModel.from_pretrained(os.path.join(REPO, "models/dit-digits"), torch_dtype=torch.bfloat16,
                                                  low_cpu_mem_usage=False).eval()
    inp, exp = case("dit-digits-ddim20-cfg")
    out = sample_dit(model, torch.tensor([1, 5]), inp["latents"].bfloat16())[0]
    print(f"dit-digits-ddim20-cfg: diffusers bf16 vs f32, relative L2 {rel(out, exp['latents']):.3e}")


def main():
    setup()
    only = sys.argv[1:] or ["pixart", "dit"]
    if "check" in only:
        check_pipelines()
    if "bf16" in only:
        bf16_drift()
    if "pixart" in only:
        pixart_cases()
    if "dit" in only:
        dit_cases()


if __name__ == "__main__":
    main()
