"""Hugging Face transformers integration: ``attn_implementation="swa_cuda"``
and a rolling KV cache for ``generate()``.

Use::

    from swa_cuda.integrations import transformers as swa_hf

    swa_hf.register()                                   # once per process
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="swa_cuda")
    out = model.generate(**inputs)                      # HF's caches work (dynamic, static)
    out = model.generate(**inputs, past_key_values=swa_hf.SWARollingCache(model.config))

``register()`` adds ``"swa_cuda"`` to transformers' ``AttentionInterface``
(the attention function, :func:`swa_attention_forward`) and to its
``AttentionMaskInterface`` (:func:`swa_mask`). Every attention layer then runs
through ``torch.ops.swa.attention`` (or ``torch.ops.swa.cache_attention`` for
the layers of an :class:`SWARollingCache`): sliding-window layers with their
``sliding_window`` (W tokens, the token itself included), full layers
causally, ``scaling`` and ``softcap`` as given, GQA without repeating K/V.

Masks. Transformers hands an attention implementation the object that its
registered mask function returns. :func:`swa_mask` returns a small
:class:`SWAMask` (the pattern, the query/key offsets and the 2D padding mask)
instead of a dense ``[B, 1, Sq, Sk]`` tensor: the band is computed by the
kernels. It recognises exactly the patterns transformers builds for causal,
sliding-window causal, bidirectional and sliding-window bidirectional layers,
checks each one numerically on a probe row, and refuses anything else
(packed sequences, chunked attention, image-token overlays, ...) with an
error that names the pattern, rather than computing something else.

Padding. Positions in a transformers mask are indices into the padded batch
(cache positions). Left padding is a contiguous run of padding before each
sequence's tokens, so index distances between real tokens equal their real
distances and the sliding window means the same thing in both coordinates.
The op takes one window for the whole batch and no per-sequence key mask, so
a padded batch is computed per group of sequences with the same padding: each
group's real queries attend to its real keys only (a slice of K/V, no
copy for a group of one). Any padding pattern whose real tokens form one
contiguous run (left padding, right padding) is exact for every real token;
a mask with holes is refused. The outputs at padding positions are zeros (as
FlashAttention's unpadded path gives; eager gives arbitrary values there, and
nothing downstream reads them: padding keys are masked everywhere). Compare
logits at real tokens only, and in training keep padding positions out of the
loss: with left padding and the usual shifted labels, also label a
sequence's first real token -100 (a padding position would predict it).
Gradients then match eager.

Rolling cache. :class:`SWARollingCache` is a transformers ``Cache`` whose
sliding-window layers are :class:`RollingSlidingWindowLayer` (each backed by
a :class:`swa_cuda.RollingKVCache` ring of W tokens: fixed memory however
many tokens are generated, written in place) and whose full layers are the
usual growing ``DynamicLayer``. Its ``update()`` only hands the new K/V to the
attention function, which attends over ring + new tokens with
``cache_attention`` and then appends them: so it needs
``attn_implementation="swa_cuda"`` (it says so otherwise). Padding tokens are
never written to a ring: each sequence keeps its own position (its count of
real tokens), so a left-padded batch is exact too, provided the padding comes
with each sequence's first chunk.
"""

import dataclasses
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

try:
    import transformers as _hf
except ImportError as _e:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "swa_cuda.integrations.transformers needs Hugging Face transformers (an optional dependency of "
        "swa_cuda): `pip install transformers` (tested with transformers 5.17 and 5.23). "
        f"Import failed with: {_e}"
    ) from _e
try:
    from transformers import AttentionInterface
    from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, get_layer_types_and_kwargs
    from transformers.masking_utils import (
        AttentionMaskInterface,
        bidirectional_mask_function,
        causal_mask_function,
    )
except ImportError as _e:  # pragma: no cover - an older transformers
    raise ImportError(
        f"swa_cuda.integrations.transformers: transformers {_hf.__version__} lacks the attention/mask/cache "
        "interfaces this integration uses; install transformers 5 (`pip install -U transformers`; tested with "
        f"5.17 and 5.23). Import failed with: {_e}"
    ) from _e

import torch
from torch import Tensor

