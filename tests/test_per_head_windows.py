"""Per-head windows (torch.ops.swa.attention.per_head and its backward): query
head h sees keys p - window_left[h] .. p + window_right[h] (-1: unbounded),
all heads in one call, against the float64 dense reference with one mask per
head (tests/reference.py), on every device (CUDA cases skip without a GPU).
Also: each head equals the plain op with that head's window, GQA groups whose
heads differ, sinks of both kinds, the fronts' tensor windows, opcheck,
torch.compile and argument errors.
"""

import random

import pytest
import torch

import swa_cuda
from conftest import DEVICES, make_qkv
from reference import assert_fa_rule, per_head_attention_ref
from test_attention import tolerance

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def per_head_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        heads_kv = rng.choice([1, 2])
        heads_q = heads_kv * rng.choice([1, 2, 4])
        seqlen_k = rng.choice([1, 9, 64, 65, 130, 200])
        seqlen_q = rng.choice([1, 7, seqlen_k, seqlen_k + 11, max(1, seqlen_k // 3)])
        lefts = [rng.choice([0, 1, 5, 31, 64, 100, -1]) for _ in range(heads_q)]
        rights = [rng.choice([0, 0, 0, 2, 17, -1]) for _ in range(heads_q)]
        cases.append(dict(batch=rng.choice([1, 2]), heads_q=heads_q, heads_kv=heads_kv, seqlen_q=seqlen_q,
                          seqlen_k=seqlen_k, head_dim=rng.choice([16, 32, 64]), lefts=lefts, rights=rights,
                          softcap=rng.choice([0.0, 0.0, 4.0]), sink_tokens=rng.choice([0, 0, 0, 3]),
                          logits=rng.choice([None, None, None, "randn"])))
    # Longer sequences with very different windows in one GQA group (tile
    # skipping per head: one head's tiles are far outside another's).
    cases.append(dict(batch=1, heads_q=4, heads_kv=1, seqlen_q=600, seqlen_k=600, head_dim=32,
                      lefts=[3, 300, -1, 64], rights=[0, 0, 5, 64], softcap=0.0, sink_tokens=0, logits=None))
    cases.append(dict(batch=2, heads_q=4, heads_kv=2, seqlen_q=190, seqlen_k=260, head_dim=64,
                      lefts=[9, 130, 0, -1], rights=[3, 0, 0, 0], softcap=0.0, sink_tokens=5, logits="randn"))
    return cases


CASES = per_head_cases(24, seed=23)


def case_id(c):
    return (f"b{c['batch']}h{c['heads_q']}/{c['heads_kv']}q{c['seqlen_q']}k{c['seqlen_k']}d{c['head_dim']}"
            f"L{','.join(map(str, c['lefts']))}R{','.join(map(str, c['rights']))}c{c['softcap']:g}"
            f"S{c['sink_tokens']}{'s' if c['logits'] else ''}")


def setup(c, dtype, device, grad=False):
    q, k, v = make_qkv(c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"], c["head_dim"],
                       dtype, device, requires_grad=grad)
    sinks = None
    if c["logits"] is not None:
        g = torch.Generator().manual_seed(5)
        sinks = (2 * torch.randn(c["heads_q"], generator=g)).to(
            device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        sinks.requires_grad_(grad)
    left = torch.tensor(c["lefts"], dtype=torch.int64, device=device)
    right = torch.tensor(c["rights"], dtype=torch.int32, device=device)
    return q, k, v, sinks, left, right


def call(q, k, v, sinks, left, right, c):
    return torch.ops.swa.attention.per_head(q, k, v, left, right, None, c["softcap"], sinks=sinks,
                                            sink_tokens=c["sink_tokens"])


def ref(q, k, v, sinks, c, upcast=True):
    return per_head_attention_ref(q, k, v, c["lefts"], c["rights"], None, c["softcap"], upcast=upcast,
                                  sinks=sinks, sink_tokens=c["sink_tokens"])


def skip_cuda_head_dim(device, dtype, c):
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16) and c["head_dim"] not in (32, 64, 96, 128):
        pytest.skip("head dim without a CUDA tensor-core kernel")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_reference(case, dtype, device):
    skip_cuda_head_dim(device, dtype, case)
    q, k, v, sinks, left, right = setup(case, dtype, device)
    out, lse = call(q, k, v, sinks, left, right, case)
    r, r_lse = ref(q, k, v, sinks, case)
    r_lowp, _ = ref(q, k, v, sinks, case, upcast=False)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    assert_fa_rule(out, r, r_lowp, 2, tolerance(dtype), "out")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(r_lse)), "lse: -inf rows differ"
    finite = torch.isfinite(r_lse)
    torch.testing.assert_close(lse[finite], r_lse[finite], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_each_head_is_the_plain_op_with_its_window(dtype, device):
    """Head h of one per-head call gives what attention (the released op)
    gives on head h alone with (left[h], right[h]): bit for bit in the
    forward, where both run the same kernel on the same band."""
    c = CASES[-2]
    q, k, v, _, left, right = setup(c, dtype, device)
    out, lse = call(q, k, v, None, left, right, c)
    for h in range(c["heads_q"]):
        hk = h // (c["heads_q"] // c["heads_kv"])
        o_h, l_h = torch.ops.swa.attention(q[:, h:h + 1], k[:, hk:hk + 1], v[:, hk:hk + 1], c["lefts"][h],
                                           c["rights"][h], None, 0.0)
        assert torch.equal(out[:, h:h + 1], o_h), f"head {h}"
        assert torch.equal(lse[:, h:h + 1], l_h), f"head {h}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:10] + CASES[-2:], ids=case_id)
def test_backward_matches_reference(case, dtype, device):
    skip_cuda_head_dim(device, dtype, case)
    q, k, v, sinks, left, right = setup(case, dtype, device, grad=True)
    out, lse = call(q, k, v, sinks, left, right, case)
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    dlse = torch.randn(lse.shape, generator=g).to(device)
    finite = torch.isfinite(lse).detach()

    def loss(o, l):
        return (o.double() * dout.double()).sum() + (l.double() * dlse.double())[finite].sum()

    inputs = (q, k, v) + ((sinks,) if sinks is not None else ())
    grads = torch.autograd.grad(loss(out, lse), inputs)
    r64 = torch.autograd.grad(loss(*ref(q, k, v, sinks, case)), inputs)
    rlp = torch.autograd.grad(loss(*ref(q, k, v, sinks, case, upcast=False)), inputs)
    for name, got, a, b in zip(["q", "k", "v", "sinks"], grads, r64, rlp):
        assert got.shape == a.shape and got.dtype == a.dtype, name
        atol = tolerance(dtype) * (q.shape[0] * q.shape[2] if name == "sinks" else 1)
        assert_fa_rule(got, a, b, 3, atol, f"grad {name}")


def test_gradcheck_float64():
    c = dict(batch=1, heads_q=4, heads_kv=2, seqlen_q=11, seqlen_k=13, head_dim=8, lefts=[0, 3, -1, 20],
             rights=[2, 0, 0, -1], softcap=3.0, sink_tokens=2, logits="randn")
    q, k, v, sinks, left, right = setup(c, torch.float64, "cpu", grad=True)

    def f(q, k, v, sinks):  # out only: lse is float32 (its grads are checked against the reference above)
        return call(q, k, v, sinks, left, right, c)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, sinks))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    c = CASES[-1]
    q, k, v, sinks, left, right = setup(c, torch.float32, device, grad=True)
    args = (q, k, v, left, right, None, 0.0)
    torch.library.opcheck(torch.ops.swa.attention.per_head, args, {"sinks": sinks, "sink_tokens": 2})
    out, lse = call(q, k, v, sinks, left, right, c)
    bwd_args = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out.detach(),
                lse.detach(), left, right, None, 0.0, False)
    torch.library.opcheck(torch.ops.swa.attention_backward.per_head, bwd_args,
                          {"sinks": sinks.detach(), "sink_tokens": c["sink_tokens"]})


