"""bench/flops.py: the closed-form visible-pair count against a brute-force
count of the band, on small shapes (pure CPU, no swa_cuda op involved)."""

import importlib.util
import itertools
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "swa_bench_flops", Path(__file__).resolve().parent.parent / "bench" / "flops.py")
flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flops)


def brute_force_pairs(seqlen_q, seqlen_k, window_left, window_right):
    """Counts the band one (row, key) pair at a time, straight from the rule."""
    count = 0
    for i in range(seqlen_q):
        p = i + seqlen_k - seqlen_q
        for j in range(seqlen_k):
            left_ok = window_left == -1 or j >= p - window_left
            right_ok = window_right == -1 or j <= p + window_right
            count += left_ok and right_ok
    return count


LENGTHS = [0, 1, 2, 3, 7, 16, 33]
SIDES = [-1, 0, 1, 2, 5, 15, 40]


@pytest.mark.parametrize("seqlen_q,seqlen_k", list(itertools.product(LENGTHS, LENGTHS)))
def test_closed_form_matches_brute_force(seqlen_q, seqlen_k):
    for window_left, window_right in itertools.product(SIDES, SIDES):
        expected = brute_force_pairs(seqlen_q, seqlen_k, window_left, window_right)
        got = flops.visible_pairs(seqlen_q, seqlen_k, window_left, window_right)
        assert got == expected, (seqlen_q, seqlen_k, window_left, window_right)


def test_known_values():
    n, w = 8192, 512
    # Full causal: n (n + 1) / 2; sliding window W: n W - W (W - 1) / 2.
    assert flops.visible_pairs(n, n, -1, 0) == n * (n + 1) // 2
    assert flops.visible_pairs(n, n, w - 1, 0) == n * w - w * (w - 1) // 2
    assert flops.visible_pairs(n, n, -1, -1) == n * n
    # Decode: one query row at the end sees the last W keys.
    assert flops.visible_pairs(1, n, w - 1, 0) == w
    # Two-sided band (Longformer +-w) on a square problem.
    assert flops.visible_pairs(n, n, w, w) == brute_force_band_square(n, w)


def brute_force_band_square(n, w):
    # Rows near the edges lose the part of the band that falls outside [0, n).
    return sum(min(n - 1, i + w) - max(0, i - w) + 1 for i in range(n))


def test_flop_formulas():
    b, h, s, d, w = 2, 16, 4096, 128, 512
    fwd = flops.attention_fwd_flops(b, h, s, s, d, *flops.sliding_window(w))
    assert fwd == 4 * b * h * d * (s * w - w * (w - 1) // 2)
    assert flops.attention_bwd_flops(b, h, s, s, d, w - 1, 0) == 2.5 * fwd
    assert flops.attention_fwd_bwd_flops(b, h, s, s, d, w - 1, 0) == 3.5 * fwd
    assert flops.sliding_window(None) == (-1, 0)
    assert flops.decode_kv_bytes(4, 8, 4096, 128, 2) == 2 * 4 * 8 * 4096 * 128 * 2
    assert flops.matmul_flops(8192, 8192, 8192) == 2 * 8192 ** 3


def test_large_lengths_are_exact_integers():
    n = 131072
    assert flops.visible_pairs(n, n, 4095, 0) == n * 4096 - 4096 * 4095 // 2
    assert isinstance(flops.visible_pairs(n, n, 4095, 0), int)


@pytest.mark.parametrize("bad", [(-2, 0), (0, -3)])
def test_rejects_bad_sides(bad):
    with pytest.raises(ValueError):
        flops.visible_pairs(4, 4, *bad)
    with pytest.raises(ValueError):
        flops.sliding_window(0)
