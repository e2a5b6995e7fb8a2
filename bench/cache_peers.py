#!/usr/bin/env python3
"""Block caches against their simplest rival (fewer steps) and against cache-dit, at equal compute.

For a trained model of models/ (pixart-digits, dit-digits, sd3-digits, flux-digits), one diffusers pipeline
sampled as the model's README and train/ sample it (pixart-digits: PixArtAlphaPipeline, the
model's caption embeddings, 20 DPM-Solver++ steps, CFG 4.5; dit-digits: DiTPipeline, 20 DDIM
steps, CFG 4.0; sd3-digits: StableDiffusion3Pipeline, 20 FlowMatch Euler steps, CFG 4.5;
flux-digits: FluxPipeline, 20 FlowMatch Euler steps with dynamic shifting, embedded guidance 3.5, no
CFG batch, noise [1, 1, 16, 16] packed 2×2 and the output latents unpacked to [1, 16, 16] as
FluxPipeline._unpack_latents does), the same noises for every run (image i from its own seeded
generator, digit i mod 10), and the final images compared with the uncached run of the same
pipeline:

- ``fewer-steps``: the uncached pipeline with k < steps steps (compute k / steps);
- ``cache-dit``: cache-dit's DBCache through ``cache_dit.enable_cache`` on the pipeline (Fn, Bn,
  threshold, warm-up, ± its order-1 TaylorSeer calibrator, its predefined step masks);
- ``deltadit``: our policies through ``deltadit.diffusers.accelerate(pipe, cache=SPEC)``, one
  run per spec of ``--specs`` (``;``-separated; the default sweeps delta, delta-adaptive, fora,
  first-block and dbcache — cache-dit's grid in our spec, then TaylorSeer order 2, verified
  forecasts and the calibrators on Δ-DiT and FORA).

Compute = the fraction of transformer-block evaluations a run performs, relative to the uncached
run at the full step count: counted by forward hooks on the pipeline's blocks for the uncached
and cache-dit runs, and from ``deltadit.diffusers.stats`` (``blocks_run`` per step) for ours.
Each setting runs twice: at batch 1 (each image its own pipeline call, as users generate) and at
batch N (all images in one call: probe-driven caches then decide for the whole batch).

For each budget (compute ≤ 0.35, 0.40, …, 0.80) and each family, the setting of highest mean
PSNR within the budget (its compute, mean and worst PSNR, mean and worst SSIM), and the best
worst-image PSNR of any setting of the family within the budget. PSNR and SSIM as the crate's
`deltadit::quality` computes them (values in [-1, 1] mapped to [0, 1]; 100 dB for identical
images; SSIM over 7×7 windows, scikit-image's defaults).

    .venv/bin/python bench/cache_peers.py --model pixart-digits --out bench/results/DIR
    .venv/bin/python bench/cache_peers.py --quick            # a smoke run: 2 images, a few settings
    .venv/bin/python bench/cache_peers.py --specs "delta;fora:n=3;dbcache:fn=1,bn=0"
    .venv/bin/python bench/cache_peers.py --no-cachedit --specs "none;schedule:mask=11010100100101001011"
                                  # a mask `deltadit calibrate` searched (its rows beside an earlier run's)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = [round(0.35 + 0.05 * i, 2) for i in range(10)]  # 0.35 … 0.80
FAMILIES = ["fewer-steps", "cache-dit", "deltadit"]
MODELS = ["pixart-digits", "dit-digits", "sd3-digits", "flux-digits"]


# ---------------------------------------------------------------------------------------------
# quality: as src/quality.rs computes it


def _unit(x: np.ndarray) -> np.ndarray:
    return (np.clip(x.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((_unit(a) - _unit(b)) ** 2))
    return 100.0 if mse <= 1e-10 else -10.0 * math.log10(mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [c, h, w] images: 7×7 uniform windows, sample covariances, C1 = 0.01², C2 = 0.03²."""
    c1, c2 = 0.01**2, 0.03**2
    c, h, w = a.shape
    win = max(1, min(7, h, w))
    n = win * win
    cov = n / (n - 1.0) if n > 1 else 1.0
    pa, pb = _unit(a), _unit(b)
    total, count = 0.0, 0
    from numpy.lib.stride_tricks import sliding_window_view as sw

    for ch in range(c):
        wa, wb = sw(pa[ch], (win, win)), sw(pb[ch], (win, win))
        ma, mb = wa.mean((-1, -2)), wb.mean((-1, -2))
        va = ((wa * wa).mean((-1, -2)) - ma * ma) * cov
        vb = ((wb * wb).mean((-1, -2)) - mb * mb) * cov
        vab = ((wa * wb).mean((-1, -2)) - ma * mb) * cov
        s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
        total += float(s.sum())
        count += s.size
    return total / count


