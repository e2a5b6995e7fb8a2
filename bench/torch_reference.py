#!/usr/bin/env python3
"""PyTorch (+ diffusers) side of the benchmark comparison: the same ops at the same shapes as
benches/kernels.rs, and the diffusers model forward of the same preset as benches/step.rs, timed on
the same machine. Writes one JSON file that scripts/bench-table.py joins with ours.

    python3 bench/torch_reference.py [--device auto|cuda|cpu] [--presets a,b] [--model-presets a,b]
                                     [--quick] [--runs N] [--compile] [--threads N]
                                     [--no-ops] [--no-model] [--out FILE]

Ops (names as in benches/kernels.rs; eager PyTorch as diffusers runs it):
    attn-self      SDPA on strided head views of a fused [rows, 3D] QKV tensor (head dim 72)
    attn-cross     SDPA against 120 text tokens with the padding mask as an additive bias
                   ([B, H, 1, L], -10000 where masked; uncond keeps 1 token, cond 20)
                   Both with SDPA's best backend: its default dispatch and each backend forced
                   (flash, efficient, cuDNN; on the CPU also math) are timed, the row is the
                   fastest, `sdpa_backend` names it and `sdpa_us` lists them all.
    norm-modulate  F.layer_norm (no affine) then * (1 + scale) + shift     (diffusers' adaLN-single)
    residual-gated x = x + gate * y   (two kernels, as diffusers)
    residual-anchor / residual-delta   the same + cache.copy_(x) / cache = x - cache
    delta-apply    x += delta
    gelu-bias      F.gelu(x + b, approximate="tanh")
    copy           y.copy_(x)
    gemm-*         F.linear (+ F.gelu for ff1, as diffusers' GELU(approximate="tanh") module)
    roofline-*     a 256 MiB (GPU) / 64 MiB (CPU) copy and an 8192^3 (GPU) / 1024^3 (CPU) matmul
Model (names as in benches/step.rs): diffusers PixArtTransformer2DModel / DiTTransformer2DModel /
SD3Transformer2DModel (SD3, SD3.5 with RMS qk norm and MMDiT-X dual attention) /
FluxTransformer2DModel (FLUX.1 dev and schnell: double + single blocks, RoPE, dev's guidance
embedding) with random weights, the config of the preset, inference mode, SDPA's default dispatch:
    forward/<preset>          one eager forward of the CFG batch (2; FLUX: batch 1, as FluxPipeline
                              runs it, packed latents, img_ids/txt_ids, the guidance scale embedded)
    step/<preset>             one sampling step as the diffusers pipeline runs it: latents into the
                              CFG batch, the forward, the CFG combine, scheduler.step (PixArt
                              DPMSolverMultistepScheduler (DPM-Solver++ 2M), DiT DDIMScheduler, SD3
                              FlowMatchEulerDiscreteScheduler at the preset's shift, FLUX the same
                              with FluxPipeline's sigmas and dev's dynamic shifting), one step of a
                              20-step run as benches/step.rs; wall clock, synchronised at the end
    forward-compile/<preset>  with --compile (or DELTADIT_TORCH_COMPILE=1): the same forward under
                              torch.compile(mode="max-autotune") (minutes of autotuning per preset;
                              compile_s in the row)
Op rows of an SD3 preset (only when asked for with --presets): attn-self over the image tokens
(d 64), no cross-attention, as benches/kernels.rs would run them.

GPU: bf16; inputs rotate through sets larger than 3 x L2; calls captured into CUDA graphs and
timed with CUDA events (median of the replays). CPU: f32, time.perf_counter, torch threads =
--threads (default: all cores, as the Rust CPU backend's rayon pool).
Without diffusers (not installed on the GPU image; scripts/gpu-build.sh bundles its wheel) the
model rows are skipped with a note.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # older torch: only the default dispatch is timed
    SDPBackend = sdpa_kernel = None

# The presets of src/bench/mod.rs (keep in sync): family, layers, heads, head dim, latent, text
# tokens, caption channels, sample_size, micro-conditions; SD3: joint_attention_dim, pooled dim,
# pos_embed_max_size, qk_norm, dual-attention blocks (0..dual); the sampler of the step row (its
# scheduler kind, guidance and flow-matching shift; benches/step.rs times a step of a 20-step run).
_PIXART = dict(family="pixart", layers=28, head_dim=72, scheduler="dpm-solver++", guidance=4.5, shift=1.0)
_DIT = dict(family="dit", layers=28, head_dim=72, text_len=0, caption=0, micro=False, scheduler="ddim", guidance=4.0, shift=1.0)
_SD3 = dict(family="sd3", head_dim=64, caption=0, micro=False, scheduler="flow-match-euler", shift=3.0)
# FLUX: `layers` double + `single` single-stream blocks, head dim 128, 64 packed channels; `latent` is
# FluxPipeline's latent before packing ((latent/2)² tokens); batch 1 (no CFG batch), the guidance
# scale embedded for dev (`guidance_embeds`); dev's scheduler shifts dynamically (μ from the tokens).
_FLUX = dict(family="flux", head_dim=128, caption=0, micro=False, scheduler="flow-match-euler", sample_size=128)
PRESETS = {
    "pixart-alpha-1024": dict(_PIXART, heads=16, latent=128, text_len=120, caption=4096, sample_size=128, micro=True),
    "pixart-alpha-512": dict(_PIXART, heads=16, latent=64, text_len=120, caption=4096, sample_size=64, micro=False),
    "pixart-sigma-1024": dict(_PIXART, heads=16, latent=128, text_len=300, caption=4096, sample_size=128, micro=False),
    "dit-xl-2-256": dict(_DIT, heads=16, latent=32, sample_size=32),
    "dit-xl-2-512": dict(_DIT, heads=16, latent=64, sample_size=64),
    "pixart-cpu-small": dict(_PIXART, heads=4, latent=16, text_len=32, caption=256, sample_size=32, micro=False),
    "dit-cpu-small": dict(_DIT, heads=4, latent=16, sample_size=32),
    "sd3-medium-1024": dict(_SD3, layers=24, heads=24, latent=128, text_len=333, joint=4096, pooled=2048, pos_max=192, sample_size=128,
                            qk_norm=False, dual=0, guidance=7.0),
    "sd35-medium-1024": dict(_SD3, layers=24, heads=24, latent=128, text_len=333, joint=4096, pooled=2048, pos_max=384, sample_size=128,
                             qk_norm=True, dual=13, guidance=4.5),
    "sd35-large-1024": dict(_SD3, layers=38, heads=38, latent=128, text_len=333, joint=4096, pooled=2048, pos_max=192, sample_size=128,
                            qk_norm=True, dual=0, guidance=3.5),
    "sd35-cpu-small": dict(_SD3, layers=24, heads=4, latent=16, text_len=32, joint=256, pooled=128, pos_max=32, sample_size=32,
                           qk_norm=True, dual=13, guidance=4.5),
    "flux-dev-1024": dict(_FLUX, layers=19, single=38, heads=24, latent=128, text_len=512, joint=4096, pooled=768,
                          guidance_embeds=True, guidance=3.5, shift=3.0, dynamic=True),
    "flux-schnell-1024": dict(_FLUX, layers=19, single=38, heads=24, latent=128, text_len=256, joint=4096, pooled=768,
                              guidance_embeds=False, guidance=0.0, shift=1.0, dynamic=False),
    "flux-cpu-small": dict(_FLUX, layers=4, single=8, heads=2, latent=16, text_len=32, joint=256, pooled=128,
                           guidance_embeds=True, guidance=3.5, shift=3.0, dynamic=True),
}
STEP_RUN = 20  # benches/step.rs: the step row is one step of a 20-step schedule
# The sampling schedulers as the pipelines ship them (bench/pipeline_bench.py, train/train.py).
_TRAIN = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
SCHEDULERS = {
    "dpm-solver++": ("DPMSolverMultistepScheduler", dict(_TRAIN, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                                          lower_order_final=True, prediction_type="epsilon", steps_offset=0,
                                                          thresholding=False, timestep_spacing="linspace", use_karras_sigmas=False)),
    "ddim": ("DDIMScheduler", dict(_TRAIN, clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
                                   thresholding=False, timestep_spacing="leading")),
    "flow-match-euler": ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000)),
}


class Timer:
    """Median seconds per call of fn(i) (i rotates over input sets)."""

    def __init__(self, device, quick):
        self.cuda = device.type == "cuda"
        self.quick = quick

    def __call__(self, fn, sets):
        for i in range(2):
            fn(i % sets)
        if not self.cuda:
            return self._cpu(fn, sets)
        torch.cuda.synchronize()
        # rough single-call time: sizes the graph (>= ~1 ms of work, whole passes over the sets)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for i in range(sets):
            fn(i)
        e.record()
        torch.cuda.synchronize()
        est = max(s.elapsed_time(e) / 1e3 / sets, 1e-7)
        passes = max(1, min(math.ceil(1e-3 / est / sets), max(1, 512 // sets)))
        calls = passes * sets
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for i in range(calls):
                    fn(i % sets)
            run = graph.replay
        except Exception as exc:  # noqa: BLE001 - fall back to direct launches
            print(f"  graph capture failed ({exc}); timing direct launches", flush=True)
            torch.cuda.synchronize()

            def run():
                for i in range(calls):
                    fn(i % sets)
        run()
        torch.cuda.synchronize()
        reps = 5 if self.quick else 15
        times = []
        for _ in range(reps):
            run()  # queue fill: the timed replay starts right after it
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3 / calls)
        return sorted(times)[len(times) // 2], min(times), calls

    def _cpu(self, fn, sets):
        t0 = time.perf_counter()
        fn(0)
        est = max(time.perf_counter() - t0, 1e-7)
        per = max(1, math.ceil((0.02 if self.quick else 0.05) / est))  # calls per sample
        reps = 5 if self.quick else 10
        times, k = [], 0
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(per):
                fn(k % sets)
                k += 1
            times.append((time.perf_counter() - t0) / per)
        return sorted(times)[len(times) // 2], min(times), per


def sets_for(nbytes, cache):
    return max(1, min(256, math.ceil(3 * cache / max(nbytes, 1))))


def cache_bytes(device):
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
        return max(l2, 50 << 20)
    try:
        s = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
        mul = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
        return int(s.rstrip("KM")) * mul
    except (OSError, ValueError):
        return 32 << 20


def machine(device):
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        l2 = getattr(p, "L2_cache_size", 0) or 0
        return f"{p.name} ({p.multi_processor_count} SMs, L2 {l2 >> 20} MB), torch {torch.__version__}"
    name = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def op_rows(p_name, p, dev, dt, timer, cache, rows):
    B, H, d = 2, p["heads"], p["head_dim"]
    D = H * d
    T = (p["latent"] // 2) ** 2
    R = B * T
    es = torch.finfo(dt).bits // 8
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g, dtype=torch.float32) * scale).to(dt)

    def sets_of(make, nbytes):
        n = sets_for(nbytes, cache)
        return [make() for _ in range(n)], n

    def add(op, shape, bound, fn, sets, flop=0.0, nbytes=0.0, timed=None, extra=None):
        t, tmin, calls = timed or timer(fn, sets)
        row = dict(name=f"{op}/{p_name}", op=op, preset=p_name, shape=shape, bound=bound, median_us=t * 1e6, min_us=tmin * 1e6,
                   flop=flop, bytes=nbytes, input_sets=sets, calls_per_sample=calls, **(extra or {}))
        row["tflops" if bound == "compute" else "gbps"] = (flop / t / 1e12) if bound == "compute" else nbytes / t / 1e9
        if bound == "compute":
            row["gbps"] = nbytes / t / 1e9
        rows.append(row)
        print(f"  {row['name']:<34} {t * 1e6:10.2f} us", flush=True)

    def heads(x, n):
        return x.reshape(B, n, H, d).transpose(1, 2)

    def add_sdpa(op, shape, fn, sets, flop, nbytes):
        """SDPA with its best backend: the default dispatch and each backend forced, the fastest kept."""
        forced = []
        if SDPBackend is not None:
            forced = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
            if dev.type == "cpu":
                forced.append(SDPBackend.MATH)  # never the fastest on a GPU, and slow at 4096² there
        timings = {}
        for b in [None] + forced:
            name = "default" if b is None else b.name.lower().replace("_attention", "")

            def run(i, b=b):
                if b is None:
                    return fn(i)
                with sdpa_kernel(b):
                    return fn(i)
            try:
                run(0)
                timings[name] = timer(run, sets)
            except Exception as e:  # noqa: BLE001 - this backend does not take these inputs here
                print(f"  {op}: SDPA backend {name} unavailable ({str(e).splitlines()[0][:80]})", flush=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        best = min(timings, key=lambda k: timings[k][0])
        print(f"  {op}: SDPA " + ", ".join(f"{k} {v[0] * 1e6:.2f} us" for k, v in timings.items()) + f" -> {best}", flush=True)
        add(op, shape, "compute", fn, sets, flop, nbytes, timed=timings[best],
            extra=dict(sdpa_backend=best, sdpa_us={k: v[0] * 1e6 for k, v in timings.items()}))

    scale = d ** -0.5
    with torch.inference_mode():
        # self-attention on strided views of a fused QKV (what diffusers' to_q/k/v + view/transpose give)
        nb = es * (R * 3 * D + R * D)
        qkv, n = sets_of(lambda: rnd(R, 3 * D), nb)

        def attn_self(i):
            x = qkv[i]
            o = F.scaled_dot_product_attention(heads(x[:, :D], T), heads(x[:, D:2 * D], T), heads(x[:, 2 * D:], T), scale=scale)
            return o.transpose(1, 2).reshape(R, D)
        add_sdpa("attn-self", f"{B}x{H}x{T}x{T}, d {d}", attn_self, n, 4.0 * B * H * T * T * d, nb)
        del qkv

        if p["family"] == "pixart":
            L = p["text_len"]
            keep = torch.zeros(B, L, device=dev)
            keep[0, :1] = 1
            keep[1, :min(20, L)] = 1
            mask = ((1 - keep) * -10000.0).to(dt)[:, None, None, :].repeat(1, H, 1, 1)  # diffusers: [B, H, 1, L]
            nb = es * (2 * R * D + B * L * 2 * D)
            qs, n = sets_of(lambda: (rnd(R, D), rnd(B * L, 2 * D)), nb)

            def attn_cross(i):
                q, kv = qs[i]
                o = F.scaled_dot_product_attention(heads(q, T), heads(kv[:, :D], L), heads(kv[:, D:], L), attn_mask=mask, scale=scale)
                return o.transpose(1, 2).reshape(R, D)
            add_sdpa("attn-cross", f"{B}x{H}x{T}x{L} masked, d {d}", attn_cross, n, 4.0 * B * H * T * L * d, nb)
            del qs

        N = R * D
        shift, scl, gate = rnd(B, 1, D, scale=0.5), rnd(B, 1, D, scale=0.5), rnd(B, 1, D, scale=0.5)
        xs, n = sets_of(lambda: rnd(B, T, D, scale=1.5), 2 * es * N)

        def norm_mod(i):
            return F.layer_norm(xs[i], (D,), eps=1e-6) * (1 + scl) + shift
        add("norm-modulate", f"[{R}, {D}]", "memory", norm_mod, n, 0.0, 2 * es * N)
        del xs

        for op, moved in (("residual-gated", 3), ("residual-anchor", 4), ("residual-delta", 5), ("delta-apply", 3)):
            st, n = sets_of(lambda: (rnd(B, T, D), rnd(B, T, D), rnd(B, T, D)), moved * es * N)

            def res(i, op=op, st=st):
                x, y, c = st[i]
                if op == "delta-apply":
                    x.add_(y)
                    return
                x.add_(gate * y)  # diffusers: attn_output = gate * attn_output; hidden = attn_output + hidden
                if op == "residual-anchor":
                    c.copy_(x)
                elif op == "residual-delta":
                    torch.sub(x, c, out=c)
            add(op, f"[{R}, {D}]", "memory", res, n, 0.0, moved * es * N)
            del st

        NF = R * 4 * D
        bias4 = rnd(4 * D, scale=0.1)
        xs, n = sets_of(lambda: rnd(R, 4 * D), 2 * es * NF)
        add("gelu-bias", f"[{R}, {4 * D}]", "memory", lambda i: F.gelu(xs[i] + bias4, approximate="tanh"), n, 0.0, 2 * es * NF)
        del xs

        st, n = sets_of(lambda: (rnd(R, D), torch.empty(R, D, device=dev, dtype=dt)), 2 * es * N)
        add("copy", f"[{R}, {D}]", "memory", lambda i: st[i][1].copy_(st[i][0]), n, 0.0, 2 * es * N)
        del st

        for op, nout, k, gelu in (("gemm-qkv", 3 * D, D, False), ("gemm-proj", D, D, False), ("gemm-ff1-gelu", 4 * D, D, True), ("gemm-ff2", D, 4 * D, False)):
            gemm_row(op, f"{op}/{p_name}", p_name, R, nout, k, True, gelu, dev, dt, es, timer, cache, rnd, rows)


def gemm_row(op, name, preset, m, n, k, bias, gelu, dev, dt, es, timer, cache, rnd, rows):
    nb = es * (m * k + n * k + m * n + (n if bias else 0))
    cnt = sets_for(nb, cache)
    st = [(rnd(m, k), rnd(n, k, scale=k ** -0.5), rnd(n, scale=0.1) if bias else None) for _ in range(cnt)]

    def f(i):
        x, w, b = st[i]
        y = F.linear(x, w, b)
        return F.gelu(y, approximate="tanh") if gelu else y
    with torch.inference_mode():
        t, tmin, calls = timer(f, cnt)
    flop = 2.0 * m * n * k
    shape = f"{m}x{n}x{k}" + (" +bias" if bias else "") + (" +GELU" if gelu else "")
    rows.append(dict(name=name, op=op, preset=preset, shape=shape, bound="compute", median_us=t * 1e6, min_us=tmin * 1e6,
                     flop=flop, bytes=nb, tflops=flop / t / 1e12, gbps=nb / t / 1e9, input_sets=cnt, calls_per_sample=calls))
    print(f"  {name:<34} {t * 1e6:10.2f} us", flush=True)


def roofline_rows(dev, dt, timer, cache, rows):
    es = torch.finfo(dt).bits // 8
    big = (256 << 20) if dev.type == "cuda" else (64 << 20)
    x = torch.randn(big // es, device=dev, dtype=torch.float32).to(dt)
    y = torch.empty_like(x)
    with torch.inference_mode():
        t, tmin, calls = timer(lambda i: y.copy_(x), 1)
    rows.append(dict(name="roofline-copy", op="roofline-copy", preset="-", shape=f"{big >> 20} MiB", bound="memory", median_us=t * 1e6,
                     min_us=tmin * 1e6, flop=0.0, bytes=2.0 * big, gbps=2.0 * big / t / 1e9, input_sets=1, calls_per_sample=calls))
    del x, y
    s = 8192 if dev.type == "cuda" else 1024
    g = torch.Generator(device=dev).manual_seed(1)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g, dtype=torch.float32) * scale).to(dt)
    gemm_row("roofline-gemm", "roofline-gemm", "-", s, s, s, False, False, dev, dt, es, timer, cache, rnd, rows)


def build_model(p, dev, dt):
    if p["family"] == "pixart":
        from diffusers import PixArtTransformer2DModel
        D = p["heads"] * p["head_dim"]
        cfg = dict(num_attention_heads=p["heads"], attention_head_dim=p["head_dim"], in_channels=4, out_channels=8, num_layers=p["layers"],
                   dropout=0.0, cross_attention_dim=D, attention_bias=True, sample_size=p["sample_size"], patch_size=2,
                   activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                   norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=max(p["sample_size"] // 64, 1),
                   use_additional_conditions=p["micro"], caption_channels=p["caption"])
        cls = PixArtTransformer2DModel
    elif p["family"] == "sd3":
        from diffusers import SD3Transformer2DModel
        cfg = dict(sample_size=p["sample_size"], patch_size=2, in_channels=16, out_channels=16, num_layers=p["layers"],
                   attention_head_dim=p["head_dim"], num_attention_heads=p["heads"], joint_attention_dim=p["joint"],
                   caption_projection_dim=p["heads"] * p["head_dim"], pooled_projection_dim=p["pooled"],
                   pos_embed_max_size=p["pos_max"], qk_norm="rms_norm" if p["qk_norm"] else None,
                   dual_attention_layers=tuple(range(p["dual"])))
        cls = SD3Transformer2DModel
    elif p["family"] == "flux":
        from diffusers import FluxTransformer2DModel
        cfg = dict(patch_size=1, in_channels=64, num_layers=p["layers"], num_single_layers=p["single"],
                   attention_head_dim=p["head_dim"], num_attention_heads=p["heads"], joint_attention_dim=p["joint"],
                   pooled_projection_dim=p["pooled"], guidance_embeds=p["guidance_embeds"], axes_dims_rope=(16, 56, 56))
        cls = FluxTransformer2DModel
    else:
        from diffusers import DiTTransformer2DModel
        cfg = dict(num_attention_heads=p["heads"], attention_head_dim=p["head_dim"], in_channels=4, out_channels=8, num_layers=p["layers"],
                   dropout=0.0, attention_bias=True, sample_size=p["sample_size"], patch_size=2, activation_fn="gelu-approximate",
                   num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-5)
        cls = DiTTransformer2DModel
    torch.manual_seed(0)
    with torch.device(dev):
        model = cls(**cfg)
    return model.to(dtype=dt).eval(), cfg


def conditioning(p, dev, dt, g):
    """The CFG batch's conditioning as the pipeline passes it (uncond first but for DiT, whose
    pipeline puts the class first): PixArt the T5 features with their padding mask (uncond keeps 1
    token, cond 20) and the micro-conditions; DiT class 207 and the null class 1000; SD3 the
    prompt embeddings (no mask) and the pooled projections."""
    B = 2
    if p["family"] == "pixart":
        L = p["text_len"]
        enc = (torch.randn(B, L, p["caption"], device=dev, generator=g) * 0.2).to(dt)
        keep = torch.zeros(B, L, device=dev)
        keep[0, :1] = 1
        keep[1, :min(20, L)] = 1
        if p["micro"]:
            lat = p["latent"]
            extra = {"resolution": torch.tensor([[lat * 8.0, lat * 8.0]] * B, device=dev, dtype=dt),
                     "aspect_ratio": torch.ones(B, 1, device=dev, dtype=dt)}
        else:
            extra = {"resolution": None, "aspect_ratio": None}
        return dict(encoder_hidden_states=enc, added_cond_kwargs=extra, encoder_attention_mask=keep)
    if p["family"] == "sd3":
        enc = (torch.randn(B, p["text_len"], p["joint"], device=dev, generator=g) * 0.2).to(dt)
        pooled = torch.randn(B, p["pooled"], device=dev, generator=g).to(dt)
        return dict(encoder_hidden_states=enc, pooled_projections=pooled)
    if p["family"] == "flux":
        # FluxPipeline: batch 1, txt_ids zeros, img_ids (0, row, col) of the packed grid, dev's guidance
        L, side = p["text_len"], p["latent"] // 2
        enc = (torch.randn(1, L, p["joint"], device=dev, generator=g) * 0.2).to(dt)
        pooled = torch.randn(1, p["pooled"], device=dev, generator=g).to(dt)
        img_ids = torch.zeros(side, side, 3, device=dev)
        img_ids[..., 1] += torch.arange(side, device=dev)[:, None]
        img_ids[..., 2] += torch.arange(side, device=dev)[None, :]
        extra = dict(guidance=torch.full((1,), p["guidance"], device=dev, dtype=torch.float32)) if p["guidance_embeds"] else {}
        return dict(encoder_hidden_states=enc, pooled_projections=pooled, img_ids=img_ids.reshape(-1, 3).to(dt),
                    txt_ids=torch.zeros(L, 3, device=dev, dtype=dt), **extra)
    return dict(class_labels=torch.tensor([207, 1000], device=dev))


def make_scheduler(p):
    import diffusers
    cls, cfg = SCHEDULERS[p["scheduler"]]
    if p["scheduler"] == "flow-match-euler":
        cfg = dict(cfg, shift=p["shift"])
    if p.get("dynamic"):  # FLUX.1-dev's scheduler_config.json
        cfg = dict(cfg, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return getattr(diffusers, cls)(**cfg)


def make_step(p, model, cond, dev, dt, g):
    """One sampling step as the diffusers pipeline runs it (PixArtAlphaPipeline, DiTPipeline,
    StableDiffusion3Pipeline): the latents into the CFG batch, the timestep expanded, the forward,
    the CFG combine (and the learned-sigma split for PixArt/DiT), scheduler.step. Returns
    (before, step): `before` starts a new 20-step run when the last one ended (untimed: fresh
    latents, set_timesteps), `step` runs the next step."""
    fam, C, lat, guidance = p["family"], 16 if p["family"] == "sd3" else 4, p["latent"], p["guidance"]
    sched = make_scheduler(p)
    if fam == "flux":  # packed [1, N, 64]
        lat0 = torch.randn(1, (lat // 2) ** 2, 64, device=dev, generator=g).to(dt)
    else:
        lat0 = torch.randn(1, C, lat, lat, device=dev, generator=g).to(dt)
    st = dict(i=0, lat=None)

    def before():
        if st["i"] % STEP_RUN == 0:
            if fam == "flux":  # FluxPipeline: sigmas linspace(1, 1/n, n), μ from the image tokens
                import numpy as np
                n, c = (lat // 2) ** 2, sched.config
                mu = c.base_shift + (n - c.base_image_seq_len) * (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
                sched.set_timesteps(STEP_RUN, device=dev, sigmas=np.linspace(1.0, 1 / STEP_RUN, STEP_RUN), mu=mu)
            else:
                sched.set_timesteps(STEP_RUN, device=dev)
            st["lat"] = torch.cat([lat0, lat0]) if fam == "dit" else lat0.clone()  # DiTPipeline keeps the batch of 2

    def step():
        t = sched.timesteps[st["i"] % STEP_RUN]
        lat = st["lat"]
        if fam == "flux":  # FluxPipeline: no CFG batch, timestep / 1000, the guidance scale embedded in cond
            out = model(hidden_states=lat, timestep=(t / 1000).expand(1).to(lat.dtype), return_dict=False, **cond)[0]
            st["lat"] = sched.step(out, t, lat, return_dict=False)[0]
        elif fam == "dit":
            half = lat[: len(lat) // 2]
            x = torch.cat([half, half], dim=0)
            out = model(x, timestep=t[None].expand(2), return_dict=False, **cond)[0]
            eps, rest = out[:, :C], out[:, C:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + guidance * (cond_eps - uncond_eps)
            out = torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
            model_output, _ = torch.split(out, C, dim=1)
            st["lat"] = sched.step(model_output, t, x, return_dict=False)[0]
        else:
            x = torch.cat([lat] * 2)
            if fam == "pixart":
                x = sched.scale_model_input(x, t)
                out = model(x, timestep=t[None].expand(2), return_dict=False, **cond)[0]
            else:
                out = model(hidden_states=x, timestep=t.expand(2), return_dict=False, **cond)[0]
            uncond, text = out.chunk(2)
            out = uncond + guidance * (text - uncond)
            if fam == "pixart":
                out = out.chunk(2, dim=1)[0]  # learned sigma
            st["lat"] = sched.step(out, t, lat, return_dict=False)[0]
        st["i"] += 1
    return before, step, type(sched).__name__


def time_calls(fn, runs, cuda, before=None, events=True):
    """Seconds of each of `runs` calls of fn (sorted): CUDA events around the call (events=True) or
    perf_counter around the call and a device synchronisation; `before` runs untimed before each."""
    times = []
    for _ in range(runs):
        if before:
            before()
        if cuda:
            torch.cuda.synchronize()
        if cuda and events:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return sorted(times)


def model_rows(p_name, p, dev, dt, quick, runs, compile_, rows, notes):
    """forward/<preset> (eager), step/<preset> (one pipeline step, eager) and, with compile_,
    forward-compile/<preset> (torch.compile mode max-autotune); each part fails on its own."""
    t0 = time.perf_counter()
    model, cfg = build_model(p, dev, dt)
    build_s = time.perf_counter() - t0
    B, lat = 2, p["latent"]
    C = 16 if p["family"] == "sd3" else 4
    g = torch.Generator(device=dev).manual_seed(0)
    if p["family"] == "flux":
        # FluxPipeline: batch 1 (no CFG batch), packed [1, N, 64], timestep sigma (the model multiplies by 1000)
        B = 1
        x = torch.randn(B, (lat // 2) ** 2, 64, device=dev, generator=g).to(dt)
        t = torch.full((B,), 0.5, device=dev, dtype=dt)
    else:
        x = torch.randn(B, C, lat, lat, device=dev, generator=g).to(dt)
    # SD3's pipeline passes the flow-matching timestep (sigma × 1000) as a float
    if p["family"] == "sd3":
        t = torch.full((B,), 500.0, device=dev)
    elif p["family"] != "flux":
        t = torch.full((B,), 500, device=dev, dtype=torch.long)
    cond = conditioning(p, dev, dt, g)

    def fwd(m=model):
        return m(x, timestep=t, return_dict=False, **cond)[0]
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n_runs = runs or ((5 if quick else 20) if cuda else (3 if quick else 10))
    cls = type(model).__name__
    tokens = (lat // 2) ** 2
    common = dict(preset=p_name, batch=B, tokens=tokens, text_tokens=p["text_len"] if p["family"] != "dit" else 0, model=cls,
                  layers=p["layers"] + p.get("single", 0), build_s=build_s, sdpa="default dispatch")

    def part(name, f):
        try:
            f()
        except Exception as e:  # noqa: BLE001 - report and go on
            notes.append(f"{name}/{p_name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            print("note:", notes[-1], flush=True)
            if cuda:
                torch.cuda.synchronize()

    def forward():
        with torch.inference_mode():
            out = fwd()
            assert torch.isfinite(out.float()).all(), "non-finite diffusers output"
            fwd()
            sync()
            times = time_calls(fwd, n_runs, cuda)
        med = times[len(times) // 2]
        rows.append(dict(name=f"forward/{p_name}", kind="forward", median_ms=med * 1e3, min_ms=times[0] * 1e3, samples=len(times), eager=True,
                         timing="CUDA events around one eager forward" if cuda else "perf_counter around one forward", **common))
        print(f"  forward/{p_name:<26} {med * 1e3:10.3f} ms  ({cls}, built in {build_s:.1f} s)", flush=True)

    def step():
        before, one, sname = make_step(p, model, cond, dev, dt, torch.Generator(device=dev).manual_seed(1))
        with torch.inference_mode():
            for _ in range(2):
                before()
                one()
            sync()
            times = time_calls(one, runs or max(n_runs, 5), cuda, before=before, events=False)
        med = times[len(times) // 2]
        rows.append(dict(name=f"step/{p_name}", kind="step", median_ms=med * 1e3, min_ms=times[0] * 1e3, samples=len(times), eager=True,
                         scheduler=sname, schedule_steps=STEP_RUN, guidance=p["guidance"], shift=p["shift"] if p["scheduler"] == "flow-match-euler" else None,
                         timing="perf_counter around one pipeline step (CFG batch, forward, CFG combine, scheduler.step)"
                         + (", synchronised" if cuda else ""), **common))
        print(f"  step/{p_name:<29} {med * 1e3:10.3f} ms  ({sname}, {STEP_RUN}-step schedule, guidance {p['guidance']})", flush=True)

    def compiled():
        cm = torch.compile(model, mode="max-autotune")
        with torch.inference_mode():
            c0 = time.perf_counter()
            out = fwd(cm)
            assert torch.isfinite(out.float()).all(), "non-finite compiled output"
            sync()
            compile_s = time.perf_counter() - c0
            for _ in range(2):  # CUDA graph recording (max-autotune uses CUDA graphs)
                fwd(cm)
            sync()
            times = time_calls(lambda: fwd(cm), n_runs, cuda)
        med = times[len(times) // 2]
        rows.append(dict(name=f"forward-compile/{p_name}", kind="forward-compile", median_ms=med * 1e3, min_ms=times[0] * 1e3,
                         samples=len(times), eager=False, compile_mode="max-autotune", compile_s=compile_s,
                         timing="CUDA events around one compiled forward" if cuda else "perf_counter around one compiled forward", **common))
        print(f"  forward-compile/{p_name:<18} {med * 1e3:10.3f} ms  (torch.compile max-autotune, compiled in {compile_s:.1f} s)", flush=True)

    part("forward", forward)
    part("step", step)
    if compile_:
        part("forward-compile", compiled)
        torch._dynamo.reset()
    del model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--presets", default=None, help="comma-separated (default: $DELTADIT_BENCH_PRESETS, else as benches/kernels.rs)")
    ap.add_argument("--model-presets", default=None, help="presets for the diffusers forward (default: $DELTADIT_BENCH_PRESETS, else as benches/step.rs)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--runs", type=int, default=None, help="timed calls per model row (default: 3/10 CPU, 5/20 GPU, quick/full; steps at least 5)")
    ap.add_argument("--compile", action="store_true", default=os.environ.get("DELTADIT_TORCH_COMPILE", "") not in ("", "0"),
                    help="also time the forward under torch.compile(mode='max-autotune') (forward-compile/<preset>; minutes of "
                         "autotuning per preset; default: $DELTADIT_TORCH_COMPILE=1)")
    ap.add_argument("--no-model", action="store_true", help="skip the diffusers forward and step")
    ap.add_argument("--no-ops", action="store_true", help="skip the op microbenchmarks")
    ap.add_argument("--out", default=None, help="JSON path (default: $DELTADIT_BENCH_OUT or target/deltadit-bench, torch-<device>.json)")
    a = ap.parse_args()

    if a.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(a.threads or os.cpu_count() or 1)
    dt = torch.bfloat16 if cuda else torch.float32
    env_presets = os.environ.get("DELTADIT_BENCH_PRESETS", "").strip()  # as benches/*.rs
    a.presets = a.presets or env_presets or None
    a.model_presets = a.model_presets or env_presets or None
    if a.presets:
        presets = [s.strip() for s in a.presets.split(",") if s.strip()]
    elif cuda:
        presets = ["pixart-alpha-1024"] if a.quick else ["pixart-alpha-1024", "pixart-alpha-512", "dit-xl-2-256", "dit-xl-2-512"]
    else:
        presets = ["pixart-cpu-small", "dit-xl-2-256"] if a.quick else ["pixart-cpu-small", "dit-xl-2-256", "pixart-alpha-512"]
    if a.model_presets:
        mpresets = [s.strip() for s in a.model_presets.split(",") if s.strip()]
    elif cuda:  # as benches/step.rs
        mpresets = ["pixart-alpha-1024", "sd35-medium-1024"] if a.quick else [
            "pixart-alpha-1024", "dit-xl-2-256", "pixart-alpha-512", "dit-xl-2-512", "sd3-medium-1024", "sd35-medium-1024", "sd35-large-1024",
            "flux-dev-1024"]
    else:
        mpresets = ["pixart-cpu-small", "sd35-cpu-small", "flux-cpu-small"] if a.quick else [
            "pixart-cpu-small", "dit-cpu-small", "sd35-cpu-small", "flux-cpu-small"]
    for n in presets + mpresets:
        if n not in PRESETS:
            sys.exit(f"unknown preset {n}; one of {', '.join(PRESETS)}")

    print(f"torch_reference: {machine(dev)}, {dt}", flush=True)
    timer = Timer(dev, a.quick)
    cache = cache_bytes(dev)
    rows, model_rows_out, notes = [], [], []
    if not a.no_ops:
        roofline_rows(dev, dt, timer, cache, rows)
        for n in presets:
            print(f"ops {n}:", flush=True)
            op_rows(n, PRESETS[n], dev, dt, timer, cache, rows)
            if cuda:
                torch.cuda.empty_cache()
    diffusers_version = None
    if not a.no_model:
        try:
            import diffusers
            diffusers_version = diffusers.__version__
        except ImportError as e:
            notes.append(f"diffusers not importable ({e}): model forward not measured")
            print("note:", notes[-1], flush=True)
        if diffusers_version:
            for n in mpresets:
                print(f"model {n}:", flush=True)
                try:
                    model_rows(n, PRESETS[n], dev, dt, a.quick, a.runs, a.compile, model_rows_out, notes)
                except Exception as e:  # noqa: BLE001 - report and go on
                    notes.append(f"model {n} failed: {type(e).__name__}: {e}")
                    print("note:", notes[-1], flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    roof = {r["op"]: r for r in rows if r["op"].startswith("roofline")}
    report = dict(
        kind="torch-reference",
        backend="torch-" + dev.type,
        device=dev.type,
        dtype=str(dt).replace("torch.", ""),
        machine=machine(dev),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        diffusers=diffusers_version,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        quick=a.quick,
        roofline=dict(copy_gbps=roof.get("roofline-copy", {}).get("gbps"), gemm_tflops=roof.get("roofline-gemm", {}).get("tflops")),
        results=rows,
        compile=a.compile,
        model=model_rows_out,
        notes=notes,
    )
    out = a.out or os.path.join(os.environ.get("DELTADIT_BENCH_OUT") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "deltadit-bench"),
                                f"torch-{dev.type}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
