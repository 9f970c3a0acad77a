"""Adversarial inputs: in-place cache writes into overlapping memory, meta
tensors mixed with real ones, numbers outside their range, non-finite values
(what propagates where, and what never may), and the Python fronts' argument
errors. The contracts pinned here are the README's "Bad input and non-finite
values" section."""

import math
import sys

import pytest
import torch

import swa_cuda
from conftest import DEVICES, make_qkv
from reference import attention_ref

NAN, INF = float("nan"), float("inf")


def _qkv(device, b=1, hq=2, hkv=2, sq=40, sk=40, d=16, dtype=torch.float32, seed=0):
    return make_qkv(b, hq, hkv, sq, sk, d, dtype, device, seed=seed)


# ---- in-place cache writes ------------------------------------------------------


def _ring(device, b=2, h=2, c=8, d=16):
    return torch.zeros(b, h, c, d, device=device), torch.zeros(b, h, c, d, device=device)


def _tokens(device, b=2, h=2, t=3, d=16):
    return torch.randn(b, h, t, d, device=device), torch.randn(b, h, t, d, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_append_refuses_one_tensor_as_both_rings(device):
    kc, _ = _ring(device)
    k, v = _tokens(device)
    pos = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match="k_cache and v_cache share memory"):
        torch.ops.swa.cache_append(kc, kc, k, v, pos)


@pytest.mark.parametrize("device", DEVICES)
def test_append_refuses_partially_overlapping_views(device):
    buf = torch.zeros(2, 2, 12, 16, device=device)
    kc, vc = buf[:, :, 0:8], buf[:, :, 4:12]  # slots 4..7 of k are slots 0..3 of v
    k, v = _tokens(device)
    pos = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match="k_cache and v_cache share memory"):
        torch.ops.swa.cache_append(kc, vc, k, v, pos)


@pytest.mark.parametrize("device", DEVICES)
def test_append_refuses_a_ring_with_internal_overlap(device):
    kc = torch.zeros(1, 2, 8, 16, device=device).expand(2, 2, 8, 16)  # both sequences on one ring
    vc = torch.zeros(2, 2, 8, 16, device=device)
    k, v = _tokens(device)
    pos = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match="k_cache has elements that share memory"):
        torch.ops.swa.cache_append(kc, vc, k, v, pos)
    with pytest.raises(RuntimeError, match="v_cache has elements that share memory"):
        torch.ops.swa.cache_append(vc, kc, k, v, pos)


@pytest.mark.parametrize("device", DEVICES)
def test_append_refuses_new_tokens_inside_the_ring(device):
    kc, vc = _ring(device)
    pos = torch.zeros(2, dtype=torch.int64, device=device)
    k, v = kc[:, :, 2:5], vc[:, :, 2:5].clone()
    with pytest.raises(RuntimeError, match="k_cache and k share memory"):
        torch.ops.swa.cache_append(kc, vc, k, v, pos)
    with pytest.raises(RuntimeError, match="v_cache and k share memory"):
        torch.ops.swa.cache_append(vc.clone(), kc, k, v, pos)


@pytest.mark.parametrize("device", DEVICES)
def test_append_accepts_interleaved_rings_of_one_buffer(device):
    """k and v rings cut from one [B, H, C, 2, D] buffer interleave row by row
    without sharing an element: accepted, and written exactly."""
    buf = torch.zeros(2, 2, 8, 2, 16, device=device)
    kc, vc = buf[:, :, :, 0], buf[:, :, :, 1]
    k, v = _tokens(device, t=5)
    pos = torch.tensor([0, 6], dtype=torch.int64, device=device)
    torch.ops.swa.cache_append(kc, vc, k, v, pos)
    for b, p in enumerate(pos.tolist()):
        for t in range(5):
            assert torch.equal(kc[b, :, (p + t) % 8], k[b, :, t])
            assert torch.equal(vc[b, :, (p + t) % 8], v[b, :, t])
    # The layer views of one model-wide buffer [L, 2, B, H, C, D] too.
    big = torch.zeros(3, 2, 2, 2, 8, 16, device=device)
    torch.ops.swa.cache_append(big[1, 0], big[1, 1], k, v, pos)
    assert torch.equal(big[1, 0, 0, :, 0:5], k[0]) and torch.equal(big[1, 1, 0, :, 0:5], v[0])


def test_pos_beyond_int64_headroom_is_refused():
    kc, vc = _ring("cpu")
    k, v = _tokens("cpu")
    pos = torch.tensor([0, sys.maxsize - 1], dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"pos must be <= 2\^62"):
        torch.ops.swa.cache_append(kc, vc, k, v, pos)