@pytest.mark.parametrize("device", DEVICES)
def test_fronts_take_tensor_windows(device):
    """local_attention's window_size entries and sliding_window_attention's
    window may be int tensors [Hq]; an int entry applies to every head."""
    q, k, v = make_qkv(1, 4, 2, 70, 70, 16, torch.float32, device)
    lefts, rights = [5, -1, 0, 40], [0, 3, 0, 0]
    left = torch.tensor(lefts, device=device)
    out = swa_cuda.local_attention(q, k, v, (left, torch.tensor(rights, device=device)))
    torch.testing.assert_close(out, per_head_attention_ref(q, k, v, lefts, rights)[0].float(), rtol=1e-5, atol=1e-5)
    out = swa_cuda.local_attention(q, k, v, (left, 2))
    torch.testing.assert_close(out, per_head_attention_ref(q, k, v, lefts, [2] * 4)[0].float(), rtol=1e-5,
                               atol=1e-5)
    windows = torch.tensor([1, 6, 70, 33], device=device)
    out = swa_cuda.sliding_window_attention(q, k, v, windows)
    r = per_head_attention_ref(q, k, v, [w - 1 for w in windows.tolist()], [0] * 4)[0]
    torch.testing.assert_close(out, r.float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="every entry of window must be >= 1"):
        swa_cuda.sliding_window_attention(q, k, v, torch.tensor([1, 0, 2, 3], device=device))
    with pytest.raises(TypeError, match="shape \\[4\\]"):
        swa_cuda.local_attention(q, k, v, (torch.tensor([1, 2], device=device), 0))


