#!/usr/bin/env bash
# Builds, on a CPU machine, everything a GPU machine without a Rust toolchain needs to test and
# benchmark the CUDA backend: the release test and bench binaries (CUDA kernels compiled in by
# nvcc), the CLI, the golden test data and a runner (scripts/gpu-run.sh), in one folder.
#
# Usage: scripts/gpu-build.sh [--no-data] [--keep-debug] [--no-wheels] [--archive] [DIR]
#                                                                     (default DIR: <repo>/gpu-bundle)
#   --no-data     leave tests/data out (34 MB): the runner then uses the repository's tests/data
#                 when the bundle sits inside a checkout, or $DELTADIT_TEST_DATA
#   --keep-debug  keep the line tables in the binaries (bigger; file:line in backtraces)
#   --no-wheels   do not fetch the diffusers wheel (the GPU image has torch but not diffusers;
#                 bench/torch_reference.py then skips diffusers' forward)
#   --archive     also write DIR.tar.xz without tests/data (~16 MB instead of ~110 MB: it fits the
#                 64 MiB a device call carries; the runner finds the checkout's tests/data when the
#                 archive is unpacked into DIR inside the checkout) and print the device command
# Also bundled: bench/*.py, scripts/bench-table.py (as bench-table.py) and wheels/ (diffusers).
# Then on the GPU machine: DIR/run.sh --help
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/gpu-bundle"
with_data=1
strip_debug=1
wheels=1
archive=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-data) with_data=0 ;;
    --keep-debug) strip_debug=0 ;;
    --no-wheels) wheels=0 ;;
    --archive) archive=1 ;;
    -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "gpu-build: unknown option $1" >&2; exit 2 ;;
    *) out="$1" ;;
  esac
  shift
done

if [[ -n "${DELTADIT_NO_NVCC:-}" ]]; then
  echo "gpu-build: DELTADIT_NO_NVCC is set: the bundle would have no CUDA kernels" >&2
  exit 1
fi
# The pinned nvcc 13.0 (idempotent); build.rs finds it in .cuda/ by itself.
"$repo/scripts/install-cuda.sh"

cd "$repo"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "gpu-build: cargo build --release (CLI)"
cargo build --release --bins --message-format=json >"$tmp/bins.json"
echo "gpu-build: cargo test --release --no-run"
cargo test --release --no-run --message-format=json >"$tmp/tests.json"
echo "gpu-build: cargo bench --no-run"
cargo bench --no-run --message-format=json >"$tmp/benches.json"

# The built executables: "<kind> <name> <path>" per line (integration tests by file name, the
# library's and binaries' unit tests as lib-unittests / bin-<name>-unittests, benches by name).
python3 - "$tmp/tests.json" "$tmp/benches.json" "$tmp/bins.json" >"$tmp/list" <<'EOF'
import json, sys
seen = set()
for path, want in ((sys.argv[1], "test"), (sys.argv[2], "bench"), (sys.argv[3], "bin")):
    for line in open(path):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        kinds, name = m["target"]["kind"], m["target"]["name"]
        if want == "bin":
            if "bin" not in kinds or m["profile"]["test"]:
                continue
            kind = "bin"
        elif want == "bench":
            if "bench" not in kinds:
                continue
            kind = "bench"
        elif "test" in kinds:
            kind = "test"
        elif "lib" in kinds or "rlib" in kinds:
            kind, name = "test", "lib-unittests"
        elif "bin" in kinds:
            kind, name = "test", f"bin-{name}-unittests"
        else:
            continue
        if (kind, name) in seen:
            continue
        seen.add((kind, name))
        print(kind, name, m["executable"])
EOF

rm -rf "$out"
mkdir -p "$out/tests" "$out/benches" "$out/bin"
while read -r kind name path; do
  case "$kind" in
    test) dest="$out/tests/$name" ;;
    bench) dest="$out/benches/$name" ;;
    bin) dest="$out/bin/$name" ;;
  esac
  cp "$path" "$dest"
