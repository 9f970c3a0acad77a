"""Rolling KV cache for sliding-window decoding: the three cache ops' fake
kernels and `RollingKVCache`, which holds every layer's ring.

The ops (torch.ops.swa.*, CPU and CUDA)
---------------------------------------

Layouts. ``k_cache`` and ``v_cache`` are ``[B, Hkv, C, D]``: one ring of
capacity ``C`` per sequence and kv head. ``pos`` is int64 ``[B]`` on the
cache's device: the absolute position of each sequence's *next* token.
Sequences may sit at different positions (continuous batching). New tokens
``k``, ``v`` (``k_new``, ``v_new``) are ``[B, Hkv, T, D]`` and queries ``q``
are ``[B, Hq, T, D]`` (``Hq`` a multiple of ``Hkv``: GQA/MQA), the ``T``
tokens at positions ``pos .. pos + T - 1`` of each sequence.

Slot rule. Position ``p`` lives in ring slot ``p % C``, so a sequence at
``pos`` holds positions ``max(0, pos - C) .. pos - 1`` (Mistral's rolling
buffer). Nothing is ever shifted or unrotated.

``cache_append(k_cache, v_cache, k, v, pos) -> ()``
    Writes ``k``, ``v`` for positions ``pos .. pos + T - 1`` in place. When
    ``T > C`` only the last ``C`` tokens land, exactly as if written one by
    one. It does not change ``pos`` (advance it yourself, once per step).

``cache_gather(k_cache, v_cache, pos, n) -> (k, v)``
    The ``n <= C`` most recent tokens before ``pos``, oldest first, as new
    contiguous ``[B, Hkv, n, D]`` tensors; row ``r`` is position
    ``pos - n + r``, and rows at negative positions are zeros.

``cache_attention(q, k_new, v_new, k_cache, v_cache, pos, window, scale=None, softcap=0.0) -> (out, lse)``
    Attention of the ``T`` new queries over the ring's tokens together with
    ``k_new``, ``v_new``: the query at position ``p`` sees the keys at
    positions ``p - window + 1 .. p`` (``window`` keys, itself included), so
    the new tokens attend causally to each other. ``T = 1`` is a decoding
    step, ``T > 1`` a chunk of a prefill (chunked prefill: any ``T``, even
    more than ``C``). The ring is not modified: call ``cache_append``
    afterwards to add ``k_new``, ``v_new``. On CUDA the attention kernel
    reads the ring in place (no unrotation, no gather copy; decoding splits
    the window across thread blocks); on the CPU a decoding step (up to 32
    query rows per kv head, T * Hq / Hkv) reads the ring in place too (each
    kv head once for its query group, the window split across threads for
    small batches), and longer chunks assemble each sequence's keys from the
    ring and run the exact CPU attention on them.
    Needs ``window >= 1`` and ``C >= window - 1`` (the ring must hold every
    earlier key a query sees). Returns ``out``
    ``[B, Hq, T, D]`` in q's dtype and ``lse`` ``[B, Hq, T]`` float32, with the
    conventions of ``torch.ops.swa.attention`` (``scale`` defaults to
    ``1/sqrt(D)``; ``softcap > 0`` caps scores to ``softcap * tanh(s / softcap)``).

Every op needs a ring of capacity ``C >= 1``. The ops are for inference:
they have no autograd formula.

Every tensor may have any strides as long as its last dim is contiguous
(a slice of a longer sequence, one layer's view of a larger cache); on CUDA
nothing is copied. All arguments' dtypes, shapes and devices are checked. On
CUDA the values of ``pos`` are never read back to the host (no sync, so a
decoding step can be captured in a CUDA graph): keeping them >= 0 is the
caller's job there; the CPU ops reject negative positions.

Under ``torch.compile`` with torch 2.11, keep ``k_cache`` and ``v_cache``
views of *different* tensors: that version's inductor writes back the second
of two mutated views of one base wrongly (torch 2.14 is fine).
RollingKVCache allocates its key and value rings apart for this reason.

Sink tokens and sink logits (StreamingLLM, gpt-oss)
---------------------------------------------------

A cache with ``S`` sink slots is ``[B, Hkv, S + C, D]``: slots ``0 .. S-1``
keep positions ``0 .. S-1`` forever, the ring is slots ``S .. S + C - 1``
(position ``p`` in slot ``S + p % C``; positions below ``S`` are in both).

``cache_append.sinks(k_cache, v_cache, k, v, pos, *, sink_tokens)``
    ``cache_append`` into the ring after ``sink_tokens`` sink slots, and the
    tokens at positions below ``sink_tokens`` into their sink slots as well.

``cache_attention.sinks(q, k_new, v_new, k_cache, v_cache, pos, window, scale=None, softcap=0.0, *, sinks=None, sink_tokens=0)``
    ``cache_attention`` whose queries also see positions ``0 .. S-1``
    (``S = sink_tokens``, read in place from the sink slots) beside their
    window, and ``sinks``, float32 ``[Hq]`` logits that join every row's
    softmax without a value (see ``torch.ops.swa.attention.sinks``). The ring
    after the sink slots needs ``C >= window - 1``.

Mixed decode and prefill in one call (continuous batching)
----------------------------------------------------------

The packed overloads take the new tokens of every sequence back to back,
FlashAttention's varlen layout: ``k``, ``v`` (``k_new``, ``v_new``) are
``[T, Hkv, D]`` and ``q`` is ``[T, Hq, D]``; sequence ``b`` owns rows
``cu_seqlens[b] .. cu_seqlens[b+1] - 1`` (int32 ``[B + 1]`` prefix sums from
0, on the cache's device), the tokens at positions ``pos[b] ..`` of ring
``b``. A decoding sequence has one row, a prefilling one a chunk, an idle one
none (its ring is left alone).

``cache_append.varlen(k_cache, v_cache, k, v, cu_seqlens, pos, *, sink_tokens=0)``
    ``cache_append`` of every sequence's rows.

``cache_attention.varlen(q, k_new, v_new, cu_seqlens_q, max_seqlen_q, k_cache, v_cache, pos, window, scale=None, softcap=0.0, *, sinks=None, sink_tokens=0)``
    ``cache_attention`` of every sequence's rows, each exactly as the padded
    op would do it on that sequence alone. Returns ``out`` ``[T, Hq, D]`` and
    ``lse`` float32 ``[Hq, T]`` (attention.varlen's layout). On the CPU the
    decoding sequences run together in the decode kernel (rings read in
    place) and the prefill chunks together in the packed attention kernel;
    on CUDA one launch of the forward kernel serves every sequence, reading
    cu_seqlens_q and pos on the device (no sync; CUDA-graph capturable).
"""

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from ._fake_checks import check_same_device

