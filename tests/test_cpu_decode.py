"""The CPU decode path of cache_attention (csrc/cpu/decode*.{h,cpp}): few new
tokens (T * Hq / Hkv <= 32 query rows per kv head) read the ring in place,
each kv head once for its query group, the window split across threads when
B * Hkv is small (merged through lse).

Every case is compared with the float64 reference (tests/reference.py) over
the keys each sequence sees, assembled here in plain PyTorch from the ring's
slots: both ring layouts (the window contiguous in the ring, and wrapped past
its end), GQA ratios 1/4/8, B = 1 and B > 1, four dtypes, T = 1 and small T,
one thread (no split) and two (split). Each instruction-set build of the
kernel present on this CPU is forced through SWA_CPU_ISA in a subprocess
(the choice is made once per process).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swa_cuda  # noqa: F401  (loads torch.ops.swa)
import swa_cuda.cache  # noqa: F401
from conftest import ISA_FLAGS, cpu_flags
from reference import attention_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
HEAD_DIM = 64
WINDOW = 700  # > 2 x 256 keys: a single (sequence, kv head) is split with 2 threads
HEADS_KV = 2


def virtual_keys(cache, new, p, window):
    """The keys a query block at position p sees, oldest first: ring slots of
    positions max(0, p - window + 1) .. p - 1, then the new rows. [Hkv, n, D]."""
    capacity = cache.shape[1]
    slots = [x % capacity for x in range(max(0, p - (window - 1)), p)]
    return torch.cat([cache[:, slots], new], dim=1)


def reference(q, k_new, v_new, k_cache, v_cache, pos, window, softcap, upcast):
    outs, lses = [], []
    for b, p in enumerate(pos.tolist()):
        k = virtual_keys(k_cache[b], k_new[b], p, window)[None]
        v = virtual_keys(v_cache[b], v_new[b], p, window)[None]
        o, lse = attention_ref(q[b:b + 1], k, v, window - 1, 0, None, softcap, upcast=upcast)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def ring_positions(batch, capacity, wrapped):
    """Positions whose window sits inside the ring (wrapped=False: slots
    key_start .. pos - 1 do not pass slot C - 1) or straddles its end."""
    if wrapped:
        return [3 * capacity + capacity // 2 + 7 * b for b in range(batch)]
    return [4 * capacity + (WINDOW - 1) + 5 * b for b in range(batch)]


def check_case(dtype, group, batch, new_len, wrapped, threads, softcap=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    capacity = WINDOW + 5 * batch + 3 if not wrapped else WINDOW + 40

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    q = rand(batch, HEADS_KV * group, new_len, HEAD_DIM)
    k_new, v_new = rand(batch, HEADS_KV, new_len, HEAD_DIM), rand(batch, HEADS_KV, new_len, HEAD_DIM)
    k_cache, v_cache = rand(batch, HEADS_KV, capacity, HEAD_DIM), rand(batch, HEADS_KV, capacity, HEAD_DIM)
    pos = torch.tensor(ring_positions(batch, capacity, wrapped), dtype=torch.int64)
    for p in pos.tolist():  # the case is what it says
        start = (p - (WINDOW - 1)) % capacity
        assert (start + WINDOW - 1 > capacity) == wrapped
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, lse = torch.ops.swa.cache_attention(q, k_new, v_new, k_cache, v_cache, pos, WINDOW, None, softcap)
    finally:
        torch.set_num_threads(before)
    ref, ref_lse = reference(q, k_new, v_new, k_cache, v_cache, pos, WINDOW, softcap, upcast=True)
    what = f"{dtype} group {group} B {batch} T {new_len} wrapped {wrapped} threads {threads}"
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    err = (out.double() - ref.double()).abs().max().item()
    if dtype == torch.float64:
        assert err <= 1e-12, f"{what}: error {err:.3g}"
    else:
        # FlashAttention's rule: at most twice the error of the same math in
        # the inputs' dtype (plus one unit of float32 rounding).
        ref_lowp, _ = reference(q, k_new, v_new, k_cache, v_cache, pos, WINDOW, softcap, upcast=False)
        err_lowp = (ref_lowp.double() - ref.double()).abs().max().item()
        assert err <= 2 * err_lowp + 1e-5, f"{what}: error {err:.3g} > 2 x {err_lowp:.3g} + 1e-5"
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what} lse: {m}")


CASES = [(dtype, group, batch, new_len, wrapped, threads)
         for dtype in DTYPES for group in (1, 4, 8) for batch in (1, 3) for new_len in (1, 3)
         for wrapped in (False, True) for threads in (1, 2)]


@pytest.mark.parametrize("dtype,group,batch,new_len,wrapped,threads", CASES,
                         ids=[f"{str(c[0])[6:]}-g{c[1]}-B{c[2]}-T{c[3]}-{'wrap' if c[4] else 'flat'}-t{c[5]}"
                              for c in CASES])
def test_decode_matches_reference(dtype, group, batch, new_len, wrapped, threads):
    check_case(dtype, group, batch, new_len, wrapped, threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_softcap(dtype, threads):
    check_case(dtype, 4, 2, 1, True, threads, softcap=5.0, seed=1)


def test_decode_odd_head_dim_and_strided_rows():
    """A head dim that is no multiple of any vector width, and q / ring rows
    that are views with padding (row stride != D)."""
    g = torch.Generator().manual_seed(3)
    batch, heads_q, heads_kv, d, window, capacity = 2, 8, 2, 37, 300, 310
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        big_q = torch.randn(batch, heads_q, 1, d + 3, generator=g).to(dtype)
        q = big_q[..., 1:1 + d]
        k_new = torch.randn(batch, heads_kv, 1, d, generator=g).to(dtype)
        v_new = torch.randn(batch, heads_kv, 1, d, generator=g).to(dtype)
        ring = torch.randn(2, batch, heads_kv, capacity, d + 8, generator=g).to(dtype)
        k_cache, v_cache = ring[0, ..., 4:4 + d], ring[1, ..., :d]
        pos = torch.tensor([5 * capacity + 1, 2 * capacity + 100], dtype=torch.int64)
        out, lse = torch.ops.swa.cache_attention(q, k_new, v_new, k_cache, v_cache, pos, window)
        ref, ref_lse = reference(q, k_new, v_new, k_cache, v_cache, pos, window, 0.0, upcast=True)
        tol = 1e-12 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 1e-2)
        torch.testing.assert_close(out.double(), ref.double(), rtol=0, atol=tol)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


def test_decode_short_history_sees_only_written_slots():
    """Early positions (pos < window - 1): only slots 0 .. pos - 1 are read;
    the never-written slots are NaN and must not leak into the output."""
    g = torch.Generator().manual_seed(4)
    batch, heads_q, heads_kv, d, window = 3, 8, 2, 64, 600
    k_cache = torch.full((batch, heads_kv, window, d), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    pos = torch.tensor([0, 1, 450], dtype=torch.int64)
    for b, p in enumerate(pos.tolist()):
        k_cache[b, :, :p] = torch.randn(heads_kv, p, d, generator=g)
        v_cache[b, :, :p] = torch.randn(heads_kv, p, d, generator=g)
    q = torch.randn(batch, heads_q, 2, d, generator=g)
    k_new, v_new = torch.randn(batch, heads_kv, 2, d, generator=g), torch.randn(batch, heads_kv, 2, d, generator=g)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out, lse = torch.ops.swa.cache_attention(q, k_new, v_new, k_cache, v_cache, pos, window)
        ref, ref_lse = reference(q, k_new, v_new, k_cache, v_cache, pos, window, 0.0, upcast=True)
        assert not out.isnan().any()
        torch.testing.assert_close(out.double(), ref.double(), rtol=0, atol=1e-5)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


# ---- every instruction-set build of the kernel ------------------------------------



@pytest.mark.parametrize("isa", list(ISA_FLAGS))
def test_decode_every_isa_build(isa):
    """The decode cases with the kernel build of one instruction set, forced
    by SWA_CPU_ISA (it lowers the choice; the best build is the default)."""
    missing = ISA_FLAGS[isa] - cpu_flags()
    if isa != "baseline" and (missing or not sys.platform.startswith("linux")):
        pytest.skip(f"this CPU lacks {sorted(missing)} for the {isa} build")
    env = dict(os.environ, SWA_CPU_ISA=isa)
    code = ("import test_cpu_decode as t\n"
            "for dtype in t.DTYPES:\n"
            "    for group in (1, 4, 8):\n"
            "        for new_len, wrapped, threads in ((1, True, 2), (3, False, 1), (1, False, 2)):\n"
            "            t.check_case(dtype, group, 2, new_len, wrapped, threads)\n"
            "t.check_case(t.torch.float32, 4, 1, 1, True, 2, softcap=5.0)\n"
            "t.test_decode_odd_head_dim_and_strided_rows()\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (
        f"SWA_CPU_ISA={isa}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
