"""The rolling cache with sinks: cache_append.sinks / cache_attention.sinks and
RollingKVCache(sink_tokens=S) streamed token by token and chunk by chunk
against full-history attention with the same sinks (tests/reference.py):
sink tokens kept in their own slots forever, sink logits in every row's
softmax, on the decode path (few query rows, the ring read in place) and the
prefill path, with fixed memory.
"""

import random

import pytest
import torch

import swa_cuda
from conftest import HAS_CUDA
from reference import attention_ref

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def stream(S, window, logits, dtype, heads_q=4, heads_kv=2, dim=16, batch=2, tokens=300, seed=0, capacity=None,
           chunks=None, device="cpu", with_lowp=False):
    """Streams `tokens` tokens through a one-layer cache in random chunks;
    returns (outputs [B, Hq, N, D], the full-history reference)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, tokens, dim, generator=g).to(dtype)
    k = torch.randn(batch, heads_kv, tokens, dim, generator=g).to(dtype)
    v = torch.randn(batch, heads_kv, tokens, dim, generator=g).to(dtype)
    sinks = None
    if logits == "randn":
        sinks = 2 * torch.randn(heads_q, generator=g)
    elif logits is not None:
        sinks = torch.full((heads_q,), float(logits))
    q, k, v = q.to(device), k.to(device), v.to(device)
    sinks = sinks.to(device) if sinks is not None else None
    cache = swa_cuda.RollingKVCache(1, batch, heads_kv, dim, window, capacity=capacity, dtype=dtype, device=device,
                                    sink_tokens=S)
    rng = random.Random(seed)
    outs, done = [], 0
    while done < tokens:
        t = min(tokens - done, chunks[len(outs) % len(chunks)] if chunks else rng.choice([1, 1, 1, 2, 7, 40]))
        sl = slice(done, done + t)
        outs.append(cache.attend(0, q[:, :, sl], k[:, :, sl], v[:, :, sl], sinks=sinks))
        cache.advance(t)
        done += t
    ref, _ = attention_ref(q, k, v, window - 1, 0, sinks=sinks, sink_tokens=S)
    if with_lowp:  # the same attention evaluated in the input dtype (FlashAttention's rule)
        ref_lowp, _ = attention_ref(q, k, v, window - 1, 0, upcast=False, sinks=sinks, sink_tokens=S)
        return torch.cat(outs, 2), ref, ref_lowp
    return torch.cat(outs, 2), ref, cache


@pytest.mark.parametrize("S", [0, 1, 4, 40])
@pytest.mark.parametrize("logits", [None, "randn", -1e4, 30.0])
def test_stream_matches_full_history(S, logits):
    if S == 0 and logits is None:
        pytest.skip("no sinks: test_cache.py")
    out, ref, _ = stream(S, 16, logits, torch.float32)
    torch.testing.assert_close(out, ref.float(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_stream_dtypes(dtype):
    out, ref, _ = stream(4, 12, "randn", dtype, tokens=150)
    _, ref_lowp, _ = None, None, None
    tol = {torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(out.double(), ref.double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("chunks", [[1], [33], [5, 1, 64, 2], [200]], ids=str)
def test_decode_and_prefill_paths(chunks):
    # Hq / Hkv = 4: T = 1..8 takes the decode path, longer chunks the prefill one.
    out, ref, _ = stream(3, 20, "randn", torch.float32, heads_q=8, heads_kv=2, tokens=260, chunks=chunks)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("chunks", [[1], [5, 1, 64, 2], [200]], ids=str)
@pytest.mark.parametrize("S, logits", [(4, "randn"), (0, -1e4), (40, None), (2, 30.0)])
def test_stream_on_cuda(S, logits, chunks, dtype):
    """CUDA: the sink slots read in place by the decode (split-KV) and prefill
    kernels, cache_append.sinks filling them; FlashAttention's rule in 16 bit."""
    out, ref, ref_lowp = stream(S, 48, logits, dtype, heads_q=8, heads_kv=2, dim=64, tokens=260, chunks=chunks,
                                device="cuda", with_lowp=True)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref.float(), atol=1e-4, rtol=1e-4)
        return
    lowp_err = (ref_lowp.double() - ref.double()).abs().max().item()
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= 2 * lowp_err + 1e-5, (err, lowp_err)


def test_larger_ring_than_window():
    out, ref, _ = stream(2, 9, "randn", torch.float32, capacity=23, tokens=120)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_window_of_one():
    out, ref, _ = stream(4, 1, None, torch.float32, tokens=50)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_memory_stays_flat_over_ten_windows():
    window, S = 32, 4
    cache = swa_cuda.RollingKVCache(2, 1, 2, 16, window, dtype=torch.float32, device="cpu", sink_tokens=S)
    before = cache.nbytes
    assert before == 2 * 2 * 1 * 2 * 16 * 4 * (S + window)
    g = torch.Generator().manual_seed(1)
    for _ in range(10 * window):
        x = torch.randn(1, 2, 1, 16, generator=g)
        for layer in range(2):
            cache.attend(layer, torch.cat([x, x], 1), x, x, sinks=torch.zeros(4))
        cache.advance(1)
    assert cache.nbytes == before and int(cache.pos) == 10 * window
    # The sink slots still hold positions 0 .. S-1, never overwritten.
    g = torch.Generator().manual_seed(1)
    first = [torch.randn(1, 2, 1, 16, generator=g) for _ in range(S)]
    for p in range(S):
        assert torch.equal(cache.k_cache(0)[:, :, p], first[p][:, :, 0])


