#!/usr/bin/env bash
# Runs a bundle made by scripts/gpu-build.sh on a GPU machine (no Rust toolchain, no network
# needed): the shim's self-test kernels on the GPU (bin/gpu_selftest: the layouts the SIMT shim
# emulates, wgmma included on an H100/H200), every test binary, compute-sanitizer memcheck and
# racecheck on the GPU tests, then the
# benchmarks (kernel microbenches, whole-model benches, `deltadit bench`, the PyTorch/diffusers
# reference), a summary table, and the joined benchmark table LAST. In the bundle this is `run.sh`.
#
# Usage: run.sh [options]
#   --quick            (default when DELTADIT_GPU_QUICK=1) gpu + golden + cpu_ops tests; memcheck
#                      on the op/graph tests; no racecheck; benches in quick mode on one preset
#                      (pixart-alpha-1024): about 4–6 minutes on an H100/H200 (an estimate)
#   --full             the opposite of --quick (overrides DELTADIT_GPU_QUICK)
#   --no-tests         benchmarks only (no test binaries, no sanitizer)
#   --tests "A B"      only these test binaries (names in tests/, e.g. "gpu golden")
#   --skip "A B"       skip these test binaries (default: "bindings kernel_build", checks of the
#                      build machine's sources and nvcc output, meaningless here)
#   --filter "F …"     test-name filters passed to the gpu binary (all steps that run it)
#   --no-sanitizer     no compute-sanitizer steps
#   --no-racecheck     memcheck only
#   --no-bench         no benches
#   --no-profile       no Nsight Compute steps (ncu-*: the attention and memory-bound kernels of
#                      one pixart-alpha-1024 forward, each wgmma kernel's too, after the table)
#   --timeout S        per-step limit in seconds (default 900; 240 with --quick)
# Environment: OUT (set: the few files that matter are copied there after every step — run.log,
# summary.txt, bench-table.txt/.md/.json, ncu-summary.txt and results.tar.gz holding every log,
# JSON, ncu CSV and criterion file; at most 8 files), DELTADIT_LOGS (the log folder; default <bundle>/logs),
# DELTADIT_TEST_DATA (golden data; default the bundle's data/ or ../tests/data),
# DELTADIT_REQUIRE_GPU (default 1 here: the GPU tests fail without a GPU; 0: they skip),
# DELTADIT_CUDA_SYNC=1 (a failing kernel names itself), DELTADIT_CUDA_GRAPHS=0 (graphs off),
# DELTADIT_GPU_BUDGET (seconds of wall time the whole run may take: the optional ncu steps are
# skipped or cut short past it; default 540 with --quick, which fits a 600 s device call; 0: none).
# Exit status: 0 when every step passed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
quick=0
case "${DELTADIT_GPU_QUICK:-0}" in "" | 0 | false | no | off) ;; *) quick=1 ;; esac
tests_on=1
timeout_set=0
only=""
skip="bindings kernel_build"
filter=""
sanitizer=1
racecheck=1
bench=1
profile=1
step_timeout=900
run_start=$(date +%s)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --full) quick=0 ;;
    --no-tests) tests_on=0 ;;
    --tests) only="$2"; shift ;;
    --skip) skip="$2"; shift ;;
    --filter) filter="$2"; shift ;;
    --no-sanitizer) sanitizer=0 ;;
    --no-racecheck) racecheck=0 ;;
    --no-bench) bench=0 ;;
    --no-profile) profile=0 ;;
    --timeout) step_timeout="$2"; timeout_set=1; shift ;;
    -h | --help) sed -n '2,33p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ "$quick" == 1 ]]; then
  [[ -z "$only" ]] && only="gpu golden cpu_ops"
  racecheck=0
  [[ "$timeout_set" == 0 ]] && step_timeout=240