# ---- meta tensors among real ones -------------------------------------------------


def _meta_mixes():
    q, k, v = _qkv("cpu", sq=4, sk=4)
    kc, vc = _ring("cpu", b=1)
    kn, vn = q[:, :, :1].clone(), q[:, :, :1].clone()
    pos = torch.zeros(1, dtype=torch.int64)
    out, lse = torch.ops.swa.attention(q, k, v, 2, 0)
    m = lambda t: t.to("meta")  # noqa: E731
    return [
        ("attention k", "k must be on q's device", lambda: torch.ops.swa.attention(q, m(k), v, 2, 0)),
        ("attention v", "v must be on q's device", lambda: torch.ops.swa.attention(q, k, m(v), 2, 0)),
        ("attention q", "k must be on q's device", lambda: torch.ops.swa.attention(m(q), k, v, 2, 0)),
        ("backward lse", "lse must be on q's device", lambda: torch.ops.swa.attention_backward(
            out, None, q, k, v, out, m(lse), 2, 0, None, 0.0)),
        ("append pos", "pos must be on k_cache's device", lambda: torch.ops.swa.cache_append(
            kc, vc, kn, vn, m(pos))),
        ("append ring", "v_cache must be on k_cache's device", lambda: torch.ops.swa.cache_append(
            kc, m(vc), kn, vn, pos)),
        ("gather pos", "pos must be on k_cache's device", lambda: torch.ops.swa.cache_gather(kc, vc, m(pos), 2)),
        ("decode ring", "k_cache must be on q's device", lambda: torch.ops.swa.cache_attention(
            q[:, :, :1], kn, vn, m(kc), vc, pos, 4)),
        ("decode pos", "pos must be on q's device", lambda: torch.ops.swa.cache_attention(
            q[:, :, :1], kn, vn, kc, vc, m(pos), 4)),
    ]


@pytest.mark.parametrize("name,message,call", _meta_mixes(), ids=[c[0] for c in _meta_mixes()])
def test_meta_tensor_among_cpu_tensors_is_refused(name, message, call):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_all_meta_still_infers_shapes():
    q, k, v = (t.to("meta") for t in _qkv("cpu", hq=4, sq=5, sk=9))
    out, lse = torch.ops.swa.attention(q, k, v, 3, 0)
    assert out.device.type == "meta" and out.shape == q.shape and lse.shape == (1, 4, 5)