def judge(images: np.ndarray, reference: np.ndarray) -> dict:
    p = [psnr(x, r) for x, r in zip(images, reference)]
    s = [ssim(x, r) for x, r in zip(images, reference)]
    return dict(psnr_mean=float(np.mean(p)), psnr_worst=float(np.min(p)), ssim_mean=float(np.mean(s)),
                ssim_worst=float(np.min(s)))


# ---------------------------------------------------------------------------------------------
# the models and their pipelines


class _IdentityVae(torch.nn.Module):
    """Stands in for the VAE of a pixel-space model: identity decode, scaling factor 1."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=1.0, shift_factor=0.0, block_out_channels=[1])
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def decode(self, z, return_dict=True):
        return SimpleNamespace(sample=z) if return_dict else (z,)


class Model:
    """A trained model of models/ and its diffusers pipeline; `sample` returns final images [n, c, h, w]
    in [-1, 1] (the pipeline's output, pixel space)."""

    def __init__(self, name: str, steps: int):
        import diffusers
        from safetensors.torch import load_file

        self.name = name
        self.dir = os.path.join(REPO, "models", name)
        self.steps = steps
        cfg = json.load(open(os.path.join(self.dir, "config.json")))
        cls = getattr(diffusers, cfg["_class_name"])
        self.base = cls.from_pretrained(self.dir, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
        cap = os.path.join(self.dir, "captions.safetensors")
        self.captions = load_file(cap) if os.path.isfile(cap) else None
        self.size = cfg.get("sample_size", 16)  # flux-digits' config has none: 16×16 (models/README.md)
        self.channels = cfg["in_channels"]
        sys.path.insert(0, os.path.join(REPO, "train"))
        if name == "pixart-digits":
            from train import DPM_CONFIG

            self.kind, self.guidance, self.layers = "pixart", 4.5, cfg["num_layers"]
            self.scheduler = lambda: diffusers.DPMSolverMultistepScheduler(**DPM_CONFIG)
        elif name == "dit-digits":
            from train import DDIM_CONFIG

            self.kind, self.guidance, self.layers = "dit", 4.0, cfg["num_layers"]
            self.scheduler = lambda: diffusers.DDIMScheduler(**DDIM_CONFIG)
        elif name == "sd3-digits":
            sc = json.load(open(os.path.join(self.dir, "scheduler_config.json")))
            self.kind, self.guidance, self.layers = "sd3", 4.5, cfg["num_layers"]
            self.scheduler = lambda: diffusers.FlowMatchEulerDiscreteScheduler.from_config(sc)
        elif name == "flux-digits":
            # FluxPipeline as train/train_flux.py samples it (metrics.json) and `deltadit bench
            # --model models/flux-digits` does: 20 FlowMatch Euler steps with dynamic shifting,
            # embedded guidance 3.5 (the guidance input), no CFG batch; noise [1, 1, 16, 16] packed 2×2
            sc = json.load(open(os.path.join(self.dir, "scheduler_config.json")))
            self.kind, self.guidance = "flux", 3.5
            self.layers = cfg["num_layers"] + cfg["num_single_layers"]
            self.channels = cfg["in_channels"] // 4
            self.scheduler = lambda: diffusers.FlowMatchEulerDiscreteScheduler.from_config(sc)
        else:
            raise SystemExit(f"--model {name}: one of {', '.join(MODELS)}")

    def pipeline(self):
        """A fresh pipeline around a fresh copy of the transformer."""
        import diffusers

        tr = copy.deepcopy(self.base)
        if self.kind == "pixart":
            pipe = diffusers.PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=_IdentityVae(),
                                                 transformer=tr, scheduler=self.scheduler())
        elif self.kind == "dit":
            pipe = diffusers.DiTPipeline(transformer=tr, vae=_IdentityVae(), scheduler=self.scheduler())
        elif self.kind == "flux":
            # the identity VAE: vae_scale_factor 1, height = width = 16 (pixels = latents)
            pipe = diffusers.FluxPipeline(transformer=tr, scheduler=self.scheduler(), vae=_IdentityVae(),
                                          text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
        else:
            none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                                  "tokenizer_3"])
            pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, scheduler=self.scheduler(), vae=None, **none)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def noise(self, i: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        return torch.randn((1, self.channels, self.size, self.size), generator=g)

    @torch.no_grad()
    def sample(self, pipe, idx: list[int], steps: int, seed: int) -> np.ndarray:
        classes = torch.tensor([i % 10 for i in idx])
        null = torch.full((len(idx),), 10)
        if self.kind == "dit":
            # DiTPipeline draws its noise from the generators (one per image: the same noise at any
            # batch) and asks for the null class 1000; the model's null class is 10.
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in idx]
            out = pipe(class_labels=classes.tolist(), guidance_scale=self.guidance, generator=gens,
                       num_inference_steps=steps, output_type="np").images
            # (x / 2 + 0.5).clamp(0, 1), NHWC: back to [-1, 1] NCHW (the clamp is the one PSNR applies)
            return np.transpose(out, (0, 3, 1, 2)) * 2.0 - 1.0
        lat = torch.cat([self.noise(i, seed) for i in idx])
        if self.kind == "pixart":
            cap = self.captions
            out = pipe(negative_prompt=None, prompt_embeds=cap["embeds"][classes], prompt_attention_mask=cap["mask"][classes],
                       negative_prompt_embeds=cap["embeds"][null], negative_prompt_attention_mask=cap["mask"][null],
                       latents=lat, height=self.size, width=self.size, num_inference_steps=steps,
                       guidance_scale=self.guidance, use_resolution_binning=False, output_type="latent").images
        elif self.kind == "flux":
            import diffusers

            cap = self.captions
            b, c, h, w = lat.shape
            packed = diffusers.FluxPipeline._pack_latents(lat, b, c, h, w)  # [n, 64, 4]
            out = pipe(prompt_embeds=cap["embeds"][classes], pooled_prompt_embeds=cap["pooled"][classes],
                       latents=packed, height=self.size, width=self.size, num_inference_steps=steps,
                       guidance_scale=self.guidance, output_type="latent").images
            # the packed tokens back to [n, 1, 16, 16] images, as FluxPipeline._unpack_latents does
            out = diffusers.FluxPipeline._unpack_latents(out, self.size, self.size, pipe.vae_scale_factor)
        else:
            cap = self.captions
            px = self.size * pipe.vae_scale_factor
            out = pipe(prompt_embeds=cap["embeds"][classes], negative_prompt_embeds=cap["embeds"][null],
                       pooled_prompt_embeds=cap["pooled"][classes], negative_pooled_prompt_embeds=cap["pooled"][null],
                       latents=lat, height=px, width=px, num_inference_steps=steps, guidance_scale=self.guidance,
                       output_type="latent").images
        return out.float().numpy()


