#!/usr/bin/env python3
"""Golden cases on the trained SD3 reference model (models/sd3-digits): what diffusers computes in
float32 on the CPU from exactly the committed f16 checkpoint (loaded with torch_dtype=torch.float32,
low_cpu_mem_usage=False). Writes tests/data/<case>/{case.json, inputs.safetensors,
expected.safetensors} in the format of train/golden.py (the weights are not copied: case.json's
"model" names the model folder relative to the repository root) and the tensor names of the SD3
cases of /work/shared/golden (sd3-tiny, sd3-tiny-flowmatch12-cfg).

  .venv/bin/python train/golden_sd3.py          # both cases (about a minute on 2 cores)
  .venv/bin/python train/golden_sd3.py bf16     # diffusers' own bf16 drift on the sampling case

Cases:
  sd3-digits-forward           SD3Transformer2DModel forward, batch 2: noisy real digits 2 and 7 with
                               their captions, at two different timesteps of the 20-step schedule
  sd3-digits-flowmatch20-cfg   StableDiffusion3Pipeline itself (prompt embeddings given, identity VAE,
                               output_type="latent"): FlowMatch Euler shift 1.0, 20 steps, CFG 4.5,
                               4 images (digits 0, 3, 6, 9), batch [uncond, cond]
latents_per_step is [steps, n, C, H, W] (step k: after the scheduler's k-th update).
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden import REPO, scheduler_json, versions, write_case  # noqa: E402
from train import load_digits_16, setup  # noqa: E402
from train_sd3 import GUIDANCE, STEPS, class_inputs, flow_scheduler, load_model, pipeline_sd3  # noqa: E402

REL = "models/sd3-digits"


def noisy_digits(classes, sigmas, seed):
    """Real digits of the given classes at the flow-matching noise levels sigmas: (1 - s) x0 + s eps."""
    x, y = load_digits_16()
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.nonzero(y == int(c))[int(torch.randint(0, 100, (1,), generator=g))][0] for c in classes])
    noise = torch.randn((len(classes), 1, 16, 16), generator=g)
    s = sigmas.view(-1, 1, 1, 1)
    return (1 - s) * x[idx] + s * noise


@torch.no_grad()
def sd3_cases():
    d = os.path.join(REPO, REL)
    model = load_model(d)
    cap = load_file(os.path.join(d, "captions.safetensors"))
    embeds, pooled = cap["embeds"], cap["pooled"]

    # forward: digits 2 and 7 with their own captions, at the 20-step schedule's timesteps 6 and 13
    sched = flow_scheduler(d)
    sched.set_timesteps(STEPS)
    i = torch.tensor([6, 13])
    sigmas, timesteps = sched.sigmas[i], sched.timesteps[i]
    classes = torch.tensor([2, 7])
    inputs = dict(hidden_states=noisy_digits(classes, sigmas, seed=13), encoder_hidden_states=embeds[classes],
                  pooled_projections=pooled[classes], timestep=timesteps.float())
    sample = model(**inputs).sample
    write_case("sd3-digits-forward", dict(
        kind="forward", family="sd3", model=REL,
        note=("SD3Transformer2DModel forward on the trained sd3-digits weights (committed f16, run in f32; SD3.5 layout: "
              "RMS qk norm, dual attention in block 0, 8 blocks, the last context_pre_only; 16x16 position table "
              "centre-cropped to 8x8 patches): batch [digit 2, digit 7] with their captions (8 tokens, no mask) and "
              f"pooled embeddings, noisy real digits (1 - s) x0 + s eps at sigma {sigmas[0].item():.6f} and "
              f"{sigmas[1].item():.6f}, timestep = 1000 sigma (steps 6 and 13 of the 20-step schedule); {versions()}")),
        inputs, dict(sample=sample))

    # sampling: the pipeline itself, 4 images, digits 0, 3, 6, 9
    classes = torch.tensor([0, 3, 6, 9])
    latents = torch.randn((4, 1, 16, 16), generator=torch.Generator().manual_seed(23))
    kw = class_inputs(embeds, pooled, classes)
    out, ts, sig, lat_steps = pipeline_sd3(model, flow_scheduler(d), latents=latents, per_step=True, **kw)
    write_case("sd3-digits-flowmatch20-cfg", dict(
        kind="sampling", family="sd3", model=REL, scheduler=scheduler_json(flow_scheduler(d)), steps=STEPS,
        guidance_scale=GUIDANCE,
        note=("StableDiffusion3Pipeline on the trained sd3-digits weights (committed f16, run in f32), prompt embeddings "
              "given (no text encoders), identity VAE, output_type latent: FlowMatch Euler shift 1.0, 20 steps, CFG 4.5, "
              "batch [uncond, cond] with the null caption (row 10 of captions.safetensors) as uncond, digits 0, 3, 6, 9; "
              "timestep passed = scheduler.timesteps (1000 sigma); latents_per_step is [steps, n, C, H, W]; "
              f"{versions()}")),
        dict(latents=latents, **kw),
        dict(latents=out, timesteps=ts.float(), sigmas=sig.float(), latents_per_step=torch.stack(lat_steps)))


@torch.no_grad()
def bf16_drift():
    """How far diffusers' own bf16 run (weights, embeddings and latents in bf16) lands from the f32
    golden sampling case: the scale of a bf16 tolerance."""
    d = os.path.join(REPO, REL)
    c = os.path.join(REPO, "tests", "data", "sd3-digits-flowmatch20-cfg")
    inp, exp = load_file(os.path.join(c, "inputs.safetensors")), load_file(os.path.join(c, "expected.safetensors"))
    model = load_model(d, torch.bfloat16)
    out = pipeline_sd3(model, flow_scheduler(d), **{k: v.bfloat16() for k, v in inp.items()})[0]
    e = ((out.float() - exp["latents"]).norm() / exp["latents"].norm()).item()
    print(f"sd3-digits-flowmatch20-cfg: diffusers bf16 vs f32, relative L2 {e:.3e}")


def main():
    setup()
    only = sys.argv[1:] or ["cases"]
    if "cases" in only:
        sd3_cases()
    if "bf16" in only:
        bf16_drift()


if __name__ == "__main__":
    main()
