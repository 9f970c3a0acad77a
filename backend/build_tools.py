"""The build's tools (setuptools, CMake, Ninja): finding them and checking
their versions, so that a missing one stops the build with the command that
installs it rather than an error from deep inside setuptools or CMake.

A tool installed from PyPI into the environment (`pip install cmake ninja`)
lives in that environment's scripts folder, which is on PATH only while the
environment is activated: that folder is searched after PATH.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig

MIN_SETUPTOOLS = (70, 1)  # builds wheels without the separate `wheel` package
MIN_CMAKE = (3, 22)  # CMakeLists.txt's cmake_minimum_required
INSTALL = "pip install 'setuptools>=70.1' cmake ninja"


def version_tuple(text):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def find_tool(name):
    """Full path of an executable: on PATH, else in this environment's scripts folder."""
    path = os.pathsep.join([os.environ.get("PATH", ""), sysconfig.get_path("scripts")])
    return shutil.which(name, path=path)


def missing():
    """A sentence naming the first missing or too old tool, or None."""
    if importlib.util.find_spec("setuptools") is None:
        return "the build needs setuptools >= 70.1 (not installed)"
    import setuptools

    found = version_tuple(setuptools.__version__)
    # Older setuptools (>= 64: pyproject metadata) build wheels with the `wheel` package.
    if found < MIN_SETUPTOOLS and (found < (64, 0) or importlib.util.find_spec("wheel") is None):
        return f"the build needs setuptools >= 70.1 (found {setuptools.__version__})"
    cmake = find_tool("cmake")
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout if cmake else ""
    found = version_tuple(out.split("version", 1)[1]) if "version" in out else None
    if not found or found < MIN_CMAKE:
        return f"the build needs CMake >= 3.22 (found {'.'.join(map(str, found)) if found else 'none'})"
    return None