def _map_dit_null(pipe):
    """DiTPipeline's hard-coded null class 1000 → the model's 10, before any forward (a pre-hook, so
    it holds for the accelerated module and under cache-dit's patched forward alike)."""

    def pre(_mod, args, kwargs):
        cl = kwargs.get("class_labels")
        if cl is not None:
            kwargs["class_labels"] = torch.where(cl == 1000, torch.full_like(cl, 10), cl)
        return args, kwargs

    pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)


class BlockCounter:
    """Counts block forwards of a diffusers transformer (hooks on every block list)."""

    def __init__(self, transformer):
        self.calls = 0
        self.layers = 0
        for attr in ("transformer_blocks", "single_transformer_blocks"):
            for b in getattr(transformer, attr, None) or []:
                b.register_forward_hook(self._hook)
                self.layers += 1

    def _hook(self, *_):
        self.calls += 1


# ---------------------------------------------------------------------------------------------
# the settings


def default_specs(layers: int, steps: int) -> list[str]:
    """Our policies: the shipped defaults and the settings near the frontier `deltadit calibrate`
    found on the trained models (BENCHMARKS.md), over 35–90% compute."""
    f = lambda x: max(1, min(layers - 1, round(layers * x)))  # noqa: E731
    return [
        "none", "delta", "delta-adaptive", "fora", "first-block",
        f"delta:n=2,nc={f(0.5)},b={steps}", f"delta:n=2,nc={f(0.75)},b={steps}",
        f"delta:n=2,nc={f(0.75)},b={3 * steps // 4},order=reverse",
        "delta-adaptive:threshold=0.2,warmup=2,max-cached=1", "delta-adaptive:threshold=0.05,warmup=2,max-cached=1",
        "delta-adaptive:threshold=0.1,warmup=2,max-cached=2",
        "fora:n=2", "fora:n=4",
        "first-block:threshold=0.1,max-cached=1", "first-block:threshold=0.2,max-cached=2",
        "first-block:threshold=0.4,max-cached=1", "first-block:threshold=0.4,max-cached=2",
        # dbcache on cache-dit's grid (cachedit_settings, without its step masks), then what
        # cache-dit lacks: TaylorSeer order 2, verified forecasts, lower budgets
        "dbcache", *(f"dbcache:threshold={t},calibrator={c}" for t in (0.08, 0.12, 0.16, 0.24)
                     for c in ("none", "taylor1") if (t, c) != (0.12, "taylor1")),
        "dbcache:fn=2,threshold=0.12", "dbcache:fn=2,threshold=0.24",
        *(f"dbcache:fn={a},bn={b},threshold=0.16" for a, b in ((1, 1), (1, 2), (2, 1), (3, 0), (4, 0))),
        "dbcache:threshold=0.12,calibrator=taylor2", "dbcache:threshold=0.16,calibrator=taylor2",
        "dbcache:threshold=0.24,calibrator=taylor2", "dbcache:threshold=0.32", "dbcache:threshold=0.48",
        "dbcache:threshold=0.16,verify=0.05", "dbcache:threshold=0.24,verify=0.05", "dbcache:threshold=0.32,verify=0.1",
        # the TaylorSeer calibrators on Δ-DiT's and FORA's cached quantities
        "delta:calibrator=taylor1", f"delta:n=2,nc={f(0.75)},b={steps},calibrator=taylor1",
        "fora:n=3,calibrator=taylor1", "fora:n=3,calibrator=taylor2", "fora:n=4,calibrator=taylor1",
        "fora:n=2,calibrator=taylor1",
    ]


