"""Fake kernels of the attention ops and the Python fronts.

The schemas, the CPU/CUDA kernels and autograd are registered in C++ (see
csrc/ops/schema.cpp); this module only adds what tracing needs (fake kernels)
and two convenience functions with the usual window conventions.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ._fake_checks import check_same_device


@torch.library.register_fake("swa::attention")
def _attention_fake(q, k, v, window_left=-1, window_right=0, scale=None, softcap=0.0):
    torch._check(q.dim() == 4, lambda: f"swa::attention: q must have 4 dims, got {q.dim()}")
    torch._check(k.dim() == 4 and v.dim() == 4, lambda: "swa::attention: k and v must have 4 dims")
    check_same_device("swa::attention", "q", q, k=k, v=v)
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("swa::attention_backward")
def _attention_backward_fake(grad_out, grad_lse, q, k, v, out, lse, window_left, window_right,
                             scale, softcap, deterministic=False):
    check_same_device("swa::attention_backward", "q", q, grad_out=grad_out, grad_lse=grad_lse, k=k, v=v,
                      out=out, lse=lse)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _check_sink_args(op: str, q, sinks, sink_tokens) -> None:
    torch._check(sink_tokens >= 0, lambda: f"{op}: sink_tokens must be >= 0, got {sink_tokens}")
    if sinks is not None:
        torch._check(sinks.dim() == 1 and sinks.shape[0] == q.shape[1],
                     lambda: f"{op}: sinks must be a 1-d tensor of one logit per query head, shape "
                             f"[{q.shape[1]}], got shape {list(sinks.shape)}")
        torch._check(sinks.dtype == torch.float32 or (sinks.dtype == torch.float64 and q.dtype == torch.float64),
                     lambda: f"{op}: sinks must be float32 (or float64 with float64 q), got {sinks.dtype}")


@torch.library.register_fake("swa::attention.sinks")
def _attention_sinks_fake(q, k, v, window_left=-1, window_right=0, scale=None, softcap=0.0, *, sinks=None,
                          sink_tokens=0):
    op = "swa::attention.sinks"
    torch._check(q.dim() == 4, lambda: f"{op}: q must have 4 dims, got {q.dim()}")
    torch._check(k.dim() == 4 and v.dim() == 4, lambda: f"{op}: k and v must have 4 dims")
    check_same_device(op, "q", q, k=k, v=v, sinks=sinks)
    _check_sink_args(op, q, sinks, sink_tokens)
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("swa::attention_backward.sinks")
def _attention_backward_sinks_fake(grad_out, grad_lse, q, k, v, out, lse, window_left, window_right, scale,
                                   softcap, deterministic=False, *, sinks=None, sink_tokens=0):
    op = "swa::attention_backward.sinks"
    check_same_device(op, "q", q, grad_out=grad_out, grad_lse=grad_lse, k=k, v=v, out=out, lse=lse, sinks=sinks)
    _check_sink_args(op, q, sinks, sink_tokens)
    grad_sinks = torch.empty_like(sinks) if sinks is not None else q.new_empty((0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), grad_sinks


@torch.library.register_fake("swa::attention.varlen")
def _attention_varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window_left=-1,
                           window_right=0, scale=None, softcap=0.0, *, sinks=None, sink_tokens=0):
    op = "swa::attention.varlen"
    torch._check(q.dim() == 3, lambda: f"{op}: q must have 3 dims [T, H, D], got {q.dim()}")
    torch._check(k.dim() == 3 and v.dim() == 3, lambda: f"{op}: k and v must have 3 dims [T, H, D]")
    check_same_device(op, "q", q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, sinks=sinks)
    _check_sink_args(op, q.transpose(0, 1).unsqueeze(0), sinks, sink_tokens)
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.register_fake("swa::attention_backward.varlen")
def _attention_backward_varlen_fake(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q, max_seqlen_k, window_left, window_right, scale, softcap,
                                    deterministic=False, *, sinks=None, sink_tokens=0):
    op = "swa::attention_backward.varlen"
    check_same_device(op, "q", q, grad_out=grad_out, grad_lse=grad_lse, k=k, v=v, out=out, lse=lse,
                      cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, sinks=sinks)
    grad_sinks = torch.empty_like(sinks) if sinks is not None else q.new_empty((0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), grad_sinks


def _check_head_windows(op: str, q, window_left, window_right) -> None:
    """The shape and dtype checks of attention.per_head's windows (values are
    the kernels' to check: they are data)."""
    for name, w in (("window_left", window_left), ("window_right", window_right)):
        torch._check(w.dtype in (torch.int32, torch.int64),
                     lambda: f"{op}: {name} must be an int32 or int64 tensor of one window per query head, "
                             f"got {w.dtype}")
        torch._check(w.dim() == 1 and w.shape[0] == q.shape[1],
                     lambda: f"{op}: {name} must be a 1-d tensor of one window per query head, shape "
                             f"[{q.shape[1]}], got shape {list(w.shape)}")


