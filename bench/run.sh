#!/usr/bin/env bash
# The README's benchmark command. Sets up a fresh machine (tests/setup_env.sh:
# torch, matplotlib, the build of swa_cuda), then runs the attention
# microbenchmark and the rolling-cache decode benchmark. Without a GPU both run
# their CPU-sized cases. Arguments go to both scripts (e.g. --quick, --cpu).
# On the GPU machines (torch preinstalled, no internet) use bench/run_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup_env.sh
export PYTHONUNBUFFERED=1

rc=0
"$PYTHON" bench/bench_attention.py "$@" || rc=$?
"$PYTHON" bench/bench_decode.py "$@" || rc=$?
exit $rc