def cachedit_settings(steps: int, quick: bool) -> list[dict]:
    """DBCache settings: Fn/Bn/threshold/warm-up, ± TaylorSeer order 1, cache-dit's step masks."""
    out = []
    seen = set()

    def add(fn, bn, thr, warmup=2, taylor=False, mask=None):
        key = (fn, bn, thr, warmup, taylor, mask)
        if key not in seen:
            seen.add(key)
            out.append(dict(fn=fn, bn=bn, threshold=thr, warmup=warmup, taylor=taylor, mask=mask))

    if quick:
        add(1, 0, 0.12, taylor=True)
        return out
    # F1B0 (cache-dit's recommended small-Fn setting, the best) over thresholds, ± TaylorSeer
    for thr in (0.08, 0.12, 0.16, 0.24):
        for taylor in (False, True):
            add(1, 0, thr, taylor=taylor)
    add(2, 0, 0.12, taylor=True)
    add(2, 0, 0.24, taylor=True)
    # F1–F4 × B0–B2 (a diagonal of it) with TaylorSeer
    for fn, bn in ((1, 1), (1, 2), (2, 1), (3, 0), (4, 0)):
        add(fn, bn, 0.16, taylor=True)
    # its predefined step masks (dynamic: masked steps still decided by the threshold)
    for mask in ("medium", "fast"):
        add(1, 0, 0.16, taylor=True, mask=mask)
    return out


