#!/usr/bin/env python3
"""Joins the benchmark outputs of one machine into one table with a ratio column (Python stdlib only).

    python3 scripts/bench-table.py [PATH ...] [--markdown] [--json OUT] [--commit SHA]

Several runs of the same bench on the same machine (e.g. run-1/ run-2/ run-3/ of
scripts/bench-cpu.sh) are merged: per row the lowest median of the runs ("best of N"), and the
fractions and speedups recomputed from the merged rows.

PATH: JSON files or folders holding them (default: $DELTADIT_BENCH_OUT or target/deltadit-bench).
Recognised by content:
    kernels-<backend>.json   benches/kernels.rs   (kind "deltadit-kernels")
    step-<backend>.json      benches/step.rs      (kind "deltadit-step")
    torch-<device>.json      bench/torch_reference.py (kind "torch-reference")
    any `deltadit bench --json` output (a BenchReport: "model", "backend", "rows")
Ours on CUDA is paired with torch on CUDA, ours on the CPU with torch on the CPU (forward/ and
step/ rows by name, every family: PixArt, DiT, SD3; torch's forward-compile/<preset> row, when
torch_reference.py ran with --compile, as two more columns of the forward rows); rows of our
wgmma attention kernels (`attn-self-wgmma/…`, `forward-wgmma-qregs/…`, …) with torch's row of the same op. The ratio column
is torch's time divided by ours: above 1, ours is faster. Nothing is estimated: a cell without a
measurement is "-". Last, the benchmarks issue's targets that the run measured, each as a ratio
against its goal (PixArt-α 1024 shapes on a GPU; the forward against diffusers on the CPU).
"""
import argparse
import json
import os
import re
import sys

# The sm_90a attention kernels' row suffixes (benches/kernels.rs, benches/step.rs), before the "/".
WGMMA_KERNELS = ("wgmma", "wgmma-qregs", "wgmma-qregs3")
WGMMA_SUFFIX = re.compile(r"-(wgmma(?:-qregs3?)?)/")


# The op rows of one transformer block as a forward runs them (src/model/block.rs), per family:
# PixArt: 2 norms, the QKV GEMM, self-attention, 3 D×D GEMMs (attention out, cross q, cross out),
# cross-attention, 3 residuals (gated, ungated, gated; the kernels move the same bytes), the MLP.
# The per-block modulation vectors ([batch, 6D]) and the embedding/final layer are left out (small).
BLOCK_OPS = {
    "pixart": (("norm-modulate", 2), ("gemm-qkv", 1), ("attn-self", 1), ("gemm-proj", 3), ("attn-cross", 1),
               ("residual-gated", 3), ("gemm-ff1-gelu", 1), ("gemm-ff2", 1)),
    "dit": (("norm-modulate", 2), ("gemm-qkv", 1), ("attn-self", 1), ("gemm-proj", 1), ("residual-gated", 2),
            ("gemm-ff1-gelu", 1), ("gemm-ff2", 1)),
}
LAYERS = 28  # every preset of src/bench.rs


def base_name(name):
    """The row name without its wgmma kernel suffix: the op torch's row of the same work has."""
    return WGMMA_SUFFIX.sub("/", name)


def wgmma_kernel(name):
    """The wgmma kernel of a row (e.g. "wgmma-qregs"), None for the default kernel's rows."""
    m = WGMMA_SUFFIX.search(name)
    return m.group(1) if m else None


def load(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".json")]
        elif os.path.isfile(p):
            files.append(p)
    docs = {"kernels": [], "step": [], "torch": [], "cli": []}
    for f in files:
        try:
            d = json.load(open(f))
        except (OSError, ValueError) as e:
            print(f"bench-table: skipping {f}: {e}", file=sys.stderr)
            continue
        if not isinstance(d, dict):
            continue
        d["_file"] = f
        k = d.get("kind")
        if k == "deltadit-kernels":
            docs["kernels"].append(d)
        elif k == "deltadit-step":
            docs["step"].append(d)
        elif k == "torch-reference":
            docs["torch"].append(d)
        elif "rows" in d and "model" in d and "backend" in d:
            docs["cli"].append(d)
    return docs


def _best(rows, key, t):
    best = {}
    for r in rows:
        k = r[key]
        if k not in best or r[t] < best[k][t]:
            best[k] = r
    return list(best.values())


