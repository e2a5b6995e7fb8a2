#!/usr/bin/env bash
# Tests scripts/lib/detect.sh on fake file trees: the machine states a fresh clone meets.
# Exit status 0 when every case gives the expected answer.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/detect.sh
source "$here/../lib/detect.sh"
unset LIBCLANG_PATH
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0

# case NAME EXPECT(found|missing) FILE...: a root holding exactly FILEs (empty files, symlinks kept simple)
case_libclang() {
  local name="$1" expect="$2"
  shift 2
  local root="$tmp/$name"
  mkdir -p "$root"
  local f
  for f in "$@"; do
    mkdir -p "$root/$(dirname "$f")"
    : >"$root/$f"
  done
  local got
  if got="$(find_libclang "$root")"; then got="found ${got#"$root"}"; else got="missing"; fi
  if [[ "$got" == "$expect"* ]]; then
    echo "ok    libclang: $name -> $got"
  else
    echo "FAIL  libclang: $name -> $got (expected $expect)"
    failed=1
  fi
}

# Debian 12 as shipped: libclang-cpp (the C++ library) and LLVM, but no libclang.
case_libclang debian-default missing \
  usr/lib/x86_64-linux-gnu/libclang-cpp.so.14 usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/llvm-14/lib/libLLVM-14.so
# libclang1-14 (what libclang-dev pulls in): the versioned library only.
case_libclang libclang1 "found /usr/lib/x86_64-linux-gnu/libclang-14.so.1" \
  usr/lib/x86_64-linux-gnu/libclang-cpp.so.14 usr/lib/x86_64-linux-gnu/libclang-14.so.1
# libclang-14-dev: the unversioned name in LLVM's own folder.
case_libclang libclang-dev "found /usr/lib/llvm-14/lib/libclang.so" usr/lib/llvm-14/lib/libclang.so
# A hand-built LLVM under /usr/local.
case_libclang local-llvm "found /usr/local/llvm-18/lib/libclang.so.18" usr/local/llvm-18/lib/libclang.so.18
# Nothing at all.
case_libclang empty missing usr/lib/libfoo.so

# LIBCLANG_PATH wins, as it does for clang-sys.
mkdir -p "$tmp/custom"
: >"$tmp/custom/libclang.so"
if [[ "$(LIBCLANG_PATH="$tmp/custom" find_libclang "$tmp/empty")" == "$tmp/custom/libclang.so" ]]; then
  echo "ok    libclang: LIBCLANG_PATH"
else
  echo "FAIL  libclang: LIBCLANG_PATH not honoured"
  failed=1
fi

# python3: a root without it, and one with it.
mkdir -p "$tmp/nopy/usr/bin" "$tmp/py/usr/bin"
: >"$tmp/nopy/usr/bin/python3.11"
printf '#!/bin/sh\n' >"$tmp/py/usr/bin/python3"
chmod +x "$tmp/py/usr/bin/python3"
if ! find_python3 "$tmp/nopy" >/dev/null && [[ "$(find_python3 "$tmp/py")" == "$tmp/py/usr/bin/python3" ]]; then
  echo "ok    python3: missing and present"
else
  echo "FAIL  python3 detection"
  failed=1
fi
exit "$failed"
