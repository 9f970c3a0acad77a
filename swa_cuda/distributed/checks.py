"""The input check of a distributed call, made collectively so that a rank
with a bad argument fails every rank with the same clear error instead of
leaving the others waiting for its halo.

Each rank checks its own arguments without raising, then the ranks
all_gather one int64 row: the shard length, the facts that must agree (batch,
heads, head dim, dtype, device type, window, scale, softcap, whether a
backward will run), and this rank's error message, if any, as bytes. Every
rank then raises the same ValueError (naming the offending rank and
argument) or goes on with every shard's length, which sizes the halos.
"""

import struct
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import exchange

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEVICE_TYPES = ("cpu", "cuda")
NAME = "swa_cuda.distributed.sliding_window_attention"

# Row layout: the shard length, then the fields that must agree, then the
# error flag and the message's bytes, 8 to an int64.
AGREE = ("batch", "heads_q", "heads_kv", "head_dim", "dtype", "device type", "window", "window_right",
         "scale", "softcap", "requires_grad")
MESSAGE_BYTES = 512  # a multiple of 8


def _float_bits(x: Optional[float]) -> int:
    """A float (None: -1) as an int64 that compares exactly across ranks."""
    return -1 if x is None else struct.unpack("<q", struct.pack("<d", float(x)))[0]


def local_error(q: Tensor, k: Tensor, v: Tensor, window, window_right, scale, softcap) -> Optional[str]:
    """What is wrong with this rank's own arguments, or None."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        return f"window must be an int >= 1 (the W keys a token sees, itself included), got {window!r}"
    if not isinstance(window_right, int) or isinstance(window_right, bool) or window_right < 0:
        return f"window_right must be an int >= 0, got {window_right!r}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            return f"{name} must be a Tensor, got {type(t).__name__}"
        if t.dim() != 4:
            return f"{name} must be [B, H, S, D] (4 dims), got shape {tuple(t.shape)}"
        if t.dtype not in DTYPES:
            return f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        if t.device.type not in DEVICE_TYPES:
            return f"{name} must be on the CPU or a CUDA device, got {t.device}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must have one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
    if k.device != q.device or v.device != q.device:
        return f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}"
    if k.shape != v.shape:
        return f"k and v must have one shape, got k {tuple(k.shape)}, v {tuple(v.shape)}"
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        return f"k's batch and head dim must be q's, got q {tuple(q.shape)}, k {tuple(k.shape)}"
    if k.shape[2] != q.shape[2]:
        return (f"q and k must cover the same shard (one sequence length), got q {q.shape[2]}, "
                f"k {k.shape[2]} tokens")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        return f"q's heads ({q.shape[1]}) must be a multiple of k's ({k.shape[1]})"
    if softcap is None or float(softcap) < 0:
        return f"softcap must be >= 0, got {softcap!r}"
    return None


def _row(q, k, window, window_right, scale, softcap, requires_grad, error: Optional[str]) -> List[int]:
    if error is None:
        facts = [q.shape[2], q.shape[0], q.shape[1], k.shape[1], q.shape[3], DTYPES.index(q.dtype),
                 DEVICE_TYPES.index(q.device.type), window, window_right, _float_bits(scale),
                 _float_bits(softcap), int(requires_grad)]
    else:
        facts = [-1] * (1 + len(AGREE))
    msg = (error or "").encode()[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0")
    return facts + [int(error is not None)] + list(struct.unpack(f"<{MESSAGE_BYTES // 8}q", msg))


def _show(field: str, value: int):
    if field == "dtype":
        return DTYPES[value]
    if field == "device type":
        return DEVICE_TYPES[value]
    if field in ("scale", "softcap"):
        return None if value == -1 else struct.unpack("<d", struct.pack("<q", value))[0]
    return value


def check_and_exchange_lengths(q, k, v, window, window_right, scale, softcap, requires_grad, group) -> List[int]:
    """Every shard's length, after checking every rank's arguments (raises
    the same ValueError on all ranks when one of them is wrong)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{NAME}: torch.distributed is not initialized (call init_process_group first)")
    error = local_error(q, k, v, window, window_right, scale, softcap)
    device = exchange.metadata_device(group, q if isinstance(q, Tensor) else torch.empty(0))
    row = torch.tensor(_row(q, k, window, window_right, scale, softcap, requires_grad, error),
                       dtype=torch.int64, device=device)
    rows = exchange.all_gather_rows(row, group).tolist()
    me = dist.get_rank(group)
    n_facts = 1 + len(AGREE)
    bad = [(r, struct.pack(f"<{MESSAGE_BYTES // 8}q", *x[n_facts + 1:]).rstrip(b"\0").decode(errors="replace"))
           for r, x in enumerate(rows) if x[n_facts]]
    if bad:
        lines = "; ".join(f"rank {r}{' (this rank)' if r == me else ''}: {msg}" for r, msg in bad)
        raise ValueError(f"{NAME}: bad arguments on {len(bad)} of {len(rows)} ranks: {lines}")
    for i, field in enumerate(AGREE, start=1):
        values = [x[i] for x in rows]
        if len(set(values)) > 1:
            shown = ", ".join(f"rank {r} {_show(field, val)}" for r, val in enumerate(values))
            raise ValueError(f"{NAME}: every rank must pass the same {field}, got {shown} "
                             f"(this is rank {me})")
    return [x[0] for x in rows]