__all__ = ["RollingKVCache"]


# ---- fake kernels (shapes only, for torch.compile / meta tensors) ---------------


@torch.library.register_fake("swa::cache_append")
def _cache_append_fake(k_cache, v_cache, k, v, pos):
    torch._check(k_cache.dim() == 4, lambda: "swa::cache_append: k_cache must have 4 dims [B, Hkv, C, D]")
    torch._check(k.dim() == 4, lambda: "swa::cache_append: k must have 4 dims [B, Hkv, T, D]")
    check_same_device("swa::cache_append", "k_cache", k_cache, v_cache=v_cache, k=k, v=v, pos=pos)
    return None


@torch.library.register_fake("swa::cache_gather")
def _cache_gather_fake(k_cache, v_cache, pos, n):
    torch._check(k_cache.dim() == 4, lambda: "swa::cache_gather: k_cache must have 4 dims [B, Hkv, C, D]")
    check_same_device("swa::cache_gather", "k_cache", k_cache, v_cache=v_cache, pos=pos)
    shape = (k_cache.shape[0], k_cache.shape[1], n, k_cache.shape[3])
    return k_cache.new_empty(shape), v_cache.new_empty(shape)


@torch.library.register_fake("swa::cache_attention")
def _cache_attention_fake(q, k_new, v_new, k_cache, v_cache, pos, window, scale=None, softcap=0.0):
    torch._check(q.dim() == 4, lambda: "swa::cache_attention: q must have 4 dims [B, Hq, T, D]")
    check_same_device("swa::cache_attention", "q", q, k_new=k_new, v_new=v_new, k_cache=k_cache,
                      v_cache=v_cache, pos=pos)
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("swa::cache_append.sinks")
def _cache_append_sinks_fake(k_cache, v_cache, k, v, pos, *, sink_tokens):
    torch._check(k_cache.dim() == 4, lambda: "swa::cache_append.sinks: k_cache must have 4 dims [B, Hkv, S + C, D]")
    torch._check(sink_tokens >= 0, lambda: f"swa::cache_append.sinks: sink_tokens must be >= 0, got {sink_tokens}")
    check_same_device("swa::cache_append.sinks", "k_cache", k_cache, v_cache=v_cache, k=k, v=v, pos=pos)
    return None


