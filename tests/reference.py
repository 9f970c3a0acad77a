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
    visible = band_mask(q.shape[2], k.shape[2], window_left, window_right, q.device, sink_tokens)
    return _visible_attention_ref(q, k, v, visible, scale, softcap, upcast, sinks)


def per_head_attention_ref(q, k, v, window_left, window_right, scale=None, softcap=0.0, upcast=True,
                           sinks=None, sink_tokens=0):
    """attention_ref with one window per query head: window_left[h],
    window_right[h] (sequences of ints) for head h, masks stacked per head."""
    masks = [band_mask(q.shape[2], k.shape[2], int(l), int(r), q.device, sink_tokens)
             for l, r in zip(window_left, window_right)]
    visible = torch.stack(masks).unsqueeze(0) if masks else torch.zeros(1, 0, q.shape[2], k.shape[2],
                                                                         dtype=torch.bool)
    return _visible_attention_ref(q, k, v, visible, scale, softcap, upcast, sinks)


def _visible_attention_ref(q, k, v, visible, scale, softcap, upcast, sinks):
    """(out, lse) of softmax(capped scale q k^T) v over the keys where visible
    (broadcasting to [B, Hq, Sq, Sk]), GQA by repeating k / v per group."""
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
    if sinks is not None:
        return _attention_ref_sinks(s, v, visible, sinks, dtype, upcast)
    return _masked_softmax_ref(s, v, visible, dtype, upcast)


def _masked_softmax_ref(s, v, visible, dtype, upcast):
    """(out, lse) of softmax(s) v over the visible scores (visible broadcasts
    to s); rows that see no key give 0 and -inf."""
    sees_any = visible.any(-1, keepdim=True)  # (..., Sq, 1)
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


def max_err(a, b):
    """max |a - b| in float64 (0 for empty tensors)."""
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_fa_rule(got, ref64, ref_lowp, factor, atol, what):
    """FlashAttention's accuracy rule: max|got - ref64| <= factor x max|ref_lowp -
    ref64| + atol, where ref_lowp is the same computation in the inputs' dtype
    (factor 2 for outputs, 3 for gradients). ref_lowp None (fp32/fp64 inputs,
    whose own-dtype reference is no yardstick): max|got - ref64| <= atol x
    max(1, max|ref64|)."""
    err = max_err(got, ref64)
    if ref_lowp is None:
        bound = atol * max(1.0, ref64.abs().max().item() if ref64.numel() else 1.0)
        assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g}"
        return
    err_lowp = max_err(ref_lowp, ref64)
    assert err <= factor * err_lowp + atol, \
        f"{what}: error {err:.3g} > {factor} x {err_lowp:.3g} (the {ref_lowp.dtype} reference's) + {atol:g}"


def longformer_mask(seqlen_q, seqlen_k, window_left, window_right, dilation=1, global_mask=None, device="cpu"):
    """Bool (B or 1, 1, Sq, Sk), Longformer's visibility: query row i (key
    position p = i + Sk - Sq) sees key j iff (p - j) % dilation == 0 and
    -window_right <= (p - j) / dilation <= window_left (-1: unbounded), or j
    is global (global_mask [B, Sk]); a global query (Sq == Sk, the same
    positions) sees every key."""
    i = torch.arange(seqlen_q, device=device).unsqueeze(1)
    j = torch.arange(seqlen_k, device=device).unsqueeze(0)
    delta = i + seqlen_k - seqlen_q - j
    visible = delta % dilation == 0
    if window_left >= 0:
        visible &= delta <= window_left * dilation
    if window_right >= 0:
        visible &= delta >= -window_right * dilation
    visible = visible[None, None]
    if global_mask is not None:
        visible = visible | global_mask[:, None, None, :]
        if seqlen_q == seqlen_k:
            visible = visible | global_mask[:, None, :, None]
    return visible


def longformer_ref(q, k, v, window_left, window_right, dilation=1, global_mask=None, scale=None, softcap=0.0,
                   upcast=True, global_qkv=None):
    """(out, lse) of Longformer attention by the dense mask of longformer_mask.
    global_qkv (q_g, k_g, v_g): the global query rows' own projections (their
    queries from q_g, over all keys of k_g / values of v_g), as Longformer's
    query_global / key_global / value_global."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])

    def scores(q, k):
        s = torch.matmul(q, k.repeat_interleave(group, dim=1).transpose(-1, -2)) * scale
        return softcap * torch.tanh(s / softcap) if softcap > 0 else s

    visible = longformer_mask(q.shape[2], k.shape[2], window_left, window_right, dilation, global_mask, q.device)
    out, lse = _masked_softmax_ref(scores(q, k), v.repeat_interleave(group, dim=1), visible, dtype, upcast)
    if global_qkv is None or global_mask is None or q.shape[2] != k.shape[2]:
        return out, lse
    q_g, k_g, v_g = (t.double() if upcast else t for t in global_qkv)
    everything = torch.ones_like(visible)
    out_g, lse_g = _masked_softmax_ref(scores(q_g, k_g), v_g.repeat_interleave(group, dim=1), everything, dtype,
                                       upcast)
    rows = global_mask[:, None, :]  # (B, 1, Sq): the global query rows
    return torch.where(rows[..., None], out_g, out), torch.where(rows, lse_g, lse)
