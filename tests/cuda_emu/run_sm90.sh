#!/bin/bash
# Builds and runs the CPU emulation of the Hopper forward kernel (no GPU):
# copies fwd_sm90_kernel.cuh, fwd_score.cuh and sequence_rows.cuh next to the emulated
# primitives.cuh / sm90_primitives.cuh / cuda.h of fake/, compiles
# fwd_sm90_emu_test.cpp with g++ (C++20) and runs it.
# Usage: tests/cuda_emu/run_sm90.sh [case name substring]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
kernels="${SWA_EMU_KERNELS:-$root/csrc/cuda/kernels}"
# `extern __shared__` -> `extern`: the emulated dynamic shared memory (see
# fake/emu_core.h; run.sh makes the same rewrite).
for f in fwd_sm90_kernel.cuh fwd_score.cuh sequence_rows.cuh; do
  sed -E -e 's/extern __shared__/extern/' "$kernels/$f" > "$work/$f"
done
cp "$here"/fake/primitives.cuh "$here"/fake/sm90_primitives.cuh "$here"/fake/cuda.h "$work"/
${CXX:-g++} -std=c++20 -O2 -w -I"$work" -I"$here/fake" -I"$root/csrc/include" "$here/fwd_sm90_emu_test.cpp" \
  -o "$work/fwd_sm90_emu_test"
"$work/fwd_sm90_emu_test" "$@"
