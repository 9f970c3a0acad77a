"""Attention sinks, both kinds (torch.ops.swa.attention.sinks and its
backward): learned sink logits (gpt-oss) and sink tokens (StreamingLLM),
alone and together, against the float64 dense reference (tests/reference.py),
on every device (CUDA cases skip without a GPU).

Definitions pinned here: with logits `sinks` [Hq], lse_i = log(sum_j
exp(s_ij) + exp(sinks[h])) and out_i = sum_j exp(s_ij - lse_i) v_j (the sink
has no value, is not scaled, not capped); a row that sees no key gives out 0
and lse sinks[h]. With sink_tokens S, keys 0 .. S-1 are seen by every row
whose right edge reaches them, beside the band, each key once.
"""

import math
import random

import pytest
import torch

import swa_cuda
from conftest import DEVICES, make_qkv
from reference import assert_fa_rule, attention_ref, band_mask, max_err
from test_attention import tolerance

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def sink_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        heads_kv = rng.choice([1, 2])
        seqlen_k = rng.choice([1, 9, 64, 65, 130, 200])
        seqlen_q = rng.choice([1, 7, seqlen_k, seqlen_k + 11, max(1, seqlen_k // 3)])
        window_left = rng.choice([0, 1, 5, 31, 64, -1])
        cases.append(dict(batch=rng.choice([1, 2]), heads_q=heads_kv * rng.choice([1, 2, 4]), heads_kv=heads_kv,
                          seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=rng.choice([16, 32, 64]),
                          window_left=window_left, window_right=rng.choice([0, 0, 2, -1]),
                          softcap=rng.choice([0.0, 0.0, 4.0]),
                          sink_tokens=rng.choice([0, 1, 4, 70]),
                          logits=rng.choice([None, "randn", "randn", -1e4, 30.0])))
    return [c for c in cases if c["sink_tokens"] > 0 or c["logits"] is not None]


CASES = sink_cases(40, seed=20)


def case_id(c):
    return (f"b{c['batch']}h{c['heads_q']}/{c['heads_kv']}q{c['seqlen_q']}k{c['seqlen_k']}d{c['head_dim']}"
            f"w{c['window_left']},{c['window_right']}c{c['softcap']:g}S{c['sink_tokens']}L{c['logits']}")


def make_sinks(c, device, seed=3, dtype=torch.float32):
    if c["logits"] is None:
        return None
    if c["logits"] == "randn":
        g = torch.Generator().manual_seed(seed)
        return (2 * torch.randn(c["heads_q"], generator=g)).to(device=device, dtype=dtype)
    return torch.full((c["heads_q"],), float(c["logits"]), device=device, dtype=dtype)


def setup(c, dtype, device, grad=False):
    q, k, v = make_qkv(c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"], c["head_dim"],
                       dtype, device, requires_grad=grad)
    sinks = make_sinks(c, device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    if sinks is not None and grad:
        sinks.requires_grad_(True)
    args = (c["window_left"], c["window_right"], None, c["softcap"])
    return q, k, v, sinks, args


def call(q, k, v, sinks, c, args):
    return torch.ops.swa.attention.sinks(q, k, v, *args, sinks=sinks, sink_tokens=c["sink_tokens"])


def assert_lse(lse, ref):
    assert torch.equal(torch.isnan(lse), torch.isnan(ref.float()))
    assert torch.equal(torch.isinf(lse), torch.isinf(ref.float()))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(lse[finite], ref.float()[finite], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_reference(case, dtype, device):
    q, k, v, sinks, args = setup(case, dtype, device)
    out, lse = call(q, k, v, sinks, case, args)
    ref, ref_lse = attention_ref(q, k, v, *args, sinks=sinks, sink_tokens=case["sink_tokens"])
    ref_lowp, _ = attention_ref(q, k, v, *args, upcast=False, sinks=sinks, sink_tokens=case["sink_tokens"])
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    assert_fa_rule(out, ref, ref_lowp, 2, tolerance(dtype), "out")
    assert_lse(lse, ref_lse)


def assert_backward_matches_reference(case, dtype, device, seed):
    """Gradients of q, k, v (and sinks) of a random loss on out and lse
    against the float64 reference, by FlashAttention's rule."""
    q, k, v, sinks, args = setup(case, dtype, device, grad=True)
    S = case["sink_tokens"]
    out, lse = call(q, k, v, sinks, case, args)
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    dlse = torch.randn(lse.shape, generator=g).to(device)
    finite = torch.isfinite(lse).detach()

    def loss(o, l):
        return (o.double() * dout.double()).sum() + (l.double() * dlse.double())[finite].sum()

    inputs = (q, k, v) + ((sinks,) if sinks is not None else ())
    grads = torch.autograd.grad(loss(out, lse), inputs)
    ref = torch.autograd.grad(loss(*attention_ref(q, k, v, *args, sinks=sinks, sink_tokens=S)), inputs)
    ref_lowp = torch.autograd.grad(loss(*attention_ref(q, k, v, *args, upcast=False, sinks=sinks,
                                                       sink_tokens=S)), inputs)
    for name, got, r64, rlp in zip(["q", "k", "v", "sinks"], grads, ref, ref_lowp):
        assert got.shape == r64.shape and got.dtype == r64.dtype, name
        # The sink gradient sums over every row: scale the atol with them.
        atol = tolerance(dtype) * (q.shape[0] * q.shape[2] if name == "sinks" else 1)
        assert_fa_rule(got, r64, rlp, 3, atol, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:16], ids=case_id)
def test_backward_matches_reference(case, dtype, device):
    assert_backward_matches_reference(case, dtype, device, seed=11)


# Sequences many row tiles past the window, so that most rows see the sink
# tokens through their sink runs only (on the CPU the dQ pass takes those
# pairs for up to 16 sink tokens, the dK/dV pass the sink keys' band rows and,
# past 16, all of theirs): sink counts below, at and past a tile of keys, GQA,
# Sq != Sk, a partial last head dim vector.
LONG_SINK_CASES = [
    dict(batch=1, heads_q=2, heads_kv=1, seqlen_q=300, seqlen_k=300, head_dim=40, window_left=20, window_right=0,
         softcap=0.0, sink_tokens=S, logits=logits)
    for S, logits in [(1, None), (4, "randn"), (63, None), (64, None), (65, "randn"), (150, None)]
] + [
    dict(batch=2, heads_q=4, heads_kv=2, seqlen_q=190, seqlen_k=260, head_dim=64, window_left=9, window_right=3,
         softcap=0.0, sink_tokens=5, logits=None),
    dict(batch=1, heads_q=1, heads_kv=1, seqlen_q=257, seqlen_k=257, head_dim=16, window_left=0, window_right=0,
         softcap=4.0, sink_tokens=3, logits=30.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LONG_SINK_CASES, ids=case_id)
def test_backward_sink_rows_far_past_the_window(case, dtype):
    assert_backward_matches_reference(case, dtype, "cpu", seed=5)


@pytest.mark.parametrize("kind", ["logits", "tokens", "both"])
def test_gradcheck_float64(kind):
    torch.manual_seed(0)
    q = torch.randn(1, 4, 9, 8, dtype=torch.double, requires_grad=True)
    k = torch.randn(1, 2, 13, 8, dtype=torch.double, requires_grad=True)
    v = torch.randn(1, 2, 13, 8, dtype=torch.double, requires_grad=True)
    sinks = torch.randn(4, dtype=torch.double, requires_grad=True) if kind != "tokens" else None
    S = 3 if kind != "logits" else 0

    def f(q, k, v, *s):  # out only: lse is float32 even for float64 inputs
        return torch.ops.swa.attention.sinks(q, k, v, 2, 1, None, 3.0, sinks=s[0] if s else None,
                                             sink_tokens=S)[0]

    inputs = (q, k, v) + ((sinks,) if sinks is not None else ())
    assert torch.autograd.gradcheck(f, inputs)


def test_sink_logits_definition_by_hand():
    """A one-key row: out = v * e^s / (e^s + e^sink), lse = log(e^s + e^sink)."""
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[2.0, 0.0]]]])
    v = torch.tensor([[[[3.0, -1.0]]]])
    sinks = torch.tensor([0.5])
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 0, 0, 1.0, 0.0, sinks=sinks)
    s = 2.0
    w = math.exp(s) / (math.exp(s) + math.exp(0.5))
    torch.testing.assert_close(out, v * w)
    torch.testing.assert_close(lse, torch.tensor([[[math.log(math.exp(s) + math.exp(0.5))]]]))


