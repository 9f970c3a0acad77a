"""The rolling KV cache: cache_append, cache_gather, cache_attention and
RollingKVCache, against the float64 dense-mask reference over each sequence's
full history (tests/reference.py), on every device (CUDA cases skip without a
GPU).

Accuracy rule for cache_attention: FlashAttention's, as in test_attention.py
(the error against the float64 reference at most twice the error of the same
reference computed in the input dtype, plus 1e-5), over every output of a
stream; each step also gets a looser per-step bound so a failure names its step.
"""

import random

import pytest
import torch

import swa_cuda  # noqa: F401  (loads torch.ops.swa)
import swa_cuda.cache  # noqa: F401  (fake kernels, RollingKVCache)
from conftest import DEVICES, HAS_CUDA
from reference import attention_ref
from swa_cuda.cache import RollingKVCache

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def head_dim_for(device):
    # CPU: small heads keep the streams fast; CUDA: a tensor-core head dim.
    return 16 if device == "cpu" else 64


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_lse_close(lse, lse_ref, what=""):
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref)), f"{what} lse: -inf rows differ"
    finite = torch.isfinite(lse_ref)
    torch.testing.assert_close(lse[finite], lse_ref[finite], rtol=1e-3, atol=1e-3, msg=lambda m: f"{what} lse: {m}")