def merge(docs):
    """Several files of one kind and backend: one document, per row the lowest median."""
    out = {}
    for kind, lst in docs.items():
        groups = {}
        for d in lst:
            g = (d.get("backend"), d.get("model")) if kind == "cli" else d.get("backend")
            groups.setdefault(g, []).append(d)
        merged = []
        for g, ds in groups.items():
            if len(ds) == 1:
                merged.append(ds[0])
                continue
            m = dict(ds[-1])
            m["_runs"] = len(ds)
            m["_file"] = ", ".join(os.path.relpath(x["_file"]) for x in ds)
            m["date"] = " … ".join(sorted({x.get("date", "") for x in ds})[::max(1, len(ds) - 1)])
            if kind in ("kernels", "torch"):
                m["results"] = _best([r for x in ds for r in x.get("results", [])], "name", "median_us")
            if kind == "torch":
                m["model"] = _best([r for x in ds for r in x.get("model", [])], "name", "median_ms")
            if kind == "step":
                m["results"] = _best([r for x in ds for r in x.get("results", [])], "name", "median_ms")
            if kind == "cli":
                m["rows"] = [dict(r) for r in _best([r for x in ds for r in x.get("rows", [])], "policy", "total_s")]
            merged.append(m)
        out[kind] = merged
    for d in out["kernels"]:
        recompute_kernels(d)
    for d in out["step"]:
        none = {r["preset"]: r["median_ms"] for r in d["results"] if r["kind"] == "sample20-none"}
        for r in d["results"]:
            if r["kind"] == "sample20-delta" and r["preset"] in none:
                r["speedup_vs_none"] = none[r["preset"]] / r["median_ms"]
    for d in out["torch"]:
        roof = {r["op"]: r for r in d["results"] if r["op"].startswith("roofline")}
        d["roofline"] = dict(copy_gbps=roof.get("roofline-copy", {}).get("gbps"), gemm_tflops=roof.get("roofline-gemm", {}).get("tflops"))
    for d in out["cli"]:
        none = next((r["total_s"] for r in d["rows"] if r["policy"] == "none"), None)
        for r in d["rows"]:
            if none:
                r["measured_speedup"] = none / r["total_s"]
    return out


def recompute_kernels(d):
    """Roofline and same-size-copy fractions from the (merged) rows, as benches/kernels.rs does."""
    res = d["results"]
    by = {r["name"]: r for r in res}
    copy = by.get("roofline-copy")
    gemm = by.get("roofline-gemm")
    bw = copy["bytes"] / (copy["median_us"] * 1e-6) if copy else None
    rate = gemm["flop"] / (gemm["median_us"] * 1e-6) if gemm else None
    r = d.setdefault("roofline", {})
    r["copy_gbps"] = bw / 1e9 if bw else r.get("copy_gbps")
    r["gemm_tflops"] = rate / 1e12 if rate else r.get("gemm_tflops")
    for x in res:
        t = x["median_us"] * 1e-6
        if x["bound"] == "compute":
            x["tflops"] = x["flop"] / t / 1e12
            x["roofline_frac"] = x["flop"] / t / rate if rate else None
        else:
            x["gbps"] = x["bytes"] / t / 1e9
            x["roofline_frac"] = x["bytes"] / t / bw if bw else None
            same = next((o for o in res if o["op"] == "copy" and o["preset"] == x["preset"]), None)
            if same and x["op"] not in ("copy", "roofline-copy"):
                x["copy_frac"] = (x["bytes"] / t) / (same["bytes"] / (same["median_us"] * 1e-6))


def dev_of(backend):
    return "cuda" if "cuda" in backend else "cpu"


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


class Table:
    def __init__(self, title, cols, md):
        self.title, self.cols, self.md, self.rows = title, cols, md, []

    def add(self, *cells):
        self.rows.append(["-" if c is None else str(c) for c in cells])

    def render(self):
        if not self.rows:
            return ""
        if self.md:
            out = [f"\n**{self.title}**\n", "| " + " | ".join(self.cols) + " |", "|" + "|".join("---" for _ in self.cols) + "|"]
            out += ["| " + " | ".join(r) + " |" for r in self.rows]
            return "\n".join(out) + "\n"
        w = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.cols)]
        line = lambda cells: "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(cells))
        return "\n".join([f"\n{self.title}", line(self.cols), line(["-" * x for x in w])] + [line(r) for r in self.rows]) + "\n"