def test_row_without_keys_gets_sink_lse():
    # Sq > Sk with window_right 0: the first rows sit before every key.
    q = torch.randn(1, 2, 6, 8)
    k = torch.randn(1, 2, 3, 8)
    sinks = torch.tensor([1.5, -2.0])
    out, lse = torch.ops.swa.attention.sinks(q, k, k, -1, 0, None, 0.0, sinks=sinks)
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert torch.equal(lse[0, :, :3], sinks.view(2, 1).expand(2, 3))
    # Without keys at all.
    out, lse = torch.ops.swa.attention.sinks(q, k[:, :, :0], k[:, :, :0], -1, 0, None, 0.0, sinks=sinks)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(lse[0], sinks.view(2, 1).expand(2, 6))


def test_sink_tokens_counted_once():
    """Sink tokens inside the band are the band's: with a window that covers
    every key, sink tokens change nothing (bit for bit)."""
    q, k, v = make_qkv(2, 4, 2, 50, 50, 32, torch.float32, "cpu")
    plain = torch.ops.swa.attention(q, k, v, -1, 0)
    for S in (1, 4, 50, 1000):
        with_tokens = torch.ops.swa.attention.sinks(q, k, v, -1, 0, sink_tokens=S)
        assert torch.equal(plain[0], with_tokens[0]) and torch.equal(plain[1], with_tokens[1])


