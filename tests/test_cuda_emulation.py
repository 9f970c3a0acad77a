"""The CUDA kernels run on the CPU (no GPU needed): tests/cuda_emu/run.sh builds
the backward and forward emulators (fake CUDA headers, ldmatrix / mma.sync /
shfl / cp.async emulated per the PTX ISA on cooperative lanes) with g++ and
runs every case against a float64 reference, in both cp.async landing modes.
The whole set takes ~30 s on two cores, so it all runs here; a failing case is
reported by name. By hand: tests/cuda_emu/run.sh [--bwd | --fwd] [case substring]."""

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parent / "cuda_emu" / "run.sh"

pytestmark = [
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="needs g++ (C++20)"),
    pytest.mark.skipif(platform.system() != "Linux", reason="the emulator uses Linux contexts and mmap"),
]


@pytest.mark.parametrize("which", ["--bwd", "--fwd"])
def test_cuda_kernels_emulated(which):
    proc = subprocess.run(["bash", str(RUN_SH), which], capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    summaries = re.findall(r"(\d+) passed, (\d+) failed", out)
    assert proc.returncode == 0 and not failed, "\n".join(failed) or out[-4000:]
    # Both cp.async landing modes ran, every case passed.
    assert len(summaries) == 2 and all(int(p) > 0 and int(f) == 0 for p, f in summaries), out[-4000:]
