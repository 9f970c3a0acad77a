#!/usr/bin/env bash
# The README's benchmark command. Sets up a fresh machine (tests/setup_env.sh:
# torch, matplotlib, the build of swa_cuda), then runs the attention
# microbenchmark, the rolling-cache decode benchmark and the CPU forward by
# dtype (bench_cpu_dtypes.py). Without a GPU the first two run their
# CPU-sized cases. Arguments go to the first two (e.g. --quick, --cpu).
# On the GPU machines (torch preinstalled, no internet) use bench/run_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup_env.sh
export PYTHONUNBUFFERED=1

rc=0
"$PYTHON" bench/bench_attention.py "$@" || rc=$?
"$PYTHON" bench/bench_decode.py "$@" || rc=$?
# The CPU forward in bf16 / fp16 against float32 (each kernel build, torch.mm
# yardsticks); its own shapes, so only --smoke passes through.
dtype_args=()
for a in "$@"; do [ "$a" = --smoke ] && dtype_args+=(--smoke); done
"$PYTHON" bench/bench_cpu_dtypes.py "${dtype_args[@]}" || rc=$?
exit $rc
