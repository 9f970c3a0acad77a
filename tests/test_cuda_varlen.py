"""The packed (varlen) ops on CUDA: attention.varlen's forward and the packed
cache ops (cache_append.varlen, cache_attention.varlen), against the float64
reference per sequence (FlashAttention's rule for 16-bit inputs) and against
the CPU backend. Skipped without a GPU (the names with "small" run under
compute-sanitizer in bench/run_gpu.sh); the kernels' packed paths also run
under the CPU emulator (tests/cuda_emu, "varlen" cases) in every CI run.
"""

import pytest
import torch

import swa_cuda
from reference import attention_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

D = 64  # a tensor-core head dim


def cu_of(lengths, device="cuda"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def assert_fa_rule(got, ref, ref_lowp, what):
    """max|got - ref| <= 2 max|ref_lowp - ref| + 1e-5 (fp32: a plain tolerance)."""
    err = (got.double() - ref.double()).abs().max().item() if got.numel() else 0.0
    if ref_lowp is None:
        assert err <= 2e-5 * max(1.0, ref.abs().max().item()), f"{what}: {err}"
        return
    base = (ref_lowp.double() - ref.double()).abs().max().item() if got.numel() else 0.0
    assert err <= 2 * base + 1e-5, f"{what}: max error {err}, the {got.dtype} reference's {base}"


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
        assert_fa_rule(out[r0:r1].transpose(0, 1)[None], ref, lowp, f"sequence {b} out")
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


def test_attention_varlen_backward_says_it_has_no_cuda_kernel():
    q = torch.randn(10, 2, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = cu_of([4, 6])
    out = swa_cuda.varlen_attention(q, q, q, cu, cu, 6, 6)
    with pytest.raises(NotImplementedError, match="no CUDA kernel yet"):
        out.sum().backward()
