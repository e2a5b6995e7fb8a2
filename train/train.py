#!/usr/bin/env python3
"""Trains deltadit's reference models from scratch on the CPU, deterministically, in diffusers' own
classes, on scikit-learn's bundled digits (1797 8x8 images, upsampled to 16x16, pixel space):

  models/digits-classifier/  a tiny MLP (256 -> 128 -> 10) that scores generated samples
  models/pixart-digits/      PixArtTransformer2DModel, text-conditioned (cross-attention) on fixed
                             per-class caption embeddings (captions.safetensors), null caption for CFG
  models/dit-digits/         DiTTransformer2DModel, class-conditional, class 10 = the null class

Then samples each model with diffusers' schedulers (PixArt: DPM-Solver++ 20 steps, CFG 4.5,
[uncond, cond]; DiT: DDIM 20 steps, CFG 4.0, [cond, null]) from the exported f16 weights, scores
the samples with the classifier and writes models/<name>/samples.png and metrics.json.

  .venv/bin/python train/train.py --out models            # everything (scripts/python-env.sh makes .venv)
  .venv/bin/python train/train.py --out models --only dit # one part: classifier, pixart, dit, eval

Deterministic: fixed seeds, torch.set_num_threads(2), torch.use_deterministic_algorithms(True); the
same command gives bit-identical files on the same CPU/PyTorch (the thread count is part of it).
"""
import argparse
import json
import math
import os
import sys
import time

# OpenMP threads sleep instead of spinning while they wait: on a shared machine (other builds
# running) the spinning slowed a 2-thread training step by 5-10x; the numbers are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F
from safetensors.torch import save_file  # noqa: E402

THREADS = 2
NULL_CLASS = 10  # DiT: label 10; PixArt: caption row 10
TEXT_LEN = 8
CAPTION_DIM = 64

PIXART_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=1, out_channels=1,
    num_attention_heads=2, attention_head_dim=64, num_layers=12,
    caption_channels=CAPTION_DIM, cross_attention_dim=128, use_additional_conditions=False,
    activation_fn="gelu-approximate", norm_elementwise_affine=False, norm_eps=1e-6,
    attention_bias=True, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
)
DIT_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=1, out_channels=1,
    num_attention_heads=2, attention_head_dim=64, num_layers=8,
    num_embeds_ada_norm=10, norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-5,
    activation_fn="gelu-approximate", attention_bias=True,
)
# The training noise schedule: DDPM, 1000 steps, linear betas 1e-4 .. 0.02.
TRAIN_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
# The sampling schedulers, configured as the PixArt-alpha and DiT pipelines ship them
# (and as tests/data/pixart-tiny-dpmpp20-cfg and dit-tiny-ddim10-cfg use them).
DPM_CONFIG = dict(TRAIN_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                  lower_order_final=True, prediction_type="epsilon", steps_offset=0, thresholding=False,
                  timestep_spacing="linspace", use_karras_sigmas=False)
DDIM_CONFIG = dict(TRAIN_SCHEDULE, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                   prediction_type="epsilon", thresholding=False, timestep_spacing="leading")


def setup():
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------------------- data
def load_digits_16():
    """(images [1797, 1, 16, 16] f32 in [-1, 1], labels [1797] i64): load_digits' 8x8 images
    (values 0..16) upsampled bilinearly (align_corners=False) to 16x16, then x / 16 * 2 - 1."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None]  # [N, 1, 8, 8], 0..16
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = (x / 16.0 * 2.0 - 1.0).clamp(-1.0, 1.0)
    return x.contiguous(), torch.tensor(d.target, dtype=torch.int64)


def caption_embeddings():
    """Fixed caption embeddings for PixArt: embeds [11, 8, 64] (rows 0..9 stand for the captions
    "a handwritten digit k", row 10 for the empty/null caption), mask [11, 8] (1 keep, 0 padding).
    Class k keeps 3 + k % 6 tokens, the null caption 2; the padded tokens hold random values too
    (non-zero), so an implementation that ignores the mask is caught."""
    g = torch.Generator().manual_seed(1234)
    embeds = torch.randn(11, TEXT_LEN, CAPTION_DIM, generator=g)
    mask = torch.zeros(11, TEXT_LEN)
    for k in range(10):
        mask[k, : 3 + k % 6] = 1.0
    mask[NULL_CLASS, :2] = 1.0
    return embeds, mask


# ----------------------------------------------------------------------------------- classifier
class Classifier(torch.nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.fc1 = torch.nn.Linear(256, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)

    def forward(self, x):  # x [B, 1, 16, 16] (or [B, 256]) in [-1, 1]
        return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], 256))))


def augment(x, g):
    """Random shifts of -1..1 pixels in each direction (background -1 shifted in), intensity scale
    0.85..1.15 about -1, Gaussian noise sigma 0.1, clamped to [-1, 1]."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (b,), generator=g)
    dx = torch.randint(0, 3, (b,), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 16, dx[i]:dx[i] + 16] for i in range(b)])
    scale = 0.85 + 0.3 * torch.rand(b, 1, 1, 1, generator=g)
    out = (out + 1.0) * scale - 1.0
    out = out + 0.1 * torch.randn(out.shape, generator=g)
    return out.clamp(-1.0, 1.0)


