"""Window-aware work counts for the benchmarks.

Only the (query, key) pairs a query can see are counted, as FlashAttention's
benchmarks do: a sliding window of W keys costs O(n * W), not O(n^2).

Window convention (csrc/include/swa/kernels/band.h): query row i sits at key
position p = i + Sk - Sq (bottom-right alignment) and sees the keys j with
p - window_left <= j <= p + window_right, 0 <= j < Sk; -1 means unbounded on
that side. A sliding window of W tokens (itself included) is (W - 1, 0),
causal is (-1, 0).
"""

# One (query, key) pair costs a multiply-add in S = Q K^T and in O = P V over
# the head dim: 2 matmuls * 2 flops * D.
_FLOPS_PER_PAIR_PER_DIM = 4
# Backward: five matmuls (S recomputed, dV, dP, dQ, dK) against the forward's
# two, FlashAttention's convention.
BACKWARD_FACTOR = 2.5


def _check_side(name, value):
    if value < -1:
        raise ValueError(f"{name} must be >= 0 or -1 (unbounded), got {value}")


def _clip_prefix_sum(x, n):
    """sum_{t=0}^{x} clip(t, 0, n), 0 when x < 0 (an exact integer)."""
    if x < 0:
        return 0
    if x <= n:
        return x * (x + 1) // 2
    return n * (n + 1) // 2 + (x - n) * n


def _clip_range_sum(a, b, n):
    """sum_{t=a}^{b} clip(t, 0, n) over the integers a <= t <= b."""
    if b < a:
        return 0
    return _clip_prefix_sum(b, n) - _clip_prefix_sum(a - 1, n)


def visible_pairs(seqlen_q, seqlen_k, window_left=-1, window_right=0):
    """Number of (query row, key) pairs inside the band, for one (batch, head).

    Row i (key position p = i + Sk - Sq) sees keys [max(0, p - wl), min(Sk - 1, p + wr)],
    i.e. clip(p + wr + 1, 0, Sk) - clip(p - wl, 0, Sk) of them: that difference
    is never negative because clip is monotone and wr + 1 > -wl. Summed over
    the rows p = Sk - Sq .. Sk - 1, each term is a sum of clip over a run of
    consecutive integers, which has a closed form.
    """
    _check_side("window_left", window_left)
    _check_side("window_right", window_right)
    if seqlen_q < 0 or seqlen_k < 0:
        raise ValueError(f"sequence lengths must be >= 0, got {seqlen_q}, {seqlen_k}")
    p_first, p_last = seqlen_k - seqlen_q, seqlen_k - 1
    if window_right == -1:
        upper = seqlen_q * seqlen_k  # every row: clip(+inf) = Sk
    else:
        upper = _clip_range_sum(p_first + window_right + 1, p_last + window_right + 1, seqlen_k)
    if window_left == -1:
        lower = 0  # clip(-inf) = 0
    else:
        lower = _clip_range_sum(p_first - window_left, p_last - window_left, seqlen_k)
    return upper - lower


def sliding_window(window):
    """(window_left, window_right) of a causal sliding window of `window` keys
    (itself included); None = full causal."""
    if window is None:
        return (-1, 0)
    if window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    return (window - 1, 0)


def attention_fwd_flops(batch, heads_q, seqlen_q, seqlen_k, head_dim, window_left=-1, window_right=0):
    """Forward FLOPs: 4 * B * Hq * D * (visible pairs per head)."""
    pairs = visible_pairs(seqlen_q, seqlen_k, window_left, window_right)
    return _FLOPS_PER_PAIR_PER_DIM * batch * heads_q * head_dim * pairs


def attention_bwd_flops(*args, **kwargs):
    """Backward FLOPs: 2.5 x forward (same arguments as attention_fwd_flops)."""
    return BACKWARD_FACTOR * attention_fwd_flops(*args, **kwargs)


def attention_fwd_bwd_flops(*args, **kwargs):
    """Forward + backward FLOPs: 3.5 x forward."""
    return (1 + BACKWARD_FACTOR) * attention_fwd_flops(*args, **kwargs)


def decode_kv_bytes(batch, heads_kv, window, head_dim, itemsize):
    """Bytes one decode step must read from the K and V windows:
    2 (K and V) * B * Hkv * W * D * itemsize."""
    return 2 * batch * heads_kv * window * head_dim * itemsize


def matmul_flops(m, n, k):
    return 2 * m * n * k
