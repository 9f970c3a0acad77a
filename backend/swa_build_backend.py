"""swa_cuda's PEP 517 build backend: setuptools.build_meta (which runs
setup.py, which runs CMake), plus two guards that make the build hard to get
wrong:

- an isolated build (plain `pip install .`, `pip wheel .`) requires the torch
  that the target environment already has (target_torch.py), not the newest
  one on the index;
- every build checks its prerequisites (setuptools >= 70.1, CMake >= 3.22,
  torch, and that the torch being built against is the target's) and refuses
  with a one-line fix instead of failing deep inside setuptools or at import.

pyproject.toml names it with backend-path = ["backend"].
"""

import build_tools
import target_torch

try:
    from setuptools import build_meta as _setuptools
except ImportError:  # a --no-build-isolation build in an environment without setuptools
    _setuptools = None


def _check_prerequisites():
    problem = build_tools.missing()
    if problem:
        raise target_torch.BuildRefused(
            f"{problem}; install the build tools first: `{build_tools.INSTALL}` (or run plain "
            "`pip install .`, which brings them)")
    target_torch.check_build_torch()


# Build requirements: pyproject.toml's static ones plus the target's torch.

def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + [target_torch.torch_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + [target_torch.torch_requirement()]


def get_requires_for_build_sdist(config_settings=None):
    return _setuptools.get_requires_for_build_sdist(config_settings)  # an sdist builds nothing


# Builds: checked first.

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _check_prerequisites()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _check_prerequisites()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _check_prerequisites()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _check_prerequisites()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    return _setuptools.build_sdist(sdist_directory, config_settings)
