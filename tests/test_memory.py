"""No memory growth over 10^4 calls of each op on the CPU: the resident set
after the calls stays within a tolerance of the one after a warm-up (a leak of
one small output per call would add ~10^4 x its size and fail)."""

import gc
import os

import pytest
import torch

import swa_cuda

CALLS = 10_000
TOLERANCE = 8 << 20  # bytes: allocator and interpreter noise, far below a leak of 10^4 outputs


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ops():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 16, 32, generator=g)
    k = torch.randn(1, 2, 16, 32, generator=g)
    v = torch.randn(1, 2, 16, 32, generator=g)
    out, lse = torch.ops.swa.attention(q, k, v, 7, 0)
    kc, vc = torch.zeros(1, 2, 8, 32), torch.zeros(1, 2, 8, 32)
    pos = torch.tensor([5], dtype=torch.int64)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def autograd_step():
        swa_cuda.sliding_window_attention(qg, kg, vg, 8).sum().backward()
        qg.grad = kg.grad = vg.grad = None

    return {
        "attention": lambda: torch.ops.swa.attention(q, k, v, 7, 0),
        "attention_backward": lambda: torch.ops.swa.attention_backward(out, lse, q, k, v, out, lse, 7, 0, None,
                                                                        0.0),
        "autograd": autograd_step,
        "cache_append": lambda: torch.ops.swa.cache_append(kc, vc, k[:, :, :1], v[:, :, :1], pos),
        "cache_gather": lambda: torch.ops.swa.cache_gather(kc, vc, pos, 8),
        "cache_attention": lambda: torch.ops.swa.cache_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], kc, vc,
                                                                 pos, 8),
    }


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set from /proc")
@pytest.mark.parametrize("name", list(_ops()))
def test_no_memory_growth(name):
    call = _ops()[name]
    for _ in range(500):
        call()
    gc.collect()
    before = _rss()
    for _ in range(CALLS):
        call()
    gc.collect()
    grown = _rss() - before
    assert grown < TOLERANCE, f"{name}: resident set grew by {grown / 2**20:.1f} MiB over {CALLS} calls"
