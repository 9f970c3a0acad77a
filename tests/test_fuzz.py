"""Property-based tests (hypothesis) of the CPU ops against the float64
reference: random shapes (0 and 1 sizes included), strided views, windows of
both sides from -1 to beyond the sequence (and int64's limit), Sq != Sk, GQA
ratios, softcaps, scales and dtypes; and random interleavings of
cache_append / cache_attention / cache_gather with random chunk sizes against
each sequence's full history.

Profiles (SWA_HYPOTHESIS_PROFILE): "ci" (the default: 200 examples per
property, derandomized so CI is repeatable), "long" (2000 random examples per
property, for local runs: SWA_HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py).
A failure prints the shrunk example; add it to test_attention.py, test_cache.py
or test_hardening.py as a regular test.
"""

import os
import sys

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import swa_cuda  # noqa: E402,F401
from reference import assert_fa_rule, attention_ref  # noqa: E402

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("SWA_HYPOTHESIS_PROFILE", "ci"))

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def _window(draw, extent):
    """-1, 0 .. beyond the sequence, or int64's limit."""
    return draw(st.one_of(st.just(-1), st.integers(0, extent + 3), st.just(sys.maxsize)))


def _operand(draw, gen, b, h, s, d, dtype):
    """[B, H, S, D] with a random layout: contiguous, the HF [B, S, H, D]
    transpose, a slice of a longer sequence, padded rows, or (one head) an
    expanded head dim."""
    layout = draw(st.sampled_from(["bhsd", "bshd", "slice", "padded", "expanded"]))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    if layout == "bshd":
        return rand(b, s, h, d).transpose(1, 2)
    if layout == "slice":
        return rand(b, h, s + 3, d)[:, :, 2:2 + s]
    if layout == "padded":
        return rand(b, h, s, d + 5)[..., 1:1 + d]
    if layout == "expanded":
        return rand(b, 1, s, d).expand(b, h, s, d)
    return rand(b, h, s, d)


@st.composite
def problems(draw):
    heads_kv = draw(st.integers(0, 3))
    group = draw(st.sampled_from([1, 2, 3, 4]))
    b = draw(st.integers(0, 2))
    sq = draw(st.integers(0, 70))
    sk = draw(st.integers(0, 70))
    d = draw(st.sampled_from([1, 2, 3, 8, 16, 33, 64]))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = _operand(draw, gen, b, heads_kv * group, sq, d, dtype)
    k = _operand(draw, gen, b, heads_kv, sk, d, dtype)
    v = _operand(draw, gen, b, heads_kv, sk, d, dtype)
    wl, wr = _window(draw, sk), _window(draw, sq)
    scale = draw(st.sampled_from([None, 0.0, 0.05, 1.0, -0.7, 4.0]))
    softcap = draw(st.sampled_from([0.0, 0.0, 1e-40, 0.5, 5.0, 1e35]))
    return q, k, v, wl, wr, scale, softcap


def _ref_args(wl, wr, softcap):
    # The reference reads a huge window literally; it means unbounded.
    return (-1 if wl == sys.maxsize else wl), (-1 if wr == sys.maxsize else wr), min(softcap, 1e30)


def _assert_fa_rule(out, ref, ref_lowp, dtype, what):
    # fp32/fp64: a tolerance relative to the output's scale; 16-bit: FlashAttention's rule.
    assert_fa_rule(out, ref, None if dtype in (torch.float32, torch.float64) else ref_lowp, 2, ATOL[dtype], what)


@given(problems())
def test_attention_matches_reference(problem):
    q, k, v, wl, wr, scale, softcap = problem
    out, lse = torch.ops.swa.attention(q, k, v, wl, wr, scale, softcap)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    rwl, rwr, rcap = _ref_args(wl, wr, softcap)
    if k.shape[1] == 0:  # no kv head (then no query head either): nothing to compare
        return
    ref, ref_lse = attention_ref(q, k, v, rwl, rwr, scale, rcap)
    ref_lowp = attention_ref(q, k, v, rwl, rwr, scale, rcap, upcast=False)[0] if q.dtype.itemsize == 2 else None
    _assert_fa_rule(out, ref, ref_lowp, q.dtype, "out")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "rows that see no key differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=2e-3, atol=2e-3)


