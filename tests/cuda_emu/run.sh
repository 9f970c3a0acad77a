#!/bin/bash
# Builds and runs the CPU emulation of the CUDA kernels (no GPU needed):
#   bwd: bwd_emu_test.cpp, the backward kernels (bwd_*.cuh) called directly;
#   fwd: fwd_emu_test.cpp, the forward through its real host code
#        (forward_dispatch.cu, fwd_launch.cuh, fwd_combine.cu, exact_fwd.cu,
#        cache_kernels.cu): dispatch, PackGQA / split-KV decisions, launches.
# The kernel sources are copied next to the emulated primitives.cuh of fake/
# with two rewrites that stand in for nvcc: `k<<<grid, block, smem, stream>>>(`
# -> `emu::Launch(k, grid, block, smem, stream)(` and `extern __shared__` ->
# `extern` (see fake/emu_core.h). Compiled with g++ (C++20) against fake/
# (stand-ins for the CUDA headers), translation units in parallel.
#
# Each emulator runs twice: cp.async copies landing as late as the PTX allows
# (at the wait that retires their group: catches reading a tile too early) and
# as early as it allows (at issue: catches refilling shared memory that other
# warps may still read); see fake/primitives.cuh.
#
# With no option it also runs run_sm90.sh (the Hopper forward kernel's own
# emulator: TMA, mbarriers, wgmma; one build, no cp.async modes).
#
# Usage: tests/cuda_emu/run.sh [--bwd | --fwd | --sm90] [case-name substring]
#   (no option: all three; each prints "ok/FAIL <case>" and a summary, and the
#   script exits non-zero when any case failed).
#        tests/cuda_emu/run.sh --fwd --random N [seed]: N random forward
#   problems (shapes, windows, GQA, layouts, splits, rings) instead of the list.
# Env: CXX (g++), SWA_EMU_KERNELS (kernel source dir), SWA_EMU_INSTANTIATIONS
# (the generated instantiations' dir), SWA_EMU_JOBS (compile
# jobs), SWA_EMU_CP_ASYNC=late|early (run that landing mode only),
# SWA_EMU_BLOCK_ORDER=forward|reverse (that block order in every mode).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
kernels="${SWA_EMU_KERNELS:-$root/csrc/cuda/kernels}"
instantiations="${SWA_EMU_INSTANTIATIONS:-$root/csrc/cuda/instantiations}"
run_bwd=1 run_fwd=1 run_sm90=1
case "${1:-}" in
  --bwd) run_fwd=0 run_sm90=0; shift ;;
  --fwd) run_bwd=0 run_sm90=0; shift ;;
  --sm90) run_bwd=0 run_fwd=0; shift ;;
esac
[ -f "$here/run_sm90.sh" ] || run_sm90=0
filter="${1:-}"
fwd_args=("$@")  # the forward test also takes --random N [seed]
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for f in "$kernels"/*.cuh "$kernels"/*.cu "$instantiations"/*.cu; do
  sed -E -e 's/extern __shared__/extern/' \
         -e 's/([A-Za-z_][A-Za-z0-9_]*(<[^<>()]*>)?)<<<(.*)>>>\(/emu::Launch(\1, \3)(/' \
         "$f" > "$work/$(basename "$f")"
done
cp "$here"/fake/primitives.cuh "$work"/

cxx="${CXX:-g++}"
flags=(-std=c++20 -O2 -w -I"$work" -I"$here/fake" -I"$root/csrc/include"
       -DSWA_HDIM_32 -DSWA_HDIM_64 -DSWA_HDIM_96 -DSWA_HDIM_128 -DSWA_HDIM_256
       -DSWA_DTYPE_FP16 -DSWA_DTYPE_BF16)
units=()
if [ "$run_bwd" = 1 ]; then units+=("$here/bwd_emu_test.cpp"); fi
if [ "$run_fwd" = 1 ]; then
  units+=("$here/fwd_emu_test.cpp")
  for u in forward_dispatch fwd_combine exact_fwd cache_kernels; do units+=("$work/$u.cu"); done
  for f in "$work"/fwd_hdim*_fp16.cu "$work"/fwd_hdim*_bf16.cu; do units+=("$f"); done
fi
jobs="${SWA_EMU_JOBS:-$(nproc 2>/dev/null || echo 2)}"
[ "${#units[@]}" = 0 ] || printf '%s\n' "${units[@]}" | xargs -P "$jobs" -I{} sh -c \
  'u="$1"; shift; exec "$@" -x c++ -c "$u" -o "'"$work"'/$(basename "$u").o"' _ {} "$cxx" "${flags[@]}"

modes="${SWA_EMU_CP_ASYNC:-late early}"
status=0
# run_in_modes LABEL CMD...: CMD once per cp.async landing mode; the late mode
# runs the blocks in launch order, the early one in reverse (fake/emu_core.h:
# results that depend on the order of blocks differ between the two).
run_in_modes() {
  local label=$1 mode order
  shift
  for mode in $modes; do
    order="${SWA_EMU_BLOCK_ORDER:-$([ "$mode" = early ] && echo reverse || echo forward)}"
    echo "== $label, cp.async landing $mode, blocks in $order order"
    SWA_EMU_CP_ASYNC=$mode SWA_EMU_BLOCK_ORDER=$order "$@" || status=1
  done
}
if [ "$run_bwd" = 1 ]; then
  "$cxx" "$work/bwd_emu_test.cpp.o" -o "$work/bwd_emu_test"
  run_in_modes "backward kernels (bwd_emu_test)" "$work/bwd_emu_test" "$filter"
fi
if [ "$run_fwd" = 1 ]; then
  fwd_objs=()
  for u in "${units[@]}"; do
    [ "$(basename "$u")" = bwd_emu_test.cpp ] || fwd_objs+=("$work/$(basename "$u").o")
  done
  "$cxx" "${fwd_objs[@]}" -o "$work/fwd_emu_test"
  run_in_modes "forward kernels (fwd_emu_test)" "$work/fwd_emu_test" "${fwd_args[@]}"
fi
if [ "$run_sm90" = 1 ]; then
  echo "== Hopper forward kernel (run_sm90.sh)"
  bash "$here/run_sm90.sh" "$filter" || status=1
fi
exit $status
