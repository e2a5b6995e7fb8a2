#!/usr/bin/env python3
"""Trains models/sd3-digits: an SD3Transformer2DModel (MMDiT, SD3.5-medium layout: RMS qk norm, a
dual-attention block 0) from scratch on the CPU, deterministically, on the digits of train.py
(16x16, 1 channel, pixel space, [-1, 1]) with the rectified-flow objective of SD3:

  t ~ logit-normal(0, 1),  x_t = (1 - t) x0 + t eps,  target v = eps - x0,  model timestep 1000 t

conditioned on a fixed random caption table (captions.safetensors: embeds [11, 8, 64] for the joint
attention, pooled [11, 32] for the adaLN conditioning; row 10 is the null caption, used for CFG).
Exports a diffusers folder (f16 EMA weights, a FlowMatchEulerDiscreteScheduler config with shift 1.0),
then samples 100 images (10 per digit, seed 2024) with diffusers' own StableDiffusion3Pipeline
(prompt embeddings given, no text encoders, an identity stand-in for the VAE, output_type="latent"):
FlowMatch Euler 20 steps, CFG 4.5, batch [uncond, cond]; the classifier of models/digits-classifier
reads them (metrics.json, samples.png).

  .venv/bin/python train/train_sd3.py --out models               # train + evaluate (~10 min on 2 cores)
  .venv/bin/python train/train_sd3.py --out models --only eval   # evaluate the committed folder again
  .venv/bin/python train/train_sd3.py --only check               # our loop (sample_sd3) == the pipeline

Deterministic: fixed seeds, torch.set_num_threads(2), torch.use_deterministic_algorithms(True).
"""
import argparse
import json
import math
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import (CAPTION_DIM, NULL_CLASS, TEXT_LEN, THREADS, load_classifier, load_digits_16,  # noqa: E402
                   log, save_grid, setup)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

POOLED_DIM = 32
SD3_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=1, out_channels=1,
    num_layers=8, attention_head_dim=64, num_attention_heads=2,
    joint_attention_dim=CAPTION_DIM, caption_projection_dim=128, pooled_projection_dim=POOLED_DIM,
    # a 16x16 table of patch positions, centre-cropped to the 8x8 patches of a 16x16 image (as SD3
    # crops its 192x192 table to 64x64 at 1024^2): the crop is exercised, not skipped
    pos_embed_max_size=16,
    qk_norm="rms_norm", dual_attention_layers=(0,),
)
# Shift 1.0: the shift of SD3 (3.0) moves the schedule towards noise for 1024^2 images (4096 tokens),
# whose pixels stay correlated at high noise; this model sees 64 tokens of 16x16 pixels, trained with
# the unshifted logit-normal t, so it samples with the unshifted schedule (sigmas linspace(1, 0.001)).
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=1.0)
STEPS, GUIDANCE = 20, 4.5
MODEL_DIR = "sd3-digits"


def sd3_captions():
    """Fixed caption table: embeds [11, 8, 64] (rows 0..9 stand for "a handwritten digit k", row 10 for
    the empty/null caption), pooled [11, 32]; N(0, 1) from a fixed generator. SD3 has no text mask."""
    g = torch.Generator().manual_seed(4321)
    embeds = torch.randn(11, TEXT_LEN, CAPTION_DIM, generator=g)
    pooled = torch.randn(11, POOLED_DIM, generator=g)
    return embeds, pooled


def machine():
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


