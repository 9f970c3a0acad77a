"""swa_cuda.longformer_attention: dilated bands and global tokens against the
float64 dense-mask reference (reference.longformer_ref), forward and backward."""

import random

import pytest
import torch

import swa_cuda
from conftest import DEVICES, make_qkv
from reference import assert_fa_rule, longformer_ref
from test_attention import tolerance

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def tol(dtype, mask):
    """float64 with global tokens: the merge weighs the band through the op's
    float32 lse, a relative 6e-8 (the op's lse is float32 for every dtype)."""
    return 1e-6 if dtype == torch.float64 and mask is not None else tolerance(dtype)


def cases(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        heads_kv = rng.choice([1, 2])
        seqlen_k = rng.choice([1, 5, 33, 64, 100, 150])
        seqlen_q = rng.choice([seqlen_k, seqlen_k, max(1, seqlen_k // 3), 1])
        out.append(dict(batch=rng.choice([1, 2, 3]), heads_q=heads_kv * rng.choice([1, 2]), heads_kv=heads_kv,
                        seqlen_q=seqlen_q, seqlen_k=seqlen_k, dim=rng.choice([16, 32, 64]),
                        window=(rng.choice([-1, 0, 2, 7, 20]), rng.choice([0, 0, 3, -1])),
                        dilation=rng.choice([1, 2, 3, 8]), softcap=rng.choice([0.0, 0.0, 4.0]),
                        globals=rng.choice([0, 0, 1, 7, "edges", "all"]), projections=rng.choice([False, True])))
    return out


CASES = cases(30, seed=11)
# The global tokens as one prefix of every sequence ([CLS] / question tokens):
# with Sq == Sk and no dilation they run as the band kernel's sink tokens.
PREFIX_CASES = [dict(c, globals="prefix") for c in cases(10, seed=12)]


def case_id(c):
    return (f"b{c['batch']}h{c['heads_q']}/{c['heads_kv']}q{c['seqlen_q']}k{c['seqlen_k']}d{c['dim']}"
            f"w{c['window'][0]},{c['window'][1]}x{c['dilation']}c{c['softcap']:g}g{c['globals']}"
            f"{'P' if c['projections'] else ''}")


def global_mask_of(c, device, seed=0):
    """[B, Sk]: up to c['globals'] random global positions per sequence (a
    different number in each), "edges" (the first, the last and two adjacent
    ones in the middle), all of them, or None."""
    if c["globals"] == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    B, Sk = c["batch"], c["seqlen_k"]
    if c["globals"] == "all":
        return torch.ones(B, Sk, dtype=torch.bool, device=device)
    mask = torch.zeros(B, Sk, dtype=torch.bool)
    if c["globals"] == "prefix":
        mask[:, :min(Sk, 3)] = True
        return mask.to(device)
    if c["globals"] == "edges":
        mask[:, [0, Sk - 1, Sk // 2, min(Sk - 1, Sk // 2 + 1)]] = True
        return mask.to(device)
    for b in range(B):
        count = min(Sk, c["globals"] - b % 2)  # sequences hold different counts (one may hold none)
        mask[b, torch.randperm(Sk, generator=g)[:count]] = True
    return mask.to(device)


def inputs_of(c, dtype, device, grad=False):
    q, k, v = make_qkv(c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"], c["dim"], dtype,
                       device, requires_grad=grad, seed=1)
    mask = global_mask_of(c, device)
    projections = None
    if c["projections"] and mask is not None and c["seqlen_q"] == c["seqlen_k"]:
        projections = make_qkv(c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"], c["dim"],
                               dtype, device, requires_grad=grad, seed=2)
    return q, k, v, mask, projections


def call(q, k, v, mask, projections, c, return_lse=True):
    gq, gk, gv = projections if projections is not None else (None, None, None)
    return swa_cuda.longformer_attention(q, k, v, c["window"], dilation=c["dilation"], global_mask=mask,
                                         softcap=c["softcap"], return_lse=return_lse, global_q=gq, global_k=gk,
                                         global_v=gv)


def reference(q, k, v, mask, projections, c, upcast=True):
    return longformer_ref(q, k, v, *c["window"], c["dilation"], mask, None, c["softcap"], upcast=upcast,
                          global_qkv=projections)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES + PREFIX_CASES, ids=case_id)
def test_forward_matches_reference(case, dtype, device):
    q, k, v, mask, projections = inputs_of(case, dtype, device)
    out, lse = call(q, k, v, mask, projections, case)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3] and lse.dtype == torch.float32
    cpu = [t.cpu() for t in (q, k, v)]
    cpu_proj = None if projections is None else [t.cpu() for t in projections]
    mask_cpu = None if mask is None else mask.cpu()
    ref, ref_lse = reference(*cpu, mask_cpu, cpu_proj, case)
    ref_lowp = reference(*cpu, mask_cpu, cpu_proj, case, upcast=False)[0]
    assert_fa_rule(out.cpu(), ref, ref_lowp, 2, tol(dtype, mask), "out")
    lse = lse.cpu()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "rows without keys differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=1e-3 if dtype.itemsize == 2 else 1e-5,
                               atol=1e-3 if dtype.itemsize == 2 else 1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:16] + PREFIX_CASES, ids=case_id)
def test_backward_matches_reference(case, dtype):
    q, k, v, mask, projections = inputs_of(case, dtype, "cpu", grad=True)
    inputs = (q, k, v) + (tuple(projections) if projections is not None else ())
    out, lse = call(q, k, v, mask, projections, case)
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dlse = torch.randn(lse.shape, generator=g)
    finite = torch.isfinite(lse).detach()

    def loss(o, l):
        return (o.double() * dout.double()).sum() + (l.double() * dlse.double())[finite].sum()

    grads = torch.autograd.grad(loss(out, lse), inputs, allow_unused=True)
    ref = torch.autograd.grad(loss(*reference(q, k, v, mask, projections, case)), inputs, allow_unused=True)
    ref_lowp = torch.autograd.grad(loss(*reference(q, k, v, mask, projections, case, upcast=False)), inputs,
                                   allow_unused=True)
    for name, got, r64, rlp in zip(["q", "k", "v", "global_q", "global_k", "global_v"], grads, ref, ref_lowp):
        assert (got is None) == (r64 is None), f"grad {name}: reached {got is not None}, reference {r64 is not None}"
        if got is None:
            continue
        assert torch.isfinite(got).all(), f"grad {name}: not finite"
        assert_fa_rule(got, r64, rlp, 3, tol(dtype, mask), f"grad {name}")


def test_plain_band_is_the_op():
    """dilation 1 without global tokens is one call of the op: the same bits."""
    q, k, v = make_qkv(2, 4, 2, 70, 90, 32, torch.float32, "cpu")
    out, lse = swa_cuda.longformer_attention(q, k, v, (9, 3), return_lse=True)
    ref_out, ref_lse = torch.ops.swa.attention(q, k, v, 9, 3, None, 0.0)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def spy_on_op(monkeypatch):
    """Records (q, k, out) of each call of torch.ops.swa.attention."""
    seen = []
    op = torch.ops.swa.attention

    class Spy:
        def __call__(self, q_, k_, v_, *args):
            out, lse = op(q_, k_, v_, *args)
            seen.append((q_, k_, out))
            return out, lse

    monkeypatch.setattr(torch.ops.swa, "attention", Spy())
    return seen


def test_dilation_runs_the_op_on_strided_views_without_copies(monkeypatch):
    """Lengths not divisible by d: each residue class reaches the op as a
    strided view of the caller's storage (sequence stride x dilation)."""
    q, k, v = make_qkv(1, 2, 2, 42, 42, 16, torch.float32, "cpu")
    seen = spy_on_op(monkeypatch)
    swa_cuda.longformer_attention(q, k, v, (3, 3), dilation=4)
    monkeypatch.undo()
    item = q.element_size()
    assert len(seen) == 4
    for r, (q_, k_, _) in enumerate(seen):
        assert q_.stride(2) == 4 * q.stride(2) and k_.stride(2) == 4 * k.stride(2)
        assert q_.data_ptr() == q.data_ptr() + r * q.stride(2) * item
        assert k_.data_ptr() == k.data_ptr() + r * k.stride(2) * item


def test_dilation_classes_as_one_batch_without_copies(monkeypatch):
    """Sq = Sk divisible by d: one call whose batch is the d residue classes,
    a view of q's storage ([d, H, n / d, D], class r at offset r rows), and
    the returned out is a view of that call's output (no scatter copy)."""
    q, k, v = make_qkv(1, 2, 2, 40, 40, 16, torch.float32, "cpu")
    seen = spy_on_op(monkeypatch)
    out = swa_cuda.longformer_attention(q, k, v, (3, 3), dilation=4)
    monkeypatch.undo()
    assert len(seen) == 1
    q_, k_, out_ = seen[0]
    assert q_.shape == (4, 2, 10, 16) and q_.data_ptr() == q.data_ptr()
    assert q_.stride() == (q.stride(2), q.stride(1), 4 * q.stride(2), 1)
    assert k_.data_ptr() == k.data_ptr() and k_.stride(2) == 4 * k.stride(2)
    assert out.data_ptr() == out_.data_ptr()
    ref, _ = longformer_ref(q, k, v, 3, 3, 4)
    assert_fa_rule(out, ref, None, 2, 2e-5, "out")


def test_transposed_layout_and_empty_inputs():
    c = dict(window=(4, 4), dilation=2, softcap=0.0)
    q, k, v = make_qkv(2, 4, 2, 50, 50, 32, torch.float32, "cpu", layout="bshd")
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, [0, 17]] = True
    out, lse = call(q, k, v, mask, None, c)
    ref, ref_lse = reference(q, k, v, mask, None, c)
    assert_fa_rule(out, ref, None, 2, 2e-5, "bshd out")
    for shape_q, shape_k in (((2, 4, 0, 32), (2, 2, 50, 32)), ((0, 4, 5, 32), (0, 2, 5, 32)),
                             ((1, 2, 6, 8), (1, 2, 0, 8))):
        q, k = torch.randn(shape_q), torch.randn(shape_k)
        m = torch.zeros(shape_k[0], shape_k[2], dtype=torch.bool)
        out, lse = swa_cuda.longformer_attention(q, k, k, (2, 2), dilation=3, global_mask=m, return_lse=True)
        assert out.shape == q.shape and lse.shape == q.shape[:3]
        assert (out == 0).all() and torch.isneginf(lse).all()


def test_compile_fullgraph_dilation():
    q, k, v = make_qkv(1, 4, 2, 45, 45, 32, torch.float32, "cpu", requires_grad=True)
    fn = torch.compile(lambda a, b, c: swa_cuda.longformer_attention(a, b, c, (5, 0), dilation=3), fullgraph=True)
    out = fn(q, k, v)
    ref = swa_cuda.longformer_attention(q, k, v, (5, 0), dilation=3)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g1 = torch.autograd.grad(out.sum(), (q, k, v))
    g2 = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dilation=0), "dilation must be an int >= 1"),
    (dict(dilation=1.5), "dilation must be an int >= 1"),
    (dict(global_mask=torch.ones(1, 12)), "global_mask must be a bool tensor"),
    (dict(global_mask=torch.ones(1, 11, dtype=torch.bool)), r"global_mask must have shape \[B, Sk\] = \[1, 12\]"),
    (dict(global_q=torch.randn(1, 2, 12, 8)), "go together"),
    (dict(global_q=torch.randn(1, 2, 12, 8), global_k=torch.randn(1, 2, 12, 8), global_v=torch.randn(1, 2, 12, 8)),
     "need global_mask"),
    (dict(global_mask=torch.ones(1, 12, dtype=torch.bool), global_q=torch.randn(1, 2, 12, 8),
          global_k=torch.randn(1, 2, 12, 8), global_v=torch.randn(1, 2, 11, 8)), "global_v must match"),
])
def test_bad_arguments_are_named(kwargs, message):
    q = torch.randn(1, 2, 12, 8)
    with pytest.raises((ValueError, TypeError), match=message):
        swa_cuda.longformer_attention(q, q, q, (2, 2), **kwargs)
    with pytest.raises(TypeError, match="window_size must be a pair"):
        swa_cuda.longformer_attention(q, q, q, 3)


