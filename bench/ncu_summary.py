#!/usr/bin/env python3
"""One line per profiled kernel from Nsight Compute's CSV exports: why a kernel runs as fast as it
does (throughputs against the SM's and memory's peaks, occupancy, issue rate, tensor pipes, shared-
memory bank conflicts, the warps' top stall reasons), where scripts/gpu-run.sh's `ncu-*` steps
profiled the attention and memory-bound kernels of one PixArt-alpha 1024 forward.

    python3 bench/ncu_summary.py [--json FILE] CAPTURE.details.csv [CAPTURE.details.csv ...]

Each capture is the pair `ncu -i REPORT --csv --page details` (NAME.details.csv) and, when present
beside it, `--page raw` (NAME.raw.csv): the details page gives the sections' named figures
("Duration", "Compute (SM) Throughput", "Achieved Occupancy", ...), the raw page the metrics behind
them (stall reasons, pipe utilisation, bank conflicts). A figure this ncu version does not report
is shown as "-": the script reads the columns by name and needs no particular version.

ncu's figures come from replaying each kernel many times with counters on (clocks left alone,
--clock-control none): a kernel's "Duration" there is one cold launch, not the benchmark's median.
"""
import argparse
import csv
import json
import os
import re
import sys

# (section, metric name as the details page labels it) -> column of the summary
DETAILS = {
    "duration_us": ("GPU Speed Of Light Throughput", "Duration"),
    "sm_pct": ("GPU Speed Of Light Throughput", "Compute (SM) Throughput"),
    "mem_pct": ("GPU Speed Of Light Throughput", "Memory Throughput"),
    "dram_pct": ("GPU Speed Of Light Throughput", "DRAM Throughput"),
    "regs": ("Launch Statistics", "Registers Per Thread"),
    "dyn_smem": ("Launch Statistics", "Dynamic Shared Memory Per Block"),
    "waves": ("Launch Statistics", "Waves Per SM"),
    "occ_theory": ("Occupancy", "Theoretical Occupancy"),
    "occ_achieved": ("Occupancy", "Achieved Occupancy"),
    "ipc": ("Compute Workload Analysis", "Executed Ipc Active"),
    "issue_busy": ("Compute Workload Analysis", "Issue Slots Busy"),
    "cycles_per_issue": ("Warp State Statistics", "Warp Cycles Per Issued Instruction"),
}

# Raw metrics, matched by pattern (their exact set varies with the GPU and ncu version).
STALL = re.compile(r"^smsp__average_warps?_issue_stalled_(\w+?)_per_issue_active\.ratio$")
STALL_SAMPLED = re.compile(r"^smsp__pcsamp_warps_issue_stalled_(\w+?)$")
TENSOR_PIPE = re.compile(r"^sm__pipe_(tensor\w*?)_cycles_active\.avg\.pct_of_peak_sustained_active$")
SMEM_CONFLICTS = re.compile(r"^l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_(\w+)\.sum$")
SMEM_WAVEFRONTS = re.compile(r"^l1tex__data_pipe_lsu_wavefronts_mem_shared_op_(\w+)\.sum$")
# Stall reasons that are not waiting (a warp that issued, or one with nothing to do).
NOT_STALLS = {"selected", "not_selected", "sleeping", "misc"}


def number(text):
    """A CSV cell as a float: ncu writes "1,234.5" with grouping commas; "n/a" and "" are None."""
    if text is None:
        return None
    t = text.strip().replace(",", "")
    try:
        return float(t)
    except ValueError:
        return None


def csv_rows(path):
    """The rows of an ncu CSV export as dicts, after any "==PROF==" or program output before the
    header (ncu prints them to the same stream); [] for a file without the header."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith('"ID"'):
            return list(csv.DictReader(lines[i:]))
    return []


def short_name(name):
    """Our kernels are extern "C"; cuBLAS's carry templates: keep the name before any argument
    list, at most 48 characters."""
    base = re.split(r"[(<]", name, maxsplit=1)[0].strip() or name
    return base if len(base) <= 48 else base[:45] + "..."


def read_details(path):
    """kernel launch ID -> {"kernel", "block", "grid", "figures": {(section, name): (value, unit)}}"""
    launches = {}
    for r in csv_rows(path):
        lid = r.get("ID", "")
        k = launches.setdefault(lid, {"kernel": r.get("Kernel Name", "?"), "block": r.get("Block Size", ""),
                                      "grid": r.get("Grid Size", ""), "figures": {}})
        k["figures"][(r.get("Section Name", ""), r.get("Metric Name", ""))] = (r.get("Metric Value", ""), r.get("Metric Unit", ""))
    return launches


def read_raw(path):
    """kernel launch ID -> {metric: float}; the raw page's second row holds the units."""
    out = {}
    for r in csv_rows(path):
        lid = r.get("ID", "")
        if not lid.strip().isdigit():
            continue  # the units row
        out[lid] = {k: v for k, v in ((k, number(v)) for k, v in r.items() if k) if v is not None}
    return out


