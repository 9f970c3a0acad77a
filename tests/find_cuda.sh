# Sourced by the test and bench scripts: sets CUDA_HOME to the real toolkit
# root when nvcc is on PATH and CUDA_HOME is unset.
# The nvcc on PATH may be a wrapper outside the toolkit: find the real root.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  for root in "$(dirname "$(dirname "$(command -v nvcc)")")/cuda" \
              "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
    if [ -x "$root/bin/nvcc" ] && [ -f "$root/include/cuda_runtime.h" ]; then
      export CUDA_HOME="$root"
      break
    fi
  done
fi
