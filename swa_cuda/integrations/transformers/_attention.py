"""The attention function transformers calls (AttentionInterface entry):
the band from the SWAMask, padding groups, the rolling cache's layers."""

import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ._cache import _take_pending
from ._mask import SWAMask, _padding_groups, packed_cu_seqlens

# ---- the attention function ---------------------------------------------------------

# Keyword arguments that change what attention computes; refused when not None.
# (Sink logits, gpt-oss's s_aux, are computed: see _sink_logits.)
_REFUSED_KWARGS = {
    "position_bias": "an additive position bias",
    "head_mask": "a head mask",
    "seq_idx": "packed sequences",
    "attention_chunk_size": "chunked attention",
}


_WARNED: Dict[str, bool] = {}


def _op(q: Tensor, k: Tensor, v: Tensor, window: Tuple[int, int], scale, softcap: float,
        sinks: Optional[Tensor] = None) -> Tensor:
    if sinks is None:
        out, _ = torch.ops.swa.attention(q, k, v, window[0], window[1], scale, softcap)
    else:
        out, _ = torch.ops.swa.attention.sinks(q, k, v, window[0], window[1], scale, softcap, sinks=sinks)
    return out


def _sink_logits(kwargs, heads_q: int) -> Optional[Tensor]:
    """gpt-oss's s_aux (its attention module's `sinks` parameter, one logit per
    query head in the model's dtype) as the op takes it: float32 [Hq]. The
    cast is differentiable, so the parameter gets its gradient."""
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = kwargs.get("sinks")
    if sinks is None:
        return None
    if sinks.numel() != heads_q:
        raise ValueError(f"swa_cuda: s_aux (attention sinks) must hold one logit per query head ({heads_q}), "
                         f"got shape {tuple(sinks.shape)}")
    return sinks.reshape(heads_q).float()


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
    sinks = _sink_logits(kwargs, query.shape[1])
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
    if kwargs.get("cu_seq_lens_q") is not None or mask.packed is not None:
        if layer is not None:
            raise NotImplementedError("swa_cuda: packed sequences with a rolling cache are not supported")
        return _attend_packed(query, key, value, mask, scale, softcap, sinks, kwargs), None
    if layer is not None:
        out = layer.attend(query, key, value, mask, scale, softcap, sinks)
    else:
        out = _attend(query, key, value, mask, scale, softcap, sinks)
    return out.transpose(1, 2), None


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: SWAMask, scale, softcap: float,
            sinks: Optional[Tensor] = None) -> Tensor:
    """Attention over the full keys handed in (no rolling cache)."""
    batch, _, seqlen_q, _ = q.shape
    seqlen_k = k.shape[2]
    window = mask.window_size()
    if mask.q_offset is None:  # no positions known: bottom-right alignment, no padding
        if not mask.causal and mask.window is not None and seqlen_q != seqlen_k:
            raise NotImplementedError("swa_cuda: sliding bidirectional attention needs as many queries as keys")
        return _op(q, k, v, window, scale, softcap, sinks)
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
        return _op(q, k, v, window, scale, softcap, sinks)
    out = q.new_zeros(q.shape)
    for seqs, i0, i1, k0, k1 in groups:
        sel = slice(seqs[0], seqs[0] + 1) if len(seqs) == 1 else torch.tensor(seqs, device=q.device)
        out[sel, :, i0:i1] = _op(q[sel, :, i0:i1], k[sel, :, k0:k1], v[sel, :, k0:k1], window, scale, softcap,
                                 sinks)
    return out


def _attend_packed(q: Tensor, k: Tensor, v: Tensor, mask: SWAMask, scale, softcap: float, sinks: Optional[Tensor],
                   kwargs) -> Tensor:
    """Documents packed along each row (DataCollatorWithFlattening): the
    rows' tokens back to back as one attention.varlen batch, each document
    banded on its own. The documents come from transformers' flash-attention
    keywords (cu_seq_lens_q/k, max_length_q/k) or from the mask's
    packed-sequence index (position ids restarting inside a row). Returns
    out [B, S, Hq, D]."""
    batch, heads_q, seqlen_q, dim = q.shape
    if k.shape[2] != seqlen_q or mask.q_offset not in (None, 0):
        raise NotImplementedError("swa_cuda: packed sequences are supported without a cache only (training and "
                                  "one-shot forwards: as many queries as keys)")
    if mask.padding is not None and not bool(mask.padding.all()):
        raise NotImplementedError("swa_cuda: packed sequences with a padding mask are not supported; pack "
                                  "without padding (DataCollatorWithFlattening does)")
    if kwargs.get("cu_seq_lens_q") is not None:
        cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs.get("cu_seq_lens_k", kwargs["cu_seq_lens_q"])
        max_q = int(kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max()))
        max_k = int(kwargs.get("max_length_k") or int((cu_k[1:] - cu_k[:-1]).max()))
        cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
    else:
        cu_q, max_q = packed_cu_seqlens(mask.packed.to(q.device))
        cu_k, max_k = cu_q, max_q
    window = mask.window_size()
    # [B, H, S, D] -> [B * S, H, D] (a view of the [B, S, H, D] projections).
    as_tokens = lambda t: t.transpose(1, 2).reshape(batch * seqlen_q, t.shape[1], dim)  # noqa: E731
    out, _ = torch.ops.swa.attention.varlen(as_tokens(q), as_tokens(k), as_tokens(v), cu_q, cu_k, max_q, max_k,
                                            window[0], window[1], scale, softcap, sinks=sinks)
    return out.view(batch, seqlen_q, heads_q, dim)
