"""Build swa_cuda: drives CMakeLists.txt and installs its outputs inside the
package folder (swa_cuda/lib/libswa_cuda.so, swa_cuda/include, the CMake
package under swa_cuda/share/cmake), so `pip install --target DIR` works too.
Run through the build backend in backend/ (pyproject.toml), which picks and
checks the torch to build against:

    pip install .                          # isolated: builds against the target's torch
    pip install --no-build-isolation .     # offline: builds against the torch installed here

Environment:
  CUDA_HOME / nvcc on PATH   the CUDA toolkit; without it the CPU-only library
  SWA_CPU_ONLY=1             build the CPU-only library even when nvcc exists
  TORCH_CUDA_ARCH_LIST       CUDA archs (default "8.0;9.0+PTX")
  SWA_HEAD_DIMS, SWA_DTYPES  kernel selection, e.g. "64;128" and "bf16"
  SWA_HOPPER                 Hopper (sm_90a) forward: AUTO (default: when the arch
                             list has a 9.x entry), ON or OFF
  MAX_JOBS                   parallel compile jobs
  SWA_BUILD_DIR              CMake build folder (default build/cmake), kept for
                             incremental rebuilds
  SWA_SANITIZE               e.g. address,undefined: sanitizers for the CPU-only
                             build (tests/run_sanitizers.sh)
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "backend"))
import build_tools  # noqa: E402  (backend/build_tools.py: finding CMake and Ninja)
import target_torch  # noqa: E402  (backend/target_torch.py: the torch version rules)


def find_cuda_home():
    """The toolkit root holding bin/nvcc, include/ and lib64/, or None.

    A `nvcc` on PATH may be a wrapper script outside the toolkit; then the
    toolkit is looked for beside it (…/cuda) and in the usual places.
    """
    if os.environ.get("SWA_CPU_ONLY", "0") not in ("", "0"):
        return None
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    if os.environ.get("CUDA_PATH"):
        candidates.append(Path(os.environ["CUDA_PATH"]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = Path(nvcc).resolve().parent.parent
        candidates += [root, root / "cuda"]
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime.h").is_file():
            return root
    return None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch  # noqa: F401  (fail early and clearly without torch)

        package_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("SWA_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda_home = find_cuda_home()
        args = [
            f"-DSWA_PYTHON={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_INSTALL_PREFIX={package_dir}",
            "-DSWA_BUILD_TESTS=OFF",
        ]
        ninja = build_tools.find_tool("ninja")
        if ninja:
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        if cuda_home:
            args += ["-DSWA_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={cuda_home / 'bin' / 'nvcc'}",
                     f"-DCUDAToolkit_ROOT={cuda_home}"]
            print(f"swa_cuda: building CUDA kernels with {cuda_home}", flush=True)
        else:
            args.append("-DSWA_WITH_CUDA=OFF")
            print("swa_cuda: no CUDA toolkit found (or SWA_CPU_ONLY=1): building the CPU-only library",
                  flush=True)
        for var in ("SWA_HEAD_DIMS", "SWA_DTYPES", "SWA_HOPPER", "SWA_SANITIZE"):
            if os.environ.get(var):
                args.append(f"-D{var}={os.environ[var]}")
        # A reconfigure must not keep stale cached choices.
        cache = build_dir / "CMakeCache.txt"
        if cache.exists():
            cache.unlink()
        env = dict(os.environ)
        if cuda_home:
            env["CUDA_HOME"] = str(cuda_home)
        cmake = build_tools.find_tool("cmake") or "cmake"
        start = time.perf_counter()
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], env=env)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs], env=env)
        subprocess.check_call([cmake, "--install", str(build_dir)], env=env)
        print(f"swa_cuda: native build took {time.perf_counter() - start:.1f} s", flush=True)
        self._write_build_info(package_dir, cuda_home)

    @staticmethod
    def _write_build_info(package_dir, cuda_home):
        import torch

        info = package_dir / "_build_info.py"
        info.write_text(
            '"""Written by setup.py: what libswa_cuda.so was built against."""\n'
            f"TORCH_VERSION = {torch.__version__.split('+')[0]!r}\n"
            f"TORCH_CUDA_VERSION = {torch.version.cuda if cuda_home else None!r}\n"
            f"WITH_CUDA = {bool(cuda_home)!r}\n"
        )


setup(
    # The placeholder extension makes the wheel platform-specific; CMake builds
    # the real library.
    ext_modules=[Extension("swa_cuda._native", sources=[])],
    # The library's C++ ABI is torch's: the wheel needs the torch minor version it was built with.
    install_requires=[target_torch.runtime_requirement()],
    cmdclass={"build_ext": CMakeBuild},
)
