#!/usr/bin/env python3
"""Trains models/flux-digits: a FluxTransformer2DModel (FLUX.1-dev layout: double-stream blocks, then
single-stream blocks, 3-axis RoPE, a guidance embedding) from scratch on the CPU, deterministically, on
the digits of train.py (16x16, 1 channel, pixel space, [-1, 1]), packed 2x2 as FluxPipeline packs
latents: [B, 1, 16, 16] -> [B, 64 tokens, 4 channels] (in_channels 4 = 1 latent channel x 2 x 2).
Objective: rectified flow as FLUX / SD3 train it:

  t ~ logit-normal(0, 1),  x_t = (1 - t) x0 + t eps,  target v = eps - x0,
  model timestep input t (the model multiplies by 1000), guidance input fixed 3.5

conditioned on a fixed random caption table (captions.safetensors: embeds [11, 8, 64] for the joint
attention, pooled [11, 32] for the adaLN conditioning; row 10 is the null caption, dropped in with
probability 0.1 so that true CFG with a null negative prompt is possible). The guidance embedding is
fed the constant 3.5 in training (no guidance distillation: there is no teacher here), and sampling
uses FluxPipeline's embedded guidance 3.5 with no CFG batch, as FLUX.1-dev is sampled.

Exports a diffusers folder (f16 EMA weights; the FlowMatchEulerDiscreteScheduler config of FLUX.1-dev:
dynamic shifting, base/max shift 0.5/1.15 over 256..4096 image tokens, so FluxPipeline computes
mu = 0.4675 for 64 tokens), then samples 100 images (10 per digit, seed 2024) with diffusers' own
FluxPipeline (prompt embeddings given, no text encoders, an identity stand-in for the VAE,
output_type="latent", 20 steps, guidance 3.5); the latents are unpacked to 16x16 and the classifier of
models/digits-classifier reads them (metrics.json, samples.png).

  .venv/bin/python train/train_flux.py --out models               # train + evaluate (~30 min on 2 cores)
  .venv/bin/python train/train_flux.py --out models --only eval   # evaluate the committed folder again
  .venv/bin/python train/train_flux.py --only check               # our loop (sample_flux) == the pipeline

Deterministic: fixed seeds, torch.set_num_threads(2), torch.use_deterministic_algorithms(True).
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import (CAPTION_DIM, NULL_CLASS, TEXT_LEN, THREADS, load_classifier, load_digits_16,  # noqa: E402
                   log, save_grid, setup)
from train_sd3 import IdentityVae, machine  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

POOLED_DIM = 32
SIZE = 16  # image height = width (pixels = latents: the stand-in VAE has scale factor 1)
FLUX_CONFIG = dict(
    patch_size=1, in_channels=4, out_channels=None,  # 4 = 1 latent channel x 2 x 2 (FluxPipeline's packing)
    num_layers=2, num_single_layers=4, attention_head_dim=64, num_attention_heads=2,
    joint_attention_dim=CAPTION_DIM, pooled_projection_dim=POOLED_DIM, guidance_embeds=True,
    axes_dims_rope=(16, 24, 24),  # sums to attention_head_dim
)
# FLUX.1-dev's scheduler config: dynamic shifting, mu from the image token count (FluxPipeline's
# calculate_shift): 64 tokens -> mu = 0.5 + (64 - 256) * 0.65 / 3840 = 0.4675 (shift e^mu = 1.60).
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                   base_image_seq_len=256, max_image_seq_len=4096)
STEPS, GUIDANCE = 20, 3.5
TRAIN_GUIDANCE = 3.5
MODEL_DIR = "flux-digits"


def flux_captions():
    """Fixed caption table: embeds [11, 8, 64] (rows 0..9 stand for "a handwritten digit k", row 10 for
    the empty/null caption), pooled [11, 32]; N(0, 1) from a fixed generator. FLUX has no text mask."""
    g = torch.Generator().manual_seed(5432)
    embeds = torch.randn(11, TEXT_LEN, CAPTION_DIM, generator=g)
    pooled = torch.randn(11, POOLED_DIM, generator=g)
    return embeds, pooled


def pack(x):
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: FluxPipeline._pack_latents."""
    from diffusers import FluxPipeline

    b, c, h, w = x.shape
    return FluxPipeline._pack_latents(x, b, c, h, w)


def unpack(x, size=SIZE):
    """[B, N, 4C] -> [B, C, H, W]: FluxPipeline._unpack_latents with vae_scale_factor 1."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(x, size, size, 1)


def image_ids(size=SIZE):
    """img_ids [(size/2)^2, 3] as FluxPipeline builds them: (0, row, col) of each 2x2 patch."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, size // 2, size // 2, torch.device("cpu"), torch.float32)


def text_ids(length=TEXT_LEN):
    """txt_ids [L, 3]: zeros, as FluxPipeline.encode_prompt builds them."""
    return torch.zeros(length, 3)


