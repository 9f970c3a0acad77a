"""Sizing a sliding-window model: receptive field, KV-cache bytes, attention FLOPs.

    python -m swa_cuda.plan --layers 32 --window 4096 --kv-heads 8 --head-dim 128 \\
        --dtype bf16 --seq-len 32768

Every number printed comes from a function of this module (the tests check
them), in plain Python: no torch, no GPU.

Conventions (the ones of torch.ops.swa and Hugging Face ``sliding_window``):
a window of W tokens includes the token itself, so a query at position p sees
the keys p - W + 1 .. p. Stacking L such layers lets information travel
W - 1 positions per layer, so the last token of a sequence can depend on the
L * (W - 1) + 1 most recent tokens (its effective receptive field).

A rolling cache keeps W tokens per layer (``RollingKVCache``'s default
capacity; W - 1 would do, the extra slot keeps the ring arithmetic simple), a
full cache keeps every token of the sequence.

FLOPs count the (query, key) pairs that are actually visible, exactly (no
n * W approximation): each pair costs 4 * D flops per query head (2 for
Q K^T, 2 for P V), FlashAttention's convention. Softmax and the projections
are not counted.
"""

import argparse
from dataclasses import dataclass
from typing import List, Optional

__all__ = [
    "DTYPE_BYTES",
    "receptive_field",
    "causal_pairs",
    "kv_cache_bytes",
    "attention_flops",
    "Plan",
    "make_plan",
    "format_bytes",
    "format_count",
    "main",
]

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "fp8": 1, "float8": 1}


def receptive_field(num_layers: int, window: Optional[int], seq_len: Optional[int] = None) -> Optional[int]:
    """Tokens the last position can depend on through num_layers sliding layers
    of `window` tokens each: L * (W - 1) + 1. None (unbounded) for full
    attention; capped at seq_len when one is given."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if window is None:
        return seq_len
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    field = num_layers * (window - 1) + 1
    return field if seq_len is None else min(field, seq_len)


def causal_pairs(seq_len: int, window: Optional[int] = None) -> int:
    """Visible (query, key) pairs of causal self-attention over seq_len tokens
    with a window of `window` keys (None = full causal): sum over positions
    i = 0 .. n-1 of min(i + 1, W)."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    n = seq_len
    if window is None or window >= n:
        return n * (n + 1) // 2
    if window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    w = window
    # positions 0 .. w-1 see i + 1 keys; positions w .. n-1 see w keys each
    return w * (w + 1) // 2 + (n - w) * w


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int,
                   batch: int = 1) -> int:
    """K and V of `tokens` tokens in every layer: 2 * L * Hkv * tokens * D * itemsize * B."""
    return 2 * num_layers * num_kv_heads * tokens * head_dim * dtype_bytes * batch


def attention_flops(num_layers: int, num_q_heads: int, head_dim: int, seq_len: int,
                    window: Optional[int] = None, batch: int = 1) -> int:
    """Forward attention FLOPs of a prefill of seq_len tokens: 4 * D * Hq *
    (visible pairs) per layer and sequence."""
    return 4 * head_dim * num_q_heads * causal_pairs(seq_len, window) * num_layers * batch


@dataclass
class Plan:
    layers: int
    window: int
    kv_heads: int
    q_heads: int
    head_dim: int
    dtype: str
    seq_len: int
    batch: int
    receptive_field: int            # L * (W - 1) + 1 (not capped by seq_len)
    rolling_cache_bytes: int        # W tokens per layer, whole batch
    full_cache_bytes: int           # seq_len tokens per layer, whole batch
    prefill_flops_window: int
    prefill_flops_full: int
    decode_flops_window: int        # one new token at position seq_len
    decode_flops_full: int
    decode_read_bytes_window: int   # K and V bytes that decode step reads
    decode_read_bytes_full: int


