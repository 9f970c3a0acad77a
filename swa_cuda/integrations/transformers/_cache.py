"""The rolling cache for generate(): RollingSlidingWindowLayer (a
transformers cache layer over a swa_cuda.RollingKVCache ring) and
SWARollingCache."""

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, get_layer_types_and_kwargs

import swa_cuda

from ._mask import SWAMask, _contiguous_run

def _rolling_kv_cache_class():
    cls = getattr(swa_cuda, "RollingKVCache", None)
    if cls is None:
        from swa_cuda.cache import RollingKVCache as cls
    return cls



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
            from ._attention import swa_attention_forward  # (a cycle at import time)

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

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: SWAMask, scale, softcap: float,
               sinks: Optional[Tensor] = None) -> Tensor:
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
            out = self.ring.attend(0, q, k, v, scale=scale, softcap=softcap, sinks=sinks)
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
            if sinks is None:
                ob, _ = torch.ops.swa.cache_attention(qb, kb, vb, k_ring[sb], v_ring[sb], pos[sb], window, scale,
                                                      softcap)
            else:
                ob, _ = torch.ops.swa.cache_attention.sinks(qb, kb, vb, k_ring[sb], v_ring[sb], pos[sb], window,
                                                            scale, softcap, sinks=sinks)
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
