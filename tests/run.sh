#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine (torch 2.14.1, the
# test tools, the build with the CUDA kernels when a toolkit is there), then
# runs the C++ unit tests (ctest) and the Python tests (pytest). CUDA tests
# skip cleanly without a GPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup_env.sh

echo "== C++ unit tests (index math; no torch, no CUDA) =="
cmake -S . -B build/unit -G Ninja -DSWA_PYTHON="$PYTHON" -DSWA_WITH_CUDA=OFF >build/unit.log 2>&1 \
  || { cat build/unit.log; exit 1; }
cmake --build build/unit --target swa_unit_tests >>build/unit.log 2>&1 || { cat build/unit.log; exit 1; }
ctest --test-dir build/unit --output-on-failure

echo "== Python tests =="
cd tests
"$PYTHON" -m pytest -q -rfE "$@"
