"""The planner's numbers (swa_cuda.plan): Mistral 7B's receptive field and
cache size, exact pair counts against brute force, and the CLI."""

import os
import subprocess
import sys

import pytest

from swa_cuda import plan

MISTRAL_7B = dict(layers=32, window=4096, kv_heads=8, head_dim=128, dtype="bf16", seq_len=32768)


def test_mistral_7b_numbers():
    p = plan.make_plan(**MISTRAL_7B)
    assert p.receptive_field == 131_041 == 32 * (4096 - 1) + 1
    # 2 (K, V) * 32 layers * 8 heads * 4096 tokens * 128 dims * 2 bytes = 512 MiB
    assert p.rolling_cache_bytes == 2 * 32 * 8 * 4096 * 128 * 2 == 512 * 2**20
    assert p.full_cache_bytes == 8 * p.rolling_cache_bytes == 4 * 2**30
    assert p.q_heads == 32  # default 4 * kv heads
    # causal pairs over 32768 tokens with W = 4096, and without a window
    pairs_w = 4096 * 4097 // 2 + (32768 - 4096) * 4096
    pairs_full = 32768 * 32769 // 2
    assert p.prefill_flops_window == 4 * 128 * 32 * 32 * pairs_w
    assert p.prefill_flops_full == 4 * 128 * 32 * 32 * pairs_full
    assert p.decode_flops_window == 4 * 128 * 32 * 32 * 4096
    assert p.decode_flops_full == 4 * 128 * 32 * 32 * 32769
    assert p.decode_read_bytes_window == p.rolling_cache_bytes
    assert plan.format_bytes(p.rolling_cache_bytes) == "512.0 MiB"


def _brute_pairs(n, w):
    return sum(1 for i in range(n) for j in range(n) if j <= i and (w is None or j > i - w))


@pytest.mark.parametrize("n", [0, 1, 2, 5, 17, 64])
@pytest.mark.parametrize("w", [None, 1, 2, 3, 16, 64, 100])
def test_causal_pairs_brute_force(n, w):
    assert plan.causal_pairs(n, w) == _brute_pairs(n, w)


def test_receptive_field_and_memory():
    assert plan.receptive_field(1, 4096) == 4096
    assert plan.receptive_field(2, 3) == 5
    assert plan.receptive_field(32, 4096, seq_len=8192) == 8192
    assert plan.receptive_field(4, None, seq_len=100) == 100
    assert plan.kv_cache_bytes(2, 3, 4, 5, 2, batch=6) == 2 * 2 * 3 * 4 * 5 * 2 * 6
    # batch and q heads scale what they should
    p1 = plan.make_plan(**MISTRAL_7B)
    p4 = plan.make_plan(**MISTRAL_7B, batch=4, q_heads=8)
    assert p4.rolling_cache_bytes == 4 * p1.rolling_cache_bytes
    assert p4.prefill_flops_window == p1.prefill_flops_window  # 4x batch, 1/4 heads


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        plan.make_plan(**{**MISTRAL_7B, "window": 0})
    with pytest.raises(ValueError, match="multiple"):
        plan.make_plan(**MISTRAL_7B, q_heads=12)
    with pytest.raises(ValueError, match="dtype"):
        plan.make_plan(**{**MISTRAL_7B, "dtype": "int3"})


def test_cli_prints_the_table():
    # The module is plain Python: run it as a file so the test does not
    # depend on the package's library being importable in a subprocess.
    path = os.path.abspath(plan.__file__)
    out = subprocess.run(
        [sys.executable, path, "--layers", "32", "--window", "4096", "--kv-heads", "8", "--head-dim", "128",
         "--dtype", "bf16", "--seq-len", "32768"],
        check=True, capture_output=True, text=True, timeout=60).stdout
    assert "131,041 tokens" in out
    assert "512.0 MiB" in out and "4.0 GiB" in out
    assert "0.125x" in out


def test_cli_rejects_bad_input():
    path = os.path.abspath(plan.__file__)
    r = subprocess.run([sys.executable, path, "--layers", "2", "--window", "8", "--kv-heads", "2",
                        "--head-dim", "64", "--q-heads", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "multiple" in r.stderr
