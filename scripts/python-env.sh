#!/usr/bin/env bash
# The project's Python environment: creates .venv/ at the repository root (once) with the exact
# pins of scripts/requirements.txt from PyPI, and prints the path of its python on stdout (the
# only thing printed there; progress goes to stderr), so that other scripts can do
#   py="$(scripts/python-env.sh)"
# Idempotent and fast when done: a stamp (.venv/.requirements.sha256) records which
# requirements.txt the environment was installed from; a changed file reinstalls into it.
# Environment: PYTHON3 — the interpreter to build the venv from (default python3, 3.11 tested);
#   DELTADIT_VENV — another place for the venv (default <repo>/.venv).
# A fresh Debian python3 lacks ensurepip: then python3.X-venv is installed with apt-get (sudo
# only when not root). PyPI's torch wheel is the CUDA build (~3 GB with its nvidia-* wheels); it
# runs on the CPU. First install: a few minutes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DELTADIT_VENV:-$repo/.venv}"
req="$repo/scripts/requirements.txt"
base="${PYTHON3:-python3}"
py="$venv/bin/python"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$py"
  exit 0
fi

if [[ ! -x "$py" ]] || ! "$py" -m pip --version >/dev/null 2>&1; then
  echo "python-env: creating $venv with $("$base" --version 2>&1)" >&2
  rm -rf "$venv"
  if ! "$base" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 needs its venv module (ensurepip) from apt
    minor="$("$base" -c 'import sys; print(sys.version_info[1])')"
    sudo_cmd=""
    [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
    echo "python-env: installing python3.$minor-venv with apt-get" >&2
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "python3.$minor-venv" >&2
    rm -rf "$venv"
    "$base" -m venv "$venv" >&2
  fi
fi
echo "python-env: installing scripts/requirements.txt into $venv (~3 GB the first time)" >&2
"$py" -m pip install -q --disable-pip-version-check -r "$req" >&2
"$py" -c "import torch, diffusers, sklearn, safetensors, PIL, numpy" >&2
echo "$want" >"$stamp"
echo "$py"
