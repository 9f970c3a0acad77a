"""The CPU backward's dQ slices live in a per-thread workspace kept between
calls (csrc/cpu/workspace.h): calls of different sizes back to back, and
calls from several threads at once, give bit for bit the gradients of a
process that keeps no workspace (SWA_CPU_WORKSPACE_MB=0); a bad value of
the variable is refused by name."""

import os
import subprocess
import sys
from pathlib import Path

import torch

import swa_cuda  # noqa: F401  (registers torch.ops.swa)
from conftest import run_in_threads

# (seqlen, heads_q, heads_kv, window_left, dtype): the one pass, larger and
# smaller slices in turn.
CASES = [(700, 4, 2, 100, torch.float32), (90, 2, 2, 20, torch.float32), (1500, 2, 1, 300, torch.bfloat16),
         (300, 3, 3, 40, torch.float32), (1500, 2, 1, 300, torch.bfloat16)]


def grads(i):
    s, hq, hkv, wl, dt = CASES[i]
    g = torch.Generator().manual_seed(i)
    q = torch.randn(1, hq, s, 32, generator=g).to(dt)
    k, v = (torch.randn(1, hkv, s, 32, generator=g).to(dt) for _ in range(2))
    dout = torch.randn(1, hq, s, 32, generator=g).to(dt)
    out, lse = torch.ops.swa.attention(q, k, v, wl, 0)
    return torch.ops.swa.attention_backward(dout, None, q, k, v, out, lse, wl, 0, None, 0.0, True)


def all_grads():
    return [grads(i) for i in range(len(CASES))]


def run_child(env_value, code):
    env = dict(os.environ, SWA_CPU_WORKSPACE_MB=env_value)
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True,
                          text=True, timeout=300)


def test_kept_workspace_matches_no_workspace(tmp_path):
    results = {}
    for value in ("0", "256"):  # none kept; kept (each process sets its own, whatever the caller's environment)
        path = tmp_path / f"grads_{value}.pt"
        # The second round reuses what the first kept.
        run = run_child(value, f"import torch, test_cpu_workspace as t\n"
                               f"torch.save(t.all_grads() + t.all_grads(), {str(path)!r})\n")
        assert run.returncode == 0, run.stderr[-3000:]
        results[value] = torch.load(path)
    fresh, kept = results["0"][:len(CASES)], results["256"]
    for i, got in enumerate(kept):
        for name, a, b in zip("qkv", got, fresh[i % len(CASES)]):
            assert torch.equal(a, b), f"case {i % len(CASES)} d{name} differs from the run without a workspace"


def test_threads_each_use_their_own_workspace():
    expected = all_grads()
    results = {}

    def work(t):
        results[t] = [grads((t + j) % len(CASES)) for j in range(len(CASES))]

    run_in_threads(work, 3)
    for t, got in results.items():
        for j, g in enumerate(got):
            for name, a, b in zip("qkv", g, expected[(t + j) % len(CASES)]):
                assert torch.equal(a, b), f"thread {t} case {(t + j) % len(CASES)} d{name}"


def test_bad_workspace_size_is_refused():
    run = run_child("lots", "import test_cpu_workspace as t\nt.grads(0)\n")
    assert run.returncode != 0
    assert "SWA_CPU_WORKSPACE_MB" in run.stderr and "lots" in run.stderr, run.stderr[-2000:]
