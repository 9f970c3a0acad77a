#!/usr/bin/env bash
# Builds and tests swa_cuda against another torch (default 2.11.0, what the GPU
# machines carry; the project supports torch 2.11 through 2.15) in a virtual
# environment under build/, leaving the main environment alone. The CUDA host
# code (which includes torch headers) is compiled in full; the kernels, which
# include no torch headers, only for one head dim, dtype and arch.
#   bash tests/run_torch_compat.sh [torch version] [pytest args...]
# SWA_COMPAT_TRANSFORMERS (default 5.17.0 for torch 2.11, the GPU machines'
# pair) installs that transformers into the venv too; empty keeps the system's.
# Exits 0 with a notice when that torch cannot be installed here (no wheel);
# a failing build or test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-2.11.0}"
shift || true
ROOT=$(pwd)
VENV="$ROOT/build/venv-torch-$VERSION"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

echo "== torch $VERSION compatibility: venv $VENV =="
if [ ! -x "$VENV/bin/python" ]; then
  # System site-packages give the venv pytest, numpy, transformers, ninja and
  # the nvidia runtime wheels; its own torch shadows the system one.
  "$PYTHON" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q -U setuptools wheel >/dev/null 2>&1 || true
fi
torch_version() { "$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null; }
if [ "$(torch_version)" != "$VERSION" ]; then
  # PIP_CONSTRAINT=/dev/null: a machine-wide cap on torch must not hide the
  # version asked for (this venv is private). First without dependencies (the
  # system's CUDA runtime wheels serve torch 2.11); when that torch does not
  # import (2.15 needs newer CUDA wheels), with them, into this venv only.
  log=build/torch-$VERSION-install.log
  if ! PIP_CONSTRAINT=/dev/null "$VENV/bin/python" -m pip install -q --no-deps "torch==$VERSION" >"$log" 2>&1; then
    echo "== torch $VERSION compatibility: SKIPPED, torch==$VERSION cannot be installed here ($log) =="
    exit 0
  fi
  if [ "$(torch_version)" != "$VERSION" ]; then
    echo "== torch $VERSION does not import with the system's CUDA wheels: installing its dependencies =="
    PIP_CONSTRAINT=/dev/null "$VENV/bin/python" -m pip install -q "torch==$VERSION" >>"$log" 2>&1 \
      || { tail -n 20 "$log"; echo "swa_cuda: torch $VERSION's dependencies failed to install ($log)"; exit 1; }
    [ "$(torch_version)" = "$VERSION" ] \
      || { "$VENV/bin/python" -c 'import torch'; echo "swa_cuda: torch $VERSION does not import"; exit 1; }
  fi
fi

# (An `if`, not `[ ] && echo`: a false test inside $(...) would end the script under set -e.)
TRANSFORMERS="${SWA_COMPAT_TRANSFORMERS-$(if [ "$VERSION" = 2.11.0 ]; then echo 5.17.0; fi)}"
if [ -n "$TRANSFORMERS" ] && \
   [ "$("$VENV/bin/python" -c 'import transformers; print(transformers.__version__)' 2>/dev/null)" != "$TRANSFORMERS" ]; then
  "$VENV/bin/python" -m pip install -q "transformers==$TRANSFORMERS" >build/transformers-$TRANSFORMERS-install.log 2>&1 \
    || echo "== transformers $TRANSFORMERS cannot be installed here: the system's is used =="
fi

source tests/find_cuda.sh
start=$(date +%s)
# --no-deps: the build must leave this venv's torch as it is.
if ! SWA_BUILD_DIR="$ROOT/build/cmake-torch-$VERSION" SWA_HEAD_DIMS=64 SWA_DTYPES=bf16 \
     TORCH_CUDA_ARCH_LIST="${SWA_COMPAT_ARCHS:-9.0}" \
     "$VENV/bin/python" -m pip install --no-build-isolation --no-deps -v . >build/pip-install-torch-$VERSION.log 2>&1; then
  tail -n 60 build/pip-install-torch-$VERSION.log
  echo "swa_cuda: build against torch $VERSION failed (log: build/pip-install-torch-$VERSION.log)"
  exit 1
fi
echo "== build against torch $VERSION took $(( $(date +%s) - start )) s =="

cd tests
# A private inductor cache: compiled graphs of another torch must not be reused.
TORCHINDUCTOR_CACHE_DIR="$ROOT/build/inductor-torch-$VERSION" \
  "$VENV/bin/python" -m pytest -q -rfE --ignore=test_cuda_emulation.py "$@"