def test_no_sinks_is_the_plain_op():
    q, k, v = make_qkv(1, 4, 4, 70, 70, 32, torch.float32, "cpu")
    a = torch.ops.swa.attention(q, k, v, 7, 0)
    b = torch.ops.swa.attention.sinks(q, k, v, 7, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_nan_sink_stays_in_its_head():
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16, torch.float32, "cpu")
    sinks = torch.tensor([0.0, float("nan"), 1.0, -1.0])
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 5, 0, sinks=sinks, sink_tokens=2)
    assert torch.isnan(out[:, 1]).all() and torch.isnan(lse[:, 1]).all()
    others = [0, 2, 3]
    assert torch.isfinite(out[:, others]).all() and torch.isfinite(lse[:, others]).all()
    ref, ref_lse = attention_ref(q, k, v, 5, 0, sinks=sinks, sink_tokens=2)
    torch.testing.assert_close(out[:, others], ref[:, others], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("value", [-1e4, 30.0, 1e4, float("-inf")])
def test_extreme_sink_logits(value):
    q, k, v = make_qkv(1, 2, 2, 33, 33, 16, torch.float32, "cpu")
    sinks = torch.full((2,), value)
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 8, 0, sinks=sinks)
    ref, ref_lse = attention_ref(q, k, v, 8, 0, sinks=sinks)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


