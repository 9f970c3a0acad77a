import random
import threading
from pathlib import Path

import pytest
import torch

import swa_cuda  # noqa: F401  (loads torch.ops.swa)

HAS_CUDA = torch.cuda.is_available()

# Every op test runs on each device; the CUDA ones skip cleanly without a GPU.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
]


def cpu_flags():
    """The processor's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# The flags each CPU kernel build needs (csrc/cpu/isa.cpp), by SWA_CPU_ISA name.
ISA_FLAGS = {"avx512": {"avx512f", "avx512dq", "avx512vl", "avx512bw", "fma", "bmi2"},
             "avx2": {"avx2", "fma", "bmi2"}, "baseline": set()}


def run_in_threads(work, count, timeout=300):
    """Calls work(i) for i in range(count), each in a thread of its own, all
    at once; fails on any exception or a thread still running after timeout s."""
    errors = []

    def run(i):
        try:
            work(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=timeout)
    assert not errors, errors
    assert all(not w.is_alive() for w in workers), "a thread did not finish"


def make_qkv(batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype, device,
             layout="bhsd", requires_grad=False, seed=0):
    """q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D]. layout="bshd" returns transposed
    views of [B, S, H, D] storage (the HF layout), as callers hand them in."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(b, h, s):
        shape = (b, s, h, head_dim) if layout == "bshd" else (b, h, s, head_dim)
        t = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
        if layout == "bshd":
            t = t.transpose(1, 2)
        return t.requires_grad_(requires_grad)

    return rand(batch, heads_q, seqlen_q), rand(batch, heads_kv, seqlen_k), rand(batch, heads_kv, seqlen_k)


def random_cases(n, seed, max_len=300, head_dims=(16, 32, 64, 80, 128)):
    """Random problem shapes: GQA/MQA, Sq != Sk, odd lengths, all window kinds."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        heads_kv = rng.choice([1, 2, 3])
        group = rng.choice([1, 2, 4])
        seqlen_k = rng.choice([1, 7, 63, 64, 65, 127, 200, max_len])
        seqlen_q = rng.choice([1, 5, seqlen_k, max(1, seqlen_k // 2), seqlen_k + 17])
        window_left = rng.choice([-1, 0, 1, 3, 31, 64, 100, 500])
        window_right = rng.choice([0, 0, 0, -1, 2, 40])
        softcap = rng.choice([0.0, 0.0, 5.0])
        cases.append(dict(batch=rng.choice([1, 2]), heads_q=heads_kv * group, heads_kv=heads_kv,
                          seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=rng.choice(head_dims),
                          window_left=window_left, window_right=window_right, softcap=softcap))
    return cases


def case_id(c):
    return (f"b{c['batch']}h{c['heads_q']}/{c['heads_kv']}q{c['seqlen_q']}k{c['seqlen_k']}"
            f"d{c['head_dim']}w{c['window_left']},{c['window_right']}c{c['softcap']:g}")