# ---- numbers outside their range -------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_scale_beyond_float32_is_refused(device):
    q, k, v = _qkv(device)
    for scale in (1e300, -1e39):
        with pytest.raises(RuntimeError, match="scale must be None or a finite number within float32's range"):
            torch.ops.swa.attention(q, k, v, 3, 0, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sq,sk", [(40, 40), (7, 40), (40, 9)])
def test_windows_near_int64_limit_mean_unbounded(device, sq, sk):
    q, k, v = _qkv(device, sq=sq, sk=sk)
    huge = sys.maxsize
    for wl, wr, same_as in [(huge, 0, (-1, 0)), (huge, huge, (-1, -1)), (3, huge, (3, -1)),
                            (huge - 1, huge - 1, (-1, -1)), (sk, sq, (-1, -1))]:
        out, lse = torch.ops.swa.attention(q, k, v, wl, wr)
        out_ref, lse_ref = torch.ops.swa.attention(q, k, v, *same_as)
        assert torch.equal(out, out_ref) and torch.equal(lse, lse_ref), (wl, wr)
    # And the backward sees the same band.
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    swa_cuda.local_attention(qg, kg, vg, (huge, huge)).sum().backward()
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    swa_cuda.local_attention(qr, kr, vr, (-1, -1)).sum().backward()
    for a, b in ((qg, qr), (kg, kr), (vg, vr)):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_softcap_gives_uniform_attention(device, dtype):
    q, k, v = _qkv(device, sq=20, sk=20, dtype=dtype)
    for softcap in (1e-50, 1e-300):
        out, lse = torch.ops.swa.attention(q, k, v, 4, 0, None, softcap)
        for i in range(20):
            lo = max(0, i - 4)
            assert torch.allclose(out[:, :, i].double(), v[:, :, lo:i + 1].double().mean(2), atol=1e-6), i
            assert torch.allclose(lse[:, :, i].double(), torch.full_like(lse[:, :, i].double(),
                                                                         math.log(i + 1 - lo)), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [None, 1e10])
def test_tiny_softcap_in_the_cache_gives_uniform_attention(device, scale):
    """The decode path takes the same softcap clamp as attention (T = 1), and
    scale / softcap does not overflow into 0 * inf."""
    g = torch.Generator().manual_seed(0)
    kc, vc = (torch.randn(1, 2, 16, 16, generator=g).to(device) for _ in range(2))
    q = torch.randn(1, 4, 1, 16, generator=g).to(device)
    kn, vn = (torch.randn(1, 2, 1, 16, generator=g).to(device) for _ in range(2))
    pos = torch.tensor([10], dtype=torch.int64, device=device)
    out, lse = torch.ops.swa.cache_attention(q, kn, vn, kc, vc, pos, 8, scale, 1e-50)
    # Keys at positions 3 .. 9 of the ring and the new one: 8 keys, uniform.
    values = torch.cat([vc[:, :, 3:10], vn], 2).double().mean(2)  # (1, Hkv, D)
    assert torch.allclose(out[0, :, 0].double(), values[0].repeat_interleave(2, 0), atol=1e-6)
    assert torch.allclose(lse.double(), torch.full_like(lse.double(), math.log(8)), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_huge_softcap_is_no_cap(device):
    q, k, v = _qkv(device)
    out, lse = torch.ops.swa.attention(q, k, v, 7, 0, None, 1e300)
    out_ref, lse_ref = attention_ref(q, k, v, 7, 0)
    assert (out.double() - out_ref.double()).abs().max() < 1e-5
    assert (lse.double() - lse_ref.double()).abs().max() < 1e-5


# ---- non-finite values -------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("poison", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_non_finite_query_row_gives_nan_not_the_no_key_marker(device, poison):
    q, k, v = _qkv(device, sq=70, sk=70)
    q[0, 1, 33] = poison  # the whole row: scores NaN (inf * mixed signs)
    q[0, 0, 5, 3] = NAN  # one element of another row
    out, lse = torch.ops.swa.attention(q, k, v, 10, 0)
    assert torch.isnan(lse[0, 1, 33]) and torch.isnan(out[0, 1, 33]).all()
    assert torch.isnan(lse[0, 0, 5]) and torch.isnan(out[0, 0, 5]).all()
    clean = torch.ones_like(lse, dtype=torch.bool)
    clean[0, 1, 33] = clean[0, 0, 5] = False
    assert torch.isfinite(lse[clean]).all() and torch.isfinite(out[clean]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("new_len", [1, 3])
def test_non_finite_query_row_in_the_cache_gives_nan(device, threads, new_len):
    """The decode path (and its window split across threads) keeps the same
    contract as attention: a NaN score makes its row NaN, not -inf."""
    g = torch.Generator().manual_seed(0)
    kc, vc = (torch.randn(2, 2, 64, 16, generator=g).to(device) for _ in range(2))
    q = torch.randn(2, 4, new_len, 16, generator=g).to(device)
    kn, vn = (torch.randn(2, 2, new_len, 16, generator=g).to(device) for _ in range(2))
    q[0, 1, -1] = NAN
    q[1, 2, 0] = INF
    pos = torch.tensor([60, 30], dtype=torch.int64, device=device)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out, lse = torch.ops.swa.cache_attention(q, kn, vn, kc, vc, pos, 40)
    finally:
        torch.set_num_threads(saved)
    for b, h, t in ((0, 1, new_len - 1), (1, 2, 0)):
        assert torch.isnan(lse[b, h, t]) and torch.isnan(out[b, h, t]).all()
    assert torch.isfinite(lse).sum() == lse.numel() - 2


@pytest.mark.parametrize("device", DEVICES)
def test_rows_that_see_no_key_keep_zero_and_minus_inf(device):
    q, k, v = _qkv(device, sq=30, sk=10)  # the first 20 rows sit at negative positions
    out, lse = torch.ops.swa.attention(q, k, v, -1, 0)
    assert (lse[:, :, :20] == -INF).all() and (out[:, :, :20] == 0).all()


def _poison_keys(k, v, idx):
    kp, vp = k.clone(), v.clone()
    kp[:, :, idx] = NAN
    vp[:, :, idx] = INF
    return kp, vp


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keys_no_query_sees_never_reach_an_output(device, dtype):
    """Sq < Sk with a window: the keys before the first query's window, and
    (window_right = 0) nothing after the last, hold NaN / inf; outputs and
    every gradient are the same as with finite values there, and finite."""
    sq, sk, wl = 50, 300, 37
    q, k, v = _qkv(device, sq=sq, sk=sk, dtype=dtype, d=32)
    first_seen = sk - sq - wl
    kp, vp = _poison_keys(k, v, slice(0, first_seen))
    out, lse = torch.ops.swa.attention(q, kp, vp, wl, 0)
    out_ref, lse_ref = torch.ops.swa.attention(q, k, v, wl, 0)
    assert torch.equal(out, out_ref) and torch.equal(lse, lse_ref)
    assert torch.isfinite(out).all()
    grads = []
    for kk, vv in ((kp, vp), (k, v)):
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, kk, vv))
        out, lse = swa_cuda.local_attention(qg, kg, vg, (wl, 0), return_lse=True)
        (out.float().square().sum() + lse.sum()).backward()
        grads.append((qg.grad, kg.grad, vg.grad))
    for a, b in zip(*grads):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    assert (grads[0][1][:, :, :first_seen] == 0).all() and (grads[0][2][:, :, :first_seen] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_ring_slots_outside_the_window_never_reach_an_output(device):
    """Slots never written (a ring filled with NaN) and slots evicted from the
    window (capacity > window - 1, poisoned after they leave it) are never
    read by cache_attention."""
    window, capacity, d = 6, 16, 16
    kc = torch.full((2, 2, capacity, d), NAN, device=device)
    vc = torch.full((2, 2, capacity, d), INF, device=device)
    kc_ref, vc_ref = torch.zeros_like(kc), torch.zeros_like(vc)
    pos = torch.zeros(2, dtype=torch.int64, device=device)
    g = torch.Generator().manual_seed(0)
    for step in range(25):
        if step == 4:
            pos[1] = 0  # a new sequence takes slot 1: its stale slots are not its history
        t = 1 if step % 3 else 3
        q = torch.randn(2, 4, t, d, generator=g).to(device)
        kn = torch.randn(2, 2, t, d, generator=g).to(device)
        vn = torch.randn(2, 2, t, d, generator=g).to(device)
        out, lse = torch.ops.swa.cache_attention(q, kn, vn, kc, vc, pos, window)
        out_ref, lse_ref = torch.ops.swa.cache_attention(q, kn, vn, kc_ref, vc_ref, pos, window)
        assert torch.isfinite(out).all() and torch.equal(out, out_ref) and torch.equal(lse, lse_ref), step
        for ring_k, ring_v in ((kc, vc), (kc_ref, vc_ref)):
            torch.ops.swa.cache_append(ring_k, ring_v, kn, vn, pos)
        pos += t
        # Poison what has just left every window (positions < pos - window + 1).
        for b in range(2):
            for p in range(max(0, int(pos[b]) - capacity), max(0, int(pos[b]) - window + 1)):
                kc[b, :, p % capacity] = NAN
                vc[b, :, p % capacity] = -INF


# ---- the Python fronts ---------------------------------------------------------------


def test_local_attention_wants_a_pair():
    q, k, v = _qkv("cpu")
    with pytest.raises(TypeError, match=r"window_size must be a pair \(left, right\)"):
        swa_cuda.local_attention(q, k, v, 3)
    with pytest.raises(TypeError, match=r"window_size\[1\] \(right\) must be an int"):
        swa_cuda.local_attention(q, k, v, (3, 2.5))


def test_sliding_window_attention_names_its_own_argument():
    q, k, v = _qkv("cpu")
    for bad in (4.5, 4.0, True, "4"):
        with pytest.raises(TypeError, match="sliding_window_attention: window must be an int >= 1"):
            swa_cuda.sliding_window_attention(q, k, v, window=bad)
    with pytest.raises(ValueError, match="window must be >= 1"):
        swa_cuda.sliding_window_attention(q, k, v, 0)


# ---- process exit ---------------------------------------------------------------------

_EXIT_SCRIPT = """
import torch, swa_cuda
q = torch.randn(1, 2, 50, 32, requires_grad=True)
k = torch.randn(1, 2, 300, 32, requires_grad=True)
v = torch.randn(1, 2, 300, 32, requires_grad=True)
out, lse = swa_cuda.local_attention(q, k, v, (-1, 0), return_lse=True)
(out.square().sum() + lse.sum()).backward()
"""


def test_process_exits_cleanly_after_backward():
    """The CPU kernels' helper threads must not run anything of the caller's
    after the op returned: with torch's inter-op pool, a late helper dropped
    the caller's thread-local state during interpreter shutdown and the
    process aborted at exit about every other run (terminate called without
    an active exception)."""
    import subprocess

    runs = [subprocess.Popen([sys.executable, "-c", _EXIT_SCRIPT], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(6)]
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
