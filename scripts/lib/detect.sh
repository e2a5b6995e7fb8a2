# Detection of what the test command needs, as the tools that load it look for it. Sourced by
# scripts/test.sh; scripts/tests/detect.sh runs these functions against fake file trees.
#
# Every function takes an optional ROOT (default /) under which the system directories are looked
# up, so a test can build a machine state (a fresh Debian with only libclang-cpp, say) in a
# temporary folder.

# The libclang that bindgen (clang-sys, `runtime` loading) would open, printed as a path; status 1
# when there is none. clang-sys searches $LIBCLANG_PATH, `llvm-config --libdir`, then these
# directory globs, for files named libclang.so, libclang-*.so, libclang.so.* or libclang-*.so.*,
# and skips any name containing "-cpp." (libclang-cpp is the C++ library, which has no C API and
# cannot stand in for libclang: Debian installs it by default, without libclang itself).
find_libclang() {
  local root="${1:-}" dir f name
  local -a dirs=()
  [[ -n "${LIBCLANG_PATH:-}" ]] && dirs+=("$LIBCLANG_PATH")
  if [[ -z "$root" ]] && command -v llvm-config >/dev/null 2>&1; then
    dirs+=("$(llvm-config --libdir 2>/dev/null)")
  fi
  local -a globs=(/usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* /usr/lib*/*/* /usr/lib*/* /usr/lib*)
  local g
  for g in "${globs[@]}"; do
    for dir in "$root"$g; do
      [[ -d "$dir" ]] && dirs+=("$dir")
    done
  done
  for dir in "${dirs[@]}"; do
    for f in "$dir"/libclang.so "$dir"/libclang-*.so "$dir"/libclang.so.* "$dir"/libclang-*.so.*; do
      name="${f##*/}"
      [[ -e "$f" && "$name" != *-cpp.* ]] || continue
      echo "$f"
      return 0
    done
  done
  return 1
}

# The python3 the tests run (tests/bench_table.rs, tests/ncu_summary.rs call `python3`), or
# status 1. ROOT: look only in ROOT/usr/bin and ROOT/usr/local/bin (tests); without it, $PATH.
find_python3() {
  local root="${1:-}"
  if [[ -z "$root" ]]; then
    command -v python3 && return 0
    return 1
  fi
  local d
  for d in "$root/usr/local/bin" "$root/usr/bin"; do
    [[ -x "$d/python3" ]] && { echo "$d/python3"; return 0; }
  done
  return 1
}

# Runs apt-get as root (through sudo when not root).
apt_install() {
  local sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
