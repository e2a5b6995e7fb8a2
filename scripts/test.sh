#!/usr/bin/env bash
# The test command (README, CI): installs what the checks need, then runs every test in release
# mode with the kernel toolchain required, so kernels are compiled by nvcc, checked (ptxas spills,
# SASS) and run through the SIMT shim. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# bindgen (tests/bindings.rs) needs libclang at test time.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libclang; then
  echo "test.sh: installing libclang-dev (for the bindgen check)"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq libclang-dev >/dev/null
fi

scripts/install-cuda.sh

export DELTADIT_REQUIRE_KERNELS=1
# --all-targets: the benches run once in test mode, so they are built and exercised too.
exec cargo test --release --all-targets "$@"