def ratio(torch_t, ours_t):
    if torch_t is None or ours_t is None or ours_t <= 0:
        return None
    return torch_t / ours_t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--markdown", action="store_true", help="Markdown tables (for BENCHMARKS.md)")
    ap.add_argument("--json", default=None, help="also write the joined rows as JSON here")
    ap.add_argument("--commit", default=None, help="commit to print in the header (default: the JSONs' or git's)")
    a = ap.parse_args()
    paths = a.paths or [os.environ.get("DELTADIT_BENCH_OUT") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "deltadit-bench")]
    docs = merge(load(paths))
    if not any(docs.values()):
        print(f"bench-table: no benchmark JSON found in {', '.join(paths)}", file=sys.stderr)
        return 1
    md = a.markdown
    out, joined = [], {"kernels": [], "model": [], "cli": []}
    commit = a.commit
    if not commit:
        commit = next((d.get("commit") for d in docs["kernels"] + docs["step"] if d.get("commit") not in (None, "unknown")), None)
    if not commit:
        try:
            import subprocess
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"

    # ---- header -------------------------------------------------------------------------------
    hdr = [f"commit {commit}"]
    for d in docs["kernels"] + docs["step"] + docs["torch"] + docs["cli"]:
        who = d.get("kind", "deltadit bench (CLI)") if "kind" in d else f"deltadit bench --preset {d.get('model')}"
        extra = (", quick" if d.get("quick") else "") + (f", best of {d['_runs']} runs per row" if d.get("_runs") else "")
        date = f", {d['date']}" if d.get("date") else ""
        hdr.append(f"{who}: {d.get('backend')} {d.get('dtype', '')} on {d.get('machine')}{date}{extra} ({d['_file'] if d.get('_runs') else os.path.basename(d['_file'])})")
    for d in docs["kernels"]:
        if d.get("note"):
            hdr.append(f"note ({d['backend']}): {d['note']}")
    for d in docs["torch"]:
        for n in d.get("notes", []):
            hdr.append(f"note ({d['backend']}): {n}")
    for d in docs["kernels"] + docs["step"]:
        for e in d.get("errors", []):
            hdr.append(f"FAILED ({d['kind']}, {d['backend']}): {e.get('name') or e.get('preset')}: {e.get('error')}")
    out.append("\n".join(("- " if md else "") + h for h in hdr) + "\n")

    # ---- roofline -----------------------------------------------------------------------------
    t = Table("Roofline (measured in the same runs)", ["side", "device", "copy GB/s", "GEMM TFLOP/s", "what"], md)
    for d in docs["kernels"]:
        r = d.get("roofline", {})
        t.add("deltadit", d["backend"], fmt(r.get("copy_gbps"), ".0f"), fmt(r.get("gemm_tflops"), ".2f"), f"{r.get('copy')}; {r.get('gemm')}")
    for d in docs["torch"]:
        r = d.get("roofline", {})
        t.add("torch", d["device"], fmt(r.get("copy_gbps"), ".0f"), fmt(r.get("gemm_tflops"), ".2f"), "tensor.copy_; torch.matmul (F.linear)")
    out.append(t.render())

    # ---- kernels ------------------------------------------------------------------------------
    for d in docs["kernels"]:
        dev = dev_of(d["backend"])
        tr = next((x for x in docs["torch"] if x.get("device") == dev), None)
        tmap = {r["name"]: r for r in (tr or {}).get("results", [])}
        # benches/kernels.rs checks each case against the CPU backend before timing it (not on the CPU)
        checked = any(r.get("check_rel_l2") is not None for r in d["results"])
        t = Table(
            f"Kernels: deltadit {d['backend']} ({d['dtype']}) vs torch {dev} eager" + ("" if tr else " (no torch JSON for this device)"),
            ["case", "shape", "ours µs", "ours rate", "% roofline", "% same-size copy", "torch µs", "torch rate", "torch/ours"]
            + (["check (rel L2 vs CPU)"] if checked else []),
            md,
        )
        for r in d["results"]:
            o = tmap.get(r["name"]) or tmap.get(base_name(r["name"]))
            comp = r["bound"] == "compute"
            rate = (f"{r['tflops']:.2f} TFLOP/s" if comp else f"{r['gbps']:.0f} GB/s")
            orate = None
            if o:
                orate = f"{o['tflops']:.2f} TFLOP/s" if comp and o.get("tflops") is not None else f"{o['gbps']:.0f} GB/s"
                if o.get("sdpa_backend"):
                    orate += f" ({o['sdpa_backend']})"  # SDPA's fastest backend
            rt = ratio(o["median_us"] if o else None, r["median_us"])
            t.add(
                r["name"], r["shape"], f"{r['median_us']:.2f}", rate,
                fmt(None if r.get("roofline_frac") is None else 100 * r["roofline_frac"], ".1f"),
                fmt(None if r.get("copy_frac") is None else 100 * r["copy_frac"], ".1f"),
                fmt(o["median_us"] if o else None, ".2f"), orate, fmt(rt, ".2f") + ("×" if rt else ""),
                *([fmt(r.get("check_rel_l2"), ".1e")] if checked else []),
            )
            joined["kernels"].append(dict(name=r["name"], backend=d["backend"], ours_us=r["median_us"], torch_us=o["median_us"] if o else None,
                                          torch_over_ours=rt, roofline_frac=r.get("roofline_frac"), copy_frac=r.get("copy_frac"),
                                          check_rel_l2=r.get("check_rel_l2")))
        out.append(t.render())

    # ---- whole model --------------------------------------------------------------------------
    for d in docs["step"]:
        dev = dev_of(d["backend"])
        tr = next((x for x in docs["torch"] if x.get("device") == dev), None)
        tmap = {r["name"]: r for r in (tr or {}).get("model", [])}
        tv = f"diffusers {tr.get('diffusers')} on torch {tr.get('torch')} ({tr.get('dtype')}, eager)" if tr else "no torch JSON for this device"
        # torch_reference.py --compile: the forward under torch.compile(mode="max-autotune") beside the eager one
        compiled = any(k.startswith("forward-compile/") for k in tmap)
        if compiled:
            tv += "; compiled: the same forward under torch.compile(mode=max-autotune)"
        t = Table(f"Model: deltadit {d['backend']} ({d['dtype']}) vs {tv}", ["bench", "detail", "ours ms", "torch ms", "torch/ours"]
                  + (["torch compiled ms", "compiled/ours"] if compiled else []), md)
        for r in d["results"]:
            o = tmap.get(r["name"]) or tmap.get(base_name(r["name"]))
            kernel = wgmma_kernel(r["name"])
            detail = "batch 2 (CFG)" + (f", {kernel} attention" if kernel else "")
            if r["kind"] == "step":
                detail = f"one {r.get('scheduler', '')} step with CFG, synchronised"
            elif r["kind"].startswith("sample20"):
                detail = f"20 steps, blocks {100 * r.get('block_ratio', 0):.0f}%"
                if r.get("speedup_vs_none") is not None:
                    detail += f", {r['speedup_vs_none']:.2f}× vs none, rel L2 {r.get('rel_l2_vs_none', 0):.2e}"
            rt = ratio(o["median_ms"] if o else None, r["median_ms"])
            oc = tmap.get(f"forward-compile/{r['preset']}") if r["kind"].startswith("forward") else None
            rc = ratio(oc["median_ms"] if oc else None, r["median_ms"])
            t.add(r["name"], detail, f"{r['median_ms']:.3f}", fmt(o["median_ms"] if o else None, ".3f"), fmt(rt, ".2f") + ("×" if rt else ""),
                  *([fmt(oc["median_ms"] if oc else None, ".3f"), fmt(rc, ".2f") + ("×" if rc else "")] if compiled else []))
            joined["model"].append(dict(name=r["name"], backend=d["backend"], ours_ms=r["median_ms"], torch_ms=o["median_ms"] if o else None, torch_over_ours=rt,
                                        torch_compiled_ms=oc["median_ms"] if oc else None, torch_compiled_over_ours=rc))
        out.append(t.render())
    for tr in docs["torch"]:
        if not any(dev_of(d["backend"]) == tr.get("device") for d in docs["step"]) and tr.get("model"):
            t = Table(f"Model: diffusers on torch {tr['device']} only (no deltadit step JSON for this device)", ["bench", "torch ms"], md)
            for r in tr["model"]:
                t.add(r["name"], f"{r['median_ms']:.3f}")
            out.append(t.render())

    # ---- what a forward is made of ------------------------------------------------------------
    for t, rows in composition(docs, md):
        out.append(t.render())
        joined.setdefault("composition", []).extend(rows)

    # ---- deltadit bench (CLI) -----------------------------------------------------------------
    for d in docs["cli"]:
        t = Table(
            f"deltadit bench: {d['model']} on {d['backend']} ({d['dtype']}), {d['scheduler']} {d['steps']} steps, guidance {d['guidance']}, "
            f"batch {d['batch']} × {d['tokens']} tokens, median of {d['runs']} after {d['warmup']} warm-up",
            ["policy", "parameters", "total s", "ms/step", "blocks %", "theory ×", "measured ×", "rel L2"],
            md,
        )
        for r in d["rows"]:
            t.add(r["policy"], r.get("params") or "-", f"{r['total_s']:.3f}", f"{r['per_step_ms']:.2f}", f"{100 * r['block_ratio']:.1f}",
                  f"{r['theoretical_speedup']:.2f}", f"{r['measured_speedup']:.2f}", f"{r['rel_l2']:.2e}")
            joined["cli"].append(dict(model=d["model"], backend=d["backend"], **{k: r[k] for k in ("policy", "total_s", "per_step_ms", "measured_speedup")}))
        out.append(t.render())

    # ---- the targets, last ---------------------------------------------------------------
    rows = targets(docs)
    if rows:
        t = Table("Targets (measured ratio against the goal; a goal is not a test)", ["target", "device", "measured", "goal", "met"], md)
        for r in rows:
            t.add(r["target"], r["device"], r["measured"], r["goal"], {True: "yes", False: "no", None: "-"}[r["met"]])
        out.append(t.render())
        joined["targets"] = rows

    print("".join(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(commit=commit, **joined), f, indent=1)
    return 0


def composition(docs, md):
    """Per preset whose op rows are all there: each op's median × its count in one forward (CFG
    batch 2), their sum, and the measured forward beside it; for us and for torch (diffusers runs
    the same ops, eager). Sums of this run's measurements, not a trace of the forward."""
    tables = []
    for d in docs["kernels"]:
        dev = dev_of(d["backend"])
        ours = {r["name"]: r for r in d["results"]}
        tr = next((x for x in docs["torch"] if x.get("device") == dev), None)
        theirs = {r["name"]: r for r in (tr or {}).get("results", [])}
        fwd = {r["name"]: r for s in docs["step"] if dev_of(s["backend"]) == dev for r in s["results"]}
        tfwd = {r["name"]: r for r in (tr or {}).get("model", [])}
        presets = sorted({r["name"].split("/", 1)[1] for r in d["results"] if "/" in r["name"]})
        for p in presets:
            ops = BLOCK_OPS["dit" if p.startswith("dit") else "pixart"]
            if not all(f"{op}/{p}" in ours for op, _ in ops):
                continue
            have_torch = all(f"{op}/{p}" in theirs for op, _ in ops)
            per = lambda m, op, n: m[f"{op}/{p}"]["median_us"] * n * LAYERS / 1e3  # ms a forward
            sum_ours = sum(per(ours, op, n) for op, n in ops)
            sum_torch = sum(per(theirs, op, n) for op, n in ops) if have_torch else None
            t = Table(f"What a forward is made of: {p} on {d['backend']}, {LAYERS} blocks (op medians of this run × their count; "
                      "not a trace)", ["op", "per forward", "ours ms", "ours %", "torch ms", "torch %"], md)
            rows = []
            for op, n in ops:
                o, th = per(ours, op, n), per(theirs, op, n) if have_torch else None
                t.add(op, n * LAYERS, f"{o:.3f}", f"{100 * o / sum_ours:.1f}", fmt(th, ".3f"), fmt(None if th is None else 100 * th / sum_torch, ".1f"))
                rows.append(dict(preset=p, backend=d["backend"], op=op, count=n * LAYERS, ours_ms=o, torch_ms=th))
            t.add("sum of the ops", "", f"{sum_ours:.3f}", "100.0", fmt(sum_torch, ".3f"), "100.0" if have_torch else None)
            f, tf = fwd.get(f"forward/{p}"), tfwd.get(f"forward/{p}")
            if f or tf:
                t.add("measured forward", 1, fmt(f and f["median_ms"], ".3f"), fmt(f and 100 * f["median_ms"] / sum_ours, ".1f"),
                      fmt(tf and tf["median_ms"], ".3f"), fmt(tf and sum_torch and 100 * tf["median_ms"] / sum_torch, ".1f"))
            rows.append(dict(preset=p, backend=d["backend"], op="sum", ours_ms=sum_ours, torch_ms=sum_torch,
                             forward_ms=f and f["median_ms"], torch_forward_ms=tf and tf["median_ms"]))
            tables.append((t, rows))
    return tables


def targets(docs):
    """The speed targets of the benchmarks issue, from whatever rows the run measured."""
    out = []

    def add(target, device, value, fmt_value, goal, ok):
        out.append(dict(target=target, device=device, value=value, measured=fmt_value, goal=goal, met=ok))

    for d in docs["kernels"]:
        dev = dev_of(d["backend"])
        by = {r["name"]: r for r in d["results"]}
        tr = next((x for x in docs["torch"] if x.get("device") == dev), None)
        tmap = {r["name"]: r for r in (tr or {}).get("results", [])}
        for kernel in ("",) + WGMMA_KERNELS:
            for op, what in (("attn-self", "attention self, d 72, 2×16×4096², vs SDPA"), ("attn-cross", "attention cross 4096×120 masked, vs SDPA")):
                ours = by.get(f"{op}{'-' + kernel if kernel else ''}/pixart-alpha-1024")
                theirs = tmap.get(f"{op}/pixart-alpha-1024")
                if ours and theirs:
                    r = theirs["median_us"] / ours["median_us"]
                    sdpa = f"SDPA {theirs['sdpa_backend']}" if theirs.get("sdpa_backend") else "SDPA"
                    add(what + (f" ({kernel} kernel)" if kernel else ""), d["backend"], r, f"{r:.2f}× ({sdpa}/ours)", "≥ 1.00×", r >= 1.0)
        for op in ("norm-modulate", "residual-gated", "residual-anchor", "residual-delta", "delta-apply"):
            r = by.get(f"{op}/pixart-alpha-1024")
            if r and r.get("roofline_frac") is not None:
                f = r["roofline_frac"]
                add(f"{op} [8192, 1152], of the copy bandwidth", d["backend"], f, f"{100 * f:.1f}%", "≥ 85%", f >= 0.85)
    for d in docs["step"]:
        dev = dev_of(d["backend"])
        tr = next((x for x in docs["torch"] if x.get("device") == dev), None)
        tmodel = {r["name"]: r for r in (tr or {}).get("model", [])}
        by = {r["name"]: r for r in d["results"]}
        if dev == "cuda":
            fwd = tmodel.get("forward/pixart-alpha-1024")
            for name, what in (("step/pixart-alpha-1024", "PixArt-α 1024 step with CFG"),) + tuple(
                    (f"forward-{k}/pixart-alpha-1024", f"PixArt-α 1024 forward with CFG, {k} attention") for k in WGMMA_KERNELS):
                ours = by.get(name)
                if ours and fwd:
                    r = ours["median_ms"] / fwd["median_ms"]
                    add(what + ", of diffusers' eager forward (≤ its step)", d["backend"], r, f"{100 * r:.0f}%", "≤ 60% of diffusers' step", r <= 0.60)
        else:
            for name in sorted(by):
                if name.startswith("forward/") and name in tmodel:
                    r = tmodel[name]["median_ms"] / by[name]["median_ms"]
                    add(f"CPU {name} with CFG vs diffusers on PyTorch (same threads)", d["backend"], r, f"{r:.2f}× (torch/ours)", "≥ 1.00×", r >= 1.0)
        for name, r in sorted(by.items()):
            if name.startswith("sample20-delta/") and r.get("speedup_vs_none") is not None and (dev == "cpu" or "alpha-1024" in name):
                v = r["speedup_vs_none"]
                add(f"20 steps, delta vs none ({name.split('/')[1]}, step bench)", d["backend"], v, f"{v:.2f}×", "≥ 1.50×", v >= 1.5)
    for d in docs["cli"]:
        for r in d["rows"]:
            if r["policy"] == "delta" and (dev_of(d["backend"]) == "cpu" or d["model"] == "pixart-alpha-1024"):
                v = r.get("measured_speedup")
                if v is not None:
                    add(f"20 steps, delta vs none ({d['model']}, deltadit bench)", d["backend"], v, f"{v:.2f}×", "≥ 1.50×", v >= 1.5)
    return out


if __name__ == "__main__":
    sys.exit(main())
