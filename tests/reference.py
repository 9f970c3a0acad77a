"""An independent dense-mask reference for swa attention, in plain PyTorch.

It builds the full (Sq, Sk) visibility mask from the window definition and
never shares code with the kernels. Computed in float64 by default; with
upcast=False it runs in the inputs' dtype (FlashAttention's accuracy rule
compares a kernel's error with that reference's error).
"""

import math

import torch


def band_mask(seqlen_q, seqlen_k, window_left, window_right, device="cpu", sink_tokens=0):
    """Bool (Sq, Sk): query row i (key position i + Sk - Sq) sees key j.
    Keys j < sink_tokens are seen too wherever the right edge allows."""
    i = torch.arange(seqlen_q, device=device).unsqueeze(1)
    j = torch.arange(seqlen_k, device=device).unsqueeze(0)
    p = i + seqlen_k - seqlen_q
    left_ok = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        left_ok = j >= p - window_left
    right_ok = torch.ones_like(left_ok)
    if window_right >= 0:
        right_ok = j <= p + window_right
    return (left_ok | (j < sink_tokens)) & right_ok


def attention_ref(q, k, v, window_left=-1, window_right=0, scale=None, softcap=0.0, upcast=True,
                  sinks=None, sink_tokens=0):
    """(out, lse) of banded attention; rows that see no key give 0 and -inf.

    sinks: [Hq] logits that join each row's softmax without a value (not
    scaled, not capped); a row that sees no key then gives 0 and sinks[h].
    sink_tokens: keys 0 .. S-1 seen beside the band (band_mask)."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    visible = band_mask(q.shape[2], k.shape[2], window_left, window_right, q.device, sink_tokens)
    if sinks is not None:
        return _attention_ref_sinks(s, v, visible, sinks, dtype, upcast)
    sees_any = visible.any(-1, keepdim=True)  # (Sq, 1)
    # Rows that see nothing get a harmless finite row, then zero weights, so
    # their outputs and gradients are exactly 0 (no NaN from softmax of -inf).
    s = s.masked_fill(~visible, float("-inf")).masked_fill(~sees_any, 0.0)
    lse = torch.logsumexp(s if upcast else s.float(), dim=-1)
    lse = lse.masked_fill(~sees_any.squeeze(-1), float("-inf"))
    p = torch.softmax(s, dim=-1) * sees_any
    out = torch.matmul(p.to(v.dtype), v)
    return out.to(dtype), lse.float()


def _attention_ref_sinks(s, v, visible, sinks, dtype, upcast):
    """The softmax over the visible scores plus one value-less logit per head:
    an extra key column with score sinks[h] and value 0."""
    sink = sinks.to(s.dtype if upcast else torch.float32).view(1, -1, 1, 1)
    sink_col = sink.expand(s.shape[0], s.shape[1], s.shape[2], 1).to(s.dtype)
    s = torch.cat([s.masked_fill(~visible, float("-inf")), sink_col], dim=-1)
    lse = torch.logsumexp(s if upcast else s.float(), dim=-1)
    p = torch.softmax(s, dim=-1)[..., :-1]
    out = torch.matmul(p.to(v.dtype), v)
    return out.to(dtype), lse.float()
