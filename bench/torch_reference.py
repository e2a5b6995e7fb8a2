#!/usr/bin/env python3
"""PyTorch (+ diffusers) side of the benchmark comparison: the same ops at the same shapes as
benches/kernels.rs, and the diffusers model forward of the same preset as benches/step.rs, timed on
the same machine. Writes one JSON file that scripts/bench-table.py joins with ours.

    python3 bench/torch_reference.py [--device auto|cuda|cpu] [--presets a,b] [--quick]
                                     [--threads N] [--no-model] [--out FILE]

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
Model: diffusers PixArtTransformer2DModel / DiTTransformer2DModel with random weights, the config
of the preset, one forward of the CFG batch (2), eager, inference mode.

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

# The presets of src/bench.rs (keep in sync): family, heads, head dim, latent, text tokens,
# caption channels, sample_size, micro-conditions, norm eps.
PRESETS = {
    "pixart-alpha-1024": dict(family="pixart", heads=16, head_dim=72, latent=128, text_len=120, caption=4096, sample_size=128, micro=True),
    "pixart-alpha-512": dict(family="pixart", heads=16, head_dim=72, latent=64, text_len=120, caption=4096, sample_size=64, micro=False),
    "pixart-sigma-1024": dict(family="pixart", heads=16, head_dim=72, latent=128, text_len=300, caption=4096, sample_size=128, micro=False),
    "dit-xl-2-256": dict(family="dit", heads=16, head_dim=72, latent=32, text_len=0, caption=0, sample_size=32, micro=False),
    "dit-xl-2-512": dict(family="dit", heads=16, head_dim=72, latent=64, text_len=0, caption=0, sample_size=64, micro=False),
    "pixart-cpu-small": dict(family="pixart", heads=4, head_dim=72, latent=16, text_len=32, caption=256, sample_size=32, micro=False),
    "dit-cpu-small": dict(family="dit", heads=4, head_dim=72, latent=16, text_len=0, caption=0, sample_size=32, micro=False),
}
LAYERS = 28


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
        cfg = dict(num_attention_heads=p["heads"], attention_head_dim=p["head_dim"], in_channels=4, out_channels=8, num_layers=LAYERS,
                   dropout=0.0, cross_attention_dim=D, attention_bias=True, sample_size=p["sample_size"], patch_size=2,
                   activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                   norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=max(p["sample_size"] // 64, 1),
                   use_additional_conditions=p["micro"], caption_channels=p["caption"])
        cls = PixArtTransformer2DModel
    else:
        from diffusers import DiTTransformer2DModel
        cfg = dict(num_attention_heads=p["heads"], attention_head_dim=p["head_dim"], in_channels=4, out_channels=8, num_layers=LAYERS,
                   dropout=0.0, attention_bias=True, sample_size=p["sample_size"], patch_size=2, activation_fn="gelu-approximate",
                   num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-5)
        cls = DiTTransformer2DModel
    torch.manual_seed(0)
    with torch.device(dev):
        model = cls(**cfg)
    return model.to(dtype=dt).eval(), cfg


def model_row(p_name, p, dev, dt, quick, rows):
    t0 = time.perf_counter()
    model, cfg = build_model(p, dev, dt)
    build_s = time.perf_counter() - t0
    B, lat = 2, p["latent"]
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, 4, lat, lat, device=dev, generator=g).to(dt)
    t = torch.full((B,), 500, device=dev, dtype=torch.long)
    if p["family"] == "pixart":
        L = p["text_len"]
        enc = (torch.randn(B, L, p["caption"], device=dev, generator=g) * 0.2).to(dt)
        keep = torch.zeros(B, L, device=dev)
        keep[0, :1] = 1
        keep[1, :min(20, L)] = 1
        if p["micro"]:
            res = torch.tensor([[lat * 8.0, lat * 8.0]] * B, device=dev, dtype=dt)
            ar = torch.ones(B, 1, device=dev, dtype=dt)
            extra = {"resolution": res, "aspect_ratio": ar}
        else:
            extra = {"resolution": None, "aspect_ratio": None}

        def fwd():
            return model(x, encoder_hidden_states=enc, timestep=t, added_cond_kwargs=extra, encoder_attention_mask=keep, return_dict=False)[0]
    else:
        labels = torch.tensor([207, 1000], device=dev)

        def fwd():
            return model(x, timestep=t, class_labels=labels, return_dict=False)[0]
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        out = fwd()
        assert torch.isfinite(out.float()).all(), "non-finite diffusers output"
        fwd()
        sync()
        runs = (5 if quick else 20) if cuda else (3 if quick else 10)
        times = []
        for _ in range(runs):
            if cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fwd()
                e.record()
                sync()
                times.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                fwd()
                times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    tokens = (lat // 2) ** 2
    rows.append(dict(name=f"forward/{p_name}", kind="forward", preset=p_name, median_ms=med * 1e3, min_ms=times[0] * 1e3, samples=len(times),
                     batch=B, tokens=tokens, model=type(model).__name__, build_s=build_s, eager=True,
                     timing="CUDA events around one eager forward" if cuda else "perf_counter around one forward"))
    print(f"  forward/{p_name:<26} {med * 1e3:10.3f} ms  ({type(model).__name__}, built in {build_s:.1f} s)", flush=True)
    del model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--presets", default=None, help="comma-separated (default: $DELTADIT_BENCH_PRESETS, else as benches/kernels.rs)")
    ap.add_argument("--model-presets", default=None, help="presets for the diffusers forward (default: $DELTADIT_BENCH_PRESETS, else as benches/step.rs)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--no-model", action="store_true", help="skip the diffusers forward")
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
    elif cuda:
        mpresets = ["pixart-alpha-1024"] if a.quick else ["pixart-alpha-1024", "dit-xl-2-256", "pixart-alpha-512", "dit-xl-2-512"]
    else:
        mpresets = ["pixart-cpu-small"] if a.quick else ["pixart-cpu-small", "dit-cpu-small"]
    for n in presets + mpresets:
        if n not in PRESETS:
            sys.exit(f"unknown preset {n}; one of {', '.join(PRESETS)}")

    print(f"torch_reference: {machine(dev)}, {dt}", flush=True)
    timer = Timer(dev, a.quick)
    cache = cache_bytes(dev)
    rows, model_rows, notes = [], [], []
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
                    model_row(n, PRESETS[n], dev, dt, a.quick, model_rows)
                except Exception as e:  # noqa: BLE001 - report and go on
                    notes.append(f"forward/{n} failed: {type(e).__name__}: {e}")
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
        model=model_rows,
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