def cachedit_label(s: dict) -> str:
    lab = f"DBCache F{s['fn']}B{s['bn']} R{s['threshold']} W{s['warmup']}"
    if s["taylor"]:
        lab += " +TaylorSeer1"
    if s["mask"]:
        lab += f" mask={s['mask']}"
    return lab


# Why a cache-dit setting runs with other than cache-dit's defaults on a model, or not at all
# (results meta `cache_dit_notes`, results.md).
SD3_ENCODER_CALIBRATOR_NOTE = (
    "sd3-digits, Bn = 0 with TaylorSeer: cache-dit's TaylorSeerCalibratorConfig with "
    "enable_encoder_calibrator=False. SD3's last joint block is context_pre_only (it returns no "
    "encoder stream); with Bn = 0 it is one of cache-dit's middle blocks, so the encoder residual "
    "of a computed step is None and never stored (set_Bn_encoder_buffer skips None), and on the "
    "first cached step the encoder calibrator asserts \"State 'transformer_blocks_Bn_residual' not "
    "found\" (get_Bn_encoder_buffer, cache_dit 1.5.3). The encoder stream after the last block is "
    "discarded by SD3Transformer2DModel, so that calibrator has nothing to forecast: without it the "
    "image is the one cache-dit's DBCache + TaylorSeer computes (the hidden-state calibrator is "
    "unchanged; python/tests/test_cache_peers.py checks it bit for bit against cache-dit's default "
    "with the missing state read as no buffer). Bn >= 1 keeps the default (the last block is then a "
    "Bn block, fed the forecast encoder stream).")


def cachedit_encoder_calibrator(kind: str, s: dict) -> bool:
    """cache-dit's default (an encoder-stream TaylorSeer beside the hidden-state one) except where
    it cannot run and has nothing to do: SD3 with Bn = 0 (SD3_ENCODER_CALIBRATOR_NOTE)."""
    return not (kind == "sd3" and s["bn"] == 0)


def enable_cachedit(pipe, s: dict, steps: int, kind: str = ""):
    import cache_dit
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    kw = {}
    if s["mask"]:
        kw["steps_computation_mask"] = cache_dit.steps_mask(mask_policy=s["mask"], total_steps=steps)
        kw["steps_computation_policy"] = "dynamic"
    cfg = DBCacheConfig(Fn_compute_blocks=s["fn"], Bn_compute_blocks=s["bn"], residual_diff_threshold=s["threshold"],
                        max_warmup_steps=s["warmup"], num_inference_steps=steps, **kw)
    cal = (TaylorSeerCalibratorConfig(taylorseer_order=1,
                                      enable_encoder_calibrator=cachedit_encoder_calibrator(kind, s))
           if s["taylor"] else None)
    cache_dit.enable_cache(pipe, cache_config=cfg, calibrator_config=cal)


# ---------------------------------------------------------------------------------------------
# runs


