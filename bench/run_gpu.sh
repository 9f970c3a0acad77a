#!/usr/bin/env bash
# The one command a GPU session runs (from the repository root):
#
#   bash bench/run_gpu.sh                 # all steps: build test sm90 sanitize90 bench decode memcheck ncu
#   bash bench/run_gpu.sh build test      # only some steps, in the order given
#
# Steps: build     pip install --no-build-isolation -v . (TORCH_CUDA_ARCH_LIST=9.0 unless set)
#        test      python -m pytest --maxfail=30 -q (the whole suite, on the GPU; tests/test_sm90.py
#                  checks the Hopper kernel and the portable one against each other)
#        test90    python -m pytest tests/test_sm90.py only (Hopper kernel vs reference and vs sm80)
#        sm90      python bench/bench_sm90.py --quick: ours (sm90) vs ours (sm80) vs FlexAttention
#        bench     python bench/bench_attention.py --quick
#        decode    python bench/bench_decode.py --quick
#        memcheck  compute-sanitizer --tool memcheck on a small CUDA test subset
#        sanitize90 compute-sanitizer memcheck + racecheck on bench/sm90_smoke.py (Hopper path)
#        ncu       Nsight Compute (--set full) of the Hopper kernel on the headline
#                  shape, when ncu exists: bench/results/ncu_sm90_<stamp>.ncu-rep
#
# Made for 10-minute commands on a machine with torch and nvcc preinstalled
# and no internet (nothing is installed from the network): the whole run keeps
# to SWA_GPU_BUDGET_S seconds (default 560), each step gets a `timeout` of
# min(its cap, what is left), a failing step is recorded and the next one
# still runs. Everything goes to one log; the log, the benchmark JSON/PNG
# files and a summary land in $OUT (when set) and in bench/results/.
#
# Environment: SWA_GPU_BUDGET_S, TORCH_CUDA_ARCH_LIST (default 9.0),
# SWA_HEAD_DIMS / SWA_DTYPES / MAX_JOBS (passed to the build),
# SWA_MEMCHECK_ARGS (pytest arguments of the memcheck step),
# SWA_BENCH_ARGS / SWA_DECODE_ARGS (extra arguments, e.g. "--series headline").
set -o pipefail
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET="${SWA_GPU_BUDGET_S:-560}"
START=$(date +%s)
STAMP=$(date +%Y-%m-%d_%H%M%S)
RESULTS="$REPO/bench/results"
mkdir -p "$RESULTS" build
LOG="$RESULTS/run_gpu_${STAMP}.log"
MARK="build/.run_gpu_start_$STAMP"  # the results newer than this are this run's
touch "$MARK"
exec 3>&1 4>&2
exec > >(tee -a "$LOG") 2>&1

STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build test sm90 sanitize90 bench decode memcheck ncu)
# cap (seconds) per step; the real timeout is min(cap, time left - reserve)
declare -A CAP=([build]=300 [test]=180 [test90]=150 [sm90]=150 [bench]=300 [decode]=120 [memcheck]=150 [sanitize90]=120
                [ncu]=120)
RESERVE=15  # for the summary and the copies
SUMMARY=()
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }

# run_step NAME: runs step_NAME in its own bash under timeout (which kills the
# step's whole process group), records status and time. The step sees its
# limit in STEP_LIMIT.
run_step() {
  local name=$1
  local left=$(( BUDGET - $(elapsed) - RESERVE ))
  local cap=${CAP[$name]}
  local limit=$(( left < cap ? left : cap ))
  if [ "$limit" -lt 20 ]; then
    echo "== $name: SKIPPED (out of time: ${left}s left of ${BUDGET}s) =="
    SUMMARY+=("$(printf '%-9s %-30s %6s' "$name" "skipped (out of time)" "-")")
    FAILED=$((FAILED + 1))
    return
  fi
  echo
  echo "== $name (timeout ${limit}s, t=$(elapsed)s) =="
  local t0
  t0=$(date +%s)
  STEP_LIMIT=$limit timeout --kill-after=10 "$limit" bash -c "step_$name"
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${limit}s"
  elif [ $rc -eq 3 ] && [ "$name" = memcheck ]; then status="UNSUPPORTED (no compute-sanitizer)"
  elif [ $rc -eq 3 ] && [ "$name" = sanitize90 ]; then status="UNSUPPORTED (no compute-sanitizer)"
  elif [ $rc -eq 3 ] && [ "$name" = ncu ]; then status="UNSUPPORTED (no ncu)"
  elif [ $rc -ne 0 ]; then status="FAILED (rc=$rc)"; fi
  echo "== $name: $status in ${dt}s =="
  case "$status" in ok|UNSUPPORTED*) ;; *) FAILED=$((FAILED + 1)) ;; esac
  SUMMARY+=("$(printf '%-9s %-30s %5ss' "$name" "$status" "$dt")")
}

step_build() {
  echo "nvcc: $(command -v nvcc || echo 'not on PATH') | cmake: $(command -v cmake || echo missing)" \
       "| ninja: $(command -v ninja || echo missing)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  local t0
  t0=$(date +%s)
  # --no-deps --no-index: torch is preinstalled and there is no internet.
  "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v . >build/pip-install.log 2>&1
  local rc=$?
  grep -E "^swa_cuda:|error:|Error" build/pip-install.log | head -n 40
  [ $rc -ne 0 ] && tail -n 80 build/pip-install.log
  echo "build took $(( $(date +%s) - t0 )) s (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS," \
       "SWA_HEAD_DIMS=${SWA_HEAD_DIMS:-all}, SWA_DTYPES=${SWA_DTYPES:-all})"
  return $rc
}

# From tests/: at the repository root Python would import the unbuilt source
# folder swa_cuda/ instead of the installed package.
step_test() {
  # --maxfail, not -x: one shot on a GPU must show every failing area, not the first.
  cd "$REPO/tests" && "$PYTHON" -m pytest --maxfail=30 -q -rfEs -p no:cacheprovider
}

step_test90() {
  cd "$REPO/tests" && "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider test_sm90.py
}

find_sanitizer() {
  local sanitizer root cand nvcc_root
  sanitizer=$(command -v compute-sanitizer || true)
  nvcc_root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent/bin/nvcc)")")")
  for root in "${CUDA_HOME:-}" "$nvcc_root" /usr/local/cuda /usr/local/cuda-13.0; do
    for cand in "$root/bin/compute-sanitizer" "$root/compute-sanitizer/compute-sanitizer"; do
      if [ -z "$sanitizer" ] && [ -n "$root" ] && [ -x "$cand" ]; then sanitizer="$cand"; fi
    done
  done
  echo "$sanitizer"
}

# The Hopper kernel under memcheck and racecheck (shared-memory hazards of the
# TMA / wgmma pipeline), on small shapes; SWA_DEBUG_FORWARD_PATH shows the path.
step_sanitize90() {
  local sanitizer rc=0
  sanitizer=$(find_sanitizer)
  if [ -z "$sanitizer" ]; then
    echo "sanitize90 UNSUPPORTED: compute-sanitizer not found"
    return 3
  fi
  cd "$REPO/tests" || return 2  # not the source folder swa_cuda/
  for tool in memcheck racecheck; do
    echo "-- $tool"
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 SWA_DEBUG_FORWARD_PATH=1 "$sanitizer" --tool "$tool" --error-exitcode 99 \
      --print-limit 20 "$PYTHON" "$REPO/bench/sm90_smoke.py" 2>&1 | grep -v "^swa_cuda: forward path" | tail -n 40
    local r=${PIPESTATUS[0]}
    [ $r -ne 0 ] && rc=$r && echo "$tool: rc=$r"
  done
  SWA_DEBUG_FORWARD_PATH=1 "$PYTHON" "$REPO/bench/sm90_smoke.py" 2>&1 | sort | uniq -c | head -n 5
  return $rc
}