@settings(max_examples=min(settings().max_examples, 100))
@given(problems())
def test_gradients_match_reference(problem):
    q, k, v, wl, wr, scale, softcap = problem
    if k.shape[1] == 0 or q.dtype.itemsize == 2:  # 16-bit gradients: test_attention.py's FA rule
        return
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    rwl, rwr, rcap = _ref_args(wl, wr, softcap)
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(q.shape, generator=gen, dtype=torch.float64)
    dlse = torch.randn(q.shape[:3], generator=gen, dtype=torch.float64)
    out, lse = swa_cuda.local_attention(q, k, v, (wl, wr), scale=scale, softcap=softcap, return_lse=True)
    loss = (out * dout).sum() + (lse.double().nan_to_num(neginf=0.0) * dlse).sum()
    grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True)
    ref, ref_lse = attention_ref(q, k, v, rwl, rwr, scale, rcap)
    ref_loss = (ref * dout).sum() + (ref_lse.double().nan_to_num(neginf=0.0) * dlse).sum()
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v), allow_unused=True)
    for name, g, r in zip("qkv", grads, ref_grads):
        g = torch.zeros_like(q if name == "q" else k) if g is None else g
        r = torch.zeros_like(g) if r is None else r
        # lse is float32 (the op's contract): its gradient path carries that rounding.
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{name}: {m}")


@settings(max_examples=min(settings().max_examples, 100))
@given(problems(), st.sampled_from([0, 1, 3, 80, sys.maxsize]), st.sampled_from([None, "randn", -1e4, 30.0]))
def test_sinks_match_reference(problem, sink_tokens, logits):
    """attention.sinks (forward and float64 gradients incl. d sinks) on the
    same random problems, with sink tokens (up to int64's limit) and logits."""
    q, k, v, wl, wr, scale, softcap = problem
    if k.shape[1] == 0 or (sink_tokens == 0 and logits is None):
        return
    hq = q.shape[1]
    sinks = None
    if logits == "randn":
        sinks = torch.randn(hq, generator=torch.Generator().manual_seed(hq))
    elif logits is not None:
        sinks = torch.full((hq,), logits)
    rwl, rwr, rcap = _ref_args(wl, wr, softcap)
    out, lse = torch.ops.swa.attention.sinks(q, k, v, wl, wr, scale, softcap, sinks=sinks, sink_tokens=sink_tokens)
    ref, ref_lse = attention_ref(q, k, v, rwl, rwr, scale, rcap, sinks=sinks, sink_tokens=sink_tokens)
    ref_lowp = (attention_ref(q, k, v, rwl, rwr, scale, rcap, upcast=False, sinks=sinks, sink_tokens=sink_tokens)[0]
                if q.dtype.itemsize == 2 else None)
    _assert_fa_rule(out, ref, ref_lowp, q.dtype, "out")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "rows that see no key differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=2e-3, atol=2e-3)
    if q.dtype.itemsize == 2 or not ref_lse.isfinite().all():
        return
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    inputs = (q, k, v)
    if sinks is not None:
        sinks = sinks.double().requires_grad_()
        inputs += (sinks,)
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(q.shape, generator=gen, dtype=torch.float64)
    dlse = torch.randn(q.shape[:3], generator=gen, dtype=torch.float64)
    out, lse = swa_cuda.local_attention(q, k, v, (wl, wr), scale=scale, softcap=softcap, return_lse=True,
                                        sinks=sinks, sink_tokens=sink_tokens)
    grads = torch.autograd.grad((out * dout).sum() + (lse.double() * dlse).sum(), inputs, allow_unused=True)
    ref, ref_lse = attention_ref(*inputs[:3], rwl, rwr, scale, rcap, sinks=sinks, sink_tokens=sink_tokens)
    ref_grads = torch.autograd.grad((ref * dout).sum() + (ref_lse.double() * dlse).sum(), inputs,
                                    allow_unused=True)
    for name, g, r in zip(["q", "k", "v", "sinks"], grads, ref_grads):
        g = torch.zeros_like(inputs["qkvs".index(name[0])]) if g is None else g
        r = torch.zeros_like(g) if r is None else r
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * max(1, q.shape[0] * q.shape[2]),
                                   msg=lambda m: f"d{name}: {m}")


# ---- the rolling cache: random interleavings ----------------------------------


@st.composite
def cache_programs(draw):
    window = draw(st.integers(1, 12))
    capacity = max(1, window - 1) + draw(st.integers(0, 6))
    batch = draw(st.integers(1, 3))
    heads_kv = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    ops = draw(st.lists(st.tuples(st.sampled_from(["attend", "attend", "append", "gather", "reset"]),
                                  st.integers(1, 2 * capacity + 3), st.integers(0, batch - 1)),
                        min_size=1, max_size=25))
    softcap = draw(st.sampled_from([0.0, 3.0]))
    return window, capacity, batch, heads_kv, group, dtype, ops, softcap, draw(st.integers(0, 2**31 - 1))


