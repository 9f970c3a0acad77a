"""Locating and loading libswa_cuda.so, with a guard against a library built
for another torch or CUDA version than the one importing it."""

from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def include_dir() -> str:
    """Folder holding the C++ headers (<swa/swa.h>, <swa/kernels/...>)."""
    return str(_PACKAGE_DIR / "include")


def library_path() -> str:
    """Full path of libswa_cuda.so (kernels, op registrations, C++ API)."""
    return str(_PACKAGE_DIR / "lib" / "libswa_cuda.so")


def cmake_prefix_path() -> str:
    """Prefix for CMAKE_PREFIX_PATH so that find_package(swa_cuda) works."""
    return str(_PACKAGE_DIR)


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def check_versions() -> None:
    """Raise a clear ImportError when the build does not match this torch."""
    try:
        from . import _build_info
    except ImportError as e:  # a source checkout that was never built
        raise ImportError(
            f"swa_cuda: no built library in {_PACKAGE_DIR}; install the package with "
            "`pip install .` (from the repository root, Python imports "
            "the unbuilt source folder instead of the installed package: run elsewhere)"
        ) from e
    built = _build_info.TORCH_VERSION
    if _major_minor(built) != _major_minor(torch.__version__):
        raise ImportError(
            f"swa_cuda: libswa_cuda.so was built for torch {built} but torch {torch.__version__} "
            "is importing it (its C++ ABI changes with every torch minor version); rebuild "
            "swa_cuda against this torch, leaving torch as it is, from the swa_cuda source "
            "folder: `pip install --no-build-isolation --no-deps --force-reinstall .`"
        )
    built_cuda = _build_info.TORCH_CUDA_VERSION
    if built_cuda and torch.version.cuda and _major_minor(built_cuda) != _major_minor(torch.version.cuda):
        raise ImportError(
            f"swa_cuda: libswa_cuda.so was built for CUDA {built_cuda} but this torch uses CUDA "
            f"{torch.version.cuda}; rebuild swa_cuda against this torch, leaving torch as it is, "
            "from the swa_cuda source folder: `pip install --no-build-isolation --no-deps "
            "--force-reinstall .`"
        )


def load() -> None:
    check_versions()
    path = library_path()
    if not Path(path).is_file():
        raise ImportError(f"swa_cuda: {path} is missing; reinstall the package")
    torch.ops.load_library(path)