def make_plan(layers: int, window: int, kv_heads: int, head_dim: int, dtype: str = "bf16",
              seq_len: int = 32768, q_heads: Optional[int] = None, batch: int = 1) -> Plan:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(DTYPE_BYTES)}")
    for name, value in (("layers", layers), ("window", window), ("kv_heads", kv_heads),
                        ("head_dim", head_dim), ("seq_len", seq_len), ("batch", batch)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    q_heads = 4 * kv_heads if q_heads is None else q_heads
    if q_heads < kv_heads or q_heads % kv_heads:
        raise ValueError(f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    nbytes = DTYPE_BYTES[dtype]
    # The decode step after seq_len tokens: a query at position seq_len sees
    # min(W, seq_len + 1) keys with the window, seq_len + 1 without.
    keys_window = min(window, seq_len + 1)
    keys_full = seq_len + 1
    per_key_flops = 4 * head_dim * q_heads * layers * batch
    return Plan(
        layers=layers, window=window, kv_heads=kv_heads, q_heads=q_heads, head_dim=head_dim,
        dtype=dtype, seq_len=seq_len, batch=batch,
        receptive_field=receptive_field(layers, window),
        rolling_cache_bytes=kv_cache_bytes(layers, kv_heads, head_dim, window, nbytes, batch),
        full_cache_bytes=kv_cache_bytes(layers, kv_heads, head_dim, seq_len, nbytes, batch),
        prefill_flops_window=attention_flops(layers, q_heads, head_dim, seq_len, window, batch),
        prefill_flops_full=attention_flops(layers, q_heads, head_dim, seq_len, None, batch),
        decode_flops_window=per_key_flops * keys_window,
        decode_flops_full=per_key_flops * keys_full,
        decode_read_bytes_window=kv_cache_bytes(layers, kv_heads, head_dim, keys_window, nbytes, batch),
        decode_read_bytes_full=kv_cache_bytes(layers, kv_heads, head_dim, keys_full, nbytes, batch),
    )


def format_bytes(n: float) -> str:
    """Binary units: 536870912 -> '512.0 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_count(n: float) -> str:
    """Decimal units for FLOPs: 1.5e12 -> '1.50 T'."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "-"


def render(plan: Plan) -> str:
    p = plan
    per = "per sequence" if p.batch == 1 else f"for {p.batch} sequences"
    lines: List[str] = [
        f"Sliding-window plan: {p.layers} layers, window W = {p.window:,} tokens (itself included), "
        f"{p.q_heads} query / {p.kv_heads} kv heads, head dim {p.head_dim}, {p.dtype}, "
        f"sequence {p.seq_len:,} tokens, batch {p.batch}",
        "",
        f"Effective receptive field  L*(W-1)+1 = {p.receptive_field:,} tokens"
        + ("" if p.receptive_field <= p.seq_len else f" (more than the {p.seq_len:,}-token sequence)"),
        "",
    ]
    rows = [
        ("quantity", "sliding window", "full attention", "window/full"),
        (f"KV cache {per}", format_bytes(p.rolling_cache_bytes), format_bytes(p.full_cache_bytes),
         _ratio(p.rolling_cache_bytes, p.full_cache_bytes)),
        ("  (tokens kept per layer)", f"{p.window:,}", f"{p.seq_len:,}", _ratio(p.window, p.seq_len)),
        ("prefill attention FLOPs", format_count(p.prefill_flops_window), format_count(p.prefill_flops_full),
         _ratio(p.prefill_flops_window, p.prefill_flops_full)),
        (f"decode FLOPs / token @{p.seq_len:,}", format_count(p.decode_flops_window),
         format_count(p.decode_flops_full), _ratio(p.decode_flops_window, p.decode_flops_full)),
        ("decode KV read / token", format_bytes(p.decode_read_bytes_window),
         format_bytes(p.decode_read_bytes_full), _ratio(p.decode_read_bytes_window, p.decode_read_bytes_full)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        "KV cache = 2 (K,V) * layers * kv_heads * tokens * head_dim * bytes; the rolling cache keeps W tokens",
        "per layer however long the generation runs. FLOPs = 4 * head_dim * q_heads * visible (query, key)",
        "pairs per layer, counted exactly (causal; softmax and projections not counted).",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m swa_cuda.plan",
        description="Receptive field, KV-cache memory and attention FLOPs of a sliding-window model "
                    "versus full attention.")
    ap.add_argument("--layers", type=int, required=True, help="number of sliding-window layers L")
    ap.add_argument("--window", type=int, required=True, help="window W in tokens, the token itself included")
    ap.add_argument("--kv-heads", type=int, required=True, help="key/value heads per layer")
    ap.add_argument("--head-dim", type=int, required=True, help="head dimension D")
    ap.add_argument("--q-heads", type=int, default=None, help="query heads per layer (default 4 * kv-heads)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES), help="cache dtype (default bf16)")
    ap.add_argument("--seq-len", type=int, default=32768,
                    help="sequence length for the full cache and the FLOPs (default 32768)")
    ap.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    args = ap.parse_args(argv)
    try:
        plan = make_plan(args.layers, args.window, args.kv_heads, args.head_dim, args.dtype, args.seq_len,
                         args.q_heads, args.batch)
    except ValueError as e:
        ap.error(str(e))
    print(render(plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
