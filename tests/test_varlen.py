"""Packed variable-length sequences (torch.ops.swa.attention.varlen, its
backward and swa_cuda.varlen_attention, FlashAttention's layout): against the
padded op run sequence by sequence and against the float64 reference, with
the sink arguments, bad input, opcheck and torch.compile. CPU (the CUDA
backend: test_cuda_varlen.py, which reuses these cases).
"""

import random

import pytest
import torch

import swa_cuda
from reference import assert_fa_rule, attention_ref
from test_attention import tolerance

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def packed(lens_q, lens_k, heads_q, heads_kv, dim, dtype, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)

    def rand(t, h):
        x = torch.randn(t, h, dim, generator=g).to(dtype)
        return x.requires_grad_(grad)

    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens, dtype=torch.int64).cumsum(0)),  # noqa: E731
                                   dtype=torch.int32)
    return (rand(sum(lens_q), heads_q), rand(sum(lens_k), heads_kv), rand(sum(lens_k), heads_kv),
            cu(lens_q), cu(lens_k))


def per_sequence(fn, q, k, v, cu_q, cu_k):
    """fn on each sequence as a padded [1, H, S, D] problem: (out [Tq, Hq, D], lse [Hq, Tq])."""
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        as_batch = lambda t, c: t[c[b]:c[b + 1]].transpose(0, 1).unsqueeze(0)  # noqa: E731
        o, l = fn(as_batch(q, cu_q), as_batch(k, cu_k), as_batch(v, cu_k))
        outs.append(o[0].transpose(0, 1))
        lses.append(l[0])
    return torch.cat(outs), torch.cat(lses, 1)


def random_batch(rng, window):
    n = rng.choice([1, 2, 3, 5])
    lens_k = [rng.choice([0, 1, window - 1, window, window + 1, 3 * window + 7, 150]) for _ in range(n)]
    lens_q = [rng.choice([lk, lk, max(0, lk - 3), min(lk, 1), lk + 2]) for lk in lens_k]
    return lens_q, lens_k


def cases(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        window = rng.choice([1, 4, 16, 64])
        lens_q, lens_k = random_batch(rng, window)
        heads_kv = rng.choice([1, 2])
        out.append(dict(lens_q=lens_q, lens_k=lens_k, heads_q=heads_kv * rng.choice([1, 3]), heads_kv=heads_kv,
                        dim=rng.choice([8, 32, 64]), window=(window - 1, rng.choice([0, 0, 3, -1])),
                        softcap=rng.choice([0.0, 3.0]), sink_tokens=rng.choice([0, 0, 2]),
                        logits=rng.choice([False, False, True])))
    return out


CASES = cases(24, seed=5)


def case_id(c):
    return (f"q{c['lens_q']}k{c['lens_k']}h{c['heads_q']}/{c['heads_kv']}d{c['dim']}w{c['window']}"
            f"c{c['softcap']:g}S{c['sink_tokens']}L{int(c['logits'])}")


def sinks_of(c, dtype):
    if not c["logits"]:
        return None
    return torch.linspace(-2, 2, c["heads_q"], dtype=torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_per_sequence_and_reference(case, dtype):
    q, k, v, cu_q, cu_k = packed(case["lens_q"], case["lens_k"], case["heads_q"], case["heads_kv"], case["dim"], dtype)
    left, right = case["window"]
    sinks, S = sinks_of(case, dtype), case["sink_tokens"]
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, max(case["lens_q"]), max(case["lens_k"]), left,
                                              right, None, case["softcap"], sinks=sinks, sink_tokens=S)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (q.shape[1], q.shape[0])
    padded = per_sequence(lambda a, b, c: torch.ops.swa.attention.sinks(a, b, c, left, right, None, case["softcap"],
                                                                         sinks=sinks, sink_tokens=S), q, k, v, cu_q, cu_k)
    # The same kernel on the same rows: identical to the padded op, bit for bit.
    assert torch.equal(out, padded[0]) and torch.equal(lse, padded[1])
    ref = per_sequence(lambda a, b, c: attention_ref(a, b, c, left, right, None, case["softcap"], sinks=sinks,
                                                     sink_tokens=S), q, k, v, cu_q, cu_k)
    ref_lowp = per_sequence(lambda a, b, c: attention_ref(a, b, c, left, right, None, case["softcap"], upcast=False,
                                                          sinks=sinks, sink_tokens=S), q, k, v, cu_q, cu_k)
    assert_fa_rule(out, ref[0], ref_lowp[0], 2, tolerance(dtype), "out")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:12], ids=case_id)
