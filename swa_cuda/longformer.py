"""Longformer's attention patterns, exact and O(n·(W + g)), composed from the
banded op (torch.ops.swa.attention) through its differentiable lse:

- dilation d: query position p sees key j iff (p - j) % d == 0 and
  -right <= (p - j) / d <= left. The positions of one residue class mod d
  form an ordinary banded problem with the same (left, right), so the op runs
  once per class on strided views of q, k, v (sequence stride x d, no copy;
  the CPU and CUDA kernels take any strides with a contiguous last dim). The
  last query and the last key of a class sit at the same position, so the
  op's bottom-right alignment holds inside each class when Sq != Sk.
- global tokens (global_mask [B, Sk]): every query also sees the global keys,
  each counted once (a global key inside a row's band is left to the band),
  through a dense [Sq, g] score block merged with the band through lse; a
  global query (Sq == Sk) sees every key, through a dense [g, Sk] block that
  replaces its row. Sizing g (the largest number of global tokens in the
  batch) reads one integer back to the host, whether the counts differ one
  more. When the global tokens are one prefix [0, g) of every sequence
  (Longformer's [CLS] and question tokens) with Sq == Sk and no dilation,
  they are the op's sink tokens instead: the band kernel sees them with
  every row, counted once, and no dense block or merge runs (_global_prefix).

- per-head windows and dilations (window_size entries and dilation as int
  tensors [Hq]): the heads of one dilation run together, their windows
  through attention.per_head (one call per residue class); the global part
  tests each head's band. Grouping by dilation reads the dilations back to
  the host.

Autograd runs through the op's backward and the merge; everything is
differentiable in q, k, v (and the global projections). The merge weighs
the band by the op's lse, which is float32 for every dtype: float64 inputs
with global tokens are exact to about 1e-7 relative, not to float64.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .ops import _attend_any, _head_window, _is_int, _result, _window_pair

_FN = "longformer_attention"


def longformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window_size: Tuple[Union[int, Tensor], Union[int, Tensor]],
    *,
    dilation: Union[int, Tensor] = 1,
    global_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    global_q: Optional[Tensor] = None,
    global_k: Optional[Tensor] = None,
    global_v: Optional[Tensor] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Longformer attention: a (dilated) band plus global tokens.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Sk, D] (Hq a multiple of Hkv); query
    row i sits at key position p = i + Sk - Sq (bottom-right alignment).
    `window_size=(left, right)` as in local_attention, counted in steps of
    `dilation` (-1 = unbounded): row i sees key j iff (p - j) % dilation == 0
    and -right <= (p - j) / dilation <= left. `global_mask` bool [B, Sk]:
    global key positions, seen by every query; when Sq == Sk the queries at
    those positions are global and see every key. `global_q` [B, Hq, Sq, D],
    `global_k` / `global_v` [B, Hkv, Sk, D] (all three or none; Longformer's
    query_global / key_global / value_global): the global rows' queries,
    keys and values instead of q, k, v (only their global rows of global_q
    are read). Returns out [B, Hq, Sq, D] (and lse [B, Hq, Sq] float32).

    Per head: either entry of `window_size` and `dilation` may be int
    tensors [Hq] (query head h then uses left[h], right[h], dilation[h]).
    """
    left, right = _window_pair(_FN, window_size, per_head=True)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{_FN}: {name} must be a 4-d tensor [B, H, S, D], got "
                             f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if isinstance(dilation, Tensor):
        dilation = _head_window(_FN, "dilation", dilation, q.shape[1])
        if bool((dilation < 1).any()):
            raise ValueError(f"{_FN}: every dilation must be >= 1 (1 = the plain band), got {dilation.tolist()}")
    elif not _is_int(dilation) or int(dilation) < 1:
        raise ValueError(f"{_FN}: dilation must be an int >= 1 (1 = the plain band) or an int tensor [Hq], "
                         f"got {dilation!r}")
    else:
        dilation = int(dilation)
    global_qkv = _check_global(q, k, v, global_mask, global_q, global_k, global_v)

    prefix = _global_prefix(q, k, global_mask, dilation)
    if prefix:  # the band kernel takes the global keys as sink tokens
        out, lse = _attend_any(_FN, q, k, v, left, right, scale, softcap, None, prefix)
        out, lse = _global_rows(q, k, v, out, lse, _positions(global_mask, prefix), None, global_qkv, scale,
                                softcap)
        return _result(out.to(q.dtype), lse.float(), return_lse)
    if isinstance(dilation, Tensor):
        out, lse = _per_head_dilated_band(q, k, v, left, right, dilation, scale, softcap)
    else:
        out, lse = _dilated_band(q, k, v, left, right, dilation, scale, softcap)
    if global_mask is not None:
        out, lse = _add_global_tokens(q, k, v, out, lse, global_mask, global_qkv, left, right, dilation, scale,
                                      softcap)
    return _result(out, lse.float(), return_lse)


