"""The CUDA kernels run on the CPU (no GPU needed): tests/cuda_emu/run.sh builds
the backward and forward emulators (fake CUDA headers, ldmatrix / mma.sync /
shfl / cp.async emulated per the PTX ISA on cooperative lanes) with g++ and
runs every case against a float64 reference, in both cp.async landing modes,
plus the Hopper kernel's emulator (run_sm90.sh). The whole set takes about a
minute on two cores, so it all runs here; a failing case is reported by name.
By hand: tests/cuda_emu/run.sh [--bwd | --fwd | --sm90] [case substring]
(tests/cuda_emu/README.md)."""

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


@pytest.mark.parametrize("which", ["--bwd", "--fwd", "--sm90"])
def test_cuda_kernels_emulated(which):
    if which == "--sm90" and not (RUN_SH.parent / "run_sm90.sh").is_file():
        pytest.skip("no Hopper emulator in this tree")
    proc = subprocess.run(["bash", str(RUN_SH), which], capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failed, "\n".join(failed) or out[-4000:]
    if which == "--sm90":
        assert "fwd_sm90_emu_test: ok" in out, out[-4000:]
    else:  # both cp.async landing modes ran, every case passed
        summaries = re.findall(r"(\d+) passed, (\d+) failed", out)
        assert len(summaries) == 2 and all(int(p) > 0 and int(f) == 0 for p, f in summaries), out[-4000:]
