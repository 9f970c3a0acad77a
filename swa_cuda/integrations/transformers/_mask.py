"""Reading transformers' masks: the mask function's pattern (causal, sliding,
bidirectional), checked on a probe row, as an SWAMask; the padding runs of a
2D padding mask."""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import transformers as _hf
from torch import Tensor
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

from ._constants import TESTED_TRANSFORMERS

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
    real tokens, or None. ``packed`` is transformers' packed-sequence index
    [B, S] (position ids restarting inside a row, DataCollatorWithFlattening:
    equal values = one document) or None. One object serves every layer of
    its type in one forward, so what it derives from ``padding`` (which needs
    the host) is computed once and remembered.
    """

    causal: bool
    window: Optional[int]
    q_offset: Optional[int] = None
    kv_offset: Optional[int] = None
    q_length: Optional[int] = None
    kv_length: Optional[int] = None
    padding: Optional[Tensor] = None
    packed: Optional[Tensor] = None
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


def _packed_parts(fn) -> Optional[Tuple[Tensor, Any]]:
    """(packed-sequence index, the per-document mask function) when fn is the
    mask transformers builds for packed sequences, else None: and_masks of
    packed_sequence_mask_function and either remap_positions_for_packed_sequence
    of the per-document function (transformers >= 5.2x) or that function itself
    on the row's positions (5.17: within one document the band is the same)."""
    if not _describe(fn).startswith("and_masks."):
        return None
    parts = _closure_vars(fn).get("mask_functions")
    if not (isinstance(parts, tuple) and len(parts) == 2):
        return None
    is_same_document = [_describe(p).startswith("packed_sequence_mask_function.") for p in parts]
    if is_same_document.count(True) != 1:
        return None
    same_document, inner = parts if is_same_document[0] else parts[::-1]
    if _describe(inner).startswith("remap_positions_for_packed_sequence."):
        inner = _closure_vars(inner).get("mask_function")
    index = _closure_vars(same_document).get("packed_sequence_mask")
    if not isinstance(index, Tensor) or index.dim() != 2 or inner is None:
        return None
    return index, inner


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
        "bidirectional and sliding-window bidirectional masks (with a 2D padding mask, or packed sequences) are. "
        "Chunked attention and mask overlays (image tokens, blocks) need attn_implementation='sdpa' or 'eager'.")


def swa_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
             mask_function=causal_mask_function, attention_mask: Optional[Tensor] = None, **kwargs) -> SWAMask:
    """The AttentionMaskInterface entry: returns an :class:`SWAMask` (no dense
    mask is built)."""
    packed = _packed_parts(mask_function)
    if packed is not None:  # documents packed in a row: each attends within itself (attention.varlen)
        packed, mask_function = packed
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
                   q_length=int(q_length), kv_length=int(kv_length), padding=padding, packed=packed)


def packed_cu_seqlens(index: Tensor) -> Tuple[Tensor, int]:
    """(cu_seqlens int32 [N + 1], longest document) of the documents of a
    packed-sequence index [B, S] (runs of equal values along each row),
    numbered row by row: the rows' tokens back to back are the packed batch."""
    batch, length = index.shape
    starts = torch.ones(batch, length, dtype=torch.bool, device=index.device)
    starts[:, 1:] = index[:, 1:] != index[:, :-1]
    flat = starts.reshape(-1).nonzero().reshape(-1)
    cu = torch.cat([flat, flat.new_tensor([batch * length])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return cu, longest



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
