"""The packed cache ops (cache_append.varlen, cache_attention.varlen) and
RollingKVCache.attend_varlen: one call serves a continuous batch mixing
decoding steps, prefill chunks and idle sequences, and every sequence's
result equals the padded op run on that sequence alone (bit for bit on the
CPU: the same kernels on the same rows); a stream of mixed steps equals
full-history attention (tests/reference.py).
"""

import random

import pytest
import torch

import swa_cuda
from reference import attention_ref


def make_cache(batch, heads_kv, slots, dim, dtype, g):
    kc = torch.randn(batch, heads_kv, slots, dim, generator=g).to(dtype)
    vc = torch.randn(batch, heads_kv, slots, dim, generator=g).to(dtype)
    return kc, vc


def packed_batch(lengths, heads_q, heads_kv, dim, dtype, g):
    T = sum(lengths)
    q = torch.randn(T, heads_q, dim, generator=g).to(dtype)
    k = torch.randn(T, heads_kv, dim, generator=g).to(dtype)
    v = torch.randn(T, heads_kv, dim, generator=g).to(dtype)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    return q, k, v, cu


def per_sequence(q, k, v, cu, kc, vc, pos, W, sinks=None, S=0, **kw):
    """The padded op on each sequence alone: (out [T, Hq, D], lse [Hq, T])."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0])
    for b in range(kc.shape[0]):
        r0, r1 = int(cu[b]), int(cu[b + 1])
        if r0 == r1:
            continue
        qb, kb, vb = (t[r0:r1].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o, l = torch.ops.swa.cache_attention.sinks(qb, kb, vb, kc[b:b + 1], vc[b:b + 1], pos[b:b + 1], W,
                                                   sinks=sinks, sink_tokens=S, **kw)
        out[r0:r1] = o[0].transpose(0, 1)
        lse[:, r0:r1] = l[0]
    return out, lse


# (lengths, positions): decode steps (1), speculative steps (3), prefill
# chunks shorter and longer than the window, idle sequences (0), first
# chunks (pos 0) and sequences deep into their stream (pos >> W).
BATCHES = [
    ([1, 1, 1, 1], [5, 90, 0, 400]),
    ([40, 1, 0, 200, 3], [0, 77, 12, 300, 31]),
    ([0, 0, 17], [3, 9, 50]),
    ([300], [1000]),
    ([1, 64, 1, 9, 0, 1], [2000, 16, 0, 33, 7, 31]),
]


@pytest.mark.parametrize("lengths,positions", BATCHES)
@pytest.mark.parametrize("S,logits", [(0, False), (4, False), (0, True), (3, True)])
@pytest.mark.parametrize("heads", [(4, 2), (2, 2), (8, 1)])
def test_matches_padded_op_per_sequence(lengths, positions, S, logits, heads):
    g = torch.Generator().manual_seed(len(lengths) + 7 * S)
    Hq, Hkv = heads
    W, D = 32, 16
    kc, vc = make_cache(len(lengths), Hkv, S + W + 5, D, torch.float32, g)
    q, k, v, cu = packed_batch(lengths, Hq, Hkv, D, torch.float32, g)
    pos = torch.tensor(positions, dtype=torch.int64)
    sinks = torch.randn(Hq, generator=g) if logits else None
    out, lse = torch.ops.swa.cache_attention.varlen(q, k, v, cu, max(lengths), kc, vc, pos, W, sinks=sinks,
                                                    sink_tokens=S)
    ref_out, ref_lse = per_sequence(q, k, v, cu, kc, vc, pos, W, sinks, S)
    assert out.shape == q.shape and lse.shape == (Hq, q.shape[0]) and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_softcap(dtype):
    g = torch.Generator().manual_seed(3)
    lengths, positions = [1, 50, 1, 0, 7], [70, 10, 3, 0, 200]
    kc, vc = make_cache(5, 2, 40, 32, dtype, g)
    q, k, v, cu = packed_batch(lengths, 4, 2, 32, dtype, g)
    pos = torch.tensor(positions)
    out, lse = torch.ops.swa.cache_attention.varlen(q, k, v, cu, 50, kc, vc, pos, 33, 0.3, 5.0)
    ref_out, ref_lse = per_sequence(q, k, v, cu, kc, vc, pos, 33, scale=0.3, softcap=5.0)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=0)


def test_strided_inputs():
    """Slices of larger tensors (any strides with a contiguous last dim)."""
    g = torch.Generator().manual_seed(5)
    lengths, positions = [2, 45, 1], [9, 0, 120]
    kc_big, vc_big = make_cache(3, 4, 80, 16, torch.float32, g)
    kc, vc = kc_big[:, 1:3, 10:50], vc_big[:, 1:3, 10:50]
    q_big, k_big, v_big, cu = packed_batch(lengths, 8, 4, 16, torch.float32, g)
    q, k, v = q_big[:, ::2], k_big[:, 1:3], v_big[:, 2:]
    pos = torch.tensor(positions)
    out, lse = torch.ops.swa.cache_attention.varlen(q, k, v, cu, 45, kc, vc, pos, 40)
    ref_out, ref_lse = per_sequence(q.contiguous(), k.contiguous(), v.contiguous(), cu, kc.contiguous(),
                                    vc.contiguous(), pos, 40)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("S", [0, 3])
def test_append_matches_padded_append(S):
    g = torch.Generator().manual_seed(11)
    C = 20
    lengths, positions = [1, 0, 30, 5, 19], [0, 4, 2, 40, 1]
    kc, vc = make_cache(5, 2, S + C, 8, torch.float32, g)
    _, k, v, cu = packed_batch(lengths, 2, 2, 8, torch.float32, g)
    pos = torch.tensor(positions)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    torch.ops.swa.cache_append.varlen(kc, vc, k, v, cu, pos, sink_tokens=S)
    for b in range(5):
        r0, r1 = int(cu[b]), int(cu[b + 1])
        kb, vb = (t[r0:r1].transpose(0, 1).unsqueeze(0) for t in (k, v))
        torch.ops.swa.cache_append.sinks(kc_ref[b:b + 1], vc_ref[b:b + 1], kb, vb, pos[b:b + 1], sink_tokens=S)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


@pytest.mark.parametrize("S,logits", [(0, False), (2, True)])
def test_mixed_stream_matches_full_history(S, logits):
    """Sequences joining, decoding and prefilling at their own pace in one
    RollingKVCache, step after step, against full-history attention."""
    g = torch.Generator().manual_seed(2)
    rng = random.Random(2)
    B, Hq, Hkv, D, W, N = 4, 4, 2, 16, 24, 150
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g)
    v = torch.randn(B, Hkv, N, D, generator=g)
    sinks = torch.randn(Hq, generator=g) if logits else None
    cache = swa_cuda.RollingKVCache(1, B, Hkv, D, W, dtype=torch.float32, device="cpu", sink_tokens=S)
    outs = [[] for _ in range(B)]
    done = [0] * B
    while min(done) < N:
        lengths = [min(N - done[b], rng.choice([0, 1, 1, 1, 3, 30])) for b in range(B)]
        cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
        rows = lambda t: torch.cat([t[b, :, done[b]:done[b] + lengths[b]].transpose(0, 1) for b in range(B)])
        out = cache.attend_varlen(0, rows(q), rows(k), rows(v), cu, max(lengths), sinks=sinks)
        for b in range(B):
            outs[b].append(out[int(cu[b]):int(cu[b + 1])])
            done[b] += lengths[b]
        cache.advance(cu.diff())
    assert cache.pos.tolist() == [N] * B
    ref, _ = attention_ref(q, k, v, W - 1, 0, sinks=sinks, sink_tokens=S)
    for b in range(B):
        torch.testing.assert_close(torch.cat(outs[b]).transpose(0, 1), ref[b].float(), atol=2e-5, rtol=2e-5)


def test_neighbours_do_not_leak():
    """A sequence's output does not change when its neighbours' rows or rings do."""
    g = torch.Generator().manual_seed(4)
    lengths, positions = [1, 40, 1], [50, 60, 70]
    kc, vc = make_cache(3, 2, 32, 16, torch.float32, g)
    q, k, v, cu = packed_batch(lengths, 2, 2, 16, torch.float32, g)
    pos = torch.tensor(positions)
    out, _ = torch.ops.swa.cache_attention.varlen(q, k, v, cu, 40, kc, vc, pos, 32)
    for b in (0, 2):
        kc[b], vc[b] = float("nan"), float("nan")
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[:1], t[41:] = float("nan"), float("nan")
    out2, _ = torch.ops.swa.cache_attention.varlen(q2, k2, v2, cu, 40, kc, vc, pos, 32)
    assert torch.equal(out[1:41], out2[1:41])


def test_empty():
    kc, vc = torch.zeros(2, 2, 8, 4), torch.zeros(2, 2, 8, 4)
    q, k = torch.zeros(0, 2, 4), torch.zeros(0, 2, 4)
    cu = torch.zeros(3, dtype=torch.int32)
    pos = torch.tensor([3, 0])
    out, lse = torch.ops.swa.cache_attention.varlen(q, k, k, cu, 0, kc, vc, pos, 8)
    assert out.shape == (0, 2, 4) and lse.shape == (2, 0)
    torch.ops.swa.cache_append.varlen(kc, vc, k, k, cu, pos)
    assert not kc.any()


def _args():
    kc, vc = torch.zeros(2, 2, 8, 4), torch.zeros(2, 2, 8, 4)
    q, k, v = torch.randn(3, 4, 4), torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    cu = torch.tensor([0, 1, 3], dtype=torch.int32)
    return q, k, v, cu, kc, vc, torch.tensor([3, 0])


@pytest.mark.parametrize("change,match", [
    (dict(cu=torch.tensor([0, 1, 3])), "cu_seqlens_q must be a 1-d int32"),
    (dict(cu=torch.tensor([0, 3], dtype=torch.int32)), "cu_seqlens_q must have B \\+ 1 = 3"),
    (dict(cu=torch.tensor([1, 1, 3], dtype=torch.int32)), "must start at 0"),
    (dict(cu=torch.tensor([0, 2, 1], dtype=torch.int32)), "non-decreasing"),
    (dict(cu=torch.tensor([0, 1, 2], dtype=torch.int32)), "last entry of cu_seqlens_q must be the token count 3"),
    (dict(max_seqlen=1), "more than max_seqlen_q = 1"),
    (dict(q=torch.randn(3, 4, 4, 1)), "q must have 3 dims"),
    (dict(k=torch.randn(2, 2, 4), v=torch.randn(2, 2, 4)), "one key per query"),
    (dict(kc=torch.zeros(2, 3, 8, 4), vc=torch.zeros(2, 3, 8, 4)), "Hkv = 2"),
    (dict(pos=torch.tensor([-1, 0])), "pos must be >= 0"),
    (dict(pos=torch.tensor([0, 0, 0])), "pos must have shape \\[B\\] = \\[2\\]"),
    (dict(window=0), "window must be >= 1"),
])
def test_bad_input(change, match):
    q, k, v, cu, kc, vc, pos = _args()
    a = dict(q=q, k=k, v=v, cu=cu, kc=kc, vc=vc, pos=pos, window=8, max_seqlen=2) | change
    with pytest.raises(RuntimeError, match=match):
        torch.ops.swa.cache_attention.varlen(a["q"], a["k"], a["v"], a["cu"], a["max_seqlen"], a["kc"], a["vc"],
                                             a["pos"], a["window"])


@pytest.mark.parametrize("change,match", [
    (dict(cu=torch.tensor([0, 1, 3], dtype=torch.int64)), "cu_seqlens must be a 1-d int32"),
    (dict(cu=torch.tensor([0, 2, 1], dtype=torch.int32)), "non-decreasing"),
    (dict(cu=torch.tensor([0, 1, 4], dtype=torch.int32)), "last entry of cu_seqlens must be the token count 3"),
    (dict(k=torch.randn(3, 2, 4).double()), "k must have k_cache's dtype"),
    (dict(k=torch.randn(3, 2, 4, 1)), "k must have 3 dims"),
])
def test_append_bad_input(change, match):
    _, k, v, cu, kc, vc, pos = _args()
    a = dict(k=k, v=v, cu=cu, kc=kc, vc=vc, pos=pos) | change
    with pytest.raises(RuntimeError, match=match):
        torch.ops.swa.cache_append.varlen(a["kc"], a["vc"], a["k"], a["v"], a["cu"], a["pos"])


def test_append_rejects_aliasing_rows():
    _, k, v, cu, kc, vc, pos = _args()
    with pytest.raises(RuntimeError, match="k_cache and k (may )?share memory"):
        torch.ops.swa.cache_append.varlen(kc, vc, kc[0, :, :3].transpose(0, 1), v, cu, pos)


def test_opcheck():
    q, k, v, cu, kc, vc, pos = _args()
    torch.library.opcheck(torch.ops.swa.cache_attention.varlen, (q, k, v, cu, 2, kc, vc, pos, 8),
                          dict(sinks=torch.randn(4), sink_tokens=1))
    torch.library.opcheck(torch.ops.swa.cache_append.varlen, (kc, vc, k, v, cu, pos), dict(sink_tokens=1))


def test_compile_fullgraph():
    q, k, v, cu, kc, vc, pos = _args()
    cache = swa_cuda.RollingKVCache(1, 2, 2, 4, 8, dtype=torch.float32, device="cpu")

    def step(q, k, v, cu):
        return cache.attend_varlen(0, q, k, v, cu, 2)

    expected_cache = swa_cuda.RollingKVCache(1, 2, 2, 4, 8, dtype=torch.float32, device="cpu")
    expected = expected_cache.attend_varlen(0, q, k, v, cu, 2)
    got = torch.compile(step, fullgraph=True)(q, k, v, cu)
    torch.testing.assert_close(got, expected)
    assert torch.equal(cache.k_cache(0), expected_cache.k_cache(0))