import swa_cuda  # noqa: F401  (loads torch.ops.swa)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "register",
    "is_registered",
    "swa_attention_forward",
    "swa_mask",
    "SWAMask",
    "SWARollingCache",
    "RollingSlidingWindowLayer",
]

ATTN_IMPLEMENTATION = "swa_cuda"
TESTED_TRANSFORMERS = "5.17 and 5.23"


def _rolling_kv_cache_class():
    cls = getattr(swa_cuda, "RollingKVCache", None)
    if cls is None:
        from swa_cuda.cache import RollingKVCache as cls
    return cls


# ---- registration ----------------------------------------------------------------


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Adds the attention implementation `name` (default "swa_cuda") to
    transformers' AttentionInterface and AttentionMaskInterface. Idempotent.
    Returns the name, to pass as ``attn_implementation``."""
    AttentionInterface.register(name, swa_attention_forward)
    AttentionMaskInterface.register(name, swa_mask)
    return name


def is_registered(name: str = ATTN_IMPLEMENTATION) -> bool:
    return (AttentionInterface._global_mapping.get(name) is swa_attention_forward
            and AttentionMaskInterface._global_mapping.get(name) is swa_mask)


# ---- masks -------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SWAMask:
    """What transformers' mask for one layer type means, without the dense tensor.

    ``causal`` and ``window`` give the pattern: a causal query at position p
    sees the keys p - W + 1 .. p (``window`` = W, None = all earlier keys);
    a bidirectional one sees |p - j| <= W (transformers' convention). Query i
    sits at position ``q_offset + i``, key slot j holds position
    ``kv_offset + j`` (None: unknown, bottom-right alignment is assumed).
    ``padding`` is the bool 2D mask [B, >= kv_offset + kv_length], True at
    real tokens, or None. One object serves every layer of its type in one
    forward, so what it derives from ``padding`` (which needs the host) is
    computed once and remembered.
    """

    causal: bool
    window: Optional[int]
    q_offset: Optional[int] = None
    kv_offset: Optional[int] = None
    q_length: Optional[int] = None
    kv_length: Optional[int] = None
    padding: Optional[Tensor] = None
    _memo: Dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False)

    # It stands for transformers' [B, 1, Sq, Sk] mask: generate() may build it
    # ahead of the forward (static caches) and hand it back as attention_mask.
    ndim = 4

    def contiguous(self) -> "SWAMask":
        return self

    def window_size(self) -> Tuple[int, int]:
        """(window_left, window_right) of torch.ops.swa.attention."""
        if self.causal:
            return (-1 if self.window is None else self.window - 1, 0)
        return (-1, -1) if self.window is None else (self.window, self.window)


def _closure_vars(fn) -> Dict[str, Any]:
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    if code is None:
        return {}
    return {name: cell.cell_contents for name, cell in zip(code.co_freevars, cells)}


def _describe(fn) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _probe(fn, causal: bool, window: Optional[int]) -> None:
    """Evaluates the mask function on one probe row and checks that it is the
    band we are about to compute (guards against a transformers version whose
    overlays mean something else)."""
    w = 8 if window is None else window
    q = w + 3
    kv = torch.arange(0, q + w + 4)
    zero = torch.zeros((), dtype=torch.long)
    got = fn(zero, zero, torch.tensor(q), kv)
    got = torch.as_tensor(got).expand(kv.shape).to(torch.bool)
    if causal:
        want = kv <= q
        if window is not None:
            want &= kv > q - window
    else:
        want = torch.ones_like(kv, dtype=torch.bool)
        if window is not None:
            want &= (kv - q).abs() <= window
    if not torch.equal(got, want):
        raise NotImplementedError(
            f"swa_cuda: the mask function {_describe(fn)} of this transformers version ({_hf.__version__}) does "
            f"not give the expected {'causal' if causal else 'bidirectional'} window {window}; refusing to run "
            f"(tested with transformers {TESTED_TRANSFORMERS})")


def _classify_mask_function(fn) -> Tuple[bool, Optional[int]]:
    """(causal, window) of a transformers mask function, or an error for a
    pattern the op cannot express."""
    if fn is None or fn is causal_mask_function:
        return True, None
    if fn is bidirectional_mask_function:
        return False, None
    parts = _closure_vars(fn).get("mask_functions") if _describe(fn).startswith("and_masks.") else None
    if isinstance(parts, tuple) and len(parts) == 2:
        overlay, base = parts
        overlay_name = _describe(overlay)
        window = _closure_vars(overlay).get("sliding_window")
        if isinstance(window, int) and window >= 1:
            if base is causal_mask_function and overlay_name.startswith("sliding_window_overlay."):
                _probe(fn, True, window)
                return True, window
            if (base is bidirectional_mask_function
                    and overlay_name.startswith("sliding_window_bidirectional_overlay.")):
                _probe(fn, False, window)
                return False, window
    raise NotImplementedError(
        f"swa_cuda: attention pattern {_describe(fn)} is not supported: only causal, sliding-window causal, "
        "bidirectional and sliding-window bidirectional masks (with a 2D padding mask) are. Packed sequences "
        "(position_ids restarting inside a row), chunked attention and mask overlays (image tokens, blocks) "
        "need attn_implementation='sdpa' or 'eager'.")


def swa_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
             mask_function=causal_mask_function, attention_mask: Optional[Tensor] = None, **kwargs) -> SWAMask:
    """The AttentionMaskInterface entry: returns an :class:`SWAMask` (no dense
    mask is built)."""
    causal, window = _classify_mask_function(mask_function)
    if isinstance(attention_mask, SWAMask):
        # A mask prepared by generate() for this step comes back: keep its
        # padding, rebuild the pattern from this call's mask function.
        attention_mask = attention_mask.padding
    padding = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(f"swa_cuda: expected a 2D padding mask, got shape {tuple(attention_mask.shape)}")
        padding = attention_mask.to(torch.bool)
        missing = kv_offset + kv_length - padding.shape[-1]
        if missing > 0:  # slots past the mask (a static cache's empty tail) are not real tokens
            padding = torch.nn.functional.pad(padding, (0, missing), value=False)
    return SWAMask(causal=causal, window=window, q_offset=int(q_offset), kv_offset=int(kv_offset),
                   q_length=int(q_length), kv_length=int(kv_length), padding=padding)


# ---- the attention function ---------------------------------------------------------

# Keyword arguments that change what attention computes; refused when not None.
_REFUSED_KWARGS = {
    "s_aux": "attention sinks (gpt-oss's s_aux)",
    "sinks": "attention sinks",
    "position_bias": "an additive position bias",
    "head_mask": "a head mask",
    "cu_seq_lens_q": "packed (varlen) sequences",
    "cu_seq_lens_k": "packed (varlen) sequences",
    "max_length_q": "packed (varlen) sequences",
    "max_length_k": "packed (varlen) sequences",
    "seq_idx": "packed sequences",
    "attention_chunk_size": "chunked attention",
}


_WARNED: Dict[str, bool] = {}


def _op(q: Tensor, k: Tensor, v: Tensor, window: Tuple[int, int], scale, softcap: float) -> Tensor:
    out, _ = torch.ops.swa.attention(q, k, v, window[0], window[1], scale, softcap)
    return out


def swa_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[SWAMask],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
) -> Tuple[Tensor, None]:
    """The AttentionInterface entry. query [B, Hq, Sq, D], key/value
    [B, Hkv, Sk, D] (Hq a multiple of Hkv); returns (out [B, Sq, Hq, D], None):
    attention weights are never materialised."""
    for name, what in _REFUSED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"swa_cuda: {what} ({name}=...) is not implemented; use "
                                      "attn_implementation='eager' or 'sdpa' for this model")
    if dropout:
        raise NotImplementedError(f"swa_cuda: attention dropout ({dropout}) is not implemented; set the "
                                  "config's attention_dropout to 0 or call model.eval()")
    if kwargs.get("output_attentions") and not _WARNED.get("output_attentions"):
        _WARNED["output_attentions"] = True
        warnings.warn("swa_cuda does not materialise attention weights; output_attentions gives None",
                      stacklevel=2)
    softcap = float(softcap) if softcap else 0.0
    scale = None if scaling is None else float(scaling)
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)

    mask = attention_mask
    if mask is None:  # called outside a model's mask pipeline: the arguments say it all
        mask = SWAMask(causal=causal, window=sliding_window)
    elif not isinstance(mask, SWAMask):
        raise TypeError(
            f"swa_cuda: got a {type(mask).__name__} attention mask (shape "
            f"{tuple(getattr(mask, 'shape', ()))}); this implementation builds the band itself and takes the "
            f"SWAMask that swa_cuda's mask function makes. Call swa_cuda.integrations.transformers.register() "
            f"before running the model, and pass padding as the usual 2D attention_mask, not a 4D mask.")
    else:
        if mask.causal != causal:
            raise ValueError(f"swa_cuda: the layer says is_causal={causal} but its mask is "
                             f"{'causal' if mask.causal else 'bidirectional'}")
        if mask.window != sliding_window:
            raise ValueError(f"swa_cuda: the layer passes sliding_window={sliding_window} but its mask has "
                             f"window {mask.window}")

    layer = _take_pending(key)
    if layer is not None:
        out = layer.attend(query, key, value, mask, scale, softcap)
    else:
        out = _attend(query, key, value, mask, scale, softcap)
    return out.transpose(1, 2), None


def _contiguous_run(row: Sequence[bool], b: int) -> Tuple[int, int]:
    """[s, e) of the only run of True in row ((0, 0) if none); raises on holes."""
    try:
        s = row.index(True)
    except ValueError:
        return 0, 0
    e = len(row) - row[::-1].index(True)
    if not all(row[s:e]):
        raise NotImplementedError(
            f"swa_cuda: the attention mask of sequence {b} has padding between real tokens; only padding "
            "before and/or after each sequence's tokens (one contiguous run of real tokens) is supported")
    return s, e


def _padding_groups(mask: SWAMask, seqlen_q: int, num_keys: int, batch: int):
    """None when no sequence has padding among the first num_keys key slots;
    else [(sequences, i0, i1, k0, k1)]: those sequences' real queries
    i0 .. i1-1 attend over key slots k0 .. k1-1, with bottom-right alignment."""
    memo_key = ("full", seqlen_q, num_keys)
    if memo_key in mask._memo:
        return mask._memo[memo_key]
    groups = None
    if mask.padding is not None:
        valid = mask.padding[:, mask.kv_offset:mask.kv_offset + num_keys]
        if valid.shape != (batch, num_keys):
            raise ValueError(f"swa_cuda: padding mask of shape {tuple(mask.padding.shape)} does not cover "
                             f"{batch} sequences x {num_keys} keys from offset {mask.kv_offset}")
        if not bool(valid.all()):
            c0 = mask.q_offset - mask.kv_offset  # key slot of query row 0
            spans: Dict[Tuple[int, int, int, int], List[int]] = {}
            for b, row in enumerate(valid.cpu().tolist()):
                s, e = _contiguous_run(row, b)
                i0, i1 = max(0, s - c0), min(seqlen_q, e - c0)
                if i1 <= i0:
                    continue  # no real query: zeros
                k1 = c0 + i1 if mask.causal else e
                spans.setdefault((i0, i1, s, k1), []).append(b)
            groups = [(seqs, *span) for span, seqs in spans.items()]
    mask._memo[memo_key] = groups
    return groups


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: SWAMask, scale, softcap: float) -> Tensor:
    """Attention over the full keys handed in (no rolling cache)."""
    batch, _, seqlen_q, _ = q.shape
    seqlen_k = k.shape[2]
    window = mask.window_size()
    if mask.q_offset is None:  # no positions known: bottom-right alignment, no padding
        if not mask.causal and mask.window is not None and seqlen_q != seqlen_k:
            raise NotImplementedError("swa_cuda: sliding bidirectional attention needs as many queries as keys")
        return _op(q, k, v, window, scale, softcap)
    if mask.q_length != seqlen_q or mask.kv_length != seqlen_k:
        raise ValueError(f"swa_cuda: the mask was built for {mask.q_length} queries x {mask.kv_length} keys but "
                         f"the layer has {seqlen_q} x {seqlen_k}")
    if mask.causal:
        # Key slot j holds position kv_offset + j; the last query is at
        # q_offset + Sq - 1. Slots after it (a static cache's empty tail) are
        # invisible: drop them, so the last key is the last query's own.
        num_keys = mask.q_offset + seqlen_q - mask.kv_offset
        if not seqlen_q <= num_keys <= seqlen_k:
            raise ValueError(f"swa_cuda: queries at positions {mask.q_offset}..{mask.q_offset + seqlen_q - 1} do "
                             f"not fit keys at positions {mask.kv_offset}..{mask.kv_offset + seqlen_k - 1}")
        if num_keys < seqlen_k:
            k, v = k[:, :, :num_keys], v[:, :, :num_keys]
    else:
        if mask.q_offset != mask.kv_offset or seqlen_q != seqlen_k:
            raise NotImplementedError("swa_cuda: bidirectional attention is supported without a cache only "
                                      "(queries and keys at the same positions)")
        num_keys = seqlen_k
    groups = _padding_groups(mask, seqlen_q, num_keys, batch)
    if groups is None:
        return _op(q, k, v, window, scale, softcap)
    out = q.new_zeros(q.shape)
    for seqs, i0, i1, k0, k1 in groups:
        sel = slice(seqs[0], seqs[0] + 1) if len(seqs) == 1 else torch.tensor(seqs, device=q.device)
        out[sel, :, i0:i1] = _op(q[sel, :, i0:i1], k[sel, :, k0:k1], v[sel, :, k0:k1], window, scale, softcap)
    return out


# ---- the rolling cache ----------------------------------------------------------------

# Keys handed out by RollingSlidingWindowLayer.update and not yet attended: id -> layer.
_PENDING: Dict[int, "RollingSlidingWindowLayer"] = {}


def _take_pending(key: Tensor) -> Optional["RollingSlidingWindowLayer"]:
    layer = _PENDING.pop(id(key), None)
    if layer is None or layer._pending is None or layer._pending[0] is not key:
        return None
    return layer


class RollingSlidingWindowLayer(CacheLayerMixin):
    """A transformers cache layer for a sliding-window layer, backed by a
    RollingKVCache ring of `capacity` (default W) tokens per sequence and kv
    head: its memory is fixed from the first token on. ``keys``/``values`` are
    the rings [B, Hkv, C, D] (slot = position % C, not in time order).

    ``get_seq_length()`` counts tokens in the batch's padded coordinates, as
    transformers does; each sequence's ring position (``positions``) counts
    its real tokens only.
    """

    is_sliding = True
    is_compileable = False
    is_croppable = False

    def __init__(self, sliding_window: int, capacity: Optional[int] = None, config=None, **kwargs):
        super().__init__()
        self.config = config  # the model's (text) config, to check its attention implementation
        if sliding_window is None or sliding_window < 1:
            raise ValueError(f"RollingSlidingWindowLayer: sliding_window must be >= 1, got {sliding_window}")
        self.sliding_window = int(sliding_window)
        self.capacity = capacity
        self.cumulative_length = 0
        self.ring = None                        # RollingKVCache(num_layers=1, ...)
        self._positions: List[int] = []         # host copy of ring.pos (real tokens per sequence)
        self._pending: Optional[Tuple[Tensor, Tensor]] = None

    # -- transformers' layer interface ------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        batch, heads_kv, _, head_dim = key_states.shape
        if value_states.shape[-1] != head_dim:
            raise NotImplementedError("swa_cuda rolling cache: K and V head dims must be equal")
        self.dtype, self.device = key_states.dtype, key_states.device
        self.ring = _rolling_kv_cache_class()(1, batch, heads_kv, head_dim, self.sliding_window,
                                              capacity=self.capacity, dtype=self.dtype, device=self.device)
        self._positions = [0] * batch
        self.keys, self.values = self.ring.k_cache(0), self.ring.v_cache(0)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> Tuple[Tensor, Tensor]:
        """Hands the new K/V to the attention function (which attends over the
        ring and then appends them); returns them unchanged."""
        if self.config is not None:
            impl = getattr(self.config, "_attn_implementation", None)
            if AttentionInterface._global_mapping.get(impl) is not swa_attention_forward:
                raise RuntimeError(
                    f"swa_cuda rolling cache: the model runs attn_implementation={impl!r}, but SWARollingCache "
                    "works only with attn_implementation='swa_cuda' (call swa_cuda.integrations.transformers."
                    "register() and load the model with it, or model.set_attn_implementation('swa_cuda'))")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._pending is not None:
            raise RuntimeError(
                "swa_cuda rolling cache: the previous update of this layer was never attended. SWARollingCache "
                "works only with attn_implementation='swa_cuda' (call swa_cuda.integrations.transformers."
                "register() and load the model with it); after a failed forward, call cache.reset().")
        self.cumulative_length += key_states.shape[-2]
        self._pending = (key_states, value_states)
        _PENDING[id(key_states)] = self
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> Tuple[int, int]:
        # The positions the mask describes (as DynamicSlidingWindowLayer): the
        # last W - 1 cached tokens and the new ones.
        kv_offset = max(self.cumulative_length - self.sliding_window + 1, 0)
        return min(self.cumulative_length, self.sliding_window - 1) + query_length, kv_offset

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sliding_window

    def reset(self) -> None:
        if self.ring is not None:
            self.ring.reset()
            self._positions = [0] * len(self._positions)
        self.cumulative_length = 0
        self._drop_pending()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("swa_cuda rolling cache: tokens cannot be removed from a ring "
                                  "(assisted/speculative decoding needs DynamicCache)")

    def offload(self):
        raise NotImplementedError("swa_cuda rolling cache: offloading is not supported")

    def prefetch(self):
        pass

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.ring is not None:
            self._select(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.ring is not None:
            self._select(torch.arange(len(self._positions)).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.ring is not None:
            self._select(indices)

    # -- swa_cuda ------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of the rings (fixed once allocated)."""
        return 0 if self.ring is None else self.ring.nbytes

    @property
    def positions(self) -> List[int]:
        """Real tokens seen by each sequence (its ring position)."""
        return list(self._positions)

    def _drop_pending(self) -> None:
        if self._pending is not None:
            _PENDING.pop(id(self._pending[0]), None)
            self._pending = None

    def _select(self, index) -> None:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        old = self.ring
        self.ring = _rolling_kv_cache_class()(1, index.numel(), old.num_kv_heads, old.head_dim, old.windows,
                                              capacity=old.capacities, dtype=old.dtype, device=old.device)
        dev_index = index.to(old.device)
        self.ring.k_cache(0).copy_(old.k_cache(0).index_select(0, dev_index))
        self.ring.v_cache(0).copy_(old.v_cache(0).index_select(0, dev_index))
        self.ring.pos.copy_(old.pos.index_select(0, dev_index))
        self._positions = [self._positions[i] for i in index.tolist()]
        self.keys, self.values = self.ring.k_cache(0), self.ring.v_cache(0)

    def _new_token_starts(self, mask: SWAMask, num_new: int, batch: int) -> Optional[List[int]]:
        """None when every new token is real; else, per sequence, the index of
        its first real new token (left padding of the chunk)."""
        if mask.padding is None or mask.q_offset is None:
            return None
        memo_key = ("new", mask.q_offset, num_new)
        if memo_key in mask._memo:
            return mask._memo[memo_key]
        valid = mask.padding[:, mask.q_offset:mask.q_offset + num_new]
        if valid.shape != (batch, num_new):
            raise ValueError(f"swa_cuda rolling cache: padding mask of shape {tuple(mask.padding.shape)} does not "
                             f"cover the {num_new} new tokens at offset {mask.q_offset}")
        starts = None
        if not bool(valid.all()):
            starts = []
            for b, row in enumerate(valid.cpu().tolist()):
                s, e = _contiguous_run(row, b)
                if s == e:
                    s = num_new  # a chunk of padding only
                elif e != num_new:
                    raise NotImplementedError(
                        f"swa_cuda rolling cache: sequence {b} has padding after its tokens (right padding); "
                        "pad on the left (tokenizer.padding_side = 'left') to generate with this cache")
                starts.append(s)
        mask._memo[memo_key] = starts
        return starts

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: SWAMask, scale, softcap: float) -> Tensor:
        """Attention of the new tokens over the ring and themselves, then the
        append; called by swa_attention_forward with the keys update() gave."""
        self._drop_pending()
        if not mask.causal or mask.window != self.sliding_window:
            raise ValueError(f"swa_cuda rolling cache: layer built for a causal window of {self.sliding_window} "
                             f"tokens but attention asks for causal={mask.causal}, window={mask.window}")
        batch, num_new = q.shape[0], q.shape[2]
        if batch != len(self._positions):
            raise ValueError(f"swa_cuda rolling cache: built for batch {len(self._positions)}, got {batch}")
        starts = self._new_token_starts(mask, num_new, batch)
        if starts is None:
            out = self.ring.attend(0, q, k, v, scale=scale, softcap=softcap)
            self.ring.advance(num_new)
            self._positions = [p + num_new for p in self._positions]
            return out
        # Padded chunk: each sequence writes its real tokens only, from its own position.
        out = q.new_zeros(q.shape)
        counts = []
        k_ring, v_ring, pos = self.ring.k_cache(0), self.ring.v_cache(0), self.ring.pos
        window = self.sliding_window
        for b, t0 in enumerate(starts):
            counts.append(num_new - t0)
            if t0 == num_new:
                continue
            if t0 > 0 and self._positions[b] > 0:
                raise NotImplementedError(
                    f"swa_cuda rolling cache: sequence {b} has padding after {self._positions[b]} cached tokens; "
                    "padding must come before a sequence's first token")
            sb = slice(b, b + 1)
            qb, kb, vb = q[sb, :, t0:], k[sb, :, t0:], v[sb, :, t0:]
            ob, _ = torch.ops.swa.cache_attention(qb, kb, vb, k_ring[sb], v_ring[sb], pos[sb], window, scale,
                                                  softcap)
            torch.ops.swa.cache_append(k_ring[sb], v_ring[sb], kb, vb, pos[sb])
            out[sb, :, t0:] = ob
        pos.add_(torch.tensor(counts, dtype=pos.dtype).to(pos.device))
        self._positions = [p + n for p, n in zip(self._positions, counts)]
        return out