@torch.library.register_fake("swa::attention.per_head")
def _attention_per_head_fake(q, k, v, window_left, window_right, scale=None, softcap=0.0, *, sinks=None,
                             sink_tokens=0):
    op = "swa::attention.per_head"
    check_same_device(op, "q", q, k=k, v=v, sinks=sinks)
    _check_head_windows(op, q, window_left, window_right)
    _check_sink_args(op, q, sinks, sink_tokens)
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.register_fake("swa::attention_backward.per_head")
def _attention_backward_per_head_fake(grad_out, grad_lse, q, k, v, out, lse, window_left, window_right, scale,
                                      softcap, deterministic=False, *, sinks=None, sink_tokens=0):
    op = "swa::attention_backward.per_head"
    check_same_device(op, "q", q, grad_out=grad_out, grad_lse=grad_lse, k=k, v=v, out=out, lse=lse, sinks=sinks)
    _check_head_windows(op, q, window_left, window_right)
    _check_sink_args(op, q, sinks, sink_tokens)
    grad_sinks = torch.empty_like(sinks) if sinks is not None else q.new_empty((0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), grad_sinks


def _head_window(fn: str, name: str, w, heads: int) -> Tensor:
    """One side's window as an int64 tensor [heads]: an int broadcast, or the
    caller's int tensor [heads] (values >= -1, checked by the op)."""
    if isinstance(w, Tensor):
        if w.dtype not in (torch.int32, torch.int64) or w.dim() != 1 or w.shape[0] != heads:
            raise TypeError(f"{fn}: {name} as a tensor must be int32/int64 of shape [{heads}] (one window per "
                            f"query head), got {w.dtype} of shape {list(w.shape)}")
        return w
    return torch.full((heads,), int(w), dtype=torch.int64)


def _attend_any(fn: str, q, k, v, left, right, scale, softcap, sinks, sink_tokens):
    """_attend, or attention.per_head when either side is a tensor [Hq]."""
    if not isinstance(left, Tensor) and not isinstance(right, Tensor):
        return _attend(q, k, v, left, right, scale, softcap, sinks, sink_tokens)
    heads = q.shape[1] if q.dim() == 4 else 0
    left_t = _head_window(fn, "window_size[0] (left)", left, heads)
    right_t = _head_window(fn, "window_size[1] (right)", right, heads)
    return torch.ops.swa.attention.per_head(q, k, v, left_t, right_t, scale, softcap, sinks=sinks,
                                            sink_tokens=sink_tokens)


def _attend(q, k, v, left: int, right: int, scale, softcap, sinks, sink_tokens):
    """The plain op without sinks (the same graph as before they existed),
    else attention.sinks."""
    if sinks is None and sink_tokens == 0:
        return torch.ops.swa.attention(q, k, v, left, right, scale, softcap)
    return torch.ops.swa.attention.sinks(q, k, v, left, right, scale, softcap, sinks=sinks,
                                         sink_tokens=sink_tokens)


def _sink_tokens(fn: str, sink_tokens) -> int:
    if not _is_int(sink_tokens):
        raise TypeError(f"{fn}: sink_tokens must be an int >= 0, got {sink_tokens!r}")
    if sink_tokens < 0:
        raise ValueError(f"{fn}: sink_tokens must be >= 0 (0 = none), got {sink_tokens}")
    return int(sink_tokens)


def _result(out: Tensor, lse: Tensor, return_lse: bool):
    return (out, lse) if return_lse else out


def _is_int(x) -> bool:
    """An integer (int, NumPy integer, SymInt), not a bool, a float or a tensor."""
    return not isinstance(x, (bool, Tensor)) and hasattr(type(x), "__index__")


def _window_pair(fn: str, window_size, per_head: bool = False):
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"{fn}: window_size must be a pair (left, right) of ints (-1 = unbounded), e.g. "
                        f"(3, 3) for a two-sided band of 3 keys on each side or (W - 1, 0) for a sliding "
                        f"window of W keys; got {window_size!r}")
    left, right = window_size
    for name, w in (("window_size[0] (left)", left), ("window_size[1] (right)", right)):
        if per_head and isinstance(w, Tensor):
            continue
        if not _is_int(w):
            kinds = "an int or an int tensor [Hq]" if per_head else "an int"
            raise TypeError(f"{fn}: {name} must be {kinds} (-1 = unbounded), got {w!r}")
    return (left if isinstance(left, Tensor) else int(left)), (right if isinstance(right, Tensor) else int(right))


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: Union[int, Tensor, None],
    *,
    scale: Optional[float] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    sinks: Optional[Tensor] = None,
    sink_tokens: int = 0,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Causal sliding-window attention: each token sees the `window` most recent
    keys, itself included (Mistral / Hugging Face `sliding_window=W`, i.e.
    FlashAttention `window_size=(W-1, 0)`). `window=None` is full causal.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Sk, D] (Hq a multiple of Hkv). The last
    Sq keys' positions are the queries' (bottom-right alignment).
    Returns out [B, Hq, Sq, D] (and lse [B, Hq, Sq] float32 if return_lse).

    Attention sinks (either, or both): `sinks`, float32 [Hq], one learned
    logit per query head that joins every row's softmax without a value
    (gpt-oss `s_aux`; not scaled, not capped; the lse includes it);
    `sink_tokens=S`, the first S keys seen by every query beside its window
    (StreamingLLM).

    Per-head windows: `window` may be an int tensor [Hq], query head h seeing
    its window[h] most recent keys (attention.per_head).
    """
    if window is None:
        window_left = -1
    elif isinstance(window, Tensor):  # per-head windows: W[h] keys for query head h
        if window.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"sliding_window_attention: window as a tensor must be int32/int64 [Hq] (keys "
                            f"seen per query by each head), got {window.dtype}")
        if not torch.compiler.is_compiling() and bool((window < 1).any()):
            raise ValueError(f"sliding_window_attention: every entry of window must be >= 1, got "
                             f"{window.tolist()}")
        # (Traced, a window < 1 becomes window_left -2, which the op rejects.)
        window_left = torch.where(window >= 1, window.to(torch.int64) - 1, -2)
    else:
        if not _is_int(window):
            raise TypeError(f"sliding_window_attention: window must be an int >= 1 (keys seen per query, "
                            f"itself included) or None (full causal), got {window!r}")
        window = int(window)
        if window < 1:
            raise ValueError(f"sliding_window_attention: window must be >= 1 or None, got {window}")
        window_left = window - 1
    sink_tokens = _sink_tokens("sliding_window_attention", sink_tokens)
    out, lse = _attend_any("sliding_window_attention", q, k, v, window_left, 0, scale, softcap, sinks,
                           sink_tokens)
    return _result(out, lse, return_lse)


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window_size: Tuple[int, int] = (-1, -1),
    *,
    scale: Optional[float] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    sinks: Optional[Tensor] = None,
    sink_tokens: int = 0,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Banded attention with FlashAttention's `window_size=(left, right)`
    numbers (-1 = unbounded; causal is (-1, 0)) but the [B, H, S, D] layout
    used everywhere in swa_cuda. Query row i sits at key position
    i + Sk - Sq and sees keys in [p - left, p + right]. `sinks` and
    `sink_tokens` as in sliding_window_attention (sink keys j <= p + right).

    Per-head windows: either entry of `window_size` may be an int tensor
    [Hq], query head h then using (left[h], right[h]) (an int entry applies
    to every head); one call of attention.per_head.
    """
    left, right = _window_pair("local_attention", window_size, per_head=True)
    sink_tokens = _sink_tokens("local_attention", sink_tokens)
    out, lse = _attend_any("local_attention", q, k, v, left, right, scale, softcap, sinks, sink_tokens)
    return _result(out, lse, return_lse)


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    window_size: Tuple[int, int] = (-1, 0),
    *,
    scale: Optional[float] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    sinks: Optional[Tensor] = None,
    sink_tokens: int = 0,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Attention over packed variable-length sequences, with FlashAttention's
    `flash_attn_varlen_func` argument names and order (code written for it
    switches by changing the import): q [Tq, Hq, D], k/v [Tk, Hkv, D] hold the
    tokens of B sequences back to back, `cu_seqlens_q`/`cu_seqlens_k` int32
    [B + 1] their prefix sums (from 0) on the tensors' device, `max_seqlen_*`
    the longest lengths. Each sequence is banded by `window_size=(left,
    right)` (-1 = unbounded; the default (-1, 0) is causal) on its own
    lengths, bottom-right aligned; nothing crosses a sequence boundary.
    Returns out [Tq, Hq, D] (and lse [Hq, Tq] float32 if return_lse).
    `sinks` / `sink_tokens` as in sliding_window_attention (sink tokens are
    the first tokens of each sequence).
    """
    left, right = _window_pair("varlen_attention", window_size)
    sink_tokens = _sink_tokens("varlen_attention", sink_tokens)
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if not _is_int(value):
            raise TypeError(f"varlen_attention: {name} must be an int, got {value!r}")
    out, lse = torch.ops.swa.attention.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                              int(max_seqlen_k), left, right, scale, softcap, sinks=sinks,
                                              sink_tokens=sink_tokens)
    return _result(out, lse, return_lse)
