"""The CPU forward's kernel builds, one per instruction set (csrc/cpu/isa.h),
each against the float64 reference on the same battery of shapes: the bf16
dot-product build (AVX512-BF16, vdpbf16ps) for bf16 with even head dims,
AVX-512, AVX2 and the baseline. Each build present on this CPU is forced by
SWA_CPU_ISA in a subprocess (it lowers the choice; the best build is the
default), and SWA_DEBUG_FORWARD_PATH names the build that ran, so a
dispatch that silently falls back fails here. Builds the CPU lacks skip.

Accuracy: FlashAttention's rule (2x the error of the same computation in
the input dtype, plus a tiny atol) for 16-bit inputs, 1e-5 for float32.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swa_cuda  # noqa: F401  (registers torch.ops.swa)
from conftest import ISA_FLAGS, cpu_flags
from reference import assert_fa_rule, attention_ref, max_err


# Build -> (the flags it needs, the SWA_CPU_ISA value that forces it or None
# where it is only ever the native choice).
BUILDS = {"avx512_bf16": (ISA_FLAGS["avx512"] | {"avx512_bf16"}, None),
          **{name: (flags, name) for name, flags in ISA_FLAGS.items()}}

# (batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, window_left,
# window_right, softcap, sink_tokens): odd lengths and window edges at odd
# key offsets (the bf16 build pairs keys), blocks of 128 keys crossed, Sq != Sk,
# GQA, two-sided and unbounded windows, softcap, sink tokens, head dims with
# and without a multiple of 32.
SHAPES = [
    (1, 2, 2, 300, 300, 64, 100, 0, 0.0, 0),
    (2, 4, 2, 129, 333, 128, 70, 5, 0.0, 0),
    (1, 2, 1, 200, 200, 80, 33, 0, 30.0, 0),
    (1, 1, 1, 77, 77, 34, 10, 3, 0.0, 0),
    (1, 1, 1, 65, 65, 96, 200, 200, 5.0, 0),
    (1, 3, 1, 257, 257, 2, 1, 0, 0.0, 0),
    (1, 2, 2, 190, 190, 66, 0, 0, 0.0, 0),
    (1, 2, 2, 150, 150, 64, -1, 0, 0.0, 3),
    (1, 2, 1, 40, 260, 256, 127, 0, 0.0, 5),
    (2, 2, 2, 1, 129, 64, 64, 0, 0.0, 0),
    (1, 4, 4, 131, 131, 63, 50, 0, 0.0, 0),
    (1, 1, 1, 300, 300, 16, 128, 1, 2.0, 1),
]


def shape_id(s):
    return "b{}h{}/{}q{}k{}d{}w{},{}c{:g}s{}".format(*s)


def check_shape(shape, dtype):
    """Forward of one shape against the float64 reference (raises on failure)."""
    b, hq, hkv, sq, sk, d, wl, wr, cap, sink = shape
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    q = torch.randn(b, hq, sq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, sk, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, sk, d, generator=g).to(dtype)
    if sink:
        out, lse = torch.ops.swa.attention.sinks(q, k, v, wl, wr, None, cap, sinks=None, sink_tokens=sink)
    else:
        out, lse = torch.ops.swa.attention(q, k, v, wl, wr, None, cap)
    ref, ref_lse = attention_ref(q, k, v, wl, wr, None, cap, sink_tokens=sink)
    low = attention_ref(q, k, v, wl, wr, None, cap, sink_tokens=sink, upcast=False)[0] if dtype != torch.float32 else None
    assert_fa_rule(out, ref, low, 2, 1e-5, f"out {shape_id(shape)} {dtype}")
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse)), f"lse: finite rows differ {shape_id(shape)}"
    err = max_err(lse[finite], ref_lse[finite])
    assert err < 2e-3, f"lse {shape_id(shape)} {dtype}: error {err:.3g}"


def check_all():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in SHAPES:
            check_shape(shape, dtype)


def expected_paths(build):
    """The paths the battery's calls report under one build."""
    if build == "avx512_bf16":  # bf16 with even head dims; everything else runs avx512
        return {"cpu-avx512_bf16", "cpu-avx512"}
    return {f"cpu-{build}"}