@torch.library.register_fake("swa::cache_attention.sinks")
def _cache_attention_sinks_fake(q, k_new, v_new, k_cache, v_cache, pos, window, scale=None, softcap=0.0, *,
                                sinks=None, sink_tokens=0):
    op = "swa::cache_attention.sinks"
    torch._check(q.dim() == 4, lambda: f"{op}: q must have 4 dims [B, Hq, T, D]")
    torch._check(sink_tokens >= 0, lambda: f"{op}: sink_tokens must be >= 0, got {sink_tokens}")
    check_same_device(op, "q", q, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache, pos=pos, sinks=sinks)
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("swa::cache_append.varlen")
def _cache_append_varlen_fake(k_cache, v_cache, k, v, cu_seqlens, pos, *, sink_tokens=0):
    op = "swa::cache_append.varlen"
    torch._check(k_cache.dim() == 4, lambda: f"{op}: k_cache must have 4 dims [B, Hkv, S + C, D]")
    torch._check(k.dim() == 3, lambda: f"{op}: k must have 3 dims [T, Hkv, D]")
    torch._check(sink_tokens >= 0, lambda: f"{op}: sink_tokens must be >= 0, got {sink_tokens}")
    check_same_device(op, "k_cache", k_cache, v_cache=v_cache, k=k, v=v, cu_seqlens=cu_seqlens, pos=pos)
    return None


@torch.library.register_fake("swa::cache_attention.varlen")
def _cache_attention_varlen_fake(q, k_new, v_new, cu_seqlens_q, max_seqlen_q, k_cache, v_cache, pos, window,
                                 scale=None, softcap=0.0, *, sinks=None, sink_tokens=0):
    op = "swa::cache_attention.varlen"
    torch._check(q.dim() == 3, lambda: f"{op}: q must have 3 dims [T, Hq, D]")
    torch._check(sink_tokens >= 0, lambda: f"{op}: sink_tokens must be >= 0, got {sink_tokens}")
    check_same_device(op, "q", q, k_new=k_new, v_new=v_new, cu_seqlens_q=cu_seqlens_q, k_cache=k_cache,
                      v_cache=v_cache, pos=pos, sinks=sinks)
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


# ---- the cache object ------------------------------------------------------------


def _per_layer(value, num_layers: int, name: str) -> List[int]:
    if isinstance(value, int):
        return [value] * num_layers
    values = [int(x) for x in value]
    if len(values) != num_layers:
        raise ValueError(f"RollingKVCache: {name} must be one int or one per layer ({num_layers}), "
                         f"got {len(values)}")
    return values