def test_backward_matches_reference(case, dtype):
    q, k, v, cu_q, cu_k = packed(case["lens_q"], case["lens_k"], case["heads_q"], case["heads_kv"], case["dim"],
                                 dtype, grad=True)
    left, right = case["window"]
    sinks, S = sinks_of(case, dtype), case["sink_tokens"]
    if sinks is not None:
        sinks.requires_grad_(True)
    inputs = (q, k, v) + ((sinks,) if sinks is not None else ())
    out, lse = swa_cuda.varlen_attention(q, k, v, cu_q, cu_k, max(case["lens_q"]), max(case["lens_k"]),
                                         (left, right), softcap=case["softcap"], return_lse=True, sinks=sinks,
                                         sink_tokens=S)
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dlse = torch.randn(lse.shape, generator=g)
    finite = torch.isfinite(lse).detach()

    def loss(o, l):
        return (o.double() * dout.double()).sum() + (l.double() * dlse.double())[finite].sum()

    grads = torch.autograd.grad(loss(out, lse), inputs, allow_unused=True)

    def ref_fn(upcast):
        return lambda a, b, c: attention_ref(a, b, c, left, right, None, case["softcap"], upcast=upcast, sinks=sinks,
                                             sink_tokens=S)

    ref = torch.autograd.grad(loss(*per_sequence(ref_fn(True), q, k, v, cu_q, cu_k)), inputs, allow_unused=True)
    ref_lowp = torch.autograd.grad(loss(*per_sequence(ref_fn(False), q, k, v, cu_q, cu_k)), inputs,
                                   allow_unused=True)
    for name, got, r64, rlp in zip(["q", "k", "v", "sinks"], grads, ref, ref_lowp):
        if r64 is None:  # no row at all (only empty sequences)
            continue
        atol = tolerance(dtype) * (q.shape[0] if name == "sinks" else 1)
        assert_fa_rule(got, r64, rlp, 3, atol, f"grad {name}")


def test_gradcheck_float64():
    q, k, v, cu_q, cu_k = packed([3, 0, 7, 1], [5, 2, 7, 1], 2, 1, 4, torch.float64, grad=True)
    sinks = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, sinks):
        return torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 7, 7, 2, 1, None, 2.0, sinks=sinks,
                                              sink_tokens=1)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, sinks))


def test_neighbours_do_not_leak():
    """A sequence's output and gradients do not change when its neighbours'
    contents do (NaN included)."""
    lens = [40, 33, 70]
    q, k, v, cu_q, cu_k = packed(lens, lens, 2, 2, 16, torch.float32)
    out = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 70, 70, -1, -1)[0]
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[:40] = float("nan")
        t[73:] = 1e4
    out2 = torch.ops.swa.attention.varlen(q2, k2, v2, cu_q, cu_k, 70, 70, -1, -1)[0]
    assert torch.equal(out[40:73], out2[40:73])


def test_zero_tokens_and_zero_sequences():
    q, k, v, cu_q, cu_k = packed([], [], 2, 1, 8, torch.float32)
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 0, 0)
    assert out.shape == (0, 2, 8) and lse.shape == (2, 0)
    q, k, v, cu_q, cu_k = packed([0, 0], [0, 4], 2, 1, 8, torch.float32)
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 0, 4)
    assert out.shape == (0, 2, 8)


def test_rows_without_keys():
    q, k, v, cu_q, cu_k = packed([3, 2], [0, 2], 2, 2, 8, torch.float32)
    sinks = torch.tensor([0.5, -1.0])
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 3, 2, -1, 0, sinks=sinks)
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))
    assert torch.equal(lse[:, :3], sinks.view(2, 1).expand(2, 3))