@pytest.mark.parametrize("build", list(BUILDS))
def test_forward_of_every_isa_build(build):
    flags, force = BUILDS[build]
    missing = flags - cpu_flags()
    if build != "baseline" and (missing or not sys.platform.startswith("linux")):
        pytest.skip(f"this CPU lacks {sorted(missing)} for the {build} build")
    env = dict(os.environ, SWA_DEBUG_FORWARD_PATH="1")
    env.pop("SWA_CPU_ISA", None)
    if force is not None:
        env["SWA_CPU_ISA"] = force
    code = "import test_cpu_isa_paths as t\nt.check_all()\nprint('ok')\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (
        f"build {build}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    paths = {line.split("forward path ", 1)[1].strip() for line in run.stderr.splitlines()
             if line.startswith("swa_cuda: forward path ")}
    assert paths == expected_paths(build), f"build {build} ran {sorted(paths)}"


def native_bf16_dot():
    return BUILDS["avx512_bf16"][0] <= cpu_flags() and os.environ.get("SWA_CPU_ISA") is None


needs_bf16_dot = pytest.mark.skipif(not native_bf16_dot(),
                                    reason="the bf16 dot-product build needs AVX512-BF16 as the native ISA")


@needs_bf16_dot
@pytest.mark.parametrize("window_left", [0, 1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129])
def test_bf16_dot_pair_edges(window_left):
    """Every window start parity and block edge: key pairs that straddle a
    vector's first or last key must count the key outside as P = 0."""
    for sq, sk, wr in ((200, 200, 0), (150, 260, 1), (97, 97, 4)):
        check_shape((1, 2, 1, sq, sk, 64, window_left, wr, 0.0, 0), torch.bfloat16)