@pytest.mark.parametrize("dilation", [1, 2, 3, 8])
def test_gradcheck_dilation_float64(dilation):
    """The dilated band in float64 end to end (the op's float64 path)."""
    q, k, v = make_qkv(1, 2, 1, 19, 23, 8, torch.float64, "cpu", requires_grad=True)
    fn = lambda a, b, c: swa_cuda.longformer_attention(a, b, c, (2, 1), dilation=dilation, softcap=3.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("dilation, projections", [(1, False), (3, True)])
def test_gradcheck_global_tokens_float64(dilation, projections):
    """The global-token part in float64: the merge with the band and the
    global rows, given the band's (out, lse) as inputs (the op's own lse is
    float32 for every dtype, too coarse for finite differences; the op's
    gradcheck is test_attention's)."""
    from swa_cuda.longformer import _add_global_tokens

    B, H, S, D = 2, 2, 17, 8
    q, k, v = make_qkv(B, H, H, S, S, D, torch.float64, "cpu", requires_grad=True)
    g = torch.Generator().manual_seed(4)
    band_out = torch.randn(B, H, S, D, generator=g, dtype=torch.float64, requires_grad=True)
    band_lse = torch.randn(B, H, S, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, [0, 5, 6, S - 1]] = True
    mask[1, 9] = True
    extra = make_qkv(B, H, H, S, S, D, torch.float64, "cpu", requires_grad=True, seed=5) if projections else ()

    def fn(q, k, v, band_out, band_lse, *qkv_g):
        return _add_global_tokens(q, k, v, band_out, band_lse, mask, qkv_g or None, 3, 0, dilation, None, 2.0)

    assert torch.autograd.gradcheck(fn, (q, k, v, band_out, band_lse, *extra))


def per_head_ref(q, k, v, lefts, rights, dilations, mask, upcast=True):
    """longformer_ref head by head (each with its own window and dilation)."""
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for h in range(q.shape[1]):
        hk = h // group
        o, l = longformer_ref(q[:, h:h + 1], k[:, hk:hk + 1], v[:, hk:hk + 1], lefts[h], rights[h], dilations[h],
                              mask, upcast=upcast)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs, 1), torch.cat(lses, 1)