fi
budget="${DELTADIT_GPU_BUDGET:-}"
[[ -z "$budget" ]] && { [[ "$quick" == 1 ]] && budget=540 || budget=0; }
# seconds left of the run's budget (a large number when it has none)
time_left() { [[ "$budget" -gt 0 ]] && echo $((budget - ($(date +%s) - run_start))) || echo 1000000; }

if [[ -n "${DELTADIT_LOGS:-}" ]]; then
  logs="$DELTADIT_LOGS"
else
  logs="$here/logs"
  rm -rf "$logs"  # the bundle's own log folder: this run's files only
fi
mkdir -p "$logs"
summary=()
failed=0

note() { echo "run.sh: $*" | tee -a "$logs/run.log"; }

# pack: the files that come back from a GPU machine (at most 8) into $OUT, refreshed after every
# step so that a run cut short still returns what it did.
pack() {
  [[ -n "${OUT:-}" ]] || return 0
  mkdir -p "$OUT"
  local f
  for f in run.log summary.txt bench-table.txt bench-table.md bench-table.json ncu-summary.txt; do
    [[ -f "$logs/$f" ]] && cp "$logs/$f" "$OUT/$f"
  done
  tar -czf "$OUT/results.tar.gz.tmp" -C "$(dirname "$logs")" "$(basename "$logs")" 2>/dev/null &&
    mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
  return 0
}

# ---- environment ---------------------------------------------------------------------------------
: >"$logs/run.log"
note "bundle $here"
[[ -f "$here/manifest.txt" ]] && sed 's/^/  /' "$here/manifest.txt" | tee -a "$logs/run.log" >/dev/null
cc=""  # compute capability: "9.0" on an H100/H200 (the wgmma kernels' bench and profile passes)
if command -v nvidia-smi >/dev/null; then
  gpu_desc="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  note "GPU: ${gpu_desc:-nvidia-smi failed}"
  cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')"
else
  note "nvidia-smi not found"
fi

# cuBLASLt 13 may only exist inside a pip wheel (nvidia-cublas): find it under python3's
# site-packages when the dynamic loader cannot.
have_cublaslt() {
  ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so\.13' && return 0
  local d
  IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do
    [[ -n "$d" && -e "$d/libcublasLt.so.13" ]] && return 0
  done
  return 1
}
if have_cublaslt; then
  note "libcublasLt.so.13 found by the loader"
