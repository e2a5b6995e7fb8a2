#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, cicc, headers) from PyPI wheels into .cuda/ (git-ignored),
# plus cuobjdump/nvdisasm 13.2 (no 13.0 wheels exist; they read 13.0 fatbins) for the SASS checks.
# Idempotent: a second run only verifies the stamp file and exits.
#
# Usage: scripts/install-cuda.sh [DIR]      (default DIR: <repo>/.cuda)
# Afterwards: CUDA_HOME=DIR/nvidia/cu13, nvcc at $CUDA_HOME/bin/nvcc (build.rs finds it there by itself).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/.cuda}"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-cuobjdump==13.2.86
  nvidia-cuda-nvdisasm==13.2.86
)
stamp="$dir/.installed"
want="$(printf '%s\n' "${pins[@]}")"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dir/nvidia/cu13/bin/nvcc" ]]; then
  echo "install-cuda: pinned CUDA 13.0 toolchain already in $dir"
  exit 0
fi

python="${PYTHON:-$(command -v python3 || command -v python)}"
echo "install-cuda: installing ${#pins[@]} wheels into $dir (about 300 MB)"
mkdir -p "$dir"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$dir" "${pins[@]}"

cu="$dir/nvidia/cu13"
# The wheels install some tools without the executable bit; nvcc refuses to run cicc/ptxas otherwise.
find "$cu/bin" "$cu/nvvm/bin" -type f -exec chmod +x {} + 2>/dev/null || true
"$cu/bin/nvcc" --version | tail -n 2
printf '%s\n' "${pins[@]}" >"$stamp"
# build.rs watches kernels/ (cargo:rerun-if-changed): a crate built before this install must
# rerun it to find nvcc and the headers now (watching .cuda/ itself, absent on most machines,
# would rerun it on every build)
touch "$(dirname "${BASH_SOURCE[0]}")/../kernels/README.md"
echo "install-cuda: done; CUDA_HOME=$cu"
