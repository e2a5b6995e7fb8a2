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
# Environment: PYTHON — a Python with torch and diffusers to use. Unset: python3 if it has them,
#   else a virtual environment of its own, DELTADIT_TORCH_VENV (default <target>/torch-venv),
#   which the first run creates with torch 2.11.0 and diffusers 0.42.1 from PyPI (PyPI's torch
#   wheel is the CUDA build: it runs on a CPU machine once pip has installed its nvidia-*
#   dependencies; ~3 GB, a few minutes, once).
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
has_torch() { "$1" -c "import torch, diffusers" 2>/dev/null; }
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
  has_torch "$py" || { echo "bench-cpu: PYTHON=$py cannot import torch and diffusers (see --help)" >&2; exit 1; }
elif has_torch python3; then
  py=python3
else
  venv="${DELTADIT_TORCH_VENV:-$target/torch-venv}"
  py="$venv/bin/python"
  if ! has_torch "$py"; then
    echo "bench-cpu: installing torch 2.11.0 and diffusers 0.42.1 from PyPI into $venv (~3 GB, once)"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      # Debian's python3 needs its venv module (ensurepip) from apt
      sudo_cmd=""
      [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
      $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "python3.$(python3 -c 'import sys; print(sys.version_info[1])')-venv" >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q torch==2.11.0 diffusers==0.42.1
    has_torch "$py" || { echo "bench-cpu: $py still cannot import torch and diffusers" >&2; exit 1; }
  fi
fi
echo "bench-cpu: PyTorch side: $py (torch $("$py" -c 'import torch; print(torch.__version__)'))"
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