@needs_bf16_dot
def test_bf16_dot_views_and_unseen_keys():
    """Strided and transposed views read in place; NaN keys and values that no
    query row sees (before bottom-right-aligned windows, between the sink
    tokens and the band) stay out of every output."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 300, 4, 96, generator=g).bfloat16()  # [B, S, H, D] storage
    q, k, v = (base[..., :64].transpose(1, 2) for _ in range(3))
    out, lse = torch.ops.swa.attention(q, k, v, 40, 0)
    ref, _ = attention_ref(q, k, v, 40, 0)
    assert_fa_rule(out, ref, attention_ref(q, k, v, 40, 0, upcast=False)[0], 2, 1e-5, "strided")

    sq, sk, w, sinks = 64, 400, 33, 2
    q = torch.randn(1, 2, sq, 64, generator=g).bfloat16()
    k = torch.randn(1, 2, sk, 64, generator=g).bfloat16()
    v = torch.randn(1, 2, sk, 64, generator=g).bfloat16()
    first_seen = sk - sq - w
    k[:, :, sinks:first_seen] = float("nan")
    v[:, :, sinks:first_seen] = float("nan")
    out, lse = torch.ops.swa.attention.sinks(q, k, v, w, 0, None, 0.0, sinks=None, sink_tokens=sinks)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref, _ = attention_ref(q, k.nan_to_num(), v.nan_to_num(), w, 0, sink_tokens=sinks)
    low = attention_ref(q, k.nan_to_num(), v.nan_to_num(), w, 0, sink_tokens=sinks, upcast=False)[0]
    assert_fa_rule(out, ref, low, 2, 1e-5, "unseen NaN keys")


@needs_bf16_dot
def test_bf16_dot_nan_where_seen():
    """A NaN in a key a row sees makes that row NaN (never a silently finite
    number); rows that cannot see it stay finite."""
    q = torch.randn(1, 1, 100, 64).bfloat16()
    k = torch.randn(1, 1, 100, 64).bfloat16()
    v = torch.randn(1, 1, 100, 64).bfloat16()
    k[0, 0, 50, 3] = float("nan")
    out, lse = torch.ops.swa.attention(q, k, v, 9, 0)
    assert torch.isnan(out[0, 0, 50:60]).all(dim=-1).all() and torch.isnan(lse[0, 0, 50:60]).all()
    assert torch.isfinite(out[0, 0, :50]).all() and torch.isfinite(out[0, 0, 60:]).all()


# The backward's two structures (csrc/cpu/backward_problem.h, fused_dq): one
# pass (bounded windows; dQ accumulated by the dK/dV tasks, chunks of keys per
# task) and the two passes (dQ by query tiles, dK/dV by key tiles).
BACKWARD_SHAPES = [  # (batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, window_left, window_right, softcap)
    (1, 4, 2, 300, 300, 64, 50, 0, 0.0),
    (2, 2, 2, 200, 200, 32, 0, 0, 0.0),
    (1, 8, 8, 257, 257, 80, 30, 5, 5.0),
    (2, 4, 4, 130, 190, 64, -1, 0, 0.0),
    (1, 6, 2, 65, 65, 16, 200, 200, 0.0),
    (1, 2, 1, 1, 129, 64, 64, 0, 0.0),
    (1, 2, 1, 2500, 2600, 32, 300, 3, 0.0),  # 3 chunks of 1024 keys, rows shared by two
]


def backward_grads(threads, dtype=torch.float32):
    """Gradients of every BACKWARD_SHAPES case (with grad_lse)."""
    torch.set_num_threads(threads)
    grads = []
    for i, (b, hq, hkv, sq, sk, d, wl, wr, cap) in enumerate(BACKWARD_SHAPES):
        g = torch.Generator().manual_seed(100 + i)
        q, k, v = (torch.randn(b, h, s, d, generator=g).to(dtype) for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
        out, lse = torch.ops.swa.attention(q, k, v, wl, wr, None, cap)
        dout, dlse = torch.randn(out.shape, generator=g).to(dtype), torch.randn(lse.shape, generator=g)
        grads.append(torch.ops.swa.attention_backward(dout, dlse, q, k, v, out, lse, wl, wr, None, cap, True))
    return grads


def backward_grads_extra(threads):
    """Gradients through the sink-logit and per-head-window overloads."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, h, 150, 64, generator=g) for h in (4, 2, 2))
    sinks = torch.randn(4, generator=g)
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 40, 0, None, 0.0, sinks=sinks, sink_tokens=0)
    dout = torch.randn(out.shape, generator=g)
    grads = [torch.ops.swa.attention_backward.sinks(dout, None, q, k, v, out, lse, 40, 0, None, 0.0, True,
                                                    sinks=sinks, sink_tokens=0)]
    left, right = torch.tensor([3, 70, 0, 149]), torch.tensor([0, 2, 0, 0])
    out, lse = torch.ops.swa.attention.per_head(q, k, v, left, right)
    grads.append(torch.ops.swa.attention_backward.per_head(dout, None, q, k, v, out, lse, left, right, None, 0.0))
    # Sink tokens (the dQ pass takes their pairs; one pass since they are few),
    # with sink logits, a two-sided window and 3 chunks of keys.
    q, k, v = (torch.randn(1, h, 2500, 32, generator=g) for h in (4, 2, 2))
    dout = torch.randn(q.shape, generator=g)
    for tokens, wl, wr in ((4, 300, 2), (1, 40, 0)):
        out, lse = torch.ops.swa.attention.sinks(q, k, v, wl, wr, None, 0.0, sinks=sinks, sink_tokens=tokens)
        grads.append(torch.ops.swa.attention_backward.sinks(dout, None, q, k, v, out, lse, wl, wr, None, 0.0, True,
                                                            sinks=sinks, sink_tokens=tokens))
    return grads


