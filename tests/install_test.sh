#!/usr/bin/env bash
# The install paths of the README, as a new user takes them, from a clean
# clone of this repository's HEAD into a fresh virtual environment holding
# only a pinned torch (no system site-packages). CPU-only build
# (SWA_CPU_ONLY=1) to keep CI short; pip's cache is reused.
#   1. `pip install --no-build-isolation .` in the fresh venv (setuptools 65,
#      no torch): refused, with the command that installs the build tools
#   2. plain `pip install .` (isolated build): builds against the venv's
#      torch, leaves it alone; import, one op against SDPA
#   3. the build tools, then `pip install --no-build-isolation --no-deps
#      --force-reinstall .` (the import error's advice); import, one op
#   4. `pip wheel --no-build-isolation --no-deps .` (step 3's build folder:
#      relinks only; an isolated `pip wheel .` runs the same backend hooks as
#      step 2), then that wheel into another venv with the same torch (a
#      copy of the fresh venv); import, one op
#   5. (SWA_INSTALL_TEST_FRESH=1; not in CI: two more torch installs and a
#      build) plain `pip install .` in a fresh venv without torch
#   bash tests/install_test.sh            (SWA_INSTALL_TEST_TORCH, default 2.14.1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON="${PYTHON:-python3}"
TORCH="${SWA_INSTALL_TEST_TORCH:-2.14.1}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/swa-install-test.XXXXXX")
log="$WORK/log"
# On failure the last command's output is kept in build/install_test_failed.log.
trap 'rc=$?; [ $rc -eq 0 ] || { mkdir -p "$ROOT/build"; cp "$log" "$ROOT/build/install_test_failed.log" 2>/dev/null
      echo "install test: FAILED (exit $rc; last output: build/install_test_failed.log)"; }; rm -rf "$WORK"' EXIT
export SWA_CPU_ONLY=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MAX_JOBS="${MAX_JOBS:-2}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
unset SWA_TORCH_VERSION SWA_BUILD_DIR PYTHONPATH
start=$(date +%s)
last=$start
step() {
  local now
  now=$(date +%s)
  echo "== install test: $1 (previous step $(( now - last )) s, total $(( now - start )) s) =="
  last=$now
}
run() {  # run CMD...: quiet unless it fails
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "install test: FAILED: $*"
    exit 1
  fi
}
show() { grep -E "$1" "$log" | sed 's/^ *\(-- \)*/   /' || true; }  # show REGEX: lines of the last log
smoke() {  # smoke VENV: import swa_cuda from VENV, one op against an independent reference
  # (torch without numpy, as in a fresh venv, warns at import: not ours.)
  (cd "$WORK" && "$1/bin/python" -W "ignore:Failed to initialize NumPy" - <<'EOF'
import sys
import torch
import swa_cuda

assert swa_cuda.__file__.startswith(sys.prefix), f"imported {swa_cuda.__file__}, not {sys.prefix}'s"
q, k, v = torch.randn(3, 1, 2, 24, 16, dtype=torch.float64).unbind(0)
out = swa_cuda.sliding_window_attention(q, k, v, window=5)
i = torch.arange(24)
band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 5)
ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band)
assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()
from swa_cuda import _build_info
print(f"swa_cuda from {sys.prefix}: built for torch {_build_info.TORCH_VERSION}, "
      f"running torch {torch.__version__}, one op matches SDPA")
EOF
  )
}
torch_of() { "$1/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))'; }

step "clean clone of $(git -C "$ROOT" rev-parse --short HEAD), fresh venv"
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] \
  || echo "   (uncommitted changes are not part of the clone: this tests HEAD)"
git clone -q "$ROOT" "$WORK/src"
cd "$WORK/src"
"$PYTHON" -m venv "$WORK/venv"
VENV="$WORK/venv"

step "1. --no-build-isolation in the fresh venv (its setuptools, no torch)"
if "$VENV/bin/python" -m pip install --no-build-isolation . >"$log" 2>&1; then
  echo "install test: FAILED: a build without the build tools did not stop"; exit 1
fi
show "swa_cuda: the build needs"
grep -qF "pip install 'setuptools>=70.1' cmake ninja" "$log" \
  || { tail -n 30 "$log"; echo "install test: FAILED: no install command in the refusal"; exit 1; }

step "torch $TORCH into the fresh venv"
run "$VENV/bin/python" -m pip install "torch==$TORCH"
# The second venv: the same state (hard links: no copy of torch).
cp -al "$VENV" "$WORK/venv-wheel"

step "2. pip install . (isolated build)"
# Without any pip constraint (this machine caps torch at 2.14.1): an isolated
# build that did not pin the target's torch would take the newest one.
run env PIP_CONSTRAINT=/dev/null "$VENV/bin/python" -m pip install -v .
show "swa_cuda: torch [0-9.]+ "
show "swa_cuda: native build took"
[ "$(torch_of "$VENV")" = "$TORCH" ] || { echo "install test: FAILED: torch changed to $(torch_of "$VENV")"; exit 1; }
smoke "$VENV"

step "3. build tools, then pip install --no-build-isolation --no-deps --force-reinstall ."
run "$VENV/bin/python" -m pip install "setuptools>=70.1" cmake ninja
run "$VENV/bin/python" -m pip install --no-build-isolation --no-deps --force-reinstall -v .
show "swa_cuda: native build took"
smoke "$VENV"

step "4. pip wheel, the wheel into another venv"
run "$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps -w "$WORK/wheels" .
wheel=$(ls "$WORK"/wheels/swa_cuda-*.whl)
"$PYTHON" - "$wheel" <<'EOF'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
meta = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
torch = [line.split(" ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: torch")]
print(f"   {sys.argv[1].rsplit('/', 1)[-1]} requires {torch}")
EOF
run "$WORK/venv-wheel/bin/python" -m pip install "$wheel"
[ "$(torch_of "$WORK/venv-wheel")" = "$TORCH" ] || { echo "install test: FAILED: the wheel changed torch"; exit 1; }
smoke "$WORK/venv-wheel"

if [ "${SWA_INSTALL_TEST_FRESH:-0}" = 1 ]; then
  step "5. pip install . in a fresh venv without torch (the newest supported torch, built and pulled)"
  "$PYTHON" -m venv "$WORK/venv-fresh"
  run env PIP_CONSTRAINT=/dev/null "$WORK/venv-fresh/bin/python" -m pip install -v .
  show "swa_cuda: torch [0-9.]+ |swa_cuda: native build took"
  smoke "$WORK/venv-fresh"
fi

step "passed"
echo "== install test took $(( $(date +%s) - start )) s =="
