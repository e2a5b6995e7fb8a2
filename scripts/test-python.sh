#!/usr/bin/env bash
# The Python package's tests (python/tests, pytest), in one command:
#   1. `cargo build --release` of the CLI (target/release/deltadit: the cache tests compare the
#      accelerated pipelines with `deltadit sample` on the same inputs);
#   2. the project venv (.venv/, scripts/python-env.sh: torch, diffusers, pytest, maturin, pinned
#      in scripts/requirements.txt; created once, ~3 GB the first time);
#   3. `pip install .` of the package into it (maturin builds python/ in release, its cargo
#      outputs in python/target; no build isolation: the venv's pinned maturin, nothing fetched);
#   4. pytest, with any arguments given to this script (e.g. -k cache, -x).
# Tests that need a GPU skip with their reason where there is none.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

py="$(scripts/python-env.sh)"
venv_bin="$(dirname "$py")"
# maturin's PEP 517 backend runs `maturin` from PATH; cargo must be there too
export PATH="$venv_bin:$HOME/.cargo/bin:$PATH"

echo "test-python: cargo build --release (the CLI, for the comparisons with deltadit sample)" >&2
cargo build --release --bin deltadit

echo "test-python: pip install . (maturin, python/ in release)" >&2
"$py" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -q "$repo"

cd "$repo"
export DELTADIT_CLI="$repo/target/release/deltadit"
exec "$py" -m pytest python/tests -q -rs "$@"
