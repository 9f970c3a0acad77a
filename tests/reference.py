"""An independent dense-mask reference for swa attention, in plain PyTorch.

It builds the full (Sq, Sk) visibility mask from the window definition and
never shares code with the kernels. Computed in float64 by default; with
upcast=False it runs in the inputs' dtype (FlashAttention's accuracy rule
compares a kernel's error with that reference's error).
"""

import math

import torch


def band_mask(seqlen_q, seqlen_k, window_left, window_right, device="cpu"):
    """Bool (Sq, Sk): query row i (key position i + Sk - Sq) sees key j."""
    i = torch.arange(seqlen_q, device=device).unsqueeze(1)
    j = torch.arange(seqlen_k, device=device).unsqueeze(0)
    p = i + seqlen_k - seqlen_q
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        visible &= j >= p - window_left
    if window_right >= 0:
        visible &= j <= p + window_right
    return visible


def attention_ref(q, k, v, window_left=-1, window_right=0, scale=None, softcap=0.0, upcast=True):
    """(out, lse) of banded attention; rows that see no key give 0 and -inf."""
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
    visible = band_mask(q.shape[2], k.shape[2], window_left, window_right, q.device)
    sees_any = visible.any(-1, keepdim=True)  # (Sq, 1)
    # Rows that see nothing get a harmless finite row, then zero weights, so
    # their outputs and gradients are exactly 0 (no NaN from softmax of -inf).
    s = s.masked_fill(~visible, float("-inf")).masked_fill(~sees_any, 0.0)
    lse = torch.logsumexp(s if upcast else s.float(), dim=-1)
    lse = lse.masked_fill(~sees_any.squeeze(-1), float("-inf"))
    p = torch.softmax(s, dim=-1) * sees_any
    out = torch.matmul(p.to(v.dtype), v)
    return out.to(dtype), lse.float()
