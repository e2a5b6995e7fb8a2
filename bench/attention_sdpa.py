#!/usr/bin/env python3
"""Checks and times kernels/attention.cu on a GPU against PyTorch SDPA (no Rust needed there).

    python3 bench/attention_sdpa.py MANIFEST.json [--quick]
    python3 bench/attention_sdpa.py MANIFEST.json --profile NAME...   (one pixart-1024 self launch
        of each named variant, nothing else: run under ncu --kernel-name regex:attention_d72)

MANIFEST lists fatbin variants built from kernels/attention.cu (each exporting the six
attention_d{64,72,128}_{bf16,f16} kernels) with their launch geometry:
    [{"name": "v0", "fatbin": "path", "geom": {"64": [block_q, threads, smem], "72": [...], "128": [...]}}]
(The committed kernel's geometry is in kernels/params.h: ATTN_BLOCK_Q, ATTN_THREADS, ATTN_SMEM_D*.)

For every variant: correctness against an f32 reference on the GPU (odd lengths, cross-attention,
key-bias masks, fused-QKV column slices, bf16 and f16; NaN-poisoned outputs), then event-timed
medians on DiT/PixArt shapes next to torch SDPA on the same strided views (what diffusers runs).
"""
import ctypes
import json
import math
import sys

import torch
import torch.nn.functional as F

cuda = ctypes.CDLL("libcuda.so.1")


def ck(rc, what):
    if rc != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        raise RuntimeError(f"{what}: {name.value.decode() if name.value else rc}")


class AttentionParams(ctypes.Structure):  # kernels/params.h
    _fields_ = [(n, ctypes.c_void_p) for n in ("q", "k", "v", "o", "key_bias")] + [
        (n, ctypes.c_int64)
        for n in (
            "q_row_stride", "k_row_stride", "v_row_stride", "o_row_stride",
            "q_batch_stride", "k_batch_stride", "v_batch_stride", "o_batch_stride", "bias_batch_stride",
        )
    ] + [(n, ctypes.c_int32) for n in ("batch", "heads", "nq", "nk")] + [("scale_log2", ctypes.c_float), ("_pad", ctypes.c_int32)]


assert ctypes.sizeof(AttentionParams) == 136


