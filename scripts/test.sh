#!/usr/bin/env bash
# The test command (README, CI). Installs what the checks need, then runs every check and reports
# each failing one at the end instead of stopping at the first:
#   detect    scripts/tests/detect.sh: the install checks below, on fake machine states
#   fmt       cargo fmt --check
#   clippy    cargo clippy --all-targets, warnings denied
#   doc       cargo doc of the library, warnings denied
#   lib-only  the library without default features (no CLI dependencies) builds
#   tests     every test, bench (in test mode) and example target in release mode, with the kernel
#             toolchain required (kernels compiled by nvcc, checked, and run through the SIMT shim);
#             --no-fail-fast, so every failing test binary is reported
#   doctests  the examples in the documentation and README.md
#   examples  examples/ run on the golden checkpoints
#   python    scripts/test-python.sh: the Python package (python/) built into the project venv and
#             its pytest suite (tiny diffusers pipelines, accelerated vs not)
# Extra arguments go to the `tests` step's `cargo test`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/detect.sh
source scripts/lib/detect.sh

# bindgen (tests/bindings.rs) loads libclang at test time.
if ! lib="$(find_libclang)"; then
  echo "test.sh: no loadable libclang (only libclang-cpp, or nothing); installing libclang-dev"
  apt_install libclang-dev || { echo "test.sh: apt-get install libclang-dev failed" >&2; exit 1; }
  lib="$(find_libclang)" || { echo "test.sh: libclang-dev installed, yet no libclang found" >&2; exit 1; }
fi
echo "test.sh: libclang: $lib"
# tests/bench_table.rs and tests/ncu_summary.rs run the scripts in scripts/ and bench/ with python3.
if ! find_python3 >/dev/null; then
  echo "test.sh: installing python3"
  apt_install python3 || { echo "test.sh: apt-get install python3 failed" >&2; exit 1; }
fi
scripts/install-cuda.sh || { echo "test.sh: installing the CUDA toolchain failed" >&2; exit 1; }

export DELTADIT_REQUIRE_KERNELS=1
failed=()
step() {
  local name="$1"
  shift
  echo
  echo "==== test.sh: $name: $*"
  local start=$SECONDS
  if "$@"; then
    echo "==== test.sh: $name: ok ($((SECONDS - start)) s)"
  else
    echo "==== test.sh: $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

lib_only() {
  cargo build --release --lib --no-default-features || return 1
  # A program that links only the library does not pull in the CLI's dependencies.
  local deps
  deps="$(cargo tree --no-default-features -e normal --prefix none)" || return 1
  if grep -E '^(clap|indicatif) ' <<<"$deps"; then
    echo "the library without default features depends on the CLI crates above" >&2
    return 1
  fi
}

run_examples() {
  local ex
  for ex in forward:tests/data/pixart-tiny sample_delta:tests/data/pixart-tiny-delta-n2-nc4-b12 custom_policy:tests/data/pixart-tiny-delta-n2-nc4-b12; do
    cargo run --release --quiet --example "${ex%%:*}" -- "${ex#*:}" || return 1
  done
}

step detect scripts/tests/detect.sh
step fmt cargo fmt --check
step clippy cargo clippy --release --all-targets -- -D warnings
step doc env RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --lib
step lib-only lib_only
step tests cargo test --release --all-targets --no-fail-fast "$@"
step doctests cargo test --release --doc
step examples run_examples
step python scripts/test-python.sh

echo
if ((${#failed[@]})); then
  echo "test.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "test.sh: all checks passed"
