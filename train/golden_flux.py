#!/usr/bin/env python3
"""Golden cases on the trained FLUX reference model (models/flux-digits): what diffusers computes in
float32 on the CPU from exactly the committed f16 checkpoint (loaded with torch_dtype=torch.float32,
low_cpu_mem_usage=False). Writes tests/data/<case>/{case.json, inputs.safetensors,
expected.safetensors} in the format of train/golden.py (the weights are not copied: case.json's
"model" names the model folder relative to the repository root) and the tensor names of the FLUX
cases of /work/shared/golden (flux-dev-tiny, flux-dev-tiny-sampling8).

  .venv/bin/python train/golden_flux.py          # the forward and sampling cases (under a minute on 2 cores)
  .venv/bin/python train/golden_flux.py truecfg  # the true-CFG sampling case
  .venv/bin/python train/golden_flux.py bf16     # diffusers' own bf16 drift on the sampling case

Cases:
  flux-digits-forward      FluxTransformer2DModel forward, batch 2: noisy real digits 2 and 7 (packed
                           2x2 to [2, 64, 4]) with their captions, at two different sigmas of the
                           20-step schedule, guidance 3.5, img_ids/txt_ids as FluxPipeline builds them
  flux-digits-sampling20   FluxPipeline itself (prompt embeddings given, identity VAE,
                           output_type="latent"): dynamic shifting (mu 0.4675 for 64 image tokens),
                           20 steps, embedded guidance 3.5, no CFG batch, 4 images (digits 0, 3, 6, 9)
  flux-digits-truecfg20    FluxPipeline with true CFG: true_cfg_scale 2.0, the null caption (and its
                           pooled row) as negative_prompt_embeds, two transformer calls a step
                           (noise_pred = neg + 2.0 (pos - neg)), embedded guidance 3.5, 20 steps,
                           4 images (digits 1, 4, 7, 8)
Latents are packed [n, 64, 4]; latents_per_step is [steps, n, 64, 4] (step k: after the scheduler's
k-th update).
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden import REPO, scheduler_json, versions, write_case  # noqa: E402
from golden_sd3 import noisy_digits  # noqa: E402
from train import setup  # noqa: E402
from train_flux import (GUIDANCE, SIZE, STEPS, class_inputs, flow_scheduler, image_ids, load_model, pack,  # noqa: E402
                        pipeline_flux, text_ids)

REL = "models/flux-digits"


def pipeline_schedule(sched, tokens):
    """The scheduler as FluxPipeline sets it: sigmas linspace(1, 1/steps, steps), mu from the token count."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = sched.config
    mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    return mu