# One Nsight Compute report of the Hopper kernel's main loop (headline shape).
step_ncu() {
  local ncu
  ncu=$(command -v ncu || true)
  for cand in "${CUDA_HOME:-}/bin/ncu" /usr/local/cuda/bin/ncu /usr/local/cuda-13.0/bin/ncu; do
    if [ -z "$ncu" ] && [ -x "$cand" ]; then ncu="$cand"; fi
  done
  if [ -z "$ncu" ]; then
    echo "ncu UNSUPPORTED: Nsight Compute not found"
    return 3
  fi
  cd "$REPO/tests" || return 2
  "$ncu" --set full -k regex:sm90 -c 1 -f -o "$RESULTS/ncu_sm90_$(date +%Y-%m-%d_%H%M%S)" \
    "$PYTHON" "$REPO/bench/sm90_smoke.py" --profile 2>&1 | tail -n 20
  local rc=${PIPESTATUS[0]}
  # A text summary beside the report (the .ncu-rep needs the GUI or ncu -i).
  local rep
  rep=$(ls -t "$RESULTS"/ncu_sm90_*.ncu-rep 2>/dev/null | head -n 1)
  [ -n "$rep" ] && "$ncu" -i "$rep" --page details --print-units base > "${rep%.ncu-rep}.txt" 2>&1 \
    && grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per Thread|Achieved Occupancy" \
       "${rep%.ncu-rep}.txt" | head -n 12
  return $rc
}

step_sm90() {
  "$PYTHON" bench/bench_sm90.py --quick --out "$RESULTS" --max-minutes "$(case_minutes)"
}

step_memcheck() {
  local sanitizer
  sanitizer=$(find_sanitizer)
  if [ -z "$sanitizer" ]; then
    echo "memcheck UNSUPPORTED: compute-sanitizer not found"
    return 3
  fi
  cd "$REPO/tests" || return 2
  local args=(-k "cuda and small")
  [ -n "${SWA_MEMCHECK_ARGS:-}" ] && eval "args=(${SWA_MEMCHECK_ARGS})"
  # No caching allocator: each tensor is its own cudaMalloc, so an access past
  # a tensor's end is caught instead of landing in a pooled neighbour.
  local run=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 99
             --print-limit 20 "$PYTHON" -m pytest -q -x -p no:cacheprovider)
  echo "${run[*]} ${args[*]}"
  "${run[@]}" "${args[@]}"
  local rc=$?
  if [ $rc -eq 5 ] && [ -z "${SWA_MEMCHECK_ARGS:-}" ]; then
    echo "no test matched 'cuda and small'; falling back to the CUDA cases of test_attention.py and test_cache.py"
    "${run[@]}" test_attention.py test_cache.py -k "cuda and not gradcheck"
    rc=$?
  fi
  [ $rc -eq 99 ] && echo "memcheck found ERRORS (see above)"
  return $rc
}

# Minutes after which a benchmark starts no new case: its step limit less a
# minute (half of it when short) for the case under way and the report.
# Results are written after every case, so even a timeout leaves them.
case_minutes() { awk "BEGIN{l = $STEP_LIMIT; print (l > 120 ? l - 60 : l / 2) / 60}"; }

step_bench() {
  # shellcheck disable=SC2086
  "$PYTHON" bench/bench_attention.py --quick --out "$RESULTS" --max-minutes "$(case_minutes)" ${SWA_BENCH_ARGS:-}
}

step_decode() {
  # shellcheck disable=SC2086
  "$PYTHON" bench/bench_decode.py --quick --out "$RESULTS" --max-minutes "$(case_minutes)" ${SWA_DECODE_ARGS:-}
}

export -f step_build step_test step_test90 step_memcheck step_bench step_decode case_minutes find_sanitizer step_sanitize90 \
  step_ncu step_sm90
export PYTHON REPO RESULTS