class RollingKVCache:
    """Every layer's rolling KV cache for sliding-window decoding, and one
    shared ``pos`` (int64 ``[B]``, each sequence's next position).

    Layer ``l`` keeps a ring ``k_cache(l)``, ``v_cache(l)`` of shape
    ``[B, Hkv, C_l, D]`` (``C_l`` defaults to the layer's window). The key
    rings live in one allocation made here, the value rings in another; the
    memory is
    ``2 * B * Hkv * D * itemsize * sum(C_l)`` (``2 L B Hkv C D itemsize`` with
    one capacity) however many tokens pass through.

    One model step (``T`` new tokens per sequence, ``T = 1`` to decode)::

        for layer in range(num_layers):
            ...
            out = cache.attend(layer, q, k, v)   # attends, then appends k, v
            ...
        cache.advance(T)                         # once, after the last layer

    ``window`` is one int or one per layer (``None`` is not allowed: a rolling
    cache needs a window). ``capacity`` (one int or one per layer) must be at
    least each layer's ``window - 1``; more keeps more history for
    ``gather``. ``sink_tokens=S`` keeps positions ``0 .. S-1`` of every layer
    in ``S`` extra slots before its ring (StreamingLLM: every query sees them
    beside its window, however long the stream); ``attend(..., sinks=)``
    takes sink logits (gpt-oss). Nothing here syncs with the device, so a decoding step can be
    captured in a CUDA graph or compiled with ``torch.compile(fullgraph=True)``.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        window: Union[int, Sequence[int]],
        *,
        capacity: Optional[Union[int, Sequence[int]]] = None,
        dtype: torch.dtype,
        device: Union[str, torch.device],
        sink_tokens: int = 0,
    ):
        if num_layers < 1:
            raise ValueError(f"RollingKVCache: num_layers must be >= 1, got {num_layers}")
        for name, value in (("batch_size", batch_size), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"RollingKVCache: {name} must be >= 1, got {value}")
        self.windows = _per_layer(window, num_layers, "window")
        self.capacities = self.windows if capacity is None else _per_layer(capacity, num_layers, "capacity")
        for layer, (w, c) in enumerate(zip(self.windows, self.capacities)):
            if w < 1:
                raise ValueError(f"RollingKVCache: window of layer {layer} must be >= 1, got {w}")
            if c < max(1, w - 1):
                raise ValueError(f"RollingKVCache: capacity of layer {layer} must be >= max(1, window - 1) = "
                                 f"{max(1, w - 1)}, got {c}")
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise ValueError(f"RollingKVCache: sink_tokens must be an int >= 0, got {sink_tokens!r}")
        self.sink_tokens = sink_tokens
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)

        # Two buffers, one for every layer's key ring and one for every value
        # ring (layer l's rings are contiguous views of them). Not one buffer
        # for both: cache_append mutates k_cache and v_cache in one call, and
        # torch 2.11's inductor writes the second of two mutated views of the
        # same base back wrongly (torch 2.14 is fine).
        ring = batch_size * num_kv_heads * head_dim
        slots = [sink_tokens + c for c in self.capacities]  # sink slots, then the ring
        total = ring * sum(slots)
        self._k_storage = torch.zeros(total, dtype=dtype, device=self.device)
        self._v_storage = torch.zeros(total, dtype=dtype, device=self.device)
        self._k: List[Tensor] = []
        self._v: List[Tensor] = []
        offset = 0
        for c in slots:
            shape = (batch_size, num_kv_heads, c, head_dim)
            self._k.append(self._k_storage[offset:offset + ring * c].view(shape))
            self._v.append(self._v_storage[offset:offset + ring * c].view(shape))
            offset += ring * c
        self.pos = torch.zeros(batch_size, dtype=torch.int64, device=self.device)

    # -- the rings ------------------------------------------------------------

    def k_cache(self, layer: int) -> Tensor:
        """Layer's key buffer [B, Hkv, S + C, D] (a view): S sink slots, then the
        ring (slot S + p % C holds position p)."""
        return self._k[layer]

    def v_cache(self, layer: int) -> Tensor:
        """Layer's value buffer [B, Hkv, S + C, D]."""
        return self._v[layer]

    @property
    def nbytes(self) -> int:
        """Bytes held by the rings, 2 * B * Hkv * D * itemsize * sum(C_l), constant
        over the cache's life (pos adds 8 * B bytes)."""
        return sum(t.numel() * t.element_size() for t in (self._k_storage, self._v_storage))

    # -- one step ---------------------------------------------------------------

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, *, scale: Optional[float] = None,
               softcap: float = 0.0, return_lse: bool = False, sinks: Optional[Tensor] = None):
        """Attention of q [B, Hq, T, D] (the T tokens at positions pos .. pos+T-1)
        over this layer's ring and k, v [B, Hkv, T, D], with the layer's window
        (and the sink tokens and `sinks` logits, float32 [Hq], when given);
        then appends k, v to the ring. Returns out [B, Hq, T, D] (and lse
        [B, Hq, T] float32 with return_lse). Call advance(T) after the last layer.
        """
        kc, vc = self._k[layer], self._v[layer]
        if self.sink_tokens == 0 and sinks is None:
            out, lse = torch.ops.swa.cache_attention(q, k, v, kc, vc, self.pos, self.windows[layer], scale, softcap)
        else:
            out, lse = torch.ops.swa.cache_attention.sinks(q, k, v, kc, vc, self.pos, self.windows[layer], scale,
                                                           softcap, sinks=sinks, sink_tokens=self.sink_tokens)
        # After the attention: with T > C - (W - 1) the new tokens overwrite
        # slots that the chunk's first queries still read.
        self.append(layer, k, v)
        return (out, lse) if return_lse else out

    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Writes k, v [B, Hkv, T, D] at positions pos .. pos+T-1 of a layer's ring
        (and sink slots)."""
        if self.sink_tokens == 0:
            torch.ops.swa.cache_append(self._k[layer], self._v[layer], k, v, self.pos)
        else:
            torch.ops.swa.cache_append.sinks(self._k[layer], self._v[layer], k, v, self.pos,
                                             sink_tokens=self.sink_tokens)

    def attend_varlen(self, layer: int, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, *,
                      scale: Optional[float] = None, softcap: float = 0.0, return_lse: bool = False,
                      sinks: Optional[Tensor] = None):
        """attend for a continuous batch: q [T, Hq, D], k, v [T, Hkv, D] hold every
        sequence's new tokens back to back, sequence b's rows cu_seqlens[b] ..
        cu_seqlens[b+1] - 1 (int32 [B + 1]; one row to decode, a chunk to
        prefill, none to sit out), at positions pos[b] ... Returns out
        [T, Hq, D] (and lse [Hq, T] float32). Call advance(cu_seqlens.diff())
        after the last layer."""
        out, lse = torch.ops.swa.cache_attention.varlen(
            q, k, v, cu_seqlens, max_seqlen, self._k[layer], self._v[layer], self.pos, self.windows[layer], scale,
            softcap, sinks=sinks, sink_tokens=self.sink_tokens)
        self.append_varlen(layer, k, v, cu_seqlens)  # after the attention, as in attend
        return (out, lse) if return_lse else out

    def append_varlen(self, layer: int, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> None:
        """append for packed tokens k, v [T, Hkv, D] (sequence b's rows
        cu_seqlens[b] .. cu_seqlens[b+1] - 1)."""
        torch.ops.swa.cache_append.varlen(self._k[layer], self._v[layer], k, v, cu_seqlens, self.pos,
                                          sink_tokens=self.sink_tokens)

    def gather(self, layer: int, n: Optional[int] = None):
        """The n (default C) most recent tokens of a layer before pos, oldest
        first: (k, v) [B, Hkv, n, D] copies; negative positions are zeros.
        (From the ring: the sink slots are k_cache(layer)[:, :, :S].)"""
        n = self.capacities[layer] if n is None else n
        S = self.sink_tokens
        return torch.ops.swa.cache_gather(self._k[layer][:, :, S:], self._v[layer][:, :, S:], self.pos, n)

    def advance(self, num_tokens: Union[int, Tensor] = 1) -> None:
        """Moves every sequence's position by num_tokens (in place, on the device):
        one int for all, or an integer tensor [B] of per-sequence counts (after
        attend_varlen: cu_seqlens.diff())."""
        self.pos.add_(num_tokens)

    def reset(self, index=None) -> None:
        """Starts sequences over at position 0: all of them, or those selected by
        index (an int, a list of ints, a bool mask or an index tensor), e.g. when
        a new request takes a finished one's batch slot. Stale ring contents are
        never read: only positions 0 .. pos - 1 are."""
        if index is None:
            self.pos.zero_()
        else:
            self.pos[index] = 0

    def __repr__(self) -> str:
        return (f"RollingKVCache(num_layers={self.num_layers}, batch_size={self.batch_size}, "
                f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, windows={self.windows}, "
                f"capacities={self.capacities}, sink_tokens={self.sink_tokens}, dtype={self.dtype}, "
                f"device={self.device})")