def test_compile_fullgraph():
    q, k, v = make_qkv(1, 4, 1, 48, 48, 16, torch.float32, "cpu", requires_grad=True)
    left = torch.tensor([3, 7, -1, 0])

    def f(q, k, v, left):
        return swa_cuda.local_attention(q, k, v, (left, 0)).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(q, k, v, left), (q, k, v))
    want = torch.autograd.grad(f(q, k, v, left), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_empty_inputs():
    for shape_q, shape_k in [((0, 2, 5, 8), (0, 1, 5, 8)), ((1, 2, 0, 8), (1, 1, 5, 8)), ((1, 2, 5, 8), (1, 1, 0, 8))]:
        q = torch.randn(shape_q, requires_grad=True)
        k = torch.randn(shape_k, requires_grad=True)
        v = torch.randn(shape_k, requires_grad=True)
        w = torch.tensor([1, -1])
        out, lse = torch.ops.swa.attention.per_head(q, k, v, w, w)
        assert out.shape == q.shape and lse.shape == q.shape[:3]
        if q.numel():
            assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
        out.sum().backward()
        assert k.grad.shape == k.shape


def test_argument_errors():
    q, k, v = make_qkv(1, 4, 2, 9, 9, 8, torch.float32, "cpu")
    ok = torch.tensor([1, 2, 3, 4])
    op = torch.ops.swa.attention.per_head
    with pytest.raises(RuntimeError, match="window_left must be an int32 or int64 tensor"):
        op(q, k, v, ok.float(), ok)
    with pytest.raises(RuntimeError, match="window_right must be a 1-d tensor of one window per query head, "
                                           "shape \\[4\\]"):
        op(q, k, v, ok, ok[:3])
    with pytest.raises(RuntimeError, match="window_left\\[2\\] must be >= -1"):
        op(q, k, v, torch.tensor([1, 2, -5, 4]), ok)
    with pytest.raises(RuntimeError, match="sinks must be a 1-d tensor"):
        op(q, k, v, ok, ok, sinks=torch.zeros(3))
    with pytest.raises(RuntimeError, match="sink_tokens must be >= 0"):
        op(q, k, v, ok, ok, sink_tokens=-1)