# GQA groups whose heads share a dilation (a whole group) or not, unbounded
# and two-sided heads, Sq != Sk, global tokens or none.
PER_HEAD_CASES = [
    dict(heads_q=4, heads_kv=2, seqlen_q=90, seqlen_k=90, lefts=[3, 10, -1, 4], rights=[0, 2, 0, 4],
         dilations=[1, 2, 3, 3], globals=True),
    dict(heads_q=4, heads_kv=1, seqlen_q=40, seqlen_k=75, lefts=[5, 5, 0, 12], rights=[0, -1, 0, 1],
         dilations=[2, 1, 2, 8], globals=False),
    dict(heads_q=2, heads_kv=2, seqlen_q=64, seqlen_k=64, lefts=[7, 7], rights=[7, 0], dilations=[1, 1],
         globals=True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", PER_HEAD_CASES, ids=lambda c: f"h{c['heads_q']}x{c['dilations']}")
def test_per_head_windows_and_dilations(case, dtype, device):
    """window_size entries and dilation as int tensors [Hq], with global
    tokens: each head as longformer_ref with its own window and dilation,
    forward and backward."""
    q, k, v = make_qkv(2, case["heads_q"], case["heads_kv"], case["seqlen_q"], case["seqlen_k"], 16, dtype, device,
                       requires_grad=True, seed=4)
    mask = None
    if case["globals"]:
        mask = torch.zeros(2, case["seqlen_k"], dtype=torch.bool)
        mask[0, [0, 17, 18]] = True
        mask[1, [case["seqlen_k"] - 1]] = True
        mask = mask.to(device)
    lefts, rights, dils = (torch.tensor(case[n], device=device) for n in ("lefts", "rights", "dilations"))
    out, lse = swa_cuda.longformer_attention(q, k, v, (lefts, rights), dilation=dils, global_mask=mask,
                                             return_lse=True)
    ref, ref_lse = per_head_ref(q, k, v, case["lefts"], case["rights"], case["dilations"], mask)
    ref_lowp, _ = per_head_ref(q, k, v, case["lefts"], case["rights"], case["dilations"], mask, upcast=False)
    lowp = None if dtype == torch.float64 else ref_lowp
    assert_fa_rule(out, ref, lowp, 2, tol(dtype, mask), "out")
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse.float()[finite], rtol=1e-3, atol=1e-3)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device=device, dtype=dtype)
    grads = torch.autograd.grad((out.double() * g.double()).sum(), (q, k, v))
    r64 = torch.autograd.grad((ref.double() * g.double()).sum(), (q, k, v))
    rlp = torch.autograd.grad((ref_lowp.double() * g.double()).sum(), (q, k, v))
    for name, a, b, c in zip("qkv", grads, r64, rlp):
        assert_fa_rule(a, b, None if dtype == torch.float64 else c, 3, tol(dtype, mask), f"grad {name}")


