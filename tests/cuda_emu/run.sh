#!/bin/bash
# Builds and runs the CPU emulation of the CUDA backward kernels (no GPU):
# copies csrc/cuda/kernels/bwd_*.cuh next to the emulated primitives.cuh of
# fake/, compiles bwd_emu_test.cpp with g++ (C++20) against fake/ (stand-ins for
# the CUDA headers) and runs it. Usage: tests/cuda_emu/run.sh [case name]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "${SWA_EMU_KERNELS:-$root/csrc/cuda/kernels}"/bwd_*.cuh "$work"/
cp "$here"/fake/primitives.cuh "$work"/
${CXX:-g++} -std=c++20 -O2 -w -I"$work" -I"$here/fake" -I"$root/csrc/include" "$here/bwd_emu_test.cpp" -o "$work/bwd_emu_test"
"$work/bwd_emu_test" "$@"
