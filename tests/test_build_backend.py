"""The build backend's choice of torch (backend/target_torch.py) and its
refusals, without building anything. tests/install_test.sh runs the real
installs (pip install ., --no-build-isolation, the wheel) from a clean clone."""

import importlib.metadata
import subprocess
import sys
import venv
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parent.parent / "backend"
sys.path.insert(0, str(BACKEND))
import target_torch  # noqa: E402

HERE = importlib.metadata.version("torch")


def test_isolated_build_pins_the_torch_of_the_target(monkeypatch):
    # pip's isolated build hides the target's site-packages behind these two.
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    monkeypatch.delenv("SWA_TORCH_VERSION", raising=False)
    assert target_torch.target_torch() == HERE
    assert target_torch.torch_requirement() == f"torch=={HERE}"


def test_the_wheel_depends_on_the_torch_minor_it_is_built_with():
    major, minor = target_torch.minor(HERE)
    assert target_torch.runtime_requirement() == f"torch=={major}.{minor}.*"


@pytest.mark.parametrize("version", ["2.10.0", "2.16.0", "3.0.0"])
def test_unsupported_torch_is_refused(monkeypatch, version):
    monkeypatch.setenv("SWA_TORCH_VERSION", version)
    with pytest.raises(target_torch.BuildRefused, match=f"torch {version}; this swa_cuda supports torch 2.11 through 2.15"):
        target_torch.torch_requirement()


def test_building_against_another_torch_than_the_target_is_refused(monkeypatch):
    major, minor = target_torch.minor(HERE)
    other = f"{major}.{minor - 1 if minor > 11 else minor + 1}.0"
    monkeypatch.setenv("SWA_TORCH_VERSION", other)
    with pytest.raises(target_torch.BuildRefused, match=r"--no-build-isolation --no-deps"):
        target_torch.check_build_torch()
    monkeypatch.setenv("SWA_TORCH_VERSION", HERE)
    assert target_torch.check_build_torch() == HERE


def test_build_in_its_own_venv_without_torch_is_refused(tmp_path):
    """pypa/build and uv build in their own venv: the target cannot be seen."""
    env_dir = tmp_path / "build-env"
    venv.create(env_dir, with_pip=True)  # its setuptools lives inside its prefix, as theirs do
    python = env_dir / "bin" / "python"
    has_setuptools = subprocess.run([python, "-c", "import setuptools"]).returncode == 0
    if not has_setuptools:  # Python >= 3.12 venvs have none: the backend refuses for that first
        pytest.skip("this Python's venvs have no setuptools")
    result = subprocess.run(
        [python, "-c", f"import sys; sys.path.insert(0, {str(BACKEND)!r}); import target_torch; "
                       "target_torch.torch_requirement()"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "cannot tell which torch to build against" in result.stderr
    assert "SWA_TORCH_VERSION=" in result.stderr


def test_fresh_environment_gets_the_supported_range(monkeypatch):
    """No torch in the target of pip's isolated build: the newest supported
    torch, which the wheel's torch==X.Y.* dependency then pulls too."""
    monkeypatch.delenv("SWA_TORCH_VERSION", raising=False)
    monkeypatch.setattr(target_torch, "target_torch", lambda: "")
    monkeypatch.setattr(target_torch, "build_tools_are_overlaid", lambda: True)
    assert target_torch.torch_requirement() == "torch>=2.11,<2.16"
    monkeypatch.setattr(target_torch, "build_tools_are_overlaid", lambda: False)
    with pytest.raises(target_torch.BuildRefused, match="cannot tell which torch"):
        target_torch.torch_requirement()


def test_import_error_advises_a_rebuild_that_leaves_torch_alone(monkeypatch):
    from swa_cuda import _build_info, _library

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "2.10.0")
    with pytest.raises(ImportError, match=r"built for torch 2\.10\.0.*"
                       r"`pip install --no-build-isolation --no-deps --force-reinstall \.`"):
        _library.check_versions()