def test_per_head_dilation_errors():
    q, k, v = make_qkv(1, 2, 1, 10, 10, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match="every dilation must be >= 1"):
        swa_cuda.longformer_attention(q, k, v, (2, 0), dilation=torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="shape \\[2\\]"):
        swa_cuda.longformer_attention(q, k, v, (2, 0), dilation=torch.tensor([1, 2, 3]))


def test_global_prefix_runs_in_the_band_kernel(monkeypatch):
    """A global prefix shared by every sequence (Sq == Sk, no dilation) takes
    the sink-token path: no dense [Sq, g] block, no merge. Anything else (the
    counts or positions differ, dilation, Sq != Sk) takes the merge."""
    from swa_cuda import longformer

    def refuse(*args, **kwargs):
        raise AssertionError("the merge path ran")

    q, k, v = make_qkv(2, 2, 1, 40, 40, 16, torch.float32, "cpu", seed=4)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[:, :5] = True
    assert longformer._global_prefix(q, k, mask, 1) == 5
    with monkeypatch.context() as m:
        m.setattr(longformer, "_add_global_tokens", refuse)
        out, lse = swa_cuda.longformer_attention(q, k, v, (3, 3), global_mask=mask, return_lse=True)
    ref, ref_lse = longformer_ref(q, k, v, 3, 3, 1, mask, None, 0.0)
    assert_fa_rule(out, ref, None, 2, 1e-5, "prefix out")
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-5, atol=1e-5)
    other = mask.clone()
    other[1, 4] = False  # counts differ
    shifted = torch.zeros_like(mask)
    shifted[:, 1:6] = True  # not a prefix
    for m_, d, kk in ((other, 1, k), (shifted, 1, k), (mask, 2, k), (mask[:, :30], 1, k[:, :, :30])):
        assert longformer._global_prefix(q, kk, m_, d) == 0