def test_fronts_take_sinks():
    q, k, v = make_qkv(1, 4, 2, 30, 30, 16, torch.float32, "cpu")
    sinks = torch.randn(4)
    out = swa_cuda.sliding_window_attention(q, k, v, 6, sinks=sinks, sink_tokens=2)
    ref, _ = attention_ref(q, k, v, 5, 0, sinks=sinks, sink_tokens=2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out, lse = swa_cuda.local_attention(q, k, v, (3, 3), sinks=sinks, return_lse=True)
    ref, ref_lse = attention_ref(q, k, v, 3, 3, sinks=sinks)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sink_tokens"):
        swa_cuda.sliding_window_attention(q, k, v, 6, sink_tokens=-1)
    with pytest.raises(TypeError, match="sink_tokens"):
        swa_cuda.local_attention(q, k, v, (3, 0), sink_tokens=1.5)


def test_band_mask_sink_tokens():
    # Row 5 of a window of 2 with 2 sink tokens sees keys 0, 1 and 4, 5.
    m = band_mask(8, 8, 1, 0, sink_tokens=2)
    assert m[5].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert m[0].nonzero().flatten().tolist() == [0]  # the right edge still applies


@pytest.mark.parametrize("bad, match", [
    (dict(sinks=torch.zeros(3)), r"sinks must be a 1-d tensor of one logit per query head, shape \[4\]"),
    (dict(sinks=torch.zeros(4, 1)), r"sinks must be a 1-d tensor"),
    (dict(sinks=torch.zeros(4, dtype=torch.float16)), r"sinks must be float32"),
    (dict(sinks=torch.zeros(4, dtype=torch.float64)), r"sinks must be float32 \(or float64 with float64 q\)"),
    (dict(sink_tokens=-1), r"sink_tokens must be >= 0"),
])
def test_bad_sink_arguments(bad, match):
    q, k, v = make_qkv(1, 4, 2, 5, 5, 8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.swa.attention.sinks(q, k, v, 2, 0, **bad)
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 2, 0)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.swa.attention_backward.sinks(out, None, q, k, v, out, lse, 2, 0, None, 0.0, **bad)


def test_sinks_on_another_device_refused():
    q, k, v = make_qkv(1, 2, 2, 5, 5, 8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="sinks must be on q's device"):
        torch.ops.swa.attention.sinks(q, k, v, 2, 0, sinks=torch.zeros(2, device="meta"))


def test_backward_without_sinks_returns_empty_grad():
    q, k, v = make_qkv(1, 2, 2, 9, 9, 8, torch.float32, "cpu")
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 2, 0, sink_tokens=2)
    dq, dk, dv, ds = torch.ops.swa.attention_backward.sinks(out, None, q, k, v, out, lse, 2, 0, None, 0.0,
                                                            sink_tokens=2)
    assert ds.shape == (0,) and ds.dtype == torch.float32


def test_empty_inputs():
    q = torch.randn(0, 4, 5, 8)
    out, lse = torch.ops.swa.attention.sinks(q, q[:, :2], q[:, :2], 2, 0, sinks=torch.zeros(4), sink_tokens=1)
    assert out.shape == q.shape and lse.shape == (0, 4, 5)
    q = torch.randn(1, 4, 0, 8, requires_grad=True)
    s = torch.zeros(4, requires_grad=True)
    out, lse = torch.ops.swa.attention.sinks(q, q[:, :2], q[:, :2], 2, 0, sinks=s)
    (out.sum() + lse.sum()).backward()
    assert torch.equal(s.grad, torch.zeros(4))


def test_deterministic_backward_bitwise():
    q, k, v = make_qkv(2, 4, 2, 150, 150, 32, torch.float32, "cpu", requires_grad=True)
    sinks = torch.randn(4, requires_grad=True)
    runs = []
    for _ in range(2):
        out, lse = torch.ops.swa.attention.sinks(q, k, v, 40, 0, sinks=sinks, sink_tokens=3)
        runs.append(torch.autograd.grad(out.square().sum() + lse.sum(), (q, k, v, sinks)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_opcheck():
    q, k, v = make_qkv(1, 4, 2, 20, 20, 16, torch.float32, "cpu", requires_grad=True)
    sinks = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.swa.attention.sinks, (q, k, v, 5, 0, None, 0.0),
                          dict(sinks=sinks, sink_tokens=2))
    torch.library.opcheck(torch.ops.swa.attention.sinks, (q, k, v, 5, 1, 0.3, 2.0), dict(sink_tokens=4))
    out, lse = torch.ops.swa.attention.sinks(q, k, v, 5, 0, sinks=sinks, sink_tokens=2)
    torch.library.opcheck(torch.ops.swa.attention_backward.sinks,
                          (out.detach(), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out.detach(),
                           lse.detach(), 5, 0, None, 0.0, False), dict(sinks=sinks.detach(), sink_tokens=2))


def test_torch_compile_fullgraph():
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16, torch.float32, "cpu", requires_grad=True)
    sinks = torch.randn(4, requires_grad=True)

    def f(q, k, v, sinks):
        out = swa_cuda.sliding_window_attention(q, k, v, 8, sinks=sinks, sink_tokens=2)
        return out.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(q, k, v, sinks), (q, k, v, sinks))
    want = torch.autograd.grad(f(q, k, v, sinks), (q, k, v, sinks))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