def to_microseconds(value, unit):
    v = number(value)
    if v is None:
        return None
    scale = {"ns": 1e-3, "nsecond": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}
    return v * scale.get((unit or "").strip(), 1e-3)  # --print-units base writes nanoseconds


def summarize(details_path):
    raw_path = re.sub(r"\.details\.csv$", ".raw.csv", details_path)
    raw = read_raw(raw_path) if raw_path != details_path and os.path.exists(raw_path) else {}
    capture = os.path.basename(details_path).replace(".details.csv", "")
    rows = []
    for lid, k in read_details(details_path).items():
        fig = k["figures"]
        row = {"capture": capture, "id": lid, "kernel": short_name(k["kernel"]), "block": k["block"], "grid": k["grid"]}
        for col, key in DETAILS.items():
            value, unit = fig.get(key, (None, None))
            row[col] = to_microseconds(value, unit) if col == "duration_us" else number(value)
        m = raw.get(lid, {})
        stalls = {}
        for name, v in m.items():
            s = STALL.match(name)
            if s and s.group(1) not in NOT_STALLS:
                stalls[s.group(1)] = v
        if not stalls:  # older or sampled-only exports
            for name, v in m.items():
                s = STALL_SAMPLED.match(name)
                if s and s.group(1) not in NOT_STALLS:
                    stalls[s.group(1)] = v
        total = sum(stalls.values())
        top = sorted(((r, v) for r, v in stalls.items() if v > 0), key=lambda kv: -kv[1])[:3]
        row["top_stalls"] = [{"reason": r, "share": v / total if total > 0 else None, "value": v} for r, v in top]
        row["tensor_pipes_pct"] = {TENSOR_PIPE.match(n).group(1): v for n, v in m.items() if TENSOR_PIPE.match(n)}
        conf = {SMEM_CONFLICTS.match(n).group(1): v for n, v in m.items() if SMEM_CONFLICTS.match(n)}
        wave = {SMEM_WAVEFRONTS.match(n).group(1): v for n, v in m.items() if SMEM_WAVEFRONTS.match(n)}
        # conflicts as a share of the shared-memory wavefronts (0: conflict-free)
        row["smem_conflict_share"] = {op: (conf[op] / wave[op] if wave.get(op) else None) for op in conf}
        rows.append(row)
    return rows


def fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def table(rows):
    head = ["capture", "kernel", "grid x block", "regs", "µs", "SM %", "mem %", "DRAM %", "occ % (theory)", "IPC",
            "cyc/issue", "tensor pipe %", "smem conflicts / wavefronts", "top stalls (share)"]
    out = [head]
    for r in rows:
        pipes = ", ".join(f"{n.replace('tensor_op_', '')} {v:.1f}" for n, v in sorted(r["tensor_pipes_pct"].items())) or "-"
        conf = r["smem_conflict_share"]
        conflicts = ", ".join(f"{op} {fmt(v, '{:.0%}')}" for op, v in sorted(conf.items())) or "-"
        stalls = ", ".join(f"{s['reason']} {fmt(s['share'], '{:.0%}')}" for s in r["top_stalls"]) or "-"
        out.append([r["capture"], r["kernel"], f"{r['grid']} x {r['block']}", fmt(r["regs"], "{:.0f}"), fmt(r["duration_us"]),
                    fmt(r["sm_pct"]), fmt(r["mem_pct"]), fmt(r["dram_pct"]),
                    f"{fmt(r['occ_achieved'])} ({fmt(r['occ_theory'])})", fmt(r["ipc"], "{:.2f}"),
                    fmt(r["cycles_per_issue"]), pipes, conflicts, stalls])
    widths = [max(len(str(row[i])) for row in out) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("details", nargs="+", help="NAME.details.csv files (NAME.raw.csv read beside each)")
    ap.add_argument("--json", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    rows = []
    for path in a.details:
        if not os.path.exists(path):
            print(f"ncu_summary.py: {path}: no such file", file=sys.stderr)
            return 2
        rows += summarize(path)
    if not rows:
        print("ncu_summary.py: no profiled kernel in " + ", ".join(a.details), file=sys.stderr)
        return 1
    print("Nsight Compute: one replayed launch per kernel (not the benchmarks' medians)")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kind": "ncu-summary", "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
