"""The CPU kernels' helper threads (csrc/cpu/parallel.cpp): results do not
depend on the thread count, calls from several Python threads at once share
the helpers correctly, and a process forked after the helpers started (a
DataLoader worker, a multiprocessing child) still runs the ops."""

import multiprocessing as mp

import pytest
import torch

import swa_cuda
from conftest import run_in_threads


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 300, 32, generator=g)
    k = torch.randn(2, 2, 300, 32, generator=g)
    v = torch.randn(2, 2, 300, 32, generator=g)
    return q, k, v


def test_thread_count_does_not_change_results():
    q, k, v = _problem()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.swa.attention(q, k, v, 40, 0)
        torch.set_num_threads(max(2, threads))
        many = torch.ops.swa.attention(q, k, v, 40, 0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_concurrent_calls_from_python_threads():
    problems = [_problem(seed) for seed in range(4)]
    expected = [torch.ops.swa.attention(q, k, v, 40, 0)[0] for q, k, v in problems]
    results = [None] * 4

    def run(i):
        q, k, v = problems[i]
        for _ in range(5):
            results[i] = torch.ops.swa.attention(q, k, v, 40, 0)[0]

    run_in_threads(run, 4)
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


def _child(queue):
    torch.set_num_threads(2)  # the op's helpers: the parent's are gone in the child
    q, k, v = _problem()
    out, _ = torch.ops.swa.attention(q, k, v, 40, 0)
    # torch's own OpenMP regions hang in a forked child once the parent has
    # used them (libgomp is not fork-safe): one thread for the reduction.
    torch.set_num_threads(1)
    queue.put(out.double().sum().item())


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork()")
def test_forked_child_runs_the_ops():
    q, k, v = _problem()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    out = torch.ops.swa.attention(q, k, v, 40, 0)[0]  # the helpers exist now
    torch.set_num_threads(1)
    want = out.double().sum().item()  # the child's reduction order
    torch.set_num_threads(threads)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in the op")
    assert child.exitcode == 0 and queue.get(timeout=10) == want