def test_flash_attn_names_and_order():
    q, k, v, cu_q, cu_k = packed([9, 20], [9, 20], 4, 2, 16, torch.float32)
    a = swa_cuda.varlen_attention(q, k, v, cu_q, cu_k, 20, 20, (5, 0), scale=0.3, softcap=0.0)
    b = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 20, 20, 5, 0, 0.3, 0.0)[0]
    assert torch.equal(a, b)
    c = swa_cuda.varlen_attention(q, k, v, cu_q, cu_k, 20, 20)  # default (-1, 0): causal
    assert torch.equal(c, torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 20, 20, -1, 0)[0])


def _bad_inputs():
    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 8, torch.float32)
    ok = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=4, max_seqlen_k=4)
    return ok, [
        (dict(cu_seqlens_q=cu_q.long()), r"cu_seqlens_q must be a 1-d int32 tensor"),
        (dict(cu_seqlens_k=cu_k.view(1, -1)), r"cu_seqlens_k must be a 1-d int32 tensor"),
        (dict(cu_seqlens_q=cu_q.to("meta")), r"cu_seqlens_q must be on q's device"),
        (dict(cu_seqlens_q=torch.tensor([1, 3, 7], dtype=torch.int32)), r"cu_seqlens_q must start at 0"),
        (dict(cu_seqlens_q=torch.tensor([0, 4, 3, 7], dtype=torch.int32),
              cu_seqlens_k=torch.tensor([0, 3, 3, 7], dtype=torch.int32)), r"cu_seqlens_q must be non-decreasing"),
        (dict(cu_seqlens_q=torch.tensor([0, 3, 6], dtype=torch.int32)), r"last entry of cu_seqlens_q must be the token count 7"),
        (dict(cu_seqlens_k=torch.tensor([0, 3], dtype=torch.int32)), r"the same length B \+ 1"),
        (dict(max_seqlen_q=3), r"sequence 1 has 4 tokens .* more than max_seqlen_q = 3"),
        (dict(max_seqlen_k=-1), r"max_seqlen_q and max_seqlen_k must be >= 0"),
        (dict(q=q.unsqueeze(0)), r"q must have 3 dims \[T, H, D\]"),
        (dict(k=k[:, :1].expand(7, 3, 8), v=v[:, :1].expand(7, 3, 8)), r"multiple of k's \(GQA/MQA\), got Hq = 2 and Hkv = 3"),
        (dict(v=v[:6]), r"k and v must have the same shape \[Tk, Hkv, D\]"),
    ]


@pytest.mark.parametrize("index", range(12))
def test_bad_input(index):
    ok, bad = _bad_inputs()
    change, match = bad[index]
    args = dict(ok, **change)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.swa.attention.varlen(args["q"], args["k"], args["v"], args["cu_seqlens_q"], args["cu_seqlens_k"],
                                       args["max_seqlen_q"], args["max_seqlen_k"])


def test_opcheck():
    q, k, v, cu_q, cu_k = packed([3, 0, 17], [5, 2, 17], 4, 2, 16, torch.float32, grad=True)
    sinks = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.swa.attention.varlen, (q, k, v, cu_q, cu_k, 17, 17, 4, 0, None, 0.0),
                          dict(sinks=sinks, sink_tokens=1))
    torch.library.opcheck(torch.ops.swa.attention.varlen, (q, k, v, cu_q, cu_k, 17, 17))
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 17, 17, 4, 0)
    torch.library.opcheck(torch.ops.swa.attention_backward.varlen,
                          (out.detach(), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out.detach(),
                           lse.detach(), cu_q, cu_k, 17, 17, 4, 0, None, 0.0, False))


def test_torch_compile_fullgraph():
    q, k, v, cu_q, cu_k = packed([30, 11, 2], [30, 11, 2], 4, 2, 16, torch.float32, grad=True)

    def f(q, k, v):
        return swa_cuda.varlen_attention(q, k, v, cu_q, cu_k, 30, 30, (7, 0)).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_strided_views():
    """Any strides with a contiguous last dim: q/k/v sliced out of a fused
    [T, 3, H, D] projection."""
    lens = [12, 40]
    qkv = torch.randn(52, 3, 2, 16)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    cu = torch.tensor([0, 12, 52], dtype=torch.int32)
    out = torch.ops.swa.attention.varlen(q, k, v, cu, cu, 40, 40, 5, 0)[0]
    want = torch.ops.swa.attention.varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, 40, 40, 5, 0)[0]
    assert torch.equal(out, want)