def run_setting(model: Model, make_pipe, count, n: int, steps: int, seed: int, ref: dict) -> dict:
    """Both batch modes of one setting: images, compute, quality (against `ref`, when given)."""
    pipe, counter = make_pipe()
    res = {}
    for mode in ("batch1", "batchN"):
        t0 = time.perf_counter()
        if mode == "batch1":
            imgs, comp = [], []
            for i in range(n):
                before = count(pipe, counter, None)
                imgs.append(model.sample(pipe, [i], steps, seed))
                comp.append(count(pipe, counter, before))
            images = np.concatenate(imgs)
            compute = float(np.mean(comp))
        else:
            before = count(pipe, counter, None)
            images = model.sample(pipe, list(range(n)), steps, seed)
            compute = count(pipe, counter, before)
        r = dict(compute=compute, time_s=time.perf_counter() - t0)
        if ref is not None:
            r.update(judge(images, ref[mode]))
        res[mode] = (r, images)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pixart-digits", help=", ".join(MODELS))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--specs", default=None,
                    help="our cache specs, ';'-separated (default: a sweep of delta, delta-adaptive, fora, first-block)")
    ap.add_argument("--add-specs", default=None, help="specs (';'-separated) added to the default sweep")
    ap.add_argument("--no-cachedit", action="store_true", help="leave out cache-dit")
    ap.add_argument("--threads", type=int, default=1, help="torch and deltadit threads")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 images, one setting per family")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    ap.add_argument("--reuse", action="append", default=[], metavar="RESULTS_JSON",
                    help="rows of an earlier run of the same model, images, steps and seed (a results.json; "
                         "repeatable): its fewer-steps, cache-dit and deltadit rows join this run's table and are "
                         "not run again (the uncached reference always is)")
    a = ap.parse_args(argv)
    if a.images < 1:
        raise SystemExit(f"--images {a.images}: at least 1")
    if a.quick:
        a.images = min(a.images, 2)
    torch.set_num_threads(a.threads)
    import deltadit.diffusers as dd

    try:
        import cache_dit  # noqa: F401

        have_cachedit = not a.no_cachedit
        cachedit_version = cache_dit.__version__ if have_cachedit else None
    except ImportError:
        have_cachedit, cachedit_version = False, None
        print("cache_dit is not installed: the cache-dit family is left out", file=sys.stderr)
    if have_cachedit:
        import logging

        os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
        for name in list(logging.root.manager.loggerDict):
            if "cache" in name.lower():
                logging.getLogger(name).setLevel(logging.ERROR)

    model = Model(a.model, a.steps)
    L, S, n = model.layers, a.steps, a.images
    specs = a.specs.split(";") if a.specs else (
        ["none", "delta", "fora:n=3", "first-block"] if a.quick else default_specs(L, S))
    if a.add_specs:
        specs += a.add_specs.split(";")
    specs = [s.strip() for s in specs if s.strip()]

    def native_pipe():
        p = model.pipeline()
        if model.kind == "dit":
            _map_dit_null(p)
        return p, BlockCounter(p.transformer)

    def hook_count(steps):
        def count(_pipe, counter, before):
            if before is None:
                return counter.calls
            return (counter.calls - before) / (steps * counter.layers)

        return count

    def ours_count(pipe, _counter, before):
        if before is None:
            return 0
        st = dd.stats(pipe)
        return sum(r["blocks_run"] for r in st) / (S * st[0]["num_blocks"])

    rows = []
    reused = []
    for path in a.reuse:
        with open(path) as f:
            old = json.load(f)
        m = old["meta"]
        want = dict(model=a.model, images=n, steps=S, seed=a.seed)
        got = {k: m.get(k) for k in want}
        if got != want:
            raise SystemExit(f"--reuse {path}: a run of {got}, this one is {want}")
        ours_now = set(specs)
        reused += [r for r in old["rows"] if r["family"] != "uncached"
                   and not (r["family"] == "deltadit" and r["setting"] in ours_now)]
    reused_families = {r["family"] for r in reused}

    def record(family, kind, setting, steps, res):
        for mode, (r, _) in res.items():
            rows.append(dict(family=family, kind=kind, setting=setting, steps=steps, mode=mode, **r))
        if a.out:  # the rows so far, should the run be cut short
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "rows.partial.json"), "w") as f:
                json.dump(rows, f, indent=1)
        b1, bn = res["batch1"][0], res["batchN"][0]
        print(f"{family:<12} {setting:<58} b1 {b1['compute']:.3f} {b1.get('psnr_mean', 100):6.2f}/{b1.get('psnr_worst', 100):6.2f}"
              f"  bN {bn['compute']:.3f} {bn.get('psnr_mean', 100):6.2f}/{bn.get('psnr_worst', 100):6.2f}"
              f"  ({b1['time_s'] + bn['time_s']:.1f} s)", flush=True)

    t_start = time.time()
    skipped = []  # settings that failed: left out of the rows, listed in the meta and results.md
    notes = []  # cache-dit settings run with other than its defaults, and why
    # the reference: the uncached pipeline at the full step count
    res = run_setting(model, native_pipe, hook_count(S), n, S, a.seed, None)
    ref = {m: im for m, (_, im) in res.items()}
    res = {m: ({**r, **judge(im, ref[m])}, im) for m, (r, im) in res.items()}
    record("uncached", "none", f"diffusers, {S} steps", S, res)
    # fewer steps
    ks = [S // 2, round(0.6 * S)] if a.quick else list(range(max(1, round(0.35 * S)), min(S, round(0.8 * S) + 1)))
    if "fewer-steps" in reused_families:
        ks = []
    for k in ks:
        res = run_setting(model, native_pipe, hook_count(S), n, k, a.seed, ref)
        record("fewer-steps", "fewer-steps", f"{k} steps", k, res)
    # ours
    acc = None
    for spec in specs:
        def our_pipe(spec=spec):
            nonlocal acc
            if acc is None:
                p = model.pipeline()
                dd.accelerate(p, device="cpu", cache=spec, threads=a.threads)
                if model.kind == "dit":
                    _map_dit_null(p)  # on the accelerated module the pipeline calls
                acc = p
            else:
                dd.accelerate(acc, cache=spec)
            return acc, None

        try:
            res = run_setting(model, our_pipe, ours_count, n, S, a.seed, ref)
        except Exception as e:  # a spec the package does not know (yet): reported, not fatal
            print(f"deltadit {spec}: {type(e).__name__}: {e}", file=sys.stderr)
            skipped.append(dict(family="deltadit", setting=spec, error=f"{type(e).__name__}: {e}"))
            continue
        record("deltadit", spec.split(":")[0], spec, S, res)

    # cache-dit
    if have_cachedit and "cache-dit" not in reused_families:
        for s in cachedit_settings(S, a.quick):
            def cd_pipe(s=s):
                p, c = native_pipe()
                enable_cachedit(p, s, S, model.kind)
                return p, c

            try:
                res = run_setting(model, cd_pipe, hook_count(S), n, S, a.seed, ref)
            except Exception as e:  # reported, not fatal (cache-dit rejects some settings per model)
                print(f"cache-dit {cachedit_label(s)}: {type(e).__name__}: {e}", file=sys.stderr)
                skipped.append(dict(family="cache-dit", setting=cachedit_label(s), error=f"{type(e).__name__}: {e}"))
                continue
            if s["taylor"] and not cachedit_encoder_calibrator(model.kind, s) and SD3_ENCODER_CALIBRATOR_NOTE not in notes:
                notes.append(SD3_ENCODER_CALIBRATOR_NOTE)
            kind = "dbcache+taylorseer" if s["taylor"] else "dbcache"
            record("cache-dit", kind if not s["mask"] else kind + "+mask", cachedit_label(s), S, res)
    rows += reused
    summary = summarize(rows)
    cpu = cpu_name()
    meta = dict(model=a.model, images=n, steps=S, guidance=model.guidance, seed=a.seed, threads=a.threads,
                cpu=cpu, cache_dit=cachedit_version, quick=a.quick, wall_s=round(time.time() - t_start, 1),
                command=" ".join(["bench/cache_peers.py", *(argv if argv is not None else sys.argv[1:])]),
                reused=a.reuse, skipped=skipped, cache_dit_notes=notes,
                torch=torch.__version__, diffusers=__import__("diffusers").__version__,
                python=platform.python_version())
    out = dict(meta=meta, rows=rows, budgets=summary)
    md = markdown(out)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(out, f, indent=1)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(md)
        partial = os.path.join(a.out, "rows.partial.json")
        if os.path.exists(partial):
            os.remove(partial)
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per batch mode, budget and family: the best mean-PSNR setting within the budget, and the
    best worst-image PSNR of any of the family's settings within it."""
    out = []
    for mode in ("batch1", "batchN"):
        for budget in BUDGETS:
            entry = dict(mode=mode, budget=budget, families={})
            for fam in FAMILIES:
                cand = [r for r in rows if r["mode"] == mode and r["family"] == fam and r["compute"] <= budget + 1e-9]
                if not cand:
                    entry["families"][fam] = None
                    continue
                best = max(cand, key=lambda r: (r["psnr_mean"], -r["compute"]))
                worst = max(cand, key=lambda r: (r["psnr_worst"], -r["compute"]))
                entry["families"][fam] = dict(
                    setting=best["setting"], compute=best["compute"], psnr_mean=best["psnr_mean"],
                    psnr_worst=best["psnr_worst"], ssim_mean=best["ssim_mean"], ssim_worst=best["ssim_worst"],
                    best_worst_psnr=worst["psnr_worst"], best_worst_setting=worst["setting"],
                    best_worst_compute=worst["compute"])
            out.append(entry)
    return out


def cpu_name() -> str:
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in txt.splitlines() if ln.startswith("Model name")), None)
    except OSError:
        name = None
    return f"{name or platform.processor() or 'unknown CPU'}, {os.cpu_count()} logical CPUs"