# ------------------------------------------------------------------------------------- training
def train_flux(out_dir, x, y, steps=1200, lr=1e-3, warmup=200, batch=64, ema_decay=0.999, p_uncond=0.1):
    from diffusers import FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler

    t0, c0 = time.time(), time.process_time()
    seed = 400
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**FLUX_CONFIG)
    model.train()  # no dropout anywhere in the model: train() and eval() compute the same
    embeds, pooled = flux_captions()
    img_ids, txt_ids = image_ids(), text_ids()
    guidance = torch.full((batch,), TRAIN_GUIDANCE)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"flux: {n_params} parameters, {steps} steps, batch {batch}, lr {lr}")
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
        pred = model(hidden_states=pack(xt), encoder_hidden_states=embeds[labels], pooled_projections=pooled[labels],
                     timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance).sample
        loss = F.mse_loss(pred, pack(noise - x0))
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
            log(f"flux: step {s + 1}/{steps} loss(last 100) {m:.4f} lr {lr_at(s):.2e} "
                f"{el / (s + 1):.3f} s/step, eta {el / (s + 1) * (steps - s - 1) / 60:.1f} min")
    wall, cpu = time.time() - t0, time.process_time() - c0
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    model.eval().to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG).save_config(out_dir)
    save_file({"embeds": embeds.contiguous(), "pooled": pooled.contiguous()}, os.path.join(out_dir, "captions.safetensors"))
    final_loss = float(np.mean(losses[-200:]))
    train = dict(family="flux", parameters=n_params, steps=steps, batch=batch, lr=lr, warmup=warmup,
                 lr_schedule="linear warm-up, cosine to 10%", weight_decay=0.01, grad_clip=1.0,
                 ema_decay=ema_decay, p_uncond=p_uncond, train_guidance=TRAIN_GUIDANCE,
                 objective=("rectified flow: t ~ logit-normal(0, 1), x_t = (1 - t) x0 + t eps, target eps - x0, "
                            "timestep input t (x1000 inside the model), guidance input fixed 3.5; images packed 2x2 "
                            "to [B, 64, 4] as FluxPipeline packs latents"),
                 final_loss_last200=final_loss, loss_curve_per100=curve, wall_s=wall, cpu_s=cpu,
                 threads=THREADS, machine=machine(), torch=torch.__version__)
    json.dump(train, open(os.path.join(out_dir, "training.json"), "w"), indent=1)
    log(f"flux: done, final loss (mean of last 200 steps) {final_loss:.4f}, wall {wall / 60:.1f} min, cpu {cpu / 60:.1f} min")
    return train


# ------------------------------------------------------------------------------------- sampling
def load_model(model_dir, dtype=torch.float32):
    """The committed f16 weights, upcast to dtype (f32: what the golden cases compute in)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(model_dir, torch_dtype=dtype, low_cpu_mem_usage=False).eval()


def flow_scheduler(model_dir=None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if model_dir is None:
        return FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG)
    return FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir)


@torch.no_grad()
def pipeline_flux(model, scheduler, cond_embeds, cond_pooled, latents, steps=STEPS, guidance=GUIDANCE,
                  uncond_embeds=None, uncond_pooled=None, true_cfg=1.0, per_step=False):
    """diffusers' FluxPipeline itself (no text encoders: prompt embeddings given; an identity VAE, so
    vae_scale_factor 1 and height = width = 16; output_type="latent"). latents are packed [n, 64, 4].
    Returns (packed latents, timesteps, sigmas, per-step packed latents [after update k])."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(transformer=model, scheduler=scheduler, vae=IdentityVae(), text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    lat_steps = []

    def on_step(p, i, t, kw):
        lat_steps.append(kw["latents"].clone())
        return {}

    extra = {}
    if true_cfg > 1:
        extra = dict(negative_prompt_embeds=uncond_embeds, negative_pooled_prompt_embeds=uncond_pooled,
                     true_cfg_scale=true_cfg)
    out = pipe(prompt_embeds=cond_embeds, pooled_prompt_embeds=cond_pooled, latents=latents.clone(),
               height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
               callback_on_step_end=on_step if per_step else None, **extra).images
    return out, pipe.scheduler.timesteps.clone(), pipe.scheduler.sigmas.clone(), lat_steps


