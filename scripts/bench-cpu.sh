#!/usr/bin/env bash
# The CPU comparison, one command: our CPU backend (benches/kernels, benches/step, `deltadit bench`)
# and PyTorch + diffusers (bench/torch_reference.py) at the same shapes, on the same machine, with
# the same thread count, in one run; repeated N times (the machine may be shared: other builds
# disturb single runs) and joined by scripts/bench-table.py as the best of the N runs per row.
#
# Usage: scripts/bench-cpu.sh [--runs N] [--quick] [--out DIR]
#   --runs N   repetitions of the whole suite (default 3)
#   --quick    criterion's --quick and the quick presets (a few minutes in all)
#   --out DIR  where the JSON and tables go (default target/deltadit-bench/cpu)
# Environment: PYTHON — a Python with torch 2.11.0 and diffusers 0.42.1 (default python3), e.g.
#   python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.11.0 diffusers==0.42.1
#   (PyPI's torch wheel is the CUDA build: it imports on a CPU machine once its nvidia-* dependencies
#   are installed, which pip does; ~3 GB)
# Output: DIR/run-K/*.json, DIR/table.txt and DIR/table.md (the joined table, printed last).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=3
quick=()
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift ;;
    --quick) quick=(--quick) ;;
    --out) out="$2"; shift ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-cpu: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="${out:-$target/deltadit-bench/cpu}"
py="${PYTHON:-python3}"
if ! "$py" -c "import torch, diffusers" 2>/dev/null; then
  echo "bench-cpu: $py cannot import torch and diffusers (set PYTHON; see --help)" >&2
  exit 1
fi
export DELTADIT_BENCH_DEVICE=cpu
export DELTADIT_BENCH_COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- 2>/dev/null || echo '+uncommitted')"
threads="$(nproc)"

echo "bench-cpu: building"
cargo build --release --bin deltadit -q
cargo bench --no-run -q 2>/dev/null || cargo bench --no-run
rm -rf "$out"
for i in $(seq 1 "$runs"); do
  d="$out/run-$i"
  mkdir -p "$d"
  export DELTADIT_BENCH_OUT="$d"
  echo "bench-cpu: run $i/$runs -> $d"
  cargo bench -q --bench kernels -- ${quick[@]+"${quick[@]}"} >"$d/kernels.log" 2>&1
  cargo bench -q --bench step -- ${quick[@]+"${quick[@]}"} >"$d/step.log" 2>&1
  "$target/release/deltadit" bench --device cpu --preset pixart-cpu-small --policies "none;delta" --runs 3 --warmup 1 \
    --threads "$threads" --json "$d/cli-pixart-cpu-small.json" >"$d/cli.log" 2>&1
  "$py" bench/torch_reference.py --device cpu --threads "$threads" ${quick[@]+"${quick[@]}"} --out "$d/torch-cpu.json" >"$d/torch.log" 2>&1
done
python3 scripts/bench-table.py "$out"/run-* --markdown >"$out/table.md"
python3 scripts/bench-table.py "$out"/run-* | tee "$out/table.txt"