echo "== run_gpu.sh $STAMP: steps ${STEPS[*]}; budget ${BUDGET}s; git $(git rev-parse --short HEAD 2>/dev/null || echo '?') =="
for s in "${STEPS[@]}"; do
  case "$s" in
    build|test|test90|sm90|bench|decode|memcheck|sanitize90|ncu) run_step "$s" ;;
    *) echo "unknown step '$s' (build test test90 sm90 bench decode memcheck sanitize90 ncu)"; SUMMARY+=("$s: unknown step"); FAILED=$((FAILED + 1)) ;;
  esac
done

echo
echo "================ run_gpu.sh summary (total $(elapsed)s of ${BUDGET}s; $FAILED not ok) ================"
printf '%s\n' "${SUMMARY[@]}"
# The headline numbers again, at the end of the log where a short tail shows them.
NEW_JSON=$(find "$RESULTS" -maxdepth 1 -newer "$MARK" -name '*.json' 2>/dev/null | sort)
"$PYTHON" - $NEW_JSON <<'EOF' || true
import json, sys
for path in sys.argv[1:]:
    d = json.load(open(path))
    print(f"-- {path.split('/')[-1]}")
    if d.get("fatal_error"):
        print("   FATAL:", d["fatal_error"])
    if d.get("headline"):
        print("   headline:", json.dumps(d["headline"]))
    if d.get("benchmark") == "attention":
        for c in d["cases"]:
            o = c["methods"].get("ours", {})
            f = c["methods"].get("flex", {})
            print(f"   {c['name']:40s} ours fwd {o.get('fwd_ms') or float('nan'):8.3f} ms "
                  f"f+b {o.get('fwd_bwd_ms') or float('nan'):8.3f} ms | vs flex fwd "
                  f"{f.get('ours_speedup_fwd') or float('nan'):.2f}x f+b {f.get('ours_speedup_fwd_bwd') or float('nan'):.2f}x"
                  f" | out diff {c.get('check_vs_peer', {}).get('out', {}).get('max_abs_diff')}")
    if d.get("benchmark") == "sm90":
        for c in d["cases"]:
            m = c["methods"]
            def ms(v):
                r = m.get(v) or {}
                return r.get("ms") or float("nan")
            print(f"   {c['name']:32s} sm90 {ms('sm90'):8.3f} ms (path {(m.get('sm90') or {}).get('path')}) "
                  f"sm80 {ms('sm80'):8.3f} ms flex {ms('flex'):8.3f} ms | sm90/sm80 {ms('sm80') / ms('sm90'):.2f}x "
                  f"sm90/flex {ms('flex') / ms('sm90'):.2f}x | max|sm90-sm80| {c['diffs'].get('sm90_vs_sm80_max_abs')}")
    if d.get("benchmark") == "decode":
        for c in d["cases"]:
            o = c["methods"].get("ours", {})
            print(f"   {c['name']:32s} ours {o.get('us') or float('nan'):8.1f} us "
                  f"{o.get('gbps') or float('nan'):7.0f} GB/s ({o.get('pct_copy_bw') or float('nan'):.0f}% of copy) "
                  f"{o.get('reason', '')[:60]}")
        g = d.get("generation") or {}
        print(f"   generation: {g.get('status')} flat={g.get('flat')} growth={g.get('memory_growth_bytes')} "
              f"{g.get('reason', '')[:100]}")
EOF

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  # At most 8 files come back: the log, the build log's tail, and the newest
  # attention / decode JSON and PNG of this run.
  if [ build/pip-install.log -nt "$MARK" ]; then  # only when this run built
    tail -n 300 build/pip-install.log >"$OUT/pip-install-tail.log"
  fi
  for f in $NEW_JSON; do
    cp "$f" "$OUT/" && [ -f "${f%.json}.png" ] && cp "${f%.json}.png" "$OUT/"
  done
  echo "copied to \$OUT: $(ls "$OUT" | tr '\n' ' ') $(basename "$LOG")"
fi
# Let tee finish the log before the last copy.
exec 1>&3 2>&4
sleep 1
[ -n "${OUT:-}" ] && cp "$LOG" "$OUT/"
rm -f "$MARK"
exit $(( FAILED > 0 ))  # 1 when any step failed, timed out or was unknown