# ------------------------------------------------------------------------------------- training
def train_sd3(out_dir, x, y, steps=1200, lr=1e-3, warmup=200, batch=64, ema_decay=0.999, p_uncond=0.1):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    t0, c0 = time.time(), time.process_time()
    seed = 300
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**SD3_CONFIG)
    model.train()  # no dropout anywhere in the model: train() and eval() compute the same
    embeds, pooled = sd3_captions()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"sd3: {n_params} parameters, {steps} steps, batch {batch}, lr {lr}")
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.01)

    def lr_at(s):  # linear warm-up, then cosine decay to 10%
        if s < warmup:
            return lr * (s + 1) / warmup
        p = (s - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    g = torch.Generator().manual_seed(seed + 1)
    losses, curve = [], []
    for s in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        x0, labels = x[idx], y[idx].clone()
        drop = torch.rand(batch, generator=g) < p_uncond
        labels[drop] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=g)
        t = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal(0, 1)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * noise
        pred = model(hidden_states=xt, encoder_hidden_states=embeds[labels], pooled_projections=pooled[labels],
                     timestep=1000.0 * t).sample
        loss = F.mse_loss(pred, noise - x0)
        for group in opt.param_groups:
            group["lr"] = lr_at(s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(ema_decay, (1 + s) / (10 + s))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - d)
        losses.append(loss.item())
        if (s + 1) % 100 == 0 or s + 1 == steps:
            m = float(np.mean(losses[-100:]))
            curve.append([s + 1, m])
            el = time.time() - t0
            log(f"sd3: step {s + 1}/{steps} loss(last 100) {m:.4f} lr {lr_at(s):.2e} "
                f"{el / (s + 1):.3f} s/step, eta {el / (s + 1) * (steps - s - 1) / 60:.1f} min")
    wall, cpu = time.time() - t0, time.process_time() - c0
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    model.eval().to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG).save_config(out_dir)
    save_file({"embeds": embeds.contiguous(), "pooled": pooled.contiguous()}, os.path.join(out_dir, "captions.safetensors"))
    final_loss = float(np.mean(losses[-200:]))
    train = dict(family="sd3", parameters=n_params, steps=steps, batch=batch, lr=lr, warmup=warmup,
                 lr_schedule="linear warm-up, cosine to 10%", weight_decay=0.01, grad_clip=1.0,
                 ema_decay=ema_decay, p_uncond=p_uncond,
                 objective="rectified flow: t ~ logit-normal(0, 1), x_t = (1 - t) x0 + t eps, target eps - x0, timestep 1000 t",
                 final_loss_last200=final_loss, loss_curve_per100=curve, wall_s=wall, cpu_s=cpu,
                 threads=THREADS, machine=machine(), torch=torch.__version__)
    json.dump(train, open(os.path.join(out_dir, "training.json"), "w"), indent=1)
    log(f"sd3: done, final loss (mean of last 200 steps) {final_loss:.4f}, wall {wall / 60:.1f} min, cpu {cpu / 60:.1f} min")
    return train


# ------------------------------------------------------------------------------------- sampling
class IdentityVae(torch.nn.Module):
    """Stands in for the VAE of a pixel-space model in StableDiffusion3Pipeline: block_out_channels [1]
    gives vae_scale_factor 1 (latents = pixels, height/width 16); never called with output_type="latent"."""

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(scaling_factor=1.0, shift_factor=0.0, block_out_channels=[1])
        self.device = torch.device("cpu")  # read by the pipeline's _execution_device
        self.dtype = torch.float32


def load_model(model_dir, dtype=torch.float32):
    """The committed f16 weights, upcast to dtype (f32: what the golden cases compute in)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(model_dir, torch_dtype=dtype, low_cpu_mem_usage=False).eval()


def flow_scheduler(model_dir=None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if model_dir is None:
        return FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG)
    return FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir)


@torch.no_grad()
def pipeline_sd3(model, scheduler, cond_embeds, cond_pooled, uncond_embeds, uncond_pooled, latents,
                 steps=STEPS, guidance=GUIDANCE, per_step=False):
    """diffusers' StableDiffusion3Pipeline itself (no text encoders: prompt embeddings given; an identity
    VAE; output_type="latent"). Returns (latents, timesteps, sigmas, per-step latents [after update k])."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(transformer=model, scheduler=scheduler, vae=IdentityVae(), text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    lat_steps = []

    def on_step(p, i, t, kw):
        lat_steps.append(kw["latents"].clone())
        return {}

    h, w = latents.shape[-2:]
    out = pipe(prompt_embeds=cond_embeds, pooled_prompt_embeds=cond_pooled, negative_prompt_embeds=uncond_embeds,
               negative_pooled_prompt_embeds=uncond_pooled, latents=latents.clone(), height=h, width=w,
               num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
               callback_on_step_end=on_step if per_step else None).images
    return out, pipe.scheduler.timesteps.clone(), pipe.scheduler.sigmas.clone(), lat_steps


