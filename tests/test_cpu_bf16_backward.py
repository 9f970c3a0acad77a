"""The CPU backward's one pass on bf16 pairs (AVX512-BF16, vdpbf16ps;
csrc/cpu/backward_avx512_bf16.cpp): the native choice for bf16 with an even
head dim and bounded windows. Each battery runs in a child process with
SWA_DEBUG_BACKWARD_PATH, so a dispatch that silently falls back fails here:
natively it must report the bf16 dot path, and forced to the AVX-512 build
without BF16 (SWA_CPU_ISA=avx512) the float32 one pass, both against the
float64 reference by FlashAttention's rule (3x the error of the same
computation in bf16 for gradients, plus a tiny atol). Skips where the CPU
lacks AVX512-BF16.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swa_cuda  # noqa: F401  (registers torch.ops.swa)
from conftest import ISA_FLAGS, cpu_flags
from reference import assert_fa_rule, attention_ref, per_head_attention_ref

pytestmark = pytest.mark.skipif(
    not (ISA_FLAGS["avx512"] | {"avx512_bf16"}) <= cpu_flags() or os.environ.get("SWA_CPU_ISA") is not None
    or not sys.platform.startswith("linux"),
    reason="the bf16 dot-product backward needs AVX512-BF16 as the native ISA")

# (batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, window_left,
# window_right, softcap, layout): GQA, one key per row (P = 1 exactly), a
# two-sided window with softcap, Sq != Sk, head dims whose last vector of
# dims is partial (34, 80) or a single pair (2), odd lengths at the tiles'
# edges, 3 chunks of keys, and a [B, S, H, D] storage read through strides.
SHAPES = [
    (1, 4, 2, 300, 300, 64, 50, 0, 0.0, "bhsd"),
    (2, 2, 2, 200, 200, 32, 0, 0, 0.0, "bhsd"),
    (1, 8, 8, 257, 257, 80, 30, 5, 5.0, "bhsd"),
    (1, 2, 1, 130, 190, 34, 21, 3, 0.0, "bhsd"),
    (1, 3, 1, 67, 67, 2, 7, 0, 0.0, "bhsd"),
    (1, 2, 2, 129, 129, 128, 64, 1, 0.0, "bshd"),
    (1, 2, 1, 2500, 2600, 32, 300, 3, 0.0, "bhsd"),
]


def inputs(i, shape):
    b, hq, hkv, sq, sk, d, wl, wr, cap, layout = shape
    g = torch.Generator().manual_seed(200 + i)
    if layout == "bshd":  # one [B, S, H, 2D] storage, the heads' first D dims
        q, k, v = (torch.randn(b, s, h, 2 * d, generator=g).bfloat16()[..., :d].transpose(1, 2)
                   for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    else:
        q, k, v = (torch.randn(b, h, s, d, generator=g).bfloat16() for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    dout = torch.randn(b, hq, sq, d, generator=g).bfloat16()
    dlse = torch.randn(b, hq, sq, generator=g)
    return q, k, v, dout, dlse


def battery():
    """Our gradients of every case, through the plain, sink-logit and
    per-head-window overloads (all one pass)."""
    grads = []
    for i, shape in enumerate(SHAPES):
        q, k, v, dout, dlse = inputs(i, shape)
        wl, wr, cap = shape[6:9]
        out, lse = torch.ops.swa.attention(q, k, v, wl, wr, None, cap)
        grads.append(torch.ops.swa.attention_backward(dout, dlse, q, k, v, out, lse, wl, wr, None, cap, True))
    q, k, v, dout, _ = inputs(0, SHAPES[0])
    sinks = torch.linspace(-1.0, 2.0, q.shape[1])
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 40, 0, None, 0.0, sinks=sinks, sink_tokens=0)
    grads.append(torch.ops.swa.attention_backward.sinks(dout, None, q, k, v, out, lse, 40, 0, None, 0.0, True,
                                                        sinks=sinks, sink_tokens=0))
    left, right = torch.tensor([3, 70, 0, 149]), torch.tensor([0, 2, 0, 0])
    out, lse = torch.ops.swa.attention.per_head(q, k, v, left, right)
    grads.append(torch.ops.swa.attention_backward.per_head(dout, None, q, k, v, out, lse, left, right, None, 0.0))
    for case, (logits, tokens, cap) in enumerate(SINK_TOKEN_CASES):
        q, k, v, dout, dlse = inputs(case, SHAPES[case])
        sinks = torch.linspace(-1.0, 2.0, q.shape[1]) if logits else None
        out, lse = torch.ops.swa.attention.sinks(q, k, v, 40, 0, None, cap, sinks=sinks, sink_tokens=tokens)
        grads.append(torch.ops.swa.attention_backward.sinks(dout, dlse, q, k, v, out, lse, 40, 0, None, cap, True,
                                                            sinks=sinks, sink_tokens=tokens))
    return grads


# Sink tokens (the dQ pass takes their pairs, on float32 rows; the band's on
# bf16 pairs): (with sink logits, sink tokens, softcap) on SHAPES[i].
SINK_TOKEN_CASES = [(True, 4, 0.0), (False, 1, 5.0), (True, 16, 0.0)]


def reference_grads(q, k, v, dout, dlse, fn):
    """(float64, bf16) gradients of fn(q, k, v) -> (out, lse) under the loss
    sum(out dout) + sum(lse dlse) over rows that see a key."""
    result = []
    for upcast in (True, False):
        qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out, lse = fn(qq, kk, vv, upcast)
        loss = (out.double() * dout.double()).sum()
        if dlse is not None:
            loss = loss + (lse.double().masked_fill(torch.isinf(lse), 0) * dlse.double()).sum()
        result.append(torch.autograd.grad(loss, (qq, kk, vv)))
    return result


def check_battery(grads, what):
    for i, shape in enumerate(SHAPES):
        q, k, v, dout, dlse = inputs(i, shape)
        wl, wr, cap = shape[6:9]
        ref, low = reference_grads(q, k, v, dout, dlse,
                                   lambda a, b, c, up: attention_ref(a, b, c, wl, wr, None, cap, upcast=up))
        for name, got, r64, rlp in zip("qkv", grads[i], ref, low):
            assert got.dtype == torch.bfloat16 and got.shape == r64.shape
            assert_fa_rule(got, r64, rlp, 3, 1e-5, f"{what} d{name} {shape}")
    q, k, v, dout, _ = inputs(0, SHAPES[0])
    sinks = torch.linspace(-1.0, 2.0, q.shape[1])
    ref, low = reference_grads(q, k, v, dout, None,
                               lambda a, b, c, up: attention_ref(a, b, c, 40, 0, sinks=sinks, upcast=up))
    for name, got, r64, rlp in zip("qkv", grads[len(SHAPES)][:3], ref, low):
        assert_fa_rule(got, r64, rlp, 3, 1e-5, f"{what} sink logits d{name}")
    ref, low = reference_grads(q, k, v, dout, None, lambda a, b, c, up: per_head_attention_ref(
        a, b, c, [3, 70, 0, 149], [0, 2, 0, 0], upcast=up))
    for name, got, r64, rlp in zip("qkv", grads[len(SHAPES) + 1], ref, low):
        assert_fa_rule(got, r64, rlp, 3, 1e-5, f"{what} per-head windows d{name}")
    for case, (logits, tokens, cap) in enumerate(SINK_TOKEN_CASES):
        q, k, v, dout, dlse = inputs(case, SHAPES[case])
        sinks = torch.linspace(-1.0, 2.0, q.shape[1]) if logits else None
        ref, low = reference_grads(q, k, v, dout, dlse, lambda a, b, c, up: attention_ref(
            a, b, c, 40, 0, None, cap, sinks=sinks, sink_tokens=tokens, upcast=up))
        for name, got, r64, rlp in zip("qkv", grads[len(SHAPES) + 2 + case][:3], ref, low):
            assert_fa_rule(got, r64, rlp, 3, 1e-5, f"{what} {tokens} sink tokens d{name}")


def run_child(tmp_path, isa):
    env = dict(os.environ, SWA_DEBUG_BACKWARD_PATH="1")
    env.pop("SWA_CPU_ISA", None)
    if isa is not None:
        env["SWA_CPU_ISA"] = isa
    path = tmp_path / f"grads_{isa}.pt"
    code = f"import torch, test_cpu_bf16_backward as t\ntorch.save(t.battery(), {str(path)!r})\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    paths = {line.split("backward path ", 1)[1].strip() for line in run.stderr.splitlines()
             if line.startswith("swa_cuda: backward path ")}
    return torch.load(path), paths


def test_bf16_dot_backward_matches_reference(tmp_path):
    grads, paths = run_child(tmp_path, None)
    assert paths == {"cpu-one-pass-bf16-dot"}, sorted(paths)
    check_battery(grads, "bf16 pairs")


def test_bf16_backward_without_bf16_instructions_matches_reference(tmp_path):
    grads, paths = run_child(tmp_path, "avx512")
    assert paths == {"cpu-one-pass"}, sorted(paths)
    check_battery(grads, "avx512 build")


def test_bf16_dot_backward_keeps_unseen_nan_keys_out():
    """Keys and values that no query row sees hold NaN: every gradient stays
    finite, theirs are 0, and the rest match the reference on zeros there.
    The first seen key is odd (its pair partner is unseen, and both share a
    tile and a vector of lanes)."""
    g = torch.Generator().manual_seed(5)
    sq, sk, w = 100, 300, 49
    q = torch.randn(1, 2, sq, 64, generator=g).bfloat16()
    k = torch.randn(1, 1, sk, 64, generator=g).bfloat16()
    v = torch.randn(1, 1, sk, 64, generator=g).bfloat16()
    dout = torch.randn(1, 2, sq, 64, generator=g).bfloat16()
    first_seen = sk - sq - w  # 151: query 0 sits at key 200
    assert first_seen % 2 == 1
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, :, :first_seen] = float("nan")
    v_nan[:, :, :first_seen] = float("inf")
    out, lse = torch.ops.swa.attention(q, k_nan, v_nan, w, 0)
    dq, dk, dv = torch.ops.swa.attention_backward(dout, None, q, k_nan, v_nan, out, lse, w, 0, None, 0.0, True)
    for name, t in zip("qkv", (dq, dk, dv)):
        assert torch.isfinite(t).all(), f"d{name}: not finite"
    assert (dk[:, :, :first_seen] == 0).all() and (dv[:, :, :first_seen] == 0).all()
    ref, low = reference_grads(q, k, v, dout, None, lambda a, b, c, up: attention_ref(a, b, c, w, 0, upcast=up))
    for name, got, r64, rlp in zip("qkv", (dq, dk, dv), ref, low):
        assert_fa_rule(got, r64, rlp, 3, 1e-5, f"unseen NaN keys d{name}")
