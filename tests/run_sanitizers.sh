#!/usr/bin/env bash
# The CPU library and the C++ unit tests under AddressSanitizer and
# UndefinedBehaviorSanitizer (SWA_SANITIZE, csrc/cmake/sanitize.cmake), then a
# representative part of the CPU test suite against it: every op, each ISA path
# the processor has (SWA_CPU_ISA), odd shapes, strided views, empty tensors,
# the cache streams and the property-based fuzzing. Any finding aborts the run.
# Builds into a venv under build/ (the main environment keeps its library).
#   bash tests/run_sanitizers.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON="${PYTHON:-python3}"
SAN="${SWA_SANITIZE:-address,undefined}"
VENV="$ROOT/build/venv-sanitize"
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
start=$(date +%s)

echo "== sanitizers ($SAN): C++ unit tests =="
cmake -S . -B build/unit-sanitize -G Ninja -DSWA_PYTHON="$PYTHON" -DSWA_WITH_CUDA=OFF \
  -DSWA_SANITIZE="$SAN" >build/unit-sanitize.log 2>&1 || { cat build/unit-sanitize.log; exit 1; }
cmake --build build/unit-sanitize --target swa_unit_tests >>build/unit-sanitize.log 2>&1 \
  || { cat build/unit-sanitize.log; exit 1; }
ctest --test-dir build/unit-sanitize --output-on-failure

echo "== sanitizers ($SAN): building the CPU library =="
if [ ! -x "$VENV/bin/python" ]; then
  # System site-packages give the venv torch and the test tools; its own
  # setuptools (a fresh venv's is too old to build wheels) is upgraded.
  "$PYTHON" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q -U "setuptools>=70.1" wheel >/dev/null
fi
if ! SWA_CPU_ONLY=1 SWA_SANITIZE="$SAN" SWA_BUILD_DIR="$ROOT/build/cmake-sanitize" \
     "$VENV/bin/python" -m pip install --no-build-isolation -v . >build/pip-install-sanitize.log 2>&1; then
  tail -n 60 build/pip-install-sanitize.log
  echo "swa_cuda: sanitizer build failed (log: build/pip-install-sanitize.log)"
  exit 1
fi

# The sanitizer runtimes go first (Python itself is not instrumented). Python
# and torch keep memory until exit by design: leak reports would be theirs.
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_init_order=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Every call allocates its own backward workspace (cpu/workspace.h), sized to
# the call, so AddressSanitizer sees an overrun that a larger kept one would
# hide (test_cpu_workspace.py runs the kept one in its own processes).
export SWA_CPU_WORKSPACE_MB=0
tests=(test_attention.py test_sinks.py test_varlen.py test_per_head_windows.py test_cache.py test_hardening.py test_op_contract.py test_fuzz.py test_cpu_isa_paths.py test_cpu_bf16_backward.py test_cpu_workspace.py)
cd tests
# native: the best build the processor runs (cpu/isa.cpp); AVX-512 is a path
# of its own only where native is the AVX512-BF16 one (the bf16 forward and
# one-pass backward on bf16 pairs), AVX2 only where native is an AVX-512 one.
has() { grep -qw "$1" /proc/cpuinfo; }
isas=(native)
if has avx512f && has avx512dq && has avx512vl && has avx512bw; then
  if has avx512_bf16; then isas+=(avx512); fi
  isas+=(avx2)
fi
isas+=(baseline)
for isa in "${isas[@]}"; do
  echo "== sanitizers ($SAN): pytest, CPU ISA $isa =="
  env_isa=()
  [ "$isa" = native ] || env_isa=(SWA_CPU_ISA="$isa")
  # The fuzzing runs once (native ISA); the other paths take the fixed tests.
  selection=("${tests[@]}")
  [ "$isa" = native ] || selection=(test_attention.py test_sinks.py test_varlen.py test_per_head_windows.py test_cache.py test_hardening.py)
  env "${env_isa[@]}" LD_PRELOAD="$preload" "$VENV/bin/python" -m pytest -q -x -p no:cacheprovider \
    "${selection[@]}" "$@"
done
echo "== sanitizers ($SAN): clean, $(( $(date +%s) - start )) s =="