class SWARollingCache(Cache):
    """A transformers Cache for generate(): sliding-window layers keep a
    fixed-size RollingKVCache ring (RollingSlidingWindowLayer), full layers a
    growing DynamicLayer. Needs attn_implementation="swa_cuda".

    ``config`` must be the model's own config object (``model.config``): each
    update checks that the model still runs ``swa_cuda`` attention, since any
    other implementation would see only the new tokens. ``capacity`` (tokens
    per ring, default the window) may be raised to keep more history; it must
    be at least W - 1.
    """

    def __init__(self, config, capacity: Optional[int] = None):
        decoder_config = config.get_text_config(decoder=True)
        layer_types, per_layer_kwargs = get_layer_types_and_kwargs(decoder_config)
        if isinstance(per_layer_kwargs, dict):  # transformers < 5.2x: one dict for every layer
            per_layer_kwargs = [per_layer_kwargs] * len(layer_types)
        layers = []
        for index, (layer_type, layer_kwargs) in enumerate(zip(layer_types, per_layer_kwargs)):
            if layer_type == "sliding_attention":
                layers.append(RollingSlidingWindowLayer(layer_kwargs["sliding_window"], capacity=capacity,
                                                        config=decoder_config))
            elif layer_type == "full_attention":
                layers.append(DynamicLayer())
            elif layer_type == "dummy":  # layers without a cache (only transformers versions with DummyLayer)
                from transformers.cache_utils import DummyLayer

                layers.append(DummyLayer())
            else:
                raise NotImplementedError(f"SWARollingCache: layer {index} is a {layer_type!r} layer; only "
                                          "sliding_attention and full_attention layers are supported")
        super().__init__(layers=layers)

    @property
    def nbytes(self) -> int:
        """Bytes of K/V held now: the rings (fixed) plus the full layers' (growing) tensors."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, RollingSlidingWindowLayer):
                total += layer.nbytes
            elif getattr(layer, "is_initialized", False) and layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total