class Variant:
    def __init__(self, spec):
        self.name = spec["name"]
        self.geom = {int(d): g for d, g in spec["geom"].items()}
        data = open(spec["fatbin"], "rb").read()
        self.module = ctypes.c_void_p()
        ck(cuda.cuModuleLoadData(ctypes.byref(self.module), data), f"load {spec['fatbin']}")
        self.fns = {}
        for d in (64, 72, 128):
            for dt in ("bf16", "f16"):
                fn = ctypes.c_void_p()
                ck(cuda.cuModuleGetFunction(ctypes.byref(fn), self.module, f"attention_d{d}_{dt}".encode()), "get function")
                ck(cuda.cuFuncSetAttribute(fn, 8, self.geom[d][2]), "MAX_DYNAMIC_SHARED_SIZE_BYTES")  # 8 = that attribute
                self.fns[(d, dt)] = fn

    def launch(self, q, k, v, out, bias, B, H, D, nq, nk, scale):
        """q/k/v/out: 2-D [B*n, cols] tensors already offset to the first column (strided views)."""
        bq, threads, smem = self.geom[D]
        p = AttentionParams(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), bias.data_ptr() if bias is not None else None,
            q.stride(0), k.stride(0), v.stride(0), out.stride(0),
            nq * q.stride(0), nk * k.stride(0), nk * v.stride(0), nq * out.stride(0), nk,
            B, H, nq, nk, scale * math.log2(math.e), 0,
        )
        args = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(p), ctypes.c_void_p))
        dt = "bf16" if q.dtype == torch.bfloat16 else "f16"
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        ck(cuda.cuLaunchKernel(self.fns[(D, dt)], (nq + bq - 1) // bq, H, B, threads, 1, 1, smem, stream, args, None), "launch")


def make(B, H, D, nq, nk, dtype, fused, bias_kind, gen):
    """Inputs as the model has them: fused QKV [B*n, 3W] (self) or Q [B*nq, W] + fused KV [B*nk, 2W]."""
    W = H * D
    if fused:
        qkv = (torch.randn(B * nq, 3 * W + 16, device="cuda", generator=gen) * 1.5).to(dtype)
        q, k, v = qkv[:, 8:8 + W], qkv[:, W + 8:2 * W + 8], qkv[:, 2 * W + 16:3 * W + 16]
    else:
        q = (torch.randn(B * nq, W, device="cuda", generator=gen) * 1.5).to(dtype)
        kv = torch.randn(B * nk, 2 * W, device="cuda", generator=gen).to(dtype)
        k, v = kv[:, :W], kv[:, W:]
    bias = None
    if bias_kind == "mask":
        keep = torch.rand(B, nk, device="cuda", generator=gen) < 0.3
        keep[:, 0] = True
        bias = torch.where(keep, 0.0, -10000.0).float().contiguous()
    elif bias_kind == "one":
        bias = torch.full((B, nk), -10000.0, device="cuda")
        bias[:, nk // 2] = 0.0
    return q, k, v, bias


def heads(x, B, n, H, D):
    return x.reshape(B, n, H, D).transpose(1, 2)  # strided view, no copy (as diffusers)


def reference(q, k, v, bias, B, H, D, nq, nk, scale):
    qh, kh, vh = (heads(t.float(), B, n, H, D) for t, n in ((q, nq), (k, nk), (v, nk)))
    s = qh @ kh.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias[:, None, None, :]
    o = torch.softmax(s, dim=-1) @ vh
    return o.transpose(1, 2).reshape(B * nq, H * D)


def sdpa(q, k, v, bias, B, H, D, nq, nk, scale):
    mask = None if bias is None else bias.to(q.dtype)[:, None, None, :]
    o = F.scaled_dot_product_attention(heads(q, B, nq, H, D), heads(k, B, nk, H, D), heads(v, B, nk, H, D), attn_mask=mask, scale=scale)
    return o.transpose(1, 2).reshape(B * nq, H * D)


def check(var, gen, quick):
    cases = []
    for D in (64, 72, 128):
        for n in ((1, 63, 130, 257) if quick else (1, 5, 63, 64, 65, 130, 257, 1000)):
            cases.append((1, 2, D, n, n, True, None))
        cases += [(2, 3, D, 1024, 120, False, "mask"), (3, 2, D, 257, 77, False, "one"), (2, 2, D, 65, 1, False, None)]
    worst = {}
    for dtype in (torch.bfloat16, torch.float16):
        for B, H, D, nq, nk, fused, bk in cases:
            q, k, v, bias = make(B, H, D, nq, nk, dtype, fused, bk, gen)
            out = torch.full((B * nq, H * D), float("nan"), device="cuda", dtype=dtype)
            scale = D ** -0.5
            var.launch(q, k, v, out, bias, B, H, D, nq, nk, scale)
            torch.cuda.synchronize()
            ref = reference(q, k, v, bias, B, H, D, nq, nk, scale)
            o = out.float()
            if not torch.isfinite(o).all():
                raise AssertionError(f"{var.name}: non-finite output {B, H, D, nq, nk, bk, dtype}")
            err = ((o - ref).norm() / ref.norm()).item()
            tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
            if err > tol:
                raise AssertionError(f"{var.name}: rel err {err:.3e} {B, H, D, nq, nk, bk, dtype}")
            worst[str(dtype)[6:]] = max(worst.get(str(dtype)[6:], 0.0), err)
    return len(cases) * 2, worst


def bench(fn, iters, per_graph=10):
    """Median time of one call: calls are captured `per_graph` at a time into a CUDA graph (so
    host launch overhead of small shapes stays out), replays timed with events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(per_graph):
                fn()
        run, calls = graph.replay, per_graph
    except Exception as e:  # noqa: BLE001 - fall back to direct launches
        print(f"graph capture failed ({e}); timing direct launches", flush=True)
        run, calls = fn, 1
    run()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        start[i].record()
        run()
        end[i].record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) / calls for s, e in zip(start, end))
    return t[len(t) // 2]


SHAPES = [  # name, B, H, D, nq, nk, fused, bias
    ("pixart-1024 self", 2, 16, 72, 4096, 4096, True, None),
    ("pixart-1024 cross", 2, 16, 72, 4096, 120, False, "mask"),
    ("pixart-512 self", 2, 16, 72, 1024, 1024, True, None),
    ("dit-512 self", 2, 16, 72, 1024, 1024, True, None),
    ("dit-256 self", 2, 16, 72, 256, 256, True, None),
    ("d64 4k self", 2, 16, 64, 4096, 4096, True, None),
    ("d128 4k self", 2, 16, 128, 4096, 4096, True, None),
]


def main():
    manifest = json.load(open(sys.argv[1]))
    quick = "--quick" in sys.argv
    torch.zeros(1, device="cuda")  # primary context current on this thread
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    variants = [Variant(s) for s in manifest]
    gen = torch.Generator(device="cuda").manual_seed(0)
    if "--profile" in sys.argv:
        names = sys.argv[sys.argv.index("--profile") + 1:]
        name, B, H, D, nq, nk, fused, bk = SHAPES[0]
        q, k, v, bias = make(B, H, D, nq, nk, torch.bfloat16, fused, bk, gen)
        out = torch.empty(B * nq, H * D, device="cuda", dtype=torch.bfloat16)
        for var in (v for n in names for v in variants if v.name == n):
            var.launch(q, k, v, out, bias, B, H, D, nq, nk, D ** -0.5)
        torch.cuda.synchronize()
        return
    for var in variants:
        n, worst = check(var, gen, quick)
        print(f"check {var.name}: {n} cases ok, worst rel err " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()), flush=True)
    rows = []
    for name, B, H, D, nq, nk, fused, bk in SHAPES:
        q, k, v, bias = make(B, H, D, nq, nk, torch.bfloat16, fused, bk, gen)
        scale = D ** -0.5
        flop = 4 * B * H * nq * nk * D
        iters = 10 if flop > 1e10 else 30
        out = torch.empty(B * nq, H * D, device="cuda", dtype=torch.bfloat16)
        t_sdpa = bench(lambda: sdpa(q, k, v, bias, B, H, D, nq, nk, scale), iters)
        row = [name, t_sdpa * 1e3, flop / t_sdpa / 1e9]
        for var in variants:
            t = bench(lambda: var.launch(q, k, v, out, bias, B, H, D, nq, nk, scale), iters)
            row += [t * 1e3, flop / t / 1e9]
        rows.append(row)
        print(row, flush=True)
    hdr = f"{'shape':20s} {'sdpa us':>8s} {'TF/s':>6s}" + "".join(f" {v.name + ' us':>10s} {'TF/s':>6s}" for v in variants)
    print("\n" + hdr)
    for r in rows:
        print(f"{r[0]:20s}" + "".join(f" {r[i]:8.1f} {r[i + 1]:6.1f}" if i == 1 else f" {r[i]:10.1f} {r[i + 1]:6.1f}" for i in range(1, len(r), 2)))


if __name__ == "__main__":
    main()