def test_append_sinks_long_first_chunk():
    """A first chunk longer than the ring: the sink positions still land in
    their slots, the ring keeps the last C."""
    S, C = 3, 5
    kc = torch.zeros(1, 1, S + C, 2)
    vc = torch.zeros_like(kc)
    k = torch.arange(12, dtype=torch.float32).view(1, 1, 12, 1).expand(1, 1, 12, 2).contiguous()
    torch.ops.swa.cache_append.sinks(kc, vc, k, k.clone(), torch.zeros(1, dtype=torch.int64), sink_tokens=S)
    assert kc[0, 0, :S, 0].tolist() == [0, 1, 2]
    # Ring slot S + p % C holds the last C positions 7 .. 11.
    assert sorted(kc[0, 0, S:, 0].tolist()) == [7, 8, 9, 10, 11]
    assert kc[0, 0, S + 11 % C, 0] == 11


def test_cache_ops_match_attention_sinks_directly():
    """cache_attention.sinks over a prefilled cache equals attention.sinks over
    the history, per sequence at different positions (continuous batching)."""
    S, W, D = 2, 6, 8
    g = torch.Generator().manual_seed(4)
    hist = [torch.randn(1, 1, n, D, generator=g) for n in (3, 17)]
    kc = torch.zeros(2, 1, S + W, D)
    vc = torch.zeros_like(kc)
    for b, h in enumerate(hist):
        pos = torch.zeros(1, dtype=torch.int64)
        torch.ops.swa.cache_append.sinks(kc[b:b + 1], vc[b:b + 1], h, h * 2, pos, sink_tokens=S)
    pos = torch.tensor([3, 17])
    q = torch.randn(2, 2, 1, D, generator=g)
    kn = torch.randn(2, 1, 1, D, generator=g)
    sinks = torch.tensor([0.3, -0.7])
    out, lse = torch.ops.swa.cache_attention.sinks(q, kn, kn * 2, kc, vc, pos, W, sinks=sinks, sink_tokens=S)
    for b, h in enumerate(hist):
        k_all = torch.cat([h, kn[b:b + 1]], 2)
        ref, ref_lse = attention_ref(q[b:b + 1], k_all, 2 * k_all, W - 1, 0, sinks=sinks, sink_tokens=S)
        torch.testing.assert_close(out[b:b + 1], ref.float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b:b + 1], ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, match", [
    ("attention_small_cache", r"must hold sink_tokens = 4 sink slots and a ring of at least 7 \(window - 1\) slots"),
    ("append_small_cache", r"must hold sink_tokens = 8 sink slots and a ring of at least 1"),
    ("negative", r"sink_tokens must be >= 0"),
    ("bad_sinks", r"sinks must be a 1-d tensor of one logit per query head, shape \[2\]"),
])
def test_bad_input(call, match):
    kc = torch.zeros(1, 1, 8, 4)
    q = torch.zeros(1, 2, 1, 4)
    kn = torch.zeros(1, 1, 1, 4)
    pos = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=match):
        if call == "attention_small_cache":
            torch.ops.swa.cache_attention.sinks(q, kn, kn, kc, kc.clone(), pos, 8, sink_tokens=4)
        elif call == "append_small_cache":
            torch.ops.swa.cache_append.sinks(kc, kc.clone(), kn, kn, pos, sink_tokens=8)
        elif call == "negative":
            torch.ops.swa.cache_attention.sinks(q, kn, kn, kc, kc.clone(), pos, 4, sink_tokens=-1)
        else:
            torch.ops.swa.cache_attention.sinks(q, kn, kn, kc, kc.clone(), pos, 4, sinks=torch.zeros(3))


def test_rolling_cache_rejects_bad_sink_tokens():
    with pytest.raises(ValueError, match="sink_tokens must be an int >= 0"):
        swa_cuda.RollingKVCache(1, 1, 1, 4, 8, dtype=torch.float32, device="cpu", sink_tokens=-2)


def test_opcheck():
    S, W = 2, 5
    kc = torch.randn(2, 1, S + W, 8)
    vc = torch.randn_like(kc)
    pos = torch.tensor([3, 11])
    q = torch.randn(2, 2, 3, 8)
    kn, vn = torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8)
    torch.library.opcheck(torch.ops.swa.cache_attention.sinks, (q, kn, vn, kc, vc, pos, W),
                          dict(sinks=torch.randn(2), sink_tokens=S))
    torch.library.opcheck(torch.ops.swa.cache_append.sinks, (kc, vc, kn, vn, pos), dict(sink_tokens=S))