def train_classifier(out_dir, x, y, epochs=150):
    t0, c0 = time.time(), time.process_time()
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(x.shape[0], generator=g)
    n_val = int(round(0.2 * x.shape[0]))
    val, tr = perm[:n_val], perm[n_val:]
    torch.manual_seed(8)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for ep in range(epochs):
        order = tr[torch.randperm(tr.shape[0], generator=g)]
        for i in range(0, order.shape[0], 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(augment(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc_val = (model(x[val]).argmax(1) == y[val]).float().mean().item()
        acc_val_aug = (model(augment(x[val], torch.Generator().manual_seed(9))).argmax(1) == y[val]).float().mean().item()
        acc_tr = (model(x[tr]).argmax(1) == y[tr]).float().mean().item()
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out_dir, "classifier.safetensors"))
    m = dict(held_out=n_val, train=int(tr.shape[0]), held_out_accuracy=acc_val,
             held_out_accuracy_augmented=acc_val_aug, train_accuracy=acc_tr, epochs=epochs,
             wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
    json.dump(m, open(os.path.join(out_dir, "metrics.json"), "w"), indent=2)
    log(f"classifier: held-out accuracy {acc_val:.4f} ({n_val} images), augmented {acc_val_aug:.4f}, train {acc_tr:.4f}")
    return model


def load_classifier(out_dir):
    from safetensors.torch import load_file

    model = Classifier()
    model.load_state_dict(load_file(os.path.join(out_dir, "classifier.safetensors")))
    return model.eval()


# ------------------------------------------------------------------------------------- training
def train_diffusion(family, out_dir, x, y, steps, lr=3e-4, warmup=200, batch=64, ema_decay=0.999, p_uncond=0.1):
    from diffusers import DDPMScheduler, DiTTransformer2DModel, PixArtTransformer2DModel

    t0, c0 = time.time(), time.process_time()
    seed = {"pixart": 100, "dit": 200}[family]
    torch.manual_seed(seed)
    if family == "pixart":
        model = PixArtTransformer2DModel(**PIXART_CONFIG)
        embeds, mask = caption_embeddings()
    else:
        model = DiTTransformer2DModel(**DIT_CONFIG)
    # eval(): no dropout layers exist (dropout 0); it keeps DiT's built-in label dropout off, since
    # the null-class dropout is done here explicitly with our own generator, as for PixArt.
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{family}: {n_params} parameters, {steps} steps, batch {batch}, lr {lr}")
    sched = DDPMScheduler(**TRAIN_SCHEDULE)
    alphas_cumprod = sched.alphas_cumprod.float()
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
        t = torch.randint(0, TRAIN_SCHEDULE["num_train_timesteps"], (batch,), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if family == "pixart":
            pred = model(xt, encoder_hidden_states=embeds[labels], encoder_attention_mask=mask[labels],
                         timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        else:
            pred = model(xt, timestep=t, class_labels=labels).sample
        loss = F.mse_loss(pred, noise)
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
            log(f"{family}: step {s + 1}/{steps} loss(last 100) {m:.4f} lr {lr_at(s):.2e} "
                f"{el / (s + 1):.3f} s/step, eta {el / (s + 1) * (steps - s - 1) / 60:.1f} min")
    wall, cpu = time.time() - t0, time.process_time() - c0
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    sched.save_config(out_dir)  # scheduler_config.json: the training noise schedule
    if family == "pixart":
        save_file({"embeds": embeds.contiguous(), "mask": mask.contiguous()}, os.path.join(out_dir, "captions.safetensors"))
    final_loss = float(np.mean(losses[-200:]))
    train = dict(family=family, parameters=n_params, steps=steps, batch=batch, lr=lr, warmup=warmup,
                 lr_schedule="linear warm-up, cosine to 10%", weight_decay=0.01, grad_clip=1.0,
                 ema_decay=ema_decay, p_uncond=p_uncond, final_loss_last200=final_loss,
                 loss_curve_per100=curve, wall_s=wall, cpu_s=cpu, threads=THREADS, torch=torch.__version__)
    json.dump(train, open(os.path.join(out_dir, "training.json"), "w"), indent=1)
    log(f"{family}: done, final loss (mean of last 200 steps) {final_loss:.4f}, wall {wall / 60:.1f} min, cpu {cpu / 60:.1f} min")
    return train


# ------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_pixart(model, embeds, mask, classes, latents, steps=20, guidance=4.5, per_step=False):
    """PixArtAlphaPipeline's denoising loop: batch [uncond, cond], CFG on the output; no learned-sigma
    split (out_channels == in_channels). Returns (latents, timesteps, per-step latents, per-step eps)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(**DPM_CONFIG)
    sched.set_timesteps(steps)
    sched.set_begin_index(0)
    n = latents.shape[0]
    prompt = torch.cat([embeds[torch.full((n,), NULL_CLASS)], embeds[classes]])
    pmask = torch.cat([mask[torch.full((n,), NULL_CLASS)], mask[classes]])
    latents = latents * sched.init_noise_sigma
    lat_steps, eps_steps = [], []
    for t in sched.timesteps:
        inp = torch.cat([latents] * 2) if guidance > 1 else latents
        inp = sched.scale_model_input(inp, t)
        ts = t[None].expand(inp.shape[0])
        noise_pred = model(inp, encoder_hidden_states=prompt if guidance > 1 else prompt[n:],
                           encoder_attention_mask=pmask if guidance > 1 else pmask[n:], timestep=ts,
                           added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        if guidance > 1:
            u, c = noise_pred.chunk(2)
            noise_pred = u + guidance * (c - u)
        latents = sched.step(noise_pred, t, latents).prev_sample
        if per_step:
            lat_steps.append(latents.clone())
            eps_steps.append(noise_pred.clone())
    return latents, sched.timesteps.clone(), lat_steps, eps_steps


@torch.no_grad()
def sample_dit(model, classes, latents, steps=20, guidance=4.0, per_step=False):
    """DiTPipeline's loop with the null class NULL_CLASS: batch [cond, null] of the same latents,
    CFG on eps, DDIM (eta 0) stepping the doubled batch; no learned-sigma split here."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**DDIM_CONFIG)
    sched.set_timesteps(steps)
    n = latents.shape[0]
    c_in = model.config.in_channels
    labels = torch.cat([classes, torch.full((n,), NULL_CLASS)]) if guidance > 1 else classes
    x = torch.cat([latents] * 2) if guidance > 1 else latents
    lat_steps, eps_steps = [], []
    for t in sched.timesteps:
        if guidance > 1:
            half = x[: len(x) // 2]
            x = torch.cat([half, half], dim=0)
        x = sched.scale_model_input(x, t)
        ts = t[None].expand(x.shape[0])
        noise_pred = model(x, timestep=ts, class_labels=labels).sample
        if guidance > 1:
            eps, rest = noise_pred[:, :c_in], noise_pred[:, c_in:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + guidance * (cond_eps - uncond_eps)
            eps = torch.cat([half_eps, half_eps], dim=0)
            noise_pred = torch.cat([eps, rest], dim=1)
        model_output = noise_pred
        if model.config.out_channels // 2 == c_in:
            model_output, _ = torch.split(noise_pred, c_in, dim=1)
        x = sched.step(model_output, t, x).prev_sample
        if per_step:
            lat_steps.append(x[:n].clone())
            eps_steps.append(model_output[:n].clone())
    out = x.chunk(2)[0] if guidance > 1 else x
    return out, sched.timesteps.clone(), lat_steps, eps_steps


def save_grid(images, path, cols=10, scale=2, pad=2):
    """images [N, 1, 16, 16] in [-1, 1] -> PNG grid, white digits on black, gray gaps."""
    from PIL import Image

    imgs = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    n = imgs.shape[0]
    rows = (n + cols - 1) // cols
    s = 16 * scale
    canvas = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad), 96, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        big = np.kron(imgs[i], np.ones((scale, scale), np.uint8))
        canvas[pad + r * (s + pad):pad + r * (s + pad) + s, pad + c * (s + pad):pad + c * (s + pad) + s] = big
    Image.fromarray(canvas).save(path, optimize=True)


def evaluate(family, out_dir, clf, per_class=10, seed=2024):
    """Samples per_class images of each class from the exported f16 weights (loaded as f32),
    scores them with the classifier, writes samples.png (row k = class k) and metrics.json."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    t0, c0 = time.time(), time.process_time()
    classes = torch.arange(10).repeat_interleave(per_class)
    latents = torch.randn((classes.shape[0], 1, 16, 16), generator=torch.Generator().manual_seed(seed))
    if family == "pixart":
        from safetensors.torch import load_file

        model = PixArtTransformer2DModel.from_pretrained(out_dir, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
        cap = load_file(os.path.join(out_dir, "captions.safetensors"))
        imgs, _, _, _ = sample_pixart(model, cap["embeds"], cap["mask"], classes, latents)
        setting = "DPMSolverMultistepScheduler (dpmsolver++, order 2) 20 steps, guidance 4.5, batch [uncond, cond]"
    else:
        model = DiTTransformer2DModel.from_pretrained(out_dir, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
        imgs, _, _, _ = sample_dit(model, classes, latents)
        setting = "DDIMScheduler (eta 0, leading spacing) 20 steps, guidance 4.0, batch [cond, null]"
    with torch.no_grad():
        pred = clf(imgs.clamp(-1, 1)).argmax(1)
    acc = (pred == classes).float().mean().item()
    per = [(pred[classes == k] == k).float().mean().item() for k in range(10)]
    save_grid(imgs, os.path.join(out_dir, "samples.png"))
    m = dict(samples=int(classes.shape[0]), per_class=per_class, seed=seed, sampler=setting,
             classifier_accuracy=acc, per_class_accuracy=per,
             pixel_range=[imgs.min().item(), imgs.max().item()],
             wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
    json.dump(m, open(os.path.join(out_dir, "metrics.json"), "w"), indent=1)
    log(f"{family}: {classes.shape[0]} samples, classifier accuracy on the asked-for class {acc:.4f}; per class "
        + " ".join(f"{a:.2f}" for a in per))
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models", help="output folder (default models)")
    ap.add_argument("--only", default="classifier,pixart,dit,eval",
                    help="comma-separated parts: classifier, pixart, dit, eval (eval: of the trained models present)")
    ap.add_argument("--pixart-steps", type=int, default=2000)
    ap.add_argument("--dit-steps", type=int, default=2000)
    ap.add_argument("--classifier-epochs", type=int, default=150)
    args = ap.parse_args()
    setup()
    parts = set(args.only.split(","))
    unknown = parts - {"classifier", "pixart", "dit", "eval"}
    if unknown:
        sys.exit(f"train.py: unknown part(s) {sorted(unknown)}")
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, out {args.out}, parts {sorted(parts)}")
    x, y = load_digits_16()
    cdir = os.path.join(args.out, "digits-classifier")
    if "classifier" in parts:
        train_classifier(cdir, x, y, epochs=args.classifier_epochs)
    if "pixart" in parts:
        train_diffusion("pixart", os.path.join(args.out, "pixart-digits"), x, y, args.pixart_steps)
    if "dit" in parts:
        train_diffusion("dit", os.path.join(args.out, "dit-digits"), x, y, args.dit_steps)
    if "eval" in parts:
        clf = load_classifier(cdir)
        for family, name in [("pixart", "pixart-digits"), ("dit", "dit-digits")]:
            d = os.path.join(args.out, name)
            if os.path.exists(os.path.join(d, "config.json")):
                evaluate(family, d, clf)


if __name__ == "__main__":
    main()
