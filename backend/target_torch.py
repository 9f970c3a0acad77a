"""Which torch swa_cuda must be built against: the one of the environment it is
installed into (the *target*).

libswa_cuda.so uses torch's C++ API (at::Tensor, the dispatcher, C++
autograd), whose ABI changes with every torch minor release, so the library
only loads into the torch minor version that built it. pip's isolated build
(plain `pip install .`) would otherwise build against the newest torch on the
index, whatever the target has. The build backend (swa_build_backend.py) asks
here for the target's torch and pins it in the build requirements.

How the target is found: pip runs the build hooks with the target's own
interpreter (sys.executable) and hides the target's site-packages behind its
build environment (PYTHONPATH, PYTHONNOUSERSITE). The same interpreter run
without those two variables sees exactly what `import torch` sees after the
install. Front ends that build in a separate virtual environment (pypa/build,
uv) give no way to find the target; then the version must be named
(SWA_TORCH_VERSION) or the build run without isolation.
"""

import os
import subprocess
import sys
from pathlib import Path

# Torch minor versions this source builds and is tested with (first, last).
SUPPORTED = ((2, 11), (2, 15))
SUPPORTED_TEXT = f"{SUPPORTED[0][0]}.{SUPPORTED[0][1]} through {SUPPORTED[1][0]}.{SUPPORTED[1][1]}"
# The requirement when the target has no torch yet (a fresh environment).
SUPPORTED_RANGE = f"torch>={SUPPORTED[0][0]}.{SUPPORTED[0][1]},<{SUPPORTED[1][0]}.{SUPPORTED[1][1] + 1}"

_QUERY = ("import importlib.metadata as m\n"
          "try: print(m.version('torch'))\n"
          "except m.PackageNotFoundError: print('')\n")


class BuildRefused(SystemExit):
    """Ends the build hook with a one-paragraph message (no traceback)."""

    def __init__(self, message):
        super().__init__("swa_cuda: " + message)


def minor(version):
    """(major, minor) of a version string such as '2.14.1+cu130'."""
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def installed_torch():
    """The torch distribution version importable right here, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def target_torch():
    """The torch distribution version the target environment has ('' = none).

    Runs this interpreter without the build environment's path overrides.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    out = subprocess.run([sys.executable, "-c", _QUERY], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def build_tools_are_overlaid():
    """True when the build tools come from outside this interpreter's prefix.

    That is pip's isolated build (its tools live in a temporary overlay), so
    sys.executable's own environment is the target. In a build virtual
    environment (pypa/build, uv) the tools live inside sys.prefix.
    """
    import setuptools

    prefix = Path(sys.prefix).resolve()
    return prefix not in Path(setuptools.__file__).resolve().parents


def check_supported(version, where):
    if not SUPPORTED[0] <= minor(version) <= SUPPORTED[1]:
        raise BuildRefused(
            f"{where} has torch {version}; this swa_cuda supports torch {SUPPORTED_TEXT}. "
            f"Install a supported torch first (e.g. `pip install 'torch=={SUPPORTED[1][0]}.{SUPPORTED[1][1]}.*'`).")


def torch_requirement():
    """The torch build requirement for an isolated build (PEP 517 hook)."""
    named = os.environ.get("SWA_TORCH_VERSION", "").strip()
    if named:
        check_supported(named, "SWA_TORCH_VERSION")
        return f"torch=={named}"
    target = target_torch()
    if target:
        check_supported(target, f"The environment of {sys.executable}")
        return f"torch=={target}"
    if build_tools_are_overlaid():
        return SUPPORTED_RANGE  # a fresh environment: the same torch its install will pull
    raise BuildRefused(
        f"cannot tell which torch to build against: {sys.executable} sees none, and this build runs "
        f"in its own environment ({sys.prefix}), not in the one swa_cuda will be installed into "
        "(the library only loads into the torch minor version it was built with). Name it, e.g. "
        "`SWA_TORCH_VERSION=2.14.1 python -m build`, or build in the target environment: "
        "`pip install --no-build-isolation .`")


def check_build_torch():
    """At build time: the torch being built against must be the target's."""
    building = installed_torch()
    if building is None:
        raise BuildRefused(
            "torch is not installed in the build environment. Run plain `pip install .`, or install "
            "torch first (`pip install torch`) and then `pip install --no-build-isolation .`")
    check_supported(building, "The build environment")
    named = os.environ.get("SWA_TORCH_VERSION", "").strip()
    target = named or target_torch()
    if target and minor(target) != minor(building):
        raise BuildRefused(
            f"building against torch {building}, but the target environment has torch {target}, "
            "and the library only loads into the torch minor version it was built with. Build "
            "against the target's torch: `pip install --no-build-isolation --no-deps .` (or name it: "
            f"SWA_TORCH_VERSION={target})")
    return building


def runtime_requirement():
    """The wheel's torch dependency: the minor version it is built against."""
    building = installed_torch()
    if building is None:  # metadata without torch (an sdist): the supported range
        return SUPPORTED_RANGE
    major, minor_ = minor(building)
    return f"torch=={major}.{minor_}.*"