@torch.no_grad()
def sample_sd3(model, scheduler, cond_embeds, cond_pooled, uncond_embeds, uncond_pooled, latents,
               steps=STEPS, guidance=GUIDANCE):
    """The loop of StableDiffusion3Pipeline written out (the reference for the Rust sampler): batch
    [uncond, cond] of the same latents, timestep = scheduler.timesteps[i] (= 1000 sigma_i) for all,
    v = v_u + g (v_c - v_u), Euler x += (sigma_{i+1} - sigma_i) v. `check` shows it equals the pipeline."""
    scheduler.set_timesteps(steps)
    prompt = torch.cat([uncond_embeds, cond_embeds])
    pooled = torch.cat([uncond_pooled, cond_pooled])
    for t in scheduler.timesteps:
        inp = torch.cat([latents] * 2)
        v = model(hidden_states=inp, timestep=t.expand(inp.shape[0]), encoder_hidden_states=prompt,
                  pooled_projections=pooled, return_dict=False)[0]
        v_u, v_c = v.chunk(2)
        latents = scheduler.step(v_u + guidance * (v_c - v_u), t, latents, return_dict=False)[0]
    return latents


def class_inputs(embeds, pooled, classes):
    n = len(classes)
    null = torch.full((n,), NULL_CLASS)
    return dict(cond_embeds=embeds[classes], cond_pooled=pooled[classes],
                uncond_embeds=embeds[null], uncond_pooled=pooled[null])


def evaluate(out_dir, clf, per_class=10, seed=2024):
    t0, c0 = time.time(), time.process_time()
    classes = torch.arange(10).repeat_interleave(per_class)
    latents = torch.randn((classes.shape[0], 1, 16, 16), generator=torch.Generator().manual_seed(seed))
    model = load_model(out_dir)
    cap = load_file(os.path.join(out_dir, "captions.safetensors"))
    imgs = pipeline_sd3(model, flow_scheduler(out_dir), latents=latents,
                        **class_inputs(cap["embeds"], cap["pooled"], classes))[0]
    with torch.no_grad():
        pred = clf(imgs.clamp(-1, 1)).argmax(1)
    acc = (pred == classes).float().mean().item()
    per = [(pred[classes == k] == k).float().mean().item() for k in range(10)]
    save_grid(imgs, os.path.join(out_dir, "samples.png"))
    m = dict(samples=int(classes.shape[0]), per_class=per_class, seed=seed,
             sampler=(f"StableDiffusion3Pipeline (prompt embeddings given, identity VAE, output_type latent): "
                      f"FlowMatchEulerDiscreteScheduler shift 1.0, {STEPS} steps, guidance {GUIDANCE}, batch [uncond, cond]"),
             classifier_accuracy=acc, per_class_accuracy=per,
             pixel_range=[imgs.min().item(), imgs.max().item()],
             wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
    json.dump(m, open(os.path.join(out_dir, "metrics.json"), "w"), indent=1)
    log(f"sd3: {classes.shape[0]} samples, classifier accuracy on the asked-for class {acc:.4f}; per class "
        + " ".join(f"{a:.2f}" for a in per))
    return m


def check(out_dir):
    """sample_sd3 against StableDiffusion3Pipeline on the committed model: must be bit-identical."""
    model = load_model(out_dir)
    cap = load_file(os.path.join(out_dir, "captions.safetensors"))
    classes = torch.tensor([0, 3, 6, 9])
    latents = torch.randn((4, 1, 16, 16), generator=torch.Generator().manual_seed(23))
    kw = class_inputs(cap["embeds"], cap["pooled"], classes)
    theirs = pipeline_sd3(model, flow_scheduler(out_dir), latents=latents, **kw)[0]
    ours = sample_sd3(model, flow_scheduler(out_dir), latents=latents, **kw)
    e = ((ours - theirs).norm() / theirs.norm()).item()
    log(f"StableDiffusion3Pipeline vs sample_sd3: rel err {e:.3e}")
    assert e == 0.0, e


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models", help="models folder (default models): writes <out>/sd3-digits")
    ap.add_argument("--only", default="train,eval", help="comma-separated parts: train, eval, check")
    ap.add_argument("--steps", type=int, default=1200)
    args = ap.parse_args()
    setup()
    parts = set(args.only.split(","))
    unknown = parts - {"train", "eval", "check"}
    if unknown:
        sys.exit(f"train_sd3.py: unknown part(s) {sorted(unknown)}")
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, out {args.out}, parts {sorted(parts)}")
    d = os.path.join(args.out, MODEL_DIR)
    if "train" in parts:
        x, y = load_digits_16()
        train_sd3(d, x, y, steps=args.steps)
    if "eval" in parts:
        evaluate(d, load_classifier(os.path.join(args.out, "digits-classifier")))
    if "check" in parts:
        check(d)


if __name__ == "__main__":
    main()