@torch.no_grad()
def sample_flux(model, scheduler, cond_embeds, cond_pooled, latents, steps=STEPS, guidance=GUIDANCE):
    """The loop of FluxPipeline written out (the reference for the Rust sampler): sigmas
    linspace(1, 1/steps, steps) time-shifted by mu = calculate_shift(64 tokens) (then a final 0),
    timestep input t_i / 1000 (= sigma_i), guidance input the scale for every image, no CFG batch,
    Euler x += (sigma_{i+1} - sigma_i) v. `check` shows it equals the pipeline."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler.config
    mu = calculate_shift(latents.shape[1], c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    scheduler.set_begin_index(0)
    n = latents.shape[0]
    g = torch.full((n,), guidance)
    img_ids, txt_ids = image_ids(), text_ids(cond_embeds.shape[1])
    for t in scheduler.timesteps:
        v = model(hidden_states=latents, timestep=t.expand(n) / 1000, guidance=g, pooled_projections=cond_pooled,
                  encoder_hidden_states=cond_embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents


def class_inputs(embeds, pooled, classes):
    n = len(classes)
    null = torch.full((n,), NULL_CLASS)
    return dict(cond_embeds=embeds[classes], cond_pooled=pooled[classes],
                uncond_embeds=embeds[null], uncond_pooled=pooled[null])


def evaluate(out_dir, clf, per_class=10, seed=2024, true_cfg=1.0):
    t0, c0 = time.time(), time.process_time()
    classes = torch.arange(10).repeat_interleave(per_class)
    latents = torch.randn((classes.shape[0], 1, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    model = load_model(out_dir)
    cap = load_file(os.path.join(out_dir, "captions.safetensors"))
    out = pipeline_flux(model, flow_scheduler(out_dir), latents=pack(latents), true_cfg=true_cfg,
                        **class_inputs(cap["embeds"], cap["pooled"], classes))[0]
    imgs = unpack(out)
    with torch.no_grad():
        pred = clf(imgs.clamp(-1, 1)).argmax(1)
    acc = (pred == classes).float().mean().item()
    per = [(pred[classes == k] == k).float().mean().item() for k in range(10)]
    cfg = (f"true CFG {true_cfg} with the null caption as negative prompt" if true_cfg > 1 else "no CFG batch")
    if true_cfg <= 1:
        save_grid(imgs, os.path.join(out_dir, "samples.png"))
    m = dict(samples=int(classes.shape[0]), per_class=per_class, seed=seed,
             sampler=(f"FluxPipeline (prompt embeddings given, identity VAE, output_type latent, latents unpacked to "
                      f"16x16): FlowMatchEulerDiscreteScheduler dynamic shifting (mu 0.4675 for 64 tokens), {STEPS} "
                      f"steps, embedded guidance {GUIDANCE}, {cfg}"),
             initial_noise="torch.randn([100, 1, 16, 16], Generator().manual_seed(seed)), packed 2x2",
             classifier_accuracy=acc, per_class_accuracy=per,
             pixel_range=[imgs.min().item(), imgs.max().item()],
             wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
    if true_cfg <= 1:
        json.dump(m, open(os.path.join(out_dir, "metrics.json"), "w"), indent=1)
    log(f"flux ({cfg}): {classes.shape[0]} samples, classifier accuracy on the asked-for class {acc:.4f}; per class "
        + " ".join(f"{a:.2f}" for a in per))
    return m


def check(out_dir):
    """sample_flux against FluxPipeline on the committed model: must be bit-identical."""
    model = load_model(out_dir)
    cap = load_file(os.path.join(out_dir, "captions.safetensors"))
    classes = torch.tensor([0, 3, 6, 9])
    latents = pack(torch.randn((4, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(29)))
    kw = class_inputs(cap["embeds"], cap["pooled"], classes)
    theirs = pipeline_flux(model, flow_scheduler(out_dir), latents=latents, **kw)[0]
    ours = sample_flux(model, flow_scheduler(out_dir), latents=latents, cond_embeds=kw["cond_embeds"],
                       cond_pooled=kw["cond_pooled"])
    e = ((ours - theirs).norm() / theirs.norm()).item()
    log(f"FluxPipeline vs sample_flux: rel err {e:.3e}")
    assert e == 0.0, e


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models", help="models folder (default models): writes <out>/flux-digits")
    ap.add_argument("--only", default="train,eval", help="comma-separated parts: train, eval, cfg, check "
                    "(cfg: also score true CFG with the null caption, not written to metrics.json)")
    ap.add_argument("--steps", type=int, default=1200)
    args = ap.parse_args()
    setup()
    parts = set(args.only.split(","))
    unknown = parts - {"train", "eval", "cfg", "check"}
    if unknown:
        sys.exit(f"train_flux.py: unknown part(s) {sorted(unknown)}")
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, out {args.out}, parts {sorted(parts)}")
    d = os.path.join(args.out, MODEL_DIR)
    if "train" in parts:
        x, y = load_digits_16()
        train_flux(d, x, y, steps=args.steps)
    if "eval" in parts:
        evaluate(d, load_classifier(os.path.join(args.out, "digits-classifier")))
    if "cfg" in parts:
        evaluate(d, load_classifier(os.path.join(args.out, "digits-classifier")), true_cfg=2.0)
    if "check" in parts:
        check(d)


if __name__ == "__main__":
    main()