@torch.no_grad()
def flux_cases():
    d = os.path.join(REPO, REL)
    model = load_model(d)
    cap = load_file(os.path.join(d, "captions.safetensors"))
    embeds, pooled = cap["embeds"], cap["pooled"]
    tokens = (SIZE // 2) ** 2

    # forward: digits 2 and 7 with their own captions, at the 20-step schedule's sigmas 6 and 13
    sched = flow_scheduler(d)
    mu = pipeline_schedule(sched, tokens)
    i = torch.tensor([6, 13])
    sigmas = sched.sigmas[i].float()
    classes = torch.tensor([2, 7])
    inputs = dict(hidden_states=pack(noisy_digits(classes, sigmas, seed=17)), encoder_hidden_states=embeds[classes],
                  pooled_projections=pooled[classes], timestep=sigmas.clone(), img_ids=image_ids(),
                  txt_ids=text_ids(embeds.shape[1]), guidance=torch.full((2,), GUIDANCE))
    sample = model(**inputs).sample
    write_case("flux-digits-forward", dict(
        kind="forward", family="flux", model=REL,
        note=("FluxTransformer2DModel forward with guidance embedding (dev) on the trained flux-digits weights "
              "(committed f16, run in f32; 2 double + 4 single blocks, 2 heads x 64, RoPE axes (16, 24, 24)): batch "
              "[digit 2, digit 7] with their captions (8 tokens, no mask) and pooled embeddings, noisy real digits "
              f"(1 - s) x0 + s eps packed 2x2 to [2, 64, 4], at sigma {sigmas[0].item():.6f} and "
              f"{sigmas[1].item():.6f} (steps 6 and 13 of FluxPipeline's 20-step schedule, mu {mu:.4f}); timestep = "
              "sigma (the model multiplies by 1000), guidance 3.5; img_ids (0, row, col) of the 8x8 patches, txt_ids "
              f"zeros, as FluxPipeline builds them; {versions()}")),
        inputs, dict(sample=sample))

    # sampling: the pipeline itself, 4 images, digits 0, 3, 6, 9
    classes = torch.tensor([0, 3, 6, 9])
    latents = pack(torch.randn((4, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(23)))
    kw = class_inputs(embeds, pooled, classes)
    out, ts, sig, lat_steps = pipeline_flux(model, flow_scheduler(d), latents=latents, cond_embeds=kw["cond_embeds"],
                                            cond_pooled=kw["cond_pooled"], per_step=True)
    write_case("flux-digits-sampling20", dict(
        kind="sampling", family="flux", model=REL, scheduler=scheduler_json(flow_scheduler(d)), steps=STEPS,
        guidance_scale=GUIDANCE,
        note=("FluxPipeline on the trained flux-digits weights (committed f16, run in f32), prompt embeddings given "
              "(no text encoders), identity VAE (vae_scale_factor 1, height = width = 16), output_type latent: "
              f"dynamic shifting (mu {mu:.4f} from 64 image tokens), 20 steps, embedded guidance 3.5, no CFG batch, "
              "digits 0, 3, 6, 9; latents packed 2x2 [n, 64, 4]; timestep passed = scheduler.timesteps / 1000 "
              f"(= sigma); latents_per_step is [steps, n, 64, 4]; {versions()}")),
        dict(latents=latents, cond_embeds=kw["cond_embeds"], cond_pooled=kw["cond_pooled"]),
        dict(latents=out, timesteps=ts.float(), sigmas=sig.float(), latents_per_step=torch.stack(lat_steps)))


@torch.no_grad()
def truecfg_case():
    d = os.path.join(REPO, REL)
    model = load_model(d)
    cap = load_file(os.path.join(d, "captions.safetensors"))
    classes = torch.tensor([1, 4, 7, 8])
    latents = pack(torch.randn((4, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(29)))
    kw = class_inputs(cap["embeds"], cap["pooled"], classes)
    true_cfg = 2.0
    out, ts, sig, _ = pipeline_flux(model, flow_scheduler(d), latents=latents, true_cfg=true_cfg, **kw)
    write_case("flux-digits-truecfg20", dict(
        kind="sampling", family="flux", model=REL, scheduler=scheduler_json(flow_scheduler(d)), steps=STEPS,
        guidance_scale=GUIDANCE, true_cfg_scale=true_cfg,
        note=("FluxPipeline with true CFG on the trained flux-digits weights (committed f16, run in f32): "
              "negative_prompt_embeds / negative_pooled_prompt_embeds = the null caption row, true_cfg_scale 2.0 "
              "(two transformer calls a step, noise_pred = neg + 2.0 (pos - neg)), embedded guidance 3.5 in both, "
              "dynamic shifting, 20 steps, digits 1, 4, 7, 8; latents packed 2x2 [n, 64, 4]; "
              f"{versions()}")),
        dict(latents=latents, **kw),
        dict(latents=out, timesteps=ts.float(), sigmas=sig.float()))


@torch.no_grad()
def bf16_drift():
    """How far diffusers' own bf16 run (weights, embeddings and latents in bf16) lands from the f32
    golden sampling case: the scale of a bf16 tolerance."""
    d = os.path.join(REPO, REL)
    c = os.path.join(REPO, "tests", "data", "flux-digits-sampling20")
    inp, exp = load_file(os.path.join(c, "inputs.safetensors")), load_file(os.path.join(c, "expected.safetensors"))
    model = load_model(d, torch.bfloat16)
    out = pipeline_flux(model, flow_scheduler(d), **{k: v.bfloat16() for k, v in inp.items()})[0]
    e = ((out.float() - exp["latents"]).norm() / exp["latents"].norm()).item()
    print(f"flux-digits-sampling20: diffusers bf16 vs f32, relative L2 {e:.3e}")


def main():
    setup()
    only = sys.argv[1:] or ["cases"]
    if "cases" in only:
        flux_cases()
    if "truecfg" in only:
        truecfg_case()
    if "bf16" in only:
        bf16_drift()


if __name__ == "__main__":
    main()