def markdown(out: dict) -> str:
    m = out["meta"]
    s = [f"# cache peers: {m['model']}, {m['images']} images, {m['steps']} steps, guidance {m['guidance']}", "",
         f"`{m['command']}` on {m['cpu']} ({m['threads']} thread(s)); cache-dit {m['cache_dit']}, torch {m['torch']}, "
         f"diffusers {m['diffusers']}; {m['wall_s']} s.", "",
         "Best setting of each family within each compute budget: mean PSNR dB (its compute), its worst image "
         "PSNR, its mean / worst SSIM; then the best worst-image PSNR of any setting of the family within the budget.", ""]
    for note in m.get("cache_dit_notes") or []:
        s += [f"Note: {note}", ""]
    if m.get("skipped"):
        s += ["Settings that failed (not in the tables):", ""]
        s += [f"- {k['family']} `{k['setting']}`: {k['error']}" for k in m["skipped"]]
        s.append("")
    for mode, title in (("batch1", "batch 1 (each image its own pipeline call)"),
                        ("batchN", f"batch {m['images']} (all images in one call)")):
        s += [f"## {title}", "", "| budget | " + " | ".join(FAMILIES) + " |", "| --- |" + " --- |" * len(FAMILIES)]
        for e in out["budgets"]:
            if e["mode"] != mode:
                continue
            cells = []
            for fam in FAMILIES:
                b = e["families"][fam]
                cells.append("—" if b is None else
                             f"{b['psnr_mean']:.1f} ({b['compute']:.2f}), worst {b['psnr_worst']:.1f}, "
                             f"SSIM {b['ssim_mean']:.3f}/{b['ssim_worst']:.3f}; best worst {b['best_worst_psnr']:.1f}")
            s.append(f"| ≤ {e['budget']:.2f} | " + " | ".join(cells) + " |")
        s.append("")
        s.append("Settings behind the best mean PSNR:")
        s.append("")
        for e in out["budgets"]:
            if e["mode"] == mode:
                names = "; ".join(f"{f}: `{b['setting']}`" for f, b in e["families"].items() if b is not None)
                s.append(f"- ≤ {e['budget']:.2f}: {names}")
        s.append("")
    s += ["## every setting", "", "| family | setting | mode | compute | PSNR mean | PSNR worst | SSIM mean | SSIM worst |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in out["rows"]:
        s.append(f"| {r['family']} | `{r['setting']}` | {r['mode']} | {r['compute']:.3f} | {r['psnr_mean']:.2f} | "
                 f"{r['psnr_worst']:.2f} | {r['ssim_mean']:.4f} | {r['ssim_worst']:.4f} |")
    return "\n".join(s) + "\n"


if __name__ == "__main__":
    main()