def _global_prefix(q, k, global_mask, dilation) -> int:
    """g when the global positions of every sequence are the same prefix
    [0, g) (Longformer's [CLS] and question tokens) with Sq == Sk and no
    dilation, else 0. Then the global keys are the op's sink tokens: every
    non-global row (position p >= g) sees them, each counted once, inside
    the band kernel (no dense [Sq, g] block and no merge pass); the rows
    [0, g) are global and replaced by their dense rows. Two host reads
    (the count, and whether the mask is that prefix)."""
    if global_mask is None or not isinstance(dilation, int) or dilation != 1 or q.shape[2] != k.shape[2]:
        return 0
    if global_mask.numel() == 0 or q.shape[2] == 0:
        return 0
    g = int(global_mask[0].sum())
    if g == 0 or not bool((global_mask.sum(-1) == g).all() & global_mask[:, :g].all()):
        return 0
    return g


def _positions(global_mask, g):
    """[B, g] global positions of each sequence in order, then padding
    (stable sort: the first g of the positions whose flag is set)."""
    return torch.sort((~global_mask).to(torch.uint8), dim=-1, stable=True).indices[:, :g]


def _check_global(q, k, v, global_mask, global_q, global_k, global_v):
    projections = (global_q, global_k, global_v)
    given = [t is not None for t in projections]
    if any(given) and not all(given):
        raise ValueError(f"{_FN}: global_q, global_k and global_v go together (all three or none)")
    if global_mask is None:
        if any(given):
            raise ValueError(f"{_FN}: global_q/global_k/global_v need global_mask (which rows are global)")
        return None
    B, Sk = k.shape[0], k.shape[2]
    if not isinstance(global_mask, Tensor) or global_mask.dtype != torch.bool:
        raise TypeError(f"{_FN}: global_mask must be a bool tensor [B, Sk] = [{B}, {Sk}], got "
                        f"{global_mask.dtype if isinstance(global_mask, Tensor) else type(global_mask).__name__}")
    if tuple(global_mask.shape) != (B, Sk):
        raise ValueError(f"{_FN}: global_mask must have shape [B, Sk] = [{B}, {Sk}] (one flag per key "
                         f"position), got {list(global_mask.shape)}")
    if global_mask.device != k.device:
        raise ValueError(f"{_FN}: global_mask must be on k's device ({k.device}), got {global_mask.device}")
    if not any(given):
        return None
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"{_FN}: global_q/global_k/global_v need Sq == Sk (global query rows are the global "
                         f"key positions), got Sq = {q.shape[2]}, Sk = {k.shape[2]}")
    for name, t, like in (("global_q", global_q, q), ("global_k", global_k, k), ("global_v", global_v, v)):
        if not isinstance(t, Tensor) or t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
            what = f"{list(t.shape)} {t.dtype} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{_FN}: {name} must match its local counterpart ({list(like.shape)} {like.dtype} "
                             f"on {like.device}), got {what}")
    return projections


def _band(q, k, v, left, right, scale, softcap):
    """The banded op; attention.per_head when a window is per head."""
    return _attend_any(_FN, q, k, v, left, right, scale, softcap, None, 0)