else
  lib=""
  if command -v python3 >/dev/null; then
    while read -r sp; do
      [[ -d "$sp/nvidia" ]] || continue
      lib="$(find "$sp/nvidia" -maxdepth 4 -name 'libcublasLt.so.13*' 2>/dev/null | sort | head -n 1)"
      [[ -n "$lib" ]] && break
    done < <(python3 - <<'EOF'
import site, sys
dirs = list(site.getsitepackages()) + [site.getusersitepackages()] + [p for p in sys.path if p.endswith("-packages")]
print("\n".join(dict.fromkeys(dirs)))
EOF
    )
  fi
  if [[ -n "$lib" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "libcublasLt.so.13 from $(dirname "$lib") (added to LD_LIBRARY_PATH)"
  else
    note "WARNING: libcublasLt.so.13 not found (system or pip wheels): the CUDA backend will fail to start"
  fi
fi

# Golden data: tests/gpu.rs reads $DELTADIT_TEST_DATA; other test binaries read the source
# tree's tests/data at the path they were built in (manifest_dir), recreated as a link if absent.
if [[ -z "${DELTADIT_TEST_DATA:-}" ]]; then
  for d in "$here/data" "$here/../tests/data"; do
    if [[ -d "$d/pixart-tiny" ]]; then
      export DELTADIT_TEST_DATA="$(cd "$d" && pwd)"
      break
    fi
  done
fi
note "test data: ${DELTADIT_TEST_DATA:-NOT FOUND (golden tests will fail)}"
mdir="$(sed -n 's/^manifest_dir: //p' "$here/manifest.txt" 2>/dev/null)"
if [[ -n "$mdir" && -n "${DELTADIT_TEST_DATA:-}" && ! -d "$mdir/tests/data" ]]; then
  if mkdir -p "$mdir/tests" 2>/dev/null && ln -sfn "$DELTADIT_TEST_DATA" "$mdir/tests/data" 2>/dev/null; then
    note "linked $mdir/tests/data -> $DELTADIT_TEST_DATA (for test binaries built with that path)"
  else
    note "cannot create $mdir/tests/data: test binaries other than gpu may not find the golden data"
  fi
fi

cli_exe="$(sed -n 's/^cli_exe: //p' "$here/manifest.txt" 2>/dev/null)"
if [[ -n "$cli_exe" && ! -e "$cli_exe" && -x "$here/bin/deltadit" ]]; then
  if mkdir -p "$(dirname "$cli_exe")" 2>/dev/null && ln -sfn "$here/bin/deltadit" "$cli_exe" 2>/dev/null; then
    note "linked $cli_exe -> $here/bin/deltadit (for tests/cli.rs)"
  else
    note "cannot create $cli_exe: the cli tests will not find the CLI"
  fi
fi

# ---- steps ---------------------------------------------------------------------------------------

# The wgmma attention kernels (src/backend/kernels/attention.rs); after the GPU tests, those that
# passed them are the ones sanitized and benchmarked.
wgmma_kernels="wgmma wgmma-qregs wgmma-qregs3"
wgmma_tested=0
wgmma_passed=()
last_status=""
# wgmma_list SEP: the wgmma kernels to go on with (all of them when no GPU test ran), joined by SEP.
wgmma_list() {
  local ks
  if [[ "$wgmma_tested" == 1 ]]; then ks=(${wgmma_passed[@]+"${wgmma_passed[@]}"}); else read -ra ks <<<"$wgmma_kernels"; fi
  local IFS="$1"
  echo "${ks[*]}"
}
wgmma_run() { [[ -n "$(wgmma_list ,)" ]]; }

# run_step NAME CMD…: runs with the step timeout (STEP_LIMIT overrides it for one call), logs to
# NAME.log, adds a summary row, leaves its status in last_status.
run_step() {
  local name="$1"
  shift
  local log="$logs/$name.log"
  local start end rc status detail
  note "step $name: $*"
  start=$(date +%s)
  timeout --kill-after=30 "${STEP_LIMIT:-$step_timeout}" "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s)
  local passed failed_n skipped
  passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
  failed_n=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
  skipped=$(grep -c '^skipped:\|\.\.\. skipped:' "$log")
  detail="${passed} passed, ${failed_n} failed"
  [[ "$skipped" -gt 0 ]] && detail="$detail, $skipped skipped"
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    status="TIMEOUT"
  elif [[ $rc -ne 0 ]]; then
    status="FAIL($rc)"
    grep -q "ERROR SUMMARY: [1-9]" "$log" && detail="$detail; $(grep -o 'ERROR SUMMARY: [0-9]* errors*' "$log" | tail -n 1)"
  elif [[ "$name" == *wgmma* && "$skipped" -gt 0 ]] && grep -q 'compute capability 9.0' "$log" && ! grep -q 'skipped: no CUDA' "$log"; then
    status="no-sm90a"  # a GPU without wgmma (not Hopper): nothing to run, not a failure
    detail="$detail; the wgmma kernel needs compute capability 9.0"
  elif [[ "$name" == gpu* || "$name" == memcheck* || "$name" == racecheck* ]] && [[ "$skipped" -gt 0 ]]; then
    status="NO-GPU"  # the GPU tests skipped on a machine that should have one
    detail="$detail; $(grep -m1 -o 'skipped: .*' "$log")"
  else
    status="ok"
  fi
  [[ "$status" != ok && "$status" != no-sm90a ]] && failed=1
  last_status="$status"
  last_secs=$((end - start))
  summary+=("$(printf '%-28s %-9s %6ss  %s' "$name" "$status" "$((end - start))" "$detail")")
  note "step $name: $status in $((end - start)) s"
  pack
}

want_test() {
  local n="$1" t
  for t in $skip; do [[ "$n" == "$t" ]] && return 1; done
  [[ -z "$only" ]] && return 0
  for t in $only; do [[ "$n" == "$t" ]] && return 0; done
  return 1
}

# The shim's self-test kernels on the hardware first (seconds): the fragment, ldmatrix, cp.async
# and wgmma layouts the SIMT shim emulates, checked against this GPU.
if [[ "$tests_on" == 1 && -x "$here/bin/gpu_selftest" ]]; then
  run_step gpu-selftest "$here/bin/gpu_selftest"
fi

# gpu first: it is the one this machine is for. On this machine a missing GPU fails the GPU tests
# (tests/gpu.rs) instead of skipping them; DELTADIT_REQUIRE_GPU=0 (a dry run elsewhere) skips again.
export DELTADIT_REQUIRE_GPU="${DELTADIT_REQUIRE_GPU:-1}"
tests=()
[[ -x "$here/tests/gpu" ]] && tests+=("$here/tests/gpu")
for t in "$here"/tests/*; do
  [[ -x "$t" && "$(basename "$t")" != gpu ]] && tests+=("$t")
done
read -ra gpu_filters <<<"$filter"
[[ "$tests_on" == 0 ]] && tests=() && sanitizer=0
for t in ${tests[@]+"${tests[@]}"}; do
  n="$(basename "$t")"
  want_test "$n" || continue
  if [[ "$n" == gpu && ${#gpu_filters[@]} -eq 0 ]]; then
    # The wgmma kernels have not run on hardware before: each in a process of its own, so that a
    # fault (which poisons the CUDA context) or a hang cannot take the other GPU tests with it;
    # only those that pass are benchmarked and sanitized below (a hang there would cost the JSON).
    run_step "$n" "$t" --test-threads=1 --nocapture --skip wgmma
    wgmma_passed=()
    for k in $wgmma_kernels; do
      DELTADIT_WGMMA_KERNELS="$k" STEP_LIMIT=$((step_timeout < 150 ? step_timeout : 150)) \
        run_step "gpu-$k" "$t" --test-threads=1 --nocapture wgmma
      [[ "$last_status" == ok ]] && grep -q "attention kernel $k" "$logs/gpu-$k.log" && wgmma_passed+=("$k")
    done
    wgmma_tested=1
  elif [[ "$n" == gpu ]]; then
    run_step "$n" "$t" --test-threads=1 --nocapture "${gpu_filters[@]}"
  else
    run_step "$n" "$t"
  fi
done

if [[ "$sanitizer" == 1 && -x "$here/tests/gpu" ]]; then
  if command -v compute-sanitizer >/dev/null; then
    cs=(compute-sanitizer --error-exitcode 86 --print-limit 50)
    if [[ "$quick" == 1 && ${#gpu_filters[@]} -eq 0 ]]; then
      mem_filters=(linear_ norm_modulate qk_norm residual_ activation_ timestep_ patchify cfg_ scheduler_ rel_l1 memory_ sanitize_ graph_units)
    else
      mem_filters=(${gpu_filters[@]+"${gpu_filters[@]}"})
    fi
    # wgmma in processes of their own, as above
    wskip=()
    [[ ${#gpu_filters[@]} -eq 0 ]] && wskip=(--skip wgmma)
    run_step memcheck "${cs[@]}" --tool memcheck "$here/tests/gpu" --test-threads=1 --nocapture ${wskip[@]+"${wskip[@]}"} \
      ${mem_filters[@]+"${mem_filters[@]}"}
    [[ ${#gpu_filters[@]} -eq 0 ]] && wgmma_run && DELTADIT_WGMMA_KERNELS="$(wgmma_list ,)" \
      run_step memcheck-wgmma "${cs[@]}" --tool memcheck "$here/tests/gpu" --test-threads=1 --nocapture sanitize_attention_wgmma
    if [[ "$racecheck" == 1 ]]; then
      race_filters=(sanitize_ norm_modulate residual_ activation_ rel_l1 memory_)
      [[ ${#gpu_filters[@]} -gt 0 ]] && race_filters=("${gpu_filters[@]}")
      run_step racecheck "${cs[@]}" --tool racecheck "$here/tests/gpu" --test-threads=1 --nocapture ${wskip[@]+"${wskip[@]}"} \
        "${race_filters[@]}"
      [[ ${#gpu_filters[@]} -eq 0 ]] && wgmma_run && DELTADIT_WGMMA_KERNELS="$(wgmma_list ,)" \
        run_step racecheck-wgmma "${cs[@]}" --tool racecheck "$here/tests/gpu" --test-threads=1 --nocapture sanitize_attention_wgmma
    fi
  else
    note "compute-sanitizer not found: sanitizer steps skipped"
    summary+=("$(printf '%-28s %-9s %6s   %s' sanitizer "missing" "-" "compute-sanitizer not on PATH")")
  fi
fi

# ---- benchmarks ----------------------------------------------------------------------------------
# benches/kernels and benches/step (criterion; their JSON into bench-json/), `deltadit bench` with
# --json, bench/torch_reference.py (PyTorch SDPA/eager ops and diffusers' forward at the same
# shapes), then bench-table.py joins them. Quick: criterion's --quick, pixart-alpha-1024 only.
if [[ "$bench" == 1 ]]; then
  bj="$logs/bench-json"
  mkdir -p "$bj"
  # DELTADIT_BENCH_DEVICE=cpu makes a dry run of this section on a machine without a GPU
  bdev="${DELTADIT_BENCH_DEVICE:-cuda}"
  export CRITERION_HOME="$logs/criterion" DELTADIT_BENCH_OUT="$bj" DELTADIT_BENCH_DEVICE="$bdev"
  # the wgmma kernels' bench rows: those whose GPU tests passed above (all when no tests ran)
  export DELTADIT_BENCH_ATTENTION_KERNELS="$(wgmma_list ,)"
  [[ "$wgmma_tested" == 1 ]] && note "wgmma kernels benchmarked: ${DELTADIT_BENCH_ATTENTION_KERNELS:-none} (of $wgmma_kernels)"
  DELTADIT_BENCH_COMMIT="$(sed -n 's/^commit: //p' "$here/manifest.txt" 2>/dev/null | head -n 1)"
  export DELTADIT_BENCH_COMMIT="${DELTADIT_BENCH_COMMIT:-unknown}"
  qa=()
  [[ "$quick" == 1 ]] && qa=(--quick)
  for b in kernels step; do
    [[ -x "$here/benches/$b" ]] && run_step "bench-$b" "$here/benches/$b" --bench ${qa[@]+"${qa[@]}"}
  done
  for b in "$here"/benches/*; do  # any other bench binary
    n="$(basename "$b")"
    [[ -x "$b" && "$n" != kernels && "$n" != step ]] && run_step "bench-$n" "$b" --bench ${qa[@]+"${qa[@]}"}
  done
  if [[ -x "$here/bin/deltadit" ]]; then
    if [[ "$quick" == 1 ]]; then cli_presets="pixart-alpha-1024"; cli_runs=2; else cli_presets="pixart-alpha-1024 dit-xl-2-256"; cli_runs=3; fi
    [[ -n "${DELTADIT_BENCH_PRESETS:-}" ]] && cli_presets="${DELTADIT_BENCH_PRESETS//,/ }"  # as the benches
    for p in $cli_presets; do
      run_step "bench-cli-$p" "$here/bin/deltadit" bench --device "$bdev" --preset "$p" --policies "none;delta" \
        --runs "$cli_runs" --warmup 1 --json "$bj/cli-$p.json"
    done
    # The same with each wgmma attention kernel on Hopper (rows labelled "cuda (<kernel> attention)").
    if [[ "$bdev" == cuda && "$cc" == 9.0 ]]; then
      for k in $(wgmma_list " "); do
        for p in $cli_presets; do
          run_step "bench-cli-$k-$p" env DELTADIT_ATTENTION="$k" "$here/bin/deltadit" bench --device cuda --preset "$p" \
            --policies "none;delta" --runs "$cli_runs" --warmup 1 --json "$bj/cli-$k-$p.json"
        done
      done
    fi
  fi
  if [[ -f "$here/bench/torch_reference.py" ]] && command -v python3 >/dev/null; then
    # diffusers is not on the GPU image: install the bundled wheel(s) into a private folder
    if ! python3 -c "import diffusers" 2>/dev/null && compgen -G "$here/wheels/*.whl" >/dev/null; then
      site="${TMPDIR:-/tmp}/deltadit-site"
      if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$here"/wheels/*.whl \
        >"$logs/pip-wheels.log" 2>&1; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        note "installed $(cd "$here/wheels" && ls *.whl | tr '\n' ' ')into $site"
      else
        note "WARNING: installing the bundled wheels failed (see pip-wheels.log): diffusers' forward will be skipped"
      fi
    fi
    export PYTHONUNBUFFERED=1
    run_step torch-reference python3 "$here/bench/torch_reference.py" --device "$bdev" \
      ${qa[@]+"${qa[@]}"} --out "$bj/torch-$bdev.json"
  fi
fi

# ---- summary -------------------------------------------------------------------------------------
# print_summary [FINAL]: the step table into summary.txt (rewritten: the profile steps add rows
# after a first one), into run.log and the output only when FINAL.
print_summary() {
  {
    echo
    echo "summary (logs in $logs)"
    printf '%-28s %-9s %7s  %s\n' step status time detail
    printf '%s\n' ${summary[@]+"${summary[@]}"}
  } >"$logs/summary.txt"
  [[ -n "${1:-}" ]] && tee -a "$logs/run.log" <"$logs/summary.txt"
  return 0
}
print_summary
if [[ "$bench" == 1 && -f "$here/bench-table.py" ]] && command -v python3 >/dev/null; then
  python3 "$here/bench-table.py" "$bj" --commit "$DELTADIT_BENCH_COMMIT" --markdown >"$logs/bench-table.md" 2>&1
  python3 "$here/bench-table.py" "$bj" --commit "$DELTADIT_BENCH_COMMIT" --json "$logs/bench-table.json" >"$logs/bench-table.txt" 2>&1
fi
pack

# ---- profile (diagnostic) ------------------------------------------------------------------------
# Nsight Compute on the attention and memory-bound kernels of one pixart-alpha-1024 forward, with
# the default attention kernel and with each wgmma kernel that passed its tests: why each runs as
# fast as it does (bench/ncu_summary.py: throughputs, occupancy, tensor pipes, bank conflicts, stall
# reasons). After the table is made, within the run's time budget, and never a failure of the run:
# ncu cannot read the counters on every machine (not under gVisor).
if [[ "$profile" == 1 && "${DELTADIT_BENCH_DEVICE:-cuda}" == cuda && -x "$here/bin/deltadit" ]]; then
  if command -v ncu >/dev/null; then
    nd="$logs/ncu"
    ncu_tmp="${TMPDIR:-/tmp}/deltadit-ncu"
    mkdir -p "$nd" "$ncu_tmp"
    # Metrics beyond the detailed set, where this GPU has them: the tensor pipes' busy share (hmma:
    # mma.sync; gmma: Hopper's wgmma).
    extra=()
    timeout 60 ncu --query-metrics >"$nd/query-metrics.txt" 2>&1
    for m in sm__pipe_tensor_op_hmma_cycles_active sm__pipe_tensor_op_gmma_cycles_active; do
      grep -qw "$m" "$nd/query-metrics.txt" && extra+=("$m.avg.pct_of_peak_sustained_active")
    done
    metrics=()
    [[ ${#extra[@]} -gt 0 ]] && metrics=(--metrics "$(IFS=,; echo "${extra[*]}")")
    ncu_working=1
    ncu_done=()  # the captures with CSV, in the order they ran
    # ncu_capture NAME REGEX COUNT [VAR=VALUE…]: the first COUNT launches of the kernels REGEX
    # names in one sampling step (CFG batch 2, CUDA graphs off), into $nd/NAME.{details,raw}.csv.
    ncu_capture() {
      local name="$1" regex="$2" count="$3"
      shift 3
      local left=$(($(time_left) - 20)) row
      if [[ "$ncu_working" == 0 || "$left" -lt 60 ]]; then
        if [[ "$ncu_working" == 0 ]]; then row="an earlier ncu step failed"; else row="the run's time budget is spent (DELTADIT_GPU_BUDGET=$budget s)"; fi
        note "step ncu-$name: skipped: $row"
        summary+=("$(printf '%-28s %-9s %6s   %s' "ncu-$name" skipped - "$row")")
        return 0
      fi
      local failed_before=$failed rep="$ncu_tmp/$name"
      rm -f "$rep.ncu-rep"
      STEP_LIMIT=$((left < 150 ? left : 150)) run_step "ncu-$name" env "$@" DELTADIT_CUDA_GRAPHS=0 \
        ncu --clock-control none --set detailed ${metrics[@]+"${metrics[@]}"} --kernel-name "regex:$regex" \
        --launch-count "$count" --force-overwrite --export "$rep" \
        "$here/bin/deltadit" bench --device cuda --preset pixart-alpha-1024 --policies none --steps 1 --runs 1 --warmup 0
      failed=$failed_before  # diagnostic: a failure here does not fail the run
      local detail
      if [[ "$last_status" == ok && -s "$rep.ncu-rep" ]]; then
        ncu -i "$rep.ncu-rep" --csv --page details --print-units base >"$nd/$name.details.csv" 2>>"$logs/ncu-$name.log"
        ncu -i "$rep.ncu-rep" --csv --page raw --print-units base >"$nd/$name.raw.csv" 2>>"$logs/ncu-$name.log"
        ncu_done+=("$nd/$name.details.csv")
        detail="$(grep '^"' "$nd/$name.details.csv" 2>/dev/null | awk -F'","' 'NR > 1 {print $1}' | sort -u | wc -l) kernel launches profiled"
      else
        ncu_working=0
        detail="diagnostic, not a failure: $(grep -m1 -o '==ERROR==.*\|==WARNING== No kernels.*' "$logs/ncu-$name.log" || echo 'no report')"
      fi
      summary[${#summary[@]} - 1]="$(printf '%-28s %-9s %6ss  %s' "ncu-$name" "$last_status" "$last_secs" "$detail")"
      pack
    }
    # one block's norm_modulate (2), self- and cross-attention, gated residuals (3)
    ncu_capture default '^(attention|norm_modulate|residual)' 7
    if [[ "$cc" == 9.0 ]]; then
      for k in $(wgmma_list " "); do ncu_capture "$k" '^attention' 2 DELTADIT_ATTENTION="$k"; done
    fi
    rm -rf "$ncu_tmp"
    if [[ ${#ncu_done[@]} -gt 0 ]] && command -v python3 >/dev/null; then
      python3 "$here/bench/ncu_summary.py" --json "$nd/ncu-summary.json" "${ncu_done[@]}" >"$logs/ncu-summary.txt" 2>&1
    fi
  else
    note "ncu not found: profile steps skipped"
    summary+=("$(printf '%-28s %-9s %6s   %s' ncu "missing" "-" "Nsight Compute (ncu) not on PATH")")
  fi
fi

print_summary final
pack
[[ -s "$logs/ncu-summary.txt" ]] && { echo; cat "$logs/ncu-summary.txt"; }
# the joined table LAST
[[ -s "$logs/bench-table.txt" ]] && cat "$logs/bench-table.txt"
exit "$failed"
