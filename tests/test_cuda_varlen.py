"""The packed (varlen) ops on CUDA: attention.varlen's forward and backward
(attention_backward.varlen, through autograd) and the packed cache ops (cache_append.varlen, cache_attention.varlen), against the float64
reference per sequence (FlashAttention's rule for 16-bit inputs) and against
the CPU backend. Skipped without a GPU (the names with "small" run under
compute-sanitizer in bench/run_gpu.sh); the kernels' packed paths also run
under the CPU emulator (tests/cuda_emu, "varlen" cases) in every CI run.
"""

import pytest
import torch

import swa_cuda
from reference import assert_fa_rule, attention_ref
from test_attention import tolerance
from test_varlen import CASES as VARLEN_CASES, case_id as varlen_case_id, packed, per_sequence, sinks_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

D = 64  # a tensor-core head dim


def cu_of(lengths, device="cuda"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


CASES = [
    # (lens_q, lens_k, heads, window, softcap, sink tokens, sink logits)
    ([0, 300, 1, 129, 1000], None, (8, 2), (127, 0), 0.0, 0, False),
    ([40, 0, 500], [90, 7, 400], (4, 4), (63, 10), 5.0, 0, False),
    ([1, 1, 1, 1], [2000, 5, 0, 777], (8, 1), (-1, 0), 0.0, 0, False),  # decoding: split-KV
    ([200, 3], None, (4, 2), (31, 0), 0.0, 4, True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=["mixed", "sq-ne-sk-softcap", "decode-split", "small-sinks"])
def test_attention_varlen_forward_matches_reference(case, dtype):
    lens_q, lens_k, (hq, hkv), (wl, wr), softcap, S, logits = case
    lens_k = lens_k or lens_q
    g = torch.Generator().manual_seed(len(lens_q))
    q = torch.randn(sum(lens_q), hq, D, generator=g).to(dtype)
    k = torch.randn(sum(lens_k), hkv, D, generator=g).to(dtype)
    v = torch.randn(sum(lens_k), hkv, D, generator=g).to(dtype)
    sinks = torch.randn(hq, generator=g) if logits else None
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    out, lse = torch.ops.swa.attention.varlen(q.cuda(), k.cuda(), v.cuda(), cu_q, cu_k, max(lens_q), max(lens_k),
                                              wl, wr, None, softcap, sinks=None if sinks is None else sinks.cuda(),
                                              sink_tokens=S)
    out, lse = out.cpu(), lse.cpu()
    assert out.shape == q.shape and lse.shape == (hq, q.shape[0])
    for b in range(len(lens_q)):
        r0, r1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if r0 == r1:
            continue
        qb, kb, vb = (t.transpose(0, 1)[None] for t in (q[r0:r1], k[k0:k1], v[k0:k1]))
        ref, ref_lse = attention_ref(qb, kb, vb, wl, wr, None, softcap, sinks=sinks, sink_tokens=S)
        lowp = (attention_ref(qb, kb, vb, wl, wr, None, softcap, upcast=False, sinks=sinks, sink_tokens=S)[0]
                if dtype.itemsize == 2 else None)
        assert_fa_rule(out[r0:r1].transpose(0, 1)[None], ref, lowp, 2, 1e-5 if lowp is not None else 2e-5,
                       f"sequence {b} out")
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isneginf(lse[:, r0:r1][None]), torch.isneginf(ref_lse))
        torch.testing.assert_close(lse[:, r0:r1][None][finite], ref_lse[finite].float(), rtol=1e-3, atol=1e-3)


def test_attention_varlen_checks_max_seqlen_on_cuda():
    q = torch.randn(10, 2, D, device="cuda", dtype=torch.bfloat16)
    cu = cu_of([4, 6])
    with pytest.raises(RuntimeError, match="max_seqlen_q = 4 is too small"):
        torch.ops.swa.attention.varlen(q, q, q, cu, cu, 4, 6)


def mixed_stream(device, dtype, S=0, logits=False, seed=0):
    """Steps of a continuous batch of 4 sequences (decode, prefill chunks, idle,
    restarts) through RollingKVCache.attend_varlen; returns the outputs and
    the final rings."""
    g = torch.Generator().manual_seed(seed)
    hq, hkv, W = 8, 2, 48
    cache = swa_cuda.RollingKVCache(1, 4, hkv, D, W, capacity=W + 3, sink_tokens=S, dtype=dtype, device=device)
    sinks = torch.randn(hq, generator=g).to(device) if logits else None
    outs = []
    steps = [[30, 1, 0, 5], [1, 1, 70, 1], [1, 0, 1, 1], [0, 100, 1, 2], [1, 1, 1, 1]]
    for lengths in steps:
        T = sum(lengths)
        q = torch.randn(T, hq, D, generator=g).to(dtype).to(device)
        k = torch.randn(T, hkv, D, generator=g).to(dtype).to(device)
        v = torch.randn(T, hkv, D, generator=g).to(dtype).to(device)
        cu = cu_of(lengths, device)
        outs.append(cache.attend_varlen(0, q, k, v, cu, max(lengths), sinks=sinks))
        cache.advance(cu.diff())
    return outs, cache


@pytest.mark.parametrize("S,logits", [(0, False), (3, True)])
def test_small_cache_varlen_stream_matches_cpu(S, logits):
    cpu_outs, cpu_cache = mixed_stream("cpu", torch.float32, S, logits)
    cuda_outs, cuda_cache = mixed_stream("cuda", torch.float32, S, logits)
    for a, b in zip(cuda_outs, cpu_outs):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
    assert torch.equal(cuda_cache.k_cache(0).cpu(), cpu_cache.k_cache(0))
    assert torch.equal(cuda_cache.v_cache(0).cpu(), cpu_cache.v_cache(0))
    assert torch.equal(cuda_cache.pos.cpu(), cpu_cache.pos)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cache_varlen_16bit_matches_padded_op(dtype):
    # Each sequence's packed result equals the padded CUDA op on it alone
    # within the 16-bit kernels' rounding (both use the same tile kernels).
    g = torch.Generator().manual_seed(5)
    lengths, positions = [1, 200, 0, 3, 1], [900, 0, 5, 60, 47]
    B, hq, hkv, W = len(lengths), 8, 2, 128
    kc = torch.randn(B, hkv, W, D, generator=g).to(dtype).cuda()
    vc = torch.randn(B, hkv, W, D, generator=g).to(dtype).cuda()
    T = sum(lengths)
    q = torch.randn(T, hq, D, generator=g).to(dtype).cuda()
    k = torch.randn(T, hkv, D, generator=g).to(dtype).cuda()
    v = torch.randn(T, hkv, D, generator=g).to(dtype).cuda()
    cu, pos = cu_of(lengths), torch.tensor(positions, device="cuda")
    out, lse = torch.ops.swa.cache_attention.varlen(q, k, v, cu, max(lengths), kc, vc, pos, W)
    for b in range(B):
        r0, r1 = int(cu[b]), int(cu[b + 1])
        if r0 == r1:
            continue
        qb, kb, vb = (t[r0:r1].transpose(0, 1)[None] for t in (q, k, v))
        o, l = torch.ops.swa.cache_attention(qb, kb, vb, kc[b:b + 1], vc[b:b + 1], pos[b:b + 1], W)
        torch.testing.assert_close(out[r0:r1].transpose(0, 1)[None], o, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(lse[:, r0:r1][None], l, rtol=1e-3, atol=1e-3)


def test_cache_varlen_step_does_not_sync():
    outs, cache = mixed_stream("cuda", torch.bfloat16)  # lazy initialisation first
    q = torch.randn(3, 8, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(3, 2, D, device="cuda", dtype=torch.bfloat16)
    cu = cu_of([1, 0, 1, 1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cache.attend_varlen(0, q, k, k, cu, 1)
        cache.advance(cu.diff())
    finally:
        torch.cuda.set_sync_debug_mode("default")


# The backward: the CPU suite's random packed batches (test_varlen.py) at a
# tensor-core head dim, plus two larger ones (several tiles per sequence).
BWD_CASES = [dict(c, dim=64) for c in VARLEN_CASES[:8]] + [
    dict(lens_q=[0, 700, 1, 129, 1000], lens_k=[0, 700, 1, 129, 1000], heads_q=8, heads_kv=2, dim=128,
         window=(255, 0), softcap=0.0, sink_tokens=0, logits=False),
    dict(lens_q=[300, 2, 900], lens_k=[500, 2, 900], heads_q=4, heads_kv=4, dim=64, window=(63, 17), softcap=5.0,
         sink_tokens=3, logits=True),
]
BWD_IDS = [("small-" if i < 8 else "") + varlen_case_id(c) for i, c in enumerate(BWD_CASES)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", BWD_CASES, ids=BWD_IDS)
def test_attention_varlen_backward_matches_reference(case, dtype):
    # Gradients of (out, lse) through swa_cuda.varlen_attention on the GPU
    # against autograd through the float64 reference, sequence by sequence.
    q, k, v, cu_q, cu_k = packed(case["lens_q"], case["lens_k"], case["heads_q"], case["heads_kv"], case["dim"],
                                 dtype, grad=True)
    left, right = case["window"]
    sinks, S = sinks_of(case, dtype), case["sink_tokens"]
    if sinks is not None:
        sinks.requires_grad_(True)
    inputs = (q, k, v) + ((sinks,) if sinks is not None else ())
    on_gpu = [t.detach().cuda().requires_grad_(True) for t in inputs]
    out, lse = swa_cuda.varlen_attention(*on_gpu[:3], cu_q.cuda(), cu_k.cuda(), max(case["lens_q"]),
                                         max(case["lens_k"]), (left, right), softcap=case["softcap"],
                                         return_lse=True, sinks=on_gpu[3] if sinks is not None else None,
                                         sink_tokens=S)
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dlse = torch.randn(lse.shape, generator=g)
    finite = torch.isfinite(lse).detach().cpu()

    def loss(o, l):
        return (o.double() * dout.to(o.device).double()).sum() + (l.double() * dlse.to(l.device).double())[
            finite.to(l.device)].sum()

    grads = torch.autograd.grad(loss(out, lse), on_gpu, allow_unused=True)

    def ref_fn(upcast):
        return lambda a, b, c: attention_ref(a, b, c, left, right, None, case["softcap"], upcast=upcast, sinks=sinks,
                                             sink_tokens=S)

    ref = torch.autograd.grad(loss(*per_sequence(ref_fn(True), q, k, v, cu_q, cu_k)), inputs, allow_unused=True)
    ref_lowp = torch.autograd.grad(loss(*per_sequence(ref_fn(False), q, k, v, cu_q, cu_k)), inputs,
                                   allow_unused=True)
    for name, got, r64, rlp in zip(["q", "k", "v", "sinks"], grads, ref, ref_lowp):
        if r64 is None:  # no row at all (only empty sequences)
            continue
        assert got is not None and got.shape == r64.shape, f"grad {name}"
        atol = tolerance(dtype) * (q.shape[0] if name == "sinks" else 1)
        assert_fa_rule(got.cpu(), r64, rlp, 3, atol, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_small_attention_varlen_backward_deterministic_is_bitwise_stable(dtype):
    c = BWD_CASES[-1]
    q, k, v, cu_q, cu_k = (t.cuda() for t in packed(c["lens_q"], c["lens_k"], c["heads_q"], c["heads_kv"], c["dim"],
                                                    dtype, seed=1))
    args = (cu_q, cu_k, max(c["lens_q"]), max(c["lens_k"]), *c["window"], None, c["softcap"])
    out, lse = torch.ops.swa.attention.varlen(q, k, v, *args)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)

    def backward(deterministic):
        return torch.ops.swa.attention_backward.varlen(dout, dlse, q, k, v, out, lse, *args, deterministic)

    first, second, fast = backward(True), backward(True), backward(False)
    for a, b, f in zip(first[:3], second[:3], fast[:3]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.float(), f.float(), rtol=2e-2, atol=2e-2)


def test_small_attention_varlen_backward_empty_and_keyless_on_cuda():
    # No tokens at all, and sequences without keys (their rows: out 0, lse
    # the sink logit; their gradient flows only into the sinks).
    q, k, v, cu_q, cu_k = (t.cuda() for t in packed([0], [0], 2, 1, D, torch.bfloat16))
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 0, 0)
    dq, dk, dv, ds = torch.ops.swa.attention_backward.varlen(out, None, q, k, v, out, lse, cu_q, cu_k, 0, 0, -1, 0,
                                                             None, 0.0)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape and ds.numel() == 0
    q, k, v, cu_q, cu_k = (t.cuda() for t in packed([3, 5], [0, 0], 2, 1, D, torch.float32))
    sinks = torch.tensor([0.5, -1.0], device="cuda")
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 5, 0, sinks=sinks)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    dq, dk, dv, ds = torch.ops.swa.attention_backward.varlen(dout, dlse, q, k, v, out, lse, cu_q, cu_k, 5, 0, -1, 0,
                                                             None, 0.0, sinks=sinks)
    assert torch.equal(dq, torch.zeros_like(q)) and dk.numel() == 0 and dv.numel() == 0
    # d sinks = sum over rows of exp(sink - lse) (dlse - 0) = sum(dlse) per head (lse = sink).
    torch.testing.assert_close(ds, dlse.sum(1), rtol=1e-5, atol=1e-5)


def test_attention_varlen_backward_checks_on_cuda():
    q, k, v, cu_q, cu_k = (t.cuda() for t in packed([4, 6], [4, 6], 2, 2, D, torch.bfloat16))
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, 6, 6)
    with pytest.raises(RuntimeError, match="lse must be float32"):
        torch.ops.swa.attention_backward.varlen(out, None, q, k, v, out, lse[None], cu_q, cu_k, 6, 6, -1, 0, None, 0.0)
    with pytest.raises(RuntimeError, match="max_seqlen_k = 2"):
        torch.ops.swa.attention_backward.varlen(out, None, q, k, v, out, lse, cu_q, cu_k, 6, 2, -1, 0, None, 0.0)