def _per_head_dilated_band(q, k, v, left, right, dilation, scale, softcap):
    """(out, lse) with a dilation per query head: the heads of each dilation
    together (their kv heads gathered per query head unless they are whole
    GQA groups), each group a dilated band."""
    Hq, Hkv = q.shape[1], k.shape[1]
    group = Hq // Hkv if Hkv else 1
    left_t = _head_window(_FN, "window_size[0] (left)", left, Hq)
    right_t = _head_window(_FN, "window_size[1] (right)", right, Hq)
    values = dilation.tolist()  # the host read
    if len(set(values)) == 1:
        return _dilated_band(q, k, v, left_t, right_t, values[0], scale, softcap)
    out = q.new_empty(q.shape)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    for d in sorted(set(values)):
        heads = [h for h in range(Hq) if values[h] == d]
        whole_groups = all(all(values[g * group + i] == d for i in range(group)) for g in {h // group for h in heads})
        kv = sorted({h // group for h in heads}) if whole_groups else [h // group for h in heads]
        hq = torch.tensor(heads, device=q.device)
        hk = torch.tensor(kv, device=q.device)
        o, l = _dilated_band(q.index_select(1, hq), k.index_select(1, hk), v.index_select(1, hk),
                             left_t.index_select(0, hq.to(left_t.device)),
                             right_t.index_select(0, hq.to(right_t.device)), d, scale, softcap)
        out = out.index_copy(1, hq, o)
        lse = lse.index_copy(1, hq, l)
    return out, lse


def _classes_as_batch(q, k, v, left, right, dilation, scale, softcap):
    """The dilated band of one batch entry (q [1, Hq, n, D], k, v [1, Hkv, n,
    D], n a multiple of d) as ONE call of the op whose batch is the d residue
    classes: [1, H, n, D] viewed as [d, H, n / d, D] (class r = positions r,
    r + d, ...; strides (D, n D, d D, 1), no copy). The op's outputs and
    gradients take their input's strides (empty_like), so out comes back in
    q's layout as a view, and autograd hands q, k, v their gradients without
    a scatter; only lse ([d, H, n / d] -> [1, H, n], a row each) is copied."""
    def classes(t):
        H, n, D = t.shape[1:]
        return t.reshape(H, n // dilation, dilation, D).permute(2, 0, 1, 3)

    out_c, lse_c = _band(classes(q), classes(k), classes(v), left, right, scale, softcap)
    Hq, n, D = q.shape[1:]
    out = out_c.permute(1, 2, 0, 3).reshape(1, Hq, n, D)  # a view when out_c has q's strides
    lse = lse_c.permute(1, 2, 0).reshape(1, Hq, n)
    return out, lse


def _dilated_band(q, k, v, left, right, dilation, scale, softcap):
    """(out, lse) of the dilated band: the op once per residue class (or,
    for equal lengths divisible by d, one call per batch entry over all
    classes at once: _classes_as_batch)."""
    Sq, Sk = q.shape[2], k.shape[2]
    if dilation == 1 or Sq == 0 or Sk == 0:
        return _band(q, k, v, left, right, scale, softcap)
    if Sq == Sk and Sq % dilation == 0 and q.shape[0] > 0:
        if q.shape[0] == 1:
            return _classes_as_batch(q, k, v, left, right, dilation, scale, softcap)
        parts = [_classes_as_batch(qb[None], kb[None], vb[None], left, right, dilation, scale, softcap)
                 for qb, kb, vb in zip(q.unbind(0), k.unbind(0), v.unbind(0))]
        return torch.cat([o for o, _ in parts]), torch.cat([l for _, l in parts])
    out = q.new_empty(q.shape)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    for r in range(min(dilation, Sk)):  # key positions r, r + d, ...
        first = (r - (Sk - Sq)) % dilation  # the first query row at a position in the class
        if first >= Sq:
            continue
        o, l = _band(q[:, :, first::dilation], k[:, :, r::dilation], v[:, :, r::dilation], left, right, scale,
                     softcap)
        out[:, :, first::dilation] = o
        lse[:, :, first::dilation] = l
    return out, lse


def _scores(q, k, scale, softcap):
    """[B, Hkv, group, Sq, Sk] scores of q [B, Hq, Sq, D] against k [B, Hkv, Sk, D],
    in the accumulation dtype (float64 for float64 inputs, else float32)."""
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if scale is None:
        scale = D ** -0.5
    s = torch.matmul(q.to(acc).reshape(B, Hkv, Hq // Hkv, Sq, D), k.to(acc)[:, :, None].transpose(-1, -2))
    s = s * scale
    return softcap * torch.tanh(s / softcap) if softcap > 0 else s


def _softmax_rows(s, v, keep):
    """(out [B, Hq, Sq, D], lse [B, Hq, Sq], both in the accumulation dtype)
    of the scores s [B, Hkv, group, Sq, n] over keys where keep, values v
    [B, Hkv, n, D]; rows that keep nothing give 0 and -inf (and no NaN in
    the gradients)."""
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    empty = total == 0
    total = torch.where(empty, torch.ones_like(total), total)
    out = torch.matmul(e / total, v.to(s.dtype)[:, :, None])
    lse = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(total)).squeeze(-1)
    B, Hkv, group, Sq, D = out.shape
    return out.reshape(B, Hkv * group, Sq, D), lse.reshape(B, Hkv * group, Sq)


def _merge(out_a, lse_a, out_b, lse_b):
    """Softmax over the union of two disjoint key sets from each one's (out, lse)."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)
    total = wa + wb
    empty = total == 0
    total = torch.where(empty, torch.ones_like(total), total)
    lse = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(total))
    # wa / total + wb / total = 1: one fused pass over the rows, out_a +
    # (wb / total) (out_b - out_a) (a row seeing neither set has out_a = 0).
    acc = out_b.dtype
    return torch.lerp(out_a.to(acc), out_b, (wb / total).to(acc)[..., None]), lse


def _add_global_tokens(q, k, v, out, lse, global_mask, global_qkv, left, right, dilation, scale, softcap):
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    count = global_mask.sum(-1)
    g = int(count.max()) if global_mask.numel() else 0  # the one host read
    if g == 0 or Sq == 0:
        return out, lse
    padded = bool((count < g).any())  # (and a second: do the sequences' counts differ?)
    positions = _positions(global_mask, g)  # [B, g]
    valid = torch.arange(g, device=q.device)[None, :] < count[:, None]  # [B, g]

    # Every query row and the global keys outside its band.
    k_g = k.gather(2, positions[:, None, :, None].expand(B, Hkv, g, D))
    v_g = v.gather(2, positions[:, None, :, None].expand(B, Hkv, g, D))
    delta = (torch.arange(Sq, device=q.device) + (Sk - Sq))[None, :, None] - positions[:, None, :]  # [B, Sq, g]
    if any(isinstance(x, Tensor) for x in (left, right, dilation)):  # per head: [B, Hq, Sq, g]
        def per_head(x):
            return _head_window(_FN, "window", x, Hq).to(q.device).view(1, Hq, 1, 1)

        d, lo, hi = per_head(dilation), per_head(left), per_head(right)
        delta = delta[:, None]
        in_band = (delta % d == 0) & ((lo < 0) | (delta <= lo * d)) & ((hi < 0) | (delta >= -hi * d))
        keep = (valid[:, None, None, :] & ~in_band).view(B, Hkv, Hq // Hkv, Sq, g)
    else:
        in_band = delta % dilation == 0
        if left >= 0:
            in_band &= delta <= left * dilation
        if right >= 0:
            in_band &= delta >= -right * dilation
        keep = (valid[:, None, :] & ~in_band)[:, None, None]  # [B, 1, 1, Sq, g]
    out_g, lse_g = _softmax_rows(_scores(q, k_g, scale, softcap), v_g, keep)
    out, lse = _merge(out, lse, out_g, lse_g)
    if Sq == Sk:  # the global query rows see every key
        # In place: out and lse are the merge's fresh results, which no
        # backward saved (lerp keeps its inputs and weight).
        out, lse = _global_rows(q, k, v, out, lse, positions, valid if padded else None, global_qkv, scale,
                                softcap, in_place=True)
    return out.to(q.dtype), lse  # lse in the accumulation dtype (the caller returns float32)


def _global_rows(q, k, v, out, lse, positions, valid, global_qkv, scale, softcap, in_place=False):
    """out / lse with the rows at positions [B, g] replaced by their dense
    rows over every key (through global_qkv when given); valid [B, g] (None:
    all) marks padding entries, which keep what is there."""
    B, Hq, _, D = q.shape
    g = positions.shape[1]
    q_rows, k_all, v_all = global_qkv if global_qkv is not None else (q, k, v)
    index = positions[:, None, :, None].expand(B, Hq, g, D)
    q_g = q_rows.gather(2, index)
    everything = torch.ones(1, 1, 1, 1, 1, dtype=torch.bool, device=q.device)
    out_rows, lse_rows = _softmax_rows(_scores(q_g, k_all, scale, softcap), v_all, everything)
    lse_index = positions[:, None, :].expand(B, Hq, g)
    if valid is not None:  # padding entries (past a sequence's count) write back what is there
        row_valid = valid[:, None, :]  # [B, 1, g]
        out_rows = torch.where(row_valid[..., None], out_rows, out.gather(2, index))
        lse_rows = torch.where(row_valid, lse_rows, lse.gather(2, lse_index))
    out_rows, lse_rows = out_rows.to(out.dtype), lse_rows.to(lse.dtype)
    if in_place and valid is None:
        return out.scatter_(2, index, out_rows), lse.scatter_(2, lse_index, lse_rows)
    return out.scatter(2, index, out_rows), lse.scatter(2, lse_index, lse_rows)
