# Sourced by tests/run.sh and bench/run.sh: installs what the project needs on
# a fresh machine and builds swa_cuda into the current Python environment.
# Sets PYTHON. Build options (SWA_CPU_ONLY, TORCH_CUDA_ARCH_LIST, SWA_HEAD_DIMS,
# SWA_DTYPES, MAX_JOBS) pass through to setup.py.
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${SWA_TORCH_VERSION:-2.14.1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Idle OpenMP workers sleep instead of spinning (a loaded 2-core box slows 10x otherwise).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

have_torch=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have_torch" != "$TORCH_VERSION" ]; then
  echo "== installing torch $TORCH_VERSION (found: ${have_torch:-none}) =="
  "$PYTHON" -m pip install -q "torch==$TORCH_VERSION"
fi
# The build tools too (a fresh venv has setuptools 65, which cannot build a
# wheel by itself); CMake from PyPI only when none >= 3.22 is on PATH. The
# environment's scripts folder goes first on PATH, so that the tools it
# holds (cmake, ninja, ctest) are found even when it is not activated.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
tools=("setuptools>=70.1" ninja)
cmake_version=$(cmake --version 2>/dev/null | head -n 1 | grep -oE '[0-9]+\.[0-9]+' | head -n 1 || true)
if [ -z "$cmake_version" ] || [ "$(printf '%s\n' 3.22 "$cmake_version" | sort -V | head -n 1)" != 3.22 ]; then
  tools+=("cmake>=3.22")
fi
"$PYTHON" -m pip install -q pytest numpy expecttest hypothesis matplotlib "${tools[@]}" "transformers==5.23.0"

source "$(dirname "${BASH_SOURCE[0]}")/find_cuda.sh"

mkdir -p build
echo "== building swa_cuda (CUDA_HOME=${CUDA_HOME:-none}, archs ${TORCH_CUDA_ARCH_LIST:-default 8.0;9.0+PTX}) =="
build_start=$(date +%s)
# --no-build-isolation: against the torch just checked; --no-deps: leave it as it is.
if ! "$PYTHON" -m pip install --no-build-isolation --no-deps -v . >build/pip-install.log 2>&1; then
  tail -n 60 build/pip-install.log
  echo "swa_cuda: build failed (full log: build/pip-install.log)"
  exit 1
fi
grep -E "^swa_cuda:" build/pip-install.log || true
echo "== build took $(( $(date +%s) - build_start )) s =="
