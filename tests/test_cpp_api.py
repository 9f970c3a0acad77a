"""The library as other code links it: headers, one shared library with a
SONAME and no Python symbols, the CMake package, a consumer torch extension and
a plain C++ program (issue: C++ API and packaging)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import swa_cuda
from reference import attention_ref, per_head_attention_ref

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_installed_layout():
    assert Path(swa_cuda.include_dir(), "swa", "swa.h").is_file()
    assert Path(swa_cuda.include_dir(), "swa", "kernels", "params.h").is_file()
    assert Path(swa_cuda.library_path()).is_file()
    assert Path(swa_cuda.cmake_prefix_path(), "share", "cmake", "swa_cuda", "swa_cudaConfig.cmake").is_file()


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils")
def test_library_has_soname_and_no_python_symbols():
    dynamic = subprocess.run(["readelf", "-dW", swa_cuda.library_path()], capture_output=True, text=True,
                             check=True).stdout
    assert "(SONAME)" in dynamic and "libswa_cuda.so" in dynamic
    assert "libpython" not in dynamic and "libtorch_python" not in dynamic
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W", swa_cuda.library_path()], capture_output=True,
                             text=True, check=True).stdout
    undefined_py = [line for line in symbols.splitlines() if " UND " in line and " Py" in line]
    assert not undefined_py, undefined_py[:5]


def test_public_header_needs_no_cuda(tmp_path):
    """swa.h compiles as plain C++ with only torch's and our include dirs, and
    the kernel-level headers can be vendored under another namespace."""
    src = tmp_path / "plain.cpp"
    src.write_text("#include <swa/swa.h>\n#include <swa/kernels/params.h>\n#include <swa/kernels/ring.h>\n"
                   "int main() { vendored::swa::AttentionParams p; return (int)vendored::swa::ring_slot(7, 4) - 3"
                   " + (int)p.num_splits - 1; }\n")
    torch_include = Path(torch.__file__).parent / "include"
    subprocess.run(["c++", "-std=c++20", "-fsyntax-only", f"-I{swa_cuda.include_dir()}", f"-I{torch_include}",
                    "-DSWA_KERNEL_NS=vendored::swa", str(src)], check=True)


def test_version_guard(monkeypatch):
    from swa_cuda import _build_info, _library

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match="built for torch 1.0.0"):
        _library.check_versions()


@pytest.fixture(scope="module")
def consumer_extension(tmp_path_factory):
    from torch.utils import cpp_extension

    build = tmp_path_factory.mktemp("consumer_build")
    lib_dir = os.path.dirname(swa_cuda.library_path())
    cpp_extension.load(
        name="swa_consumer",
        sources=[str(EXAMPLES / "torch_extension" / "swa_consumer.cpp")],
        extra_include_paths=[swa_cuda.include_dir()],
        extra_ldflags=[swa_cuda.library_path(), f"-Wl,-rpath,{lib_dir}"],
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.swa_consumer


def test_consumer_extension_matches_reference(consumer_extension):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 40, 32, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 40, 32, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 40, 32, generator=g, dtype=torch.float64)
    out = consumer_extension.mistral_attention(q, k, v, 7)
    torch.testing.assert_close(out, attention_ref(q, k, v, 6, 0)[0])


def test_consumer_extension_autograd_in_cpp(consumer_extension):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g, dtype=torch.float64) for _ in range(3))
    grads = consumer_extension.attention_grads(q, k, v, 3, 1)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = attention_ref(qr, kr, vr, 3, 1)
    ref = torch.autograd.grad(out.sum() + lse.sum(), (qr, kr, vr))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # lse is float32 by contract


def test_consumer_extension_sinks(consumer_extension):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 30, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 30, 8, generator=g, dtype=torch.float64) for _ in range(2))
    sinks = torch.randn(4, generator=g, dtype=torch.float64)
    got = consumer_extension.sink_attention_grads(q, k, v, sinks, 5, 2)
    qr, kr, vr, sr = (t.clone().requires_grad_() for t in (q, k, v, sinks))
    out, lse = attention_ref(qr, kr, vr, 4, 0, sinks=sr, sink_tokens=2)
    ref = torch.autograd.grad(out.sum() + lse.sum(), (qr, kr, vr, sr))
    torch.testing.assert_close(got[0], out.detach())
    for a, b in zip(got[1:], ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # lse is float32 by contract


def test_consumer_extension_per_head_windows(consumer_extension):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 30, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 30, 8, generator=g, dtype=torch.float64) for _ in range(2))
    lefts, rights = [0, 5, -1, 12], [0, 0, 2, -1]
    got = consumer_extension.per_head_attention_grads(q, k, v, torch.tensor(lefts), torch.tensor(rights))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = per_head_attention_ref(qr, kr, vr, lefts, rights)
    ref = torch.autograd.grad(out.sum() + lse.sum(), (qr, kr, vr))
    torch.testing.assert_close(got[0], out.detach())
    for a, b in zip(got[1:], ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # lse is float32 by contract


def test_consumer_extension_packed_cache_step(consumer_extension):
    g = torch.Generator().manual_seed(3)
    B, Hq, Hkv, C, D, W = 3, 4, 2, 6, 8, 6
    kc, vc = (torch.randn(B, Hkv, C, D, generator=g) for _ in range(2))
    pos = torch.tensor([9, 0, 4])
    cu = torch.tensor([0, 1, 5, 7], dtype=torch.int32)  # decode, prefill, chunk
    q = torch.randn(7, Hq, D, generator=g)
    k, v = (torch.randn(7, Hkv, D, generator=g) for _ in range(2))
    want_kc, want_vc = kc.clone(), vc.clone()
    want = torch.ops.swa.cache_attention.varlen(q, k, v, cu, 4, want_kc, want_vc, pos, W)[0]
    torch.ops.swa.cache_append.varlen(want_kc, want_vc, k, v, cu, pos)
    got = consumer_extension.packed_serve_step(q, k, v, cu, 4, kc, vc, pos, W)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(kc, want_kc, rtol=0, atol=0)
    torch.testing.assert_close(vc, want_vc, rtol=0, atol=0)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_consumer(tmp_path):
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(EXAMPLES / "cmake_consumer"), "-B", str(build),
                 f"-DCMAKE_PREFIX_PATH={swa_cuda.cmake_prefix_path()}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    run = subprocess.run([str(build / "swa_consumer_demo")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "autograd ok" in run.stdout