@given(cache_programs())
def test_cache_ops_interleaved_match_full_history(program):
    window, capacity, batch, heads_kv, group, dtype, ops, softcap, seed = program
    d = 8
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    # The ring starts as NaN: a slot read before it is written poisons the output.
    kc = torch.full((batch, heads_kv, capacity, d), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    pos = torch.zeros(batch, dtype=torch.int64)
    history = [(torch.zeros(heads_kv, 0, d, dtype=dtype), torch.zeros(heads_kv, 0, d, dtype=dtype))
               for _ in range(batch)]
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for op, t, who in ops:
        if op == "reset":  # a new sequence takes slot `who` (stale slots must stay unread)
            pos[who] = 0
            history[who] = (history[who][0][:, :0], history[who][1][:, :0])
            continue
        if op == "gather":
            n = min(t, capacity)
            k_out, v_out = torch.ops.swa.cache_gather(kc, vc, pos, n)
            for b in range(batch):
                hk, hv = history[b]
                held = min(n, hk.shape[1])
                assert (k_out[b, :, :n - held] == 0).all() and (v_out[b, :, :n - held] == 0).all()
                assert torch.equal(k_out[b, :, n - held:], hk[:, hk.shape[1] - held:])
                assert torch.equal(v_out[b, :, n - held:], hv[:, hv.shape[1] - held:])
            continue
        k, v = rand(batch, heads_kv, t, d), rand(batch, heads_kv, t, d)
        if op == "attend":
            q = rand(batch, heads_kv * group, t, d)
            out, lse = torch.ops.swa.cache_attention(q, k, v, kc, vc, pos, window, None, softcap)
            for b in range(batch):
                keys = torch.cat([history[b][0], k[b]], 1)[None]
                vals = torch.cat([history[b][1], v[b]], 1)[None]
                ref, ref_lse = attention_ref(q[b:b + 1], keys, vals, window - 1, 0, None, softcap)
                assert (out[b:b + 1].double() - ref.double()).abs().max() <= tol, (op, t, b)
                torch.testing.assert_close(lse[b:b + 1], ref_lse, rtol=1e-5, atol=1e-5)
        torch.ops.swa.cache_append(kc, vc, k, v, pos)
        for b in range(batch):
            history[b] = (torch.cat([history[b][0], k[b]], 1), torch.cat([history[b][1], v[b]], 1))
        pos += t


# ---- the packed cache ops: random continuous batches ---------------------------


@st.composite
def packed_cache_programs(draw):
    window = draw(st.integers(1, 12))
    sink_tokens = draw(st.sampled_from([0, 0, 1, 3]))
    capacity = sink_tokens + max(1, window - 1) + draw(st.integers(0, 6))
    batch = draw(st.integers(1, 4))
    heads_kv = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # Each step gives every sequence 0 tokens (idle), 1 (decode) or a chunk;
    # a negative length starts a new sequence in that slot.
    length = st.one_of(st.just(0), st.just(1), st.just(1), st.integers(2, 2 * capacity + 3), st.just(-1))
    steps = draw(st.lists(st.lists(length, min_size=batch, max_size=batch), min_size=1, max_size=12))
    logits = draw(st.booleans())
    softcap = draw(st.sampled_from([0.0, 3.0]))
    return (window, sink_tokens, capacity, batch, heads_kv, group, dtype, steps, logits, softcap,
            draw(st.integers(0, 2**31 - 1)))


@given(packed_cache_programs())
def test_packed_cache_steps_match_full_history(program):
    window, S, capacity, batch, heads_kv, group, dtype, steps, logits, softcap, seed = program
    d = 8
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    kc = torch.full((batch, heads_kv, capacity, d), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    pos = torch.zeros(batch, dtype=torch.int64)
    sinks = torch.randn(heads_kv * group, generator=gen) if logits else None
    empty = torch.zeros(heads_kv, 0, d, dtype=dtype)
    history = [(empty, empty) for _ in range(batch)]
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for step in steps:
        for b, t in enumerate(step):
            if t < 0:
                pos[b], history[b] = 0, (empty, empty)
        lengths = [max(t, 0) for t in step]
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        total = int(cu[-1])
        q = rand(total, heads_kv * group, d)
        k, v = rand(total, heads_kv, d), rand(total, heads_kv, d)
        out, lse = torch.ops.swa.cache_attention.varlen(q, k, v, cu, max(lengths), kc, vc, pos, window, None,
                                                        softcap, sinks=sinks, sink_tokens=S)
        torch.ops.swa.cache_append.varlen(kc, vc, k, v, cu, pos, sink_tokens=S)
        for b in range(batch):
            r0, r1 = int(cu[b]), int(cu[b + 1])
            keys = torch.cat([history[b][0], k[r0:r1].transpose(0, 1)], 1)
            vals = torch.cat([history[b][1], v[r0:r1].transpose(0, 1)], 1)
            if r1 > r0:
                ref, ref_lse = attention_ref(q[r0:r1].transpose(0, 1)[None], keys[None], vals[None], window - 1, 0,
                                             None, softcap, sinks=sinks, sink_tokens=S)
                got = out[r0:r1].transpose(0, 1)[None]
                assert (got.double() - ref.double()).abs().max() <= tol, (step, b)
                torch.testing.assert_close(lse[:, r0:r1][None], ref_lse, rtol=1e-5, atol=1e-5)
            history[b] = (keys, vals)
        pos += torch.tensor(lengths)