def run_backward_child(tmp_path, two_pass, threads):
    env = dict(os.environ, SWA_DEBUG_BACKWARD_PATH="1", SWA_CPU_BACKWARD_TWO_PASS="1" if two_pass else "0")
    path = tmp_path / f"grads_{int(two_pass)}_{threads}.pt"
    code = (f"import torch, test_cpu_isa_paths as t\n"
            f"torch.save((t.backward_grads({threads}), t.backward_grads_extra({threads}), "
            f"[t.backward_grads({threads}, dt) for dt in (torch.float64, torch.bfloat16)]), {str(path)!r})\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    paths = {line.split("backward path ", 1)[1].strip() for line in run.stderr.splitlines()
             if line.startswith("swa_cuda: backward path ")}
    return torch.load(path), paths


def test_backward_one_pass_matches_two_passes_and_reference(tmp_path):
    """One pass and two passes agree within float32 rounding and both match
    the float64 reference; the one pass is deterministic by construction
    (repeats bitwise here, and gives the same bits on 1 and 3 threads)."""
    (one, one_extra, one_other), one_paths = run_backward_child(tmp_path, False, 1)
    (two, two_extra, two_other), two_paths = run_backward_child(tmp_path, True, 1)
    # Unbounded windows take two passes either way (a chunk's rows would be
    # unbounded); natively bf16 one passes on bf16 pairs where the CPU has
    # AVX512-BF16 (tests/test_cpu_bf16_backward.py).
    dot = {"cpu-one-pass-bf16-dot"} if "avx512_bf16" in cpu_flags() and not os.environ.get("SWA_CPU_ISA") else set()
    assert one_paths == {"cpu-one-pass", "cpu-two-pass"} | dot and two_paths == {"cpu-two-pass"}
    (again, _, _), _ = run_backward_child(tmp_path, False, 3)
    # float64 (lse recomputed in float64, dQ accumulated in dq) and bf16
    # (dQ in a float32 buffer; on bf16 pairs P and dS rounded to bf16): one
    # pass vs two passes.
    for dtype, tol, a_all, c_all in zip(("float64", "bfloat16"), (1e-12, 1e-2), one_other, two_other):
        for shape, a_grads, c_grads in zip(BACKWARD_SHAPES, a_all, c_all):
            for name, a, c in zip("qkv", a_grads, c_grads):
                assert max_err(a, c) <= tol * max(1.0, c.abs().max().item()), f"{dtype} d{name} {shape}"
    for what, a_grads, c_grads in zip(("sink logits", "per-head windows", "sink tokens 4", "sink tokens 1"),
                                      one_extra, two_extra):
        for a, c in zip(a_grads, c_grads):
            scale = c.abs().max().item() if c.numel() else 1.0
            assert max_err(a, c) <= 1e-5 * max(1.0, scale), f"{what}: one pass vs two passes"
    for i, shape in enumerate(BACKWARD_SHAPES):
        b, hq, hkv, sq, sk, d, wl, wr, cap = shape
        g = torch.Generator().manual_seed(100 + i)
        q, k, v = (torch.randn(bb, h, s, d, generator=g).double().requires_grad_()
                   for bb, h, s in ((b, hq, sq), (b, hkv, sk), (b, hkv, sk)))
        out, lse = attention_ref(q, k, v, wl, wr, None, cap)
        dout = torch.randn(out.shape, generator=g).double()
        dlse = torch.randn(lse.shape, generator=g).double()
        ref = torch.autograd.grad((out * dout).sum() + (lse.masked_fill(torch.isinf(lse), 0) * dlse).sum(), (q, k, v))
        for name, a, c, r, rep in zip("qkv", one[i], two[i], ref, again[i]):
            assert torch.equal(a, rep), f"d{name} {shape}: one pass not repeatable"
            bound = 1e-5 * max(1.0, r.abs().max().item())
            assert max_err(a, r) <= bound, f"d{name} {shape}: one pass error {max_err(a, r):.3g}"
            assert max_err(c, r) <= bound, f"d{name} {shape}: two passes error {max_err(c, r):.3g}"