done <"$tmp/list"
if [[ "$strip_debug" == 1 ]]; then
  # Debug info only: symbol names stay for backtraces.
  for f in "$out"/tests/* "$out"/benches/* "$out"/bin/*; do
    strip --strip-debug "$f"
  done
fi
# The shim self-tests as a CUDA program (kernels/sim/gpu_selftest.cu): sm_80 SASS, and sm_90a for
# Hopper, where the wgmma case runs; cudart linked statically (the GPU image needs only the driver).
nvcc_bin="${NVCC:-$repo/.cuda/nvidia/cu13/bin/nvcc}"
echo "gpu-build: nvcc kernels/sim/gpu_selftest.cu"
"$nvcc_bin" -std=c++17 -O2 -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a \
  -cudart static -L "$(dirname "$nvcc_bin")/../lib" -I kernels kernels/sim/gpu_selftest.cu -o "$out/bin/gpu_selftest"
if [[ "$with_data" == 1 ]]; then
  cp -r tests/data "$out/data"
  # the trained reference models the golden cases on trained weights name (case.json "model")
  cp -r models "$out/models"
fi
if [[ -d bench ]]; then
  mkdir -p "$out/bench" && cp bench/*.py "$out/bench/" 2>/dev/null || true
fi
cp scripts/gpu-run.sh "$out/run.sh"
chmod +x "$out/run.sh"
cp scripts/bench-table.py "$out/bench-table.py"

# diffusers for bench/torch_reference.py (pure Python; its dependencies are on the GPU image:
# torch, huggingface-hub, safetensors, numpy, regex, requests, filelock, Pillow).
diffusers_pin="diffusers==0.42.1"
if [[ "$wheels" == 1 ]]; then
  mkdir -p "$out/wheels"
  cached="$(ls "$repo"/.whl/diffusers-0.42.1-*.whl 2>/dev/null | head -n 1 || true)"
  if [[ -n "$cached" ]]; then
    cp "$cached" "$out/wheels/"
  elif ! python3 -m pip download -q --no-deps --only-binary=:all: -d "$out/wheels" "$diffusers_pin" >"$tmp/pip.log" 2>&1; then
    echo "gpu-build: WARNING: pip download $diffusers_pin failed (diffusers' forward will be skipped on the GPU):" >&2
    tail -n 3 "$tmp/pip.log" >&2
  fi
fi

nvcc_path="$repo/.cuda/nvidia/cu13/bin/nvcc"
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
  echo "rustc: $(rustc --version)"
  echo "nvcc: $("${NVCC:-$nvcc_path}" --version 2>/dev/null | tail -n 1 || echo unknown)"
  echo "glibc: $(ldd --version 2>/dev/null | head -n 1)"
  echo "manifest_dir: $repo"
  # tests/cli.rs runs the CLI from the path cargo built it at (CARGO_BIN_EXE_deltadit)
  echo "cli_exe: $(awk '$1 == "bin" && $2 == "deltadit" {print $3}' "$tmp/list")"
  echo "data: $([[ "$with_data" == 1 ]] && echo included || echo 'not included')"
  echo "executables:"
  sed 's/^/  /' "$tmp/list"
} >"$out/manifest.txt"

size="$(du -sh "$out" | cut -f1)"
ntests="$(ls "$out/tests" | wc -l)"
nbench="$(ls "$out/benches" | wc -l)"
cat <<EOF
gpu-build: bundle ready: $out ($size; $ntests test binaries, $nbench benches, the CLI$([[ "$with_data" == 1 ]] && echo ", tests/data"))
  On the GPU machine (CUDA 13 driver; cuBLASLt 13 from the system or a pip wheel):
    $(basename "$out")/run.sh                # every test binary, compute-sanitizer memcheck + racecheck, benches
    $(basename "$out")/run.sh --quick        # gpu + golden + cpu_ops tests, memcheck on the op tests, quick
                                             # benches on pixart-alpha-1024 (~4–6 min; DELTADIT_GPU_QUICK=1 too)
    $(basename "$out")/run.sh --help
  Logs in $(basename "$out")/logs; with \$OUT set, run.log, summary.txt, bench-table.{txt,md,json} and
  results.tar.gz (every log and JSON) are copied there; the joined benchmark table is printed last.
EOF

if [[ "$archive" == 1 ]]; then
  arch="$out.tar.xz"
  tar -C "$out" --exclude=./data --exclude=./logs -cJf "$arch.tmp" . && mv "$arch.tmp" "$arch"
  rel="${arch#"$repo"/}"
  if [[ "$rel" != "$arch" ]] && ! git check-ignore -q "$rel" 2>/dev/null; then
    # keep it out of `git status` (a device call carries it by name)
    echo "/$rel" >>"$repo/.git/info/exclude"
  fi
  cat <<EOF
gpu-build: archive: $arch ($(du -h "$arch" | cut -f1), without tests/data)
  Device call from the repository root (carry: ["$rel"]):
    mkdir -p $(basename "$out") && tar -xJf $rel -C $(basename "$out") && DELTADIT_GPU_QUICK=1 $(basename "$out")/run.sh
EOF
fi