def randn(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def fused_qkv(batch, heads_q, heads_kv, new_len, head_dim, dtype, device, gen):
    """q [B, Hq, T, D], k, v [B, Hkv, T, D] as strided views of one fused
    [B, T, Hq + 2 Hkv, D] projection (the usual layout of a model's QKV)."""
    qkv = randn((batch, new_len, heads_q + 2 * heads_kv, head_dim), dtype, device, gen)
    q = qkv[:, :, :heads_q].transpose(1, 2)
    k = qkv[:, :, heads_q:heads_q + heads_kv].transpose(1, 2)
    v = qkv[:, :, heads_q + heads_kv:].transpose(1, 2)
    return q, k, v


def strided_ring(batch, heads_kv, capacity, head_dim, dtype, device, aligned=True):
    """k_cache, v_cache [B, Hkv, C, D] as views of a larger NaN-filled tensor
    (one layer of a bigger cache, rows padded): a ring slot read before it is
    written, or a stray read outside the ring, poisons the output. aligned:
    rows start on 16 bytes (the CUDA tensor-core path); else k_cache's rows
    are shifted by 4 elements (the CUDA exact fallback)."""
    big = torch.full((3, 2, batch, heads_kv, capacity + 5, head_dim + 8), float("nan"), dtype=dtype, device=device)
    shift = 8 if aligned else 4
    return big[1, 0, :, :, 2:2 + capacity, shift:shift + head_dim], big[1, 1, :, :, 3:3 + capacity, :head_dim]


class History:
    """Every token each sequence has seen, for the full-history reference."""

    def __init__(self, batch, heads_kv, max_len, head_dim, dtype, device):
        self.k = torch.zeros(batch, heads_kv, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def write(self, b, position, k, v):  # k, v (Hkv, T, D)
        self.k[b, :, position:position + k.shape[1]] = k
        self.v[b, :, position:position + v.shape[1]] = v

    def reference(self, q, b, end, window, scale, softcap, upcast=True):
        """(out, lse) of q (1, Hq, T, D) at positions end - T .. end - 1 over
        keys 0 .. end - 1 of sequence b, window (W - 1, 0)."""
        k, v = self.k[b:b + 1, :, :end], self.v[b:b + 1, :, :end]
        return attention_ref(q, k, v, window - 1, 0, scale, softcap, upcast=upcast)


class StreamChecker:
    """Compares cache_attention outputs with the reference, step by step, and
    keeps the stream's worst errors for the FA rule at the end."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.err = 0.0
        self.err_lowp = 0.0
        self.steps = 0
        # Per step: looser (one unit of the dtype's precision), naming the step.
        self.step_atol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps

    def check(self, out, lse, q, history, b, end, window, scale, softcap, what):
        ref, ref_lse = history.reference(q.cpu(), b, end, window, scale, softcap)
        ref_lowp, _ = history.reference(q.cpu(), b, end, window, scale, softcap, upcast=False)
        err, err_lowp = max_err(out.cpu(), ref), max_err(ref_lowp, ref)
        assert not out.isnan().any(), f"{what}: NaN in out"
        assert err <= 2 * err_lowp + self.step_atol, f"{what}: error {err:.3g} > 2 x {err_lowp:.3g} + {self.step_atol:g}"
        assert_lse_close(lse.cpu(), ref_lse, what)
        self.err, self.err_lowp = max(self.err, err), max(self.err_lowp, err_lowp)
        self.steps += 1

    def finish(self):
        assert self.err <= 2 * self.err_lowp + 1e-5, (
            f"over {self.steps} steps: error {self.err:.3g} > 2 x {self.err_lowp:.3g} + 1e-5")


def run_stream(device, dtype, window, capacity, tokens, seed, batch=3, heads=(4, 2), softcap=0.0,
               scale=None, chunks=None, aligned=True):
    """Streams random chunks through one ring with the raw ops and checks each
    step against full-history attention. Sequences sit at different
    positions: each starts with its own prefill, and from time to time one
    finishes and a new one takes its batch slot (continuous batching), prefilled
    alone through slices of the ring and pos."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    heads_q, heads_kv = heads
    head_dim = head_dim_for(device)
    chunks = chunks or [1, 1, 1, 1, 2, 3, window - 1, window, window + 1, capacity + 3, 2 * capacity + 5]
    chunks = [c for c in chunks if c >= 1]
    k_cache, v_cache = strided_ring(batch, heads_kv, capacity, head_dim, dtype, device, aligned)
    pos = torch.zeros(batch, dtype=torch.int64, device=device)
    history = History(batch, heads_kv, tokens + 4 * capacity + 64, head_dim, dtype, "cpu")
    checker = StreamChecker(dtype)
    seen = 0

    def step(rows, new_len, what):
        """One call of the ops on batch rows `rows` (a slice), T = new_len."""
        nonlocal seen
        q, k, v = fused_qkv(rows.stop - rows.start, heads_q, heads_kv, new_len, head_dim, dtype, device, gen)
        kc, vc, p = k_cache[rows], v_cache[rows], pos[rows]
        before = p.tolist()
        ring_before = (kc.clone(), vc.clone())
        out, lse = torch.ops.swa.cache_attention(q, k, v, kc, vc, p, window, scale, softcap)
        assert out.shape == q.shape and out.dtype == dtype and lse.shape == q.shape[:3] and lse.dtype == torch.float32
        # cache_attention reads the ring in place and leaves it (and pos) alone.
        assert torch.equal(kc.nan_to_num(), ring_before[0].nan_to_num()) and p.tolist() == before
        torch.ops.swa.cache_append(kc, vc, k, v, p)
        for i, b in enumerate(range(rows.start, rows.stop)):
            history.write(b, before[i], k[i].cpu(), v[i].cpu())
            checker.check(out[i:i + 1], lse[i:i + 1], q[i:i + 1], history, b, before[i] + new_len, window,
                          scale, softcap, f"{what} seq {b} pos {before[i]} T {new_len}")
        p.add_(new_len)
        seen += new_len * (rows.stop - rows.start)

    def admit(b):
        """A new sequence in slot b: position 0, prefilled alone."""
        pos[b] = 0
        step(slice(b, b + 1), rng.choice([1, 5, window, 2 * capacity + 3]), "prefill")

    for b in range(batch):
        admit(b)
    n_step = 0
    while seen < tokens:
        n_step += 1
        if rng.random() < 0.03:
            admit(rng.randrange(batch))
        step(slice(0, batch), rng.choice(chunks), f"step {n_step}")
    checker.finish()
    return pos


# ---- cache_attention: streams against full-history attention -------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("capacity_over_window", [-1, 0, 9], ids=["C=W-1", "C=W", "C=W+9"])
def test_stream_matches_full_history(device, dtype, capacity_over_window):
    window = 24
    capacity = window + capacity_over_window
    # Softcap, an explicit scale and MQA on one of the capacities.
    extra = dict(softcap=5.0, scale=0.3, heads=(3, 1)) if capacity_over_window == 9 else {}
    run_stream(device, dtype, window, capacity, tokens=4500, seed=capacity_over_window + 17, **extra)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,capacity", [(1, 1), (2, 1), (3, 2), (7, 40)])
def test_stream_small_windows_unaligned_ring(device, window, capacity):
    # A ring whose rows are not 16-byte aligned: on CUDA the 16-bit inputs
    # then take the exact kernel's ring loader instead of the tensor cores'.
    run_stream(device, torch.bfloat16, window, capacity, tokens=600, seed=window,
               chunks=[1, 1, 2, 3, 5, 17, 2 * capacity + 1], aligned=False)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_long_window_single_sequence(device):
    # B = 1 and a long window: on CUDA, decoding goes through split-KV
    # (flash-decoding) so that one sequence still fills the GPU.
    tokens = 1200 if device == "cpu" else 3000
    run_stream(device, torch.bfloat16, 1000, 1000, tokens=tokens, seed=3, batch=1, heads=(8, 2), chunks=[1])


@pytest.mark.parametrize("device", DEVICES)
def test_first_token_and_window_one_see_only_themselves(device):
    gen = torch.Generator().manual_seed(0)
    d = head_dim_for(device)
    q, k, v = fused_qkv(2, 4, 2, 6, d, torch.float32, device, gen)
    k_cache, v_cache = strided_ring(2, 2, 4, d, torch.float32, device)
    pos = torch.tensor([0, 0], device=device)
    # At position 0 a single query sees only itself: out = its own value.
    out, lse = torch.ops.swa.cache_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], k_cache, v_cache, pos, 5)
    torch.testing.assert_close(out, v[:, :, :1].repeat_interleave(2, dim=1))
    # window = 1: every token sees only itself, whatever the ring holds.
    torch.ops.swa.cache_append(k_cache, v_cache, k, v, pos)
    pos += 6
    q2, k2, v2 = fused_qkv(2, 4, 2, 3, d, torch.float32, device, gen)
    out, lse = torch.ops.swa.cache_attention(q2, k2, v2, k_cache, v_cache, pos, 1)
    torch.testing.assert_close(out, v2.repeat_interleave(2, dim=1))
    scores = (q2 * k2.repeat_interleave(2, dim=1)).sum(-1) / d**0.5
    torch.testing.assert_close(lse, scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_problems(device):
    d = head_dim_for(device)
    k_cache, v_cache = strided_ring(2, 2, 5, d, torch.float32, device)
    pos = torch.tensor([3, 9], device=device)
    q = torch.randn(2, 4, 0, d, device=device)
    k = torch.randn(2, 2, 0, d, device=device)
    out, lse = torch.ops.swa.cache_attention(q, k, k, k_cache, v_cache, pos, 4)
    assert out.shape == (2, 4, 0, d) and lse.shape == (2, 4, 0)
    torch.ops.swa.cache_append(k_cache, v_cache, k, k, pos)  # T = 0: nothing to write
    kg, vg = torch.ops.swa.cache_gather(k_cache, v_cache, pos, 0)
    assert kg.shape == (2, 2, 0, d) and vg.shape == (2, 2, 0, d)


# ---- cache_append and cache_gather ------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["aligned", "unaligned", "odd_head_dim"])
def test_append_longer_than_capacity_is_one_by_one(device, dtype, layout):
    # The layouts exercise every copy width of the CUDA kernels (16 bytes down to 2).
    capacity = 7
    d = 5 if layout == "odd_head_dim" else head_dim_for(device)
    gen = torch.Generator().manual_seed(1)
    _, k, v = fused_qkv(3, 1, 2, 2 * capacity + 4, d, dtype, device, gen)  # T = 18 > C
    pos = torch.tensor([0, 5, 123], device=device)
    batched = strided_ring(3, 2, capacity, d, dtype, device, aligned=layout == "aligned")
    one_by_one = strided_ring(3, 2, capacity, d, dtype, device, aligned=layout == "aligned")
    torch.ops.swa.cache_append(*batched, k, v, pos)
    for t in range(k.shape[2]):
        torch.ops.swa.cache_append(*one_by_one, k[:, :, t:t + 1], v[:, :, t:t + 1], pos + t)
    for a, b in zip(batched, one_by_one):
        assert torch.equal(a, b)  # every slot written, so no NaN left
    # The ring now holds the last C tokens: gather n = C returns them in order.
    kg, vg = torch.ops.swa.cache_gather(*batched, pos + k.shape[2], capacity)
    assert kg.is_contiguous() and kg.dtype == dtype
    assert torch.equal(kg, k[:, :, -capacity:]) and torch.equal(vg, v[:, :, -capacity:])
    # And pos was not moved.
    assert pos.tolist() == [0, 5, 123]


@pytest.mark.parametrize("device", DEVICES)
def test_append_slot_rule(device):
    capacity, d = 5, head_dim_for(device)
    k_cache, v_cache = strided_ring(2, 1, capacity, d, torch.float32, device)
    k = torch.arange(3, dtype=torch.float32, device=device).view(1, 1, 3, 1).expand(2, 1, 3, d) + 1
    pos = torch.tensor([0, 4], device=device)
    torch.ops.swa.cache_append(k_cache, v_cache, k, -k, pos)
    # Sequence 0: positions 0, 1, 2 in slots 0, 1, 2. Sequence 1: positions
    # 4, 5, 6 in slots 4, 0, 1 (wrapping).
    assert k_cache[0, 0, :3, 0].tolist() == [1, 2, 3] and k_cache[0, 0, 3:, 0].isnan().all()
    assert k_cache[1, 0, [4, 0, 1], 0].tolist() == [1, 2, 3] and v_cache[1, 0, [4, 0, 1], 0].tolist() == [-1, -2, -3]
    assert k_cache[1, 0, 2:4].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gather_chronological_with_zeros_below_position_zero(device, dtype):
    capacity, d = 6, head_dim_for(device)
    gen = torch.Generator().manual_seed(2)
    _, k, v = fused_qkv(3, 1, 2, 40, d, dtype, device, gen)
    ends = [2, 0, 37]  # tokens each sequence has seen
    k_cache, v_cache = strided_ring(3, 2, capacity, d, dtype, device)
    k_cache.zero_(), v_cache.zero_()
    for b, end in enumerate(ends):  # token by token, sequences at their own positions
        for t in range(end):
            torch.ops.swa.cache_append(k_cache[b:b + 1], v_cache[b:b + 1], k[b:b + 1, :, t:t + 1],
                                       v[b:b + 1, :, t:t + 1], torch.tensor([t], device=device))
    pos = torch.tensor(ends, device=device)
    for n in (capacity, 4, 1, 0):
        kg, vg = torch.ops.swa.cache_gather(k_cache, v_cache, pos, n)
        assert kg.shape == (3, 2, n, d) and kg.is_contiguous()
        for b, end in enumerate(ends):
            for r in range(n):
                p = end - n + r
                want_k = k[b, :, p] if p >= 0 else torch.zeros_like(k[b, :, 0])
                want_v = v[b, :, p] if p >= 0 else torch.zeros_like(v[b, :, 0])
                assert torch.equal(kg[b, :, r], want_k) and torch.equal(vg[b, :, r], want_v), (b, r, p)


# ---- RollingKVCache -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_rolling_cache_per_layer_windows_and_constant_memory(device):
    layers, batch, heads_q, heads_kv, d = 3, 2, 4, 2, head_dim_for(device)
    windows, dtype = [5, 16, 9], torch.float32
    cache = RollingKVCache(layers, batch, heads_kv, d, windows, capacity=[5, 20, 8], dtype=dtype, device=device)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    formula = 2 * batch * heads_kv * d * itemsize * sum([5, 20, 8])
    assert cache.nbytes == formula
    held = sum(t.numel() * t.element_size() for l in range(layers) for t in (cache.k_cache(l), cache.v_cache(l)))
    assert held == formula and cache.k_cache(1).shape == (batch, heads_kv, 20, d)
    for ring in (cache.k_cache, cache.v_cache):
        storages = {ring(l).untyped_storage().data_ptr() for l in range(layers)}
        assert len(storages) == 1, "one allocation for every layer's key (value) rings"
    assert cache.k_cache(0).untyped_storage().data_ptr() != cache.v_cache(0).untyped_storage().data_ptr()

    gen = torch.Generator().manual_seed(4)
    history = [History(batch, heads_kv, 400, d, dtype, "cpu") for _ in range(layers)]
    checkers = [StreamChecker(dtype) for _ in range(layers)]
    rng = random.Random(4)
    end = 0
    while end < 300:
        new_len = rng.choice([1, 1, 1, 3, 8, 30])
        for layer in range(layers):
            q, k, v = fused_qkv(batch, heads_q, heads_kv, new_len, d, dtype, device, gen)
            out, lse = cache.attend(layer, q, k, v, return_lse=True)
            for b in range(batch):
                history[layer].write(b, end, k[b].cpu(), v[b].cpu())
            for b in range(batch):
                checkers[layer].check(out[b:b + 1], lse[b:b + 1], q[b:b + 1], history[layer], b, end + new_len,
                                      windows[layer], None, 0.0, f"layer {layer} end {end}")
        cache.advance(new_len)
        end += new_len
        assert cache.pos.tolist() == [end] * batch
        assert cache.nbytes == formula
    for c in checkers:
        c.finish()
    # gather: the layer's most recent tokens.
    kg, vg = cache.gather(2)
    assert torch.equal(kg.cpu(), history[2].k[:, :, end - 8:end])
    # reset one sequence, then all.
    cache.reset(1)
    assert cache.pos.tolist() == [end, 0]
    cache.reset()
    assert cache.pos.tolist() == [0, 0]


def test_rolling_cache_defaults_and_errors():
    cache = RollingKVCache(2, 1, 2, 8, 6, dtype=torch.bfloat16, device="cpu")
    assert cache.windows == [6, 6] and cache.capacities == [6, 6]
    assert cache.nbytes == 2 * 2 * 1 * 2 * 6 * 8 * 2
    assert "RollingKVCache" in repr(cache)
    with pytest.raises(ValueError, match="one per layer"):
        RollingKVCache(2, 1, 2, 8, [6, 6, 6], dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="window of layer 1 must be >= 1"):
        RollingKVCache(2, 1, 2, 8, [6, 0], dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="capacity of layer 0 must be >="):
        RollingKVCache(2, 1, 2, 8, 6, capacity=4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RollingKVCache(2, 0, 2, 8, 6, dtype=torch.float32, device="cpu")


# ---- bad inputs ---------------------------------------------------------------------


def bad_input_args(device="cpu"):
    d = 16 if device == "cpu" else 64
    gen = torch.Generator().manual_seed(5)
    q, k, v = fused_qkv(2, 4, 2, 3, d, torch.float32, device, gen)
    k_cache = torch.zeros(2, 2, 8, d, device=device)
    v_cache = torch.zeros(2, 2, 8, d, device=device)
    pos = torch.tensor([3, 10], device=device)
    return dict(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, pos=pos)


def call(op, a, window=6, n=4):
    if op == "append":
        return torch.ops.swa.cache_append(a["k_cache"], a["v_cache"], a["k"], a["v"], a["pos"])
    if op == "gather":
        return torch.ops.swa.cache_gather(a["k_cache"], a["v_cache"], a["pos"], n)
    return torch.ops.swa.cache_attention(a["q"], a["k"], a["v"], a["k_cache"], a["v_cache"], a["pos"], window,
                                         a.get("scale"), a.get("softcap", 0.0))


def with_(**changes):
    return lambda a: {**a, **{k: (f(a) if callable(f) else f) for k, f in changes.items()}}


BAD_CACHE_INPUTS = [
    # (ops, name, change, message)
    ("append gather attention", "pos int32", with_(pos=lambda a: a["pos"].int()), "pos must be int64"),
    ("append gather attention", "pos shape", with_(pos=lambda a: a["pos"][:1]), r"pos must have shape \[B\]"),
    ("append gather attention", "pos 2d", with_(pos=lambda a: a["pos"][None]), r"pos must have shape \[B\]"),
    ("append gather attention", "pos strided", with_(pos=lambda a: torch.stack([a["pos"], a["pos"]], 1)[:, 0]),
     "pos must be contiguous"),
    ("append gather attention", "k_cache rank", with_(k_cache=lambda a: a["k_cache"][0]), "k_cache must have 4 dims"),
    ("append gather attention", "v_cache dtype", with_(v_cache=lambda a: a["v_cache"].double()),
     "v_cache must have k_cache's dtype"),
    ("append gather attention", "cache shapes", with_(v_cache=lambda a: a["v_cache"][:, :, :5]),
     "k_cache and v_cache must have the same shape"),
    ("append gather attention", "capacity 0", with_(k_cache=lambda a: a["k_cache"][:, :, :0],
                                                    v_cache=lambda a: a["v_cache"][:, :, :0]),
     r"capacity C \(dim 2\) must be >= 1"),
    ("append gather", "int cache", with_(k_cache=lambda a: a["k_cache"].int(), v_cache=lambda a: a["v_cache"].int()),
     "k_cache must be float16, bfloat16, float32 or float64"),
    ("append gather attention", "cache last dim",
     with_(k_cache=lambda a: a["k_cache"].transpose(2, 3).contiguous().transpose(2, 3)), "contiguous last dim"),
    ("append", "k dtype", with_(k=lambda a: a["k"].double()), "k must have k_cache's dtype"),
    ("append", "k heads", with_(k=lambda a: a["k"][:, :1], v=lambda a: a["v"][:, :1]),
     r"must be \[B, Hkv, T, D\] with the cache's"),
    ("append", "v shape", with_(v=lambda a: a["v"][:, :, :2]), "k and v must have the same shape"),
    ("append", "k rank", with_(k=lambda a: a["k"][0]), "k must have 4 dims"),
    ("gather", "n > C", lambda a: a, r"n must be in \[0, C\]"),
    ("attention", "window 0", lambda a: a, "window must be >= 1"),
    ("attention", "capacity < window - 1", lambda a: a, r"capacity C \(dim 2\) must be >= window - 1 = 9"),
    ("attention", "k_new dtype", with_(k=lambda a: a["k"].double()), "k_new must have q's dtype"),
    ("attention", "k_new rows", with_(k=lambda a: a["k"][:, :, :2], v=lambda a: a["v"][:, :, :2]),
     "one key per query"),
    ("attention", "k_new vs v_new", with_(v=lambda a: a["v"][:, :, :2]), "k_new and v_new must have the same shape"),
    ("attention", "q rank", with_(q=lambda a: a["q"][0]), "q must have 4 dims"),
    ("attention", "gqa", with_(q=lambda a: a["q"][:, :3]), "multiple of"),
    ("attention", "cache dtype", with_(k_cache=lambda a: a["k_cache"].double(), v_cache=lambda a: a["v_cache"].double()),
     "k_cache must have q's dtype"),
    ("attention", "cache heads", with_(k_cache=lambda a: a["k_cache"][:, :1], v_cache=lambda a: a["v_cache"][:, :1]),
     r"k_cache and v_cache must be \[B, Hkv, C, D\] with k_new's"),
    ("attention", "cache batch", with_(k_cache=lambda a: a["k_cache"][:1], v_cache=lambda a: a["v_cache"][:1]),
     r"k_cache and v_cache must be \[B, Hkv, C, D\] with k_new's"),
    ("attention", "softcap", with_(softcap=-1.0), "softcap must be"),
    ("attention", "scale", with_(scale=float("nan")), "scale must be"),
]
BAD_CASES = [(op, name, change, msg) for ops, name, change, msg in BAD_CACHE_INPUTS for op in ops.split()]


@pytest.mark.parametrize("op,name,change,message", BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES])
def test_bad_input(op, name, change, message):
    a = change(bad_input_args())
    window = 0 if name == "window 0" else (10 if name.startswith("capacity <") else 6)
    n = 9 if name == "n > C" else 4
    with pytest.raises(RuntimeError, match=message):
        call(op, a, window=window, n=n)


@pytest.mark.parametrize("op", ["append", "gather", "attention"])
def test_negative_pos_rejected_on_cpu(op):
    a = bad_input_args()
    a["pos"] = torch.tensor([3, -1])
    with pytest.raises(RuntimeError, match=r"pos must be >= 0"):
        call(op, a)


@needs_cuda
@pytest.mark.parametrize("op", ["append", "gather", "attention"])
def test_bad_devices_cuda(op):
    a = bad_input_args("cuda")
    for name in ("pos", "k_cache", "v_cache") + (("k", "v") if op != "gather" else ()):
        b = dict(a, **{name: a[name].cpu()})
        with pytest.raises(RuntimeError, match="device"):
            call(op, b)
    if op == "attention":
        with pytest.raises(RuntimeError, match="head dim"):
            b = {k: t[..., :40].to(torch.bfloat16) if t.is_floating_point() else t for k, t in a.items()}
            call(op, b)


# ---- op contract: opcheck, torch.compile, CUDA graphs, no host sync --------------------


def op_samples(device):
    dtypes = [torch.float32, torch.float64] if device == "cpu" else [torch.bfloat16, torch.float16, torch.float32]
    d = head_dim_for(device)
    gen = torch.Generator().manual_seed(6)
    samples = []
    for dtype in dtypes:
        for new_len, pos in ((1, [0, 13]), (5, [2, 30])):
            q, k, v = fused_qkv(2, 4, 2, new_len, d, dtype, device, gen)
            k_cache, v_cache = (randn((2, 2, 9, d), dtype, device, gen) for _ in range(2))
            samples.append((q, k, v, k_cache, v_cache, torch.tensor(pos, device=device)))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_cache_ops(device):
    for q, k, v, k_cache, v_cache, pos in op_samples(device):
        torch.library.opcheck(torch.ops.swa.cache_append.default, (k_cache, v_cache, k, v, pos))
        torch.library.opcheck(torch.ops.swa.cache_gather.default, (k_cache, v_cache, pos, 7))
        torch.library.opcheck(torch.ops.swa.cache_attention.default, (q, k, v, k_cache, v_cache, pos, 8))
        torch.library.opcheck(torch.ops.swa.cache_attention.default, (q, k, v, k_cache, v_cache, pos, 4),
                              {"scale": 0.25, "softcap": 3.0})


def decode_inputs(layers, batch, heads_q, heads_kv, d, dtype, device, gen, new_len=1):
    return [fused_qkv(batch, heads_q, heads_kv, new_len, d, dtype, device, gen) for _ in range(layers)]


def model_step(cache, inputs):
    """One decoding step of a toy model: every layer attends and appends, then
    pos advances once."""
    outs = [cache.attend(layer, q, k, v) for layer, (q, k, v) in enumerate(inputs)]
    cache.advance(inputs[0][0].shape[2])
    return outs


def prefilled_caches(device, dtype, n=2, layers=2, windows=(6, 11), batch=2, heads_kv=2, prompt=13, seed=8):
    d = head_dim_for(device)
    caches = [RollingKVCache(layers, batch, heads_kv, d, list(windows), dtype=dtype, device=device) for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    prompt_inputs = decode_inputs(layers, batch, 2 * heads_kv, heads_kv, d, dtype, device, gen, new_len=prompt)
    for c in caches:
        model_step(c, prompt_inputs)
    return caches, gen


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_decode_step(device, backend):
    torch._dynamo.reset()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    (eager, compiled_cache), gen = prefilled_caches(device, dtype)
    compiled = torch.compile(model_step, fullgraph=True, backend=backend)
    d = head_dim_for(device)
    for _ in range(4):
        inputs = decode_inputs(2, 2, 4, 2, d, dtype, device, gen)
        want = model_step(eager, inputs)
        got = compiled(compiled_cache, inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        assert torch.equal(eager.pos, compiled_cache.pos)
        for layer in range(2):
            assert torch.equal(eager.k_cache(layer), compiled_cache.k_cache(layer))
            assert torch.equal(eager.v_cache(layer), compiled_cache.v_cache(layer))


@needs_cuda
def test_cuda_graph_capture_of_a_decode_step():
    dtype, device, d = torch.bfloat16, "cuda", head_dim_for("cuda")
    (eager, graphed, warm), gen = prefilled_caches(device, dtype, n=3)
    static = decode_inputs(2, 2, 4, 2, d, dtype, device, gen)
    # Warm up on a throwaway cache (lazy initialisation outside the capture).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model_step(warm, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model_step(graphed, static)
    for _ in range(40):  # past the window: the ring wraps inside the graph
        fresh = decode_inputs(2, 2, 4, 2, d, dtype, device, gen)
        for s, f in zip(static, fresh):
            for st, ft in zip(s, f):
                st.copy_(ft)
        graph.replay()
        want = model_step(eager, fresh)
        for a, b in zip(static_out, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.cuda.synchronize()
    assert torch.equal(eager.pos, graphed.pos)
    for layer in range(2):
        assert torch.equal(eager.k_cache(layer), graphed.k_cache(layer))


@needs_cuda
def test_cuda_decode_step_does_not_sync():
    (cache,), gen = prefilled_caches("cuda", torch.bfloat16, n=1)
    inputs = decode_inputs(2, 2, 4, 2, head_dim_for("cuda"), torch.bfloat16, "cuda", gen)
    model_step(cache, inputs)  # lazy initialisation first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model_step(cache, inputs)
        cache.gather(0)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_cuda_matches_cpu():
    # The same stream on both devices gives the same rings and close outputs.
    gen = torch.Generator().manual_seed(9)
    d = head_dim_for("cuda")
    caches = {dev: RollingKVCache(1, 2, 2, d, 20, capacity=23, dtype=torch.float32, device=dev)
              for dev in ("cpu", "cuda")}
    for new_len in [7, 1, 1, 30, 1, 19, 20, 21, 1, 2]:
        q, k, v = fused_qkv(2, 4, 2, new_len, d, torch.float32, "cpu", gen)
        out_cpu = caches["cpu"].attend(0, q, k, v)
        out_cuda = caches["cuda"].attend(0, q.cuda(), k.cuda(), v.cuda())
        torch.testing.assert_close(out_cuda.cpu(), out_cpu, rtol=1e-4, atol=1e-5)
        for c in caches.values():
            c.advance(new_len)
    assert torch.equal(caches["cuda"].k_cache(0).cpu(), caches["cpu"].k_cache(0))
