"""The distributed attention as one autograd.Function: halo exchange, the
local op on row blocks, and a backward that returns the halo's key
gradients to their owners.

Forward, per rank:
  1. post the halo transfer (own pieces out, left/right halo pieces in);
  2. interior rows (they see own keys only): torch.ops.swa.attention;
  3. wait; edge rows over halo + own keys (one call per edge, its window
     shifted to undo the op's bottom-right alignment, layout.RowBlock);
  4. out / lse = the row blocks concatenated (rows are independent, so
     no row's work is split and no lse merge is needed).
Backward, mirrored: the edge blocks first (they produce the halo's dK/dV),
post the gradient transfer (halo gradients to their owners, ours back in),
the interior block while they travel, then add what arrived. With
overlap=False each pass waits for its transfer first and runs one call over
all rows (the benchmark's baseline).

Extension point (attention sinks): sink tokens live on rank 0; a call would
broadcast their K/V (or learned logits) once from rank 0 before step 1 and
hand them to every `_block_forward` / `_block_backward` call, the op's
sink arguments adding them to every row's softmax; the sink gradients,
summed over ranks (all_reduce), return to rank 0's parameters.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import exchange, layout
from .layout import HaloPlan, RowBlock


def _ext_slice(parts: List[Tensor], begin: int, end: int) -> Tensor:
    """Keys [begin, end) of the concatenation of `parts` along dim 2 (a view
    when they come from one part)."""
    pieces, at = [], 0
    for t in parts:
        n = t.shape[2]
        b, e = max(begin, at), min(end, at + n)
        if b < e:
            pieces.append(t[:, :, b - at:e - at])
        at += n
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat(pieces, dim=2)


def _halo_recvs(pieces, k: Tensor) -> List[Tuple[int, Tuple[int, ...]]]:
    b, h, _, d = k.shape
    return [(p.peer, (2, b, h, p.length, d)) for p in pieces]


def _own_sends(plan: HaloPlan, k: Tensor, v: Tensor) -> List[Tuple[int, Tensor]]:
    return [(p.peer, exchange.pack(k[:, :, p.begin - plan.offset:p.end - plan.offset],
                                   v[:, :, p.begin - plan.offset:p.end - plan.offset]))
            for p in plan.sends]


def _split(received: List[Tensor], n_left: int, like: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Halo K and V (left, right) from the received [2, ...] pieces."""
    def cat(bufs, i):
        if not bufs:
            return like.new_empty(like.shape[:2] + (0, like.shape[3]))
        return bufs[0][i] if len(bufs) == 1 else torch.cat([b[i] for b in bufs], dim=2)
    left, right = received[:n_left], received[n_left:]
    return cat(left, 0), cat(left, 1), cat(right, 0), cat(right, 1)


class _Config:
    def __init__(self, plan, window_left, window_right, scale, softcap, group, call_id, overlap):
        self.plan, self.window_left, self.window_right = plan, window_left, window_right
        self.scale, self.softcap, self.group, self.call_id, self.overlap = scale, softcap, group, call_id, overlap

    def block(self, rows: Tuple[int, int]) -> RowBlock:
        p = self.plan
        return layout.row_block(rows[0], rows[1], p.left_len, p.length, p.right_len,
                                self.window_left, self.window_right)


def _block_forward(cfg: _Config, q: Tensor, k_parts, v_parts, blk: RowBlock):
    k = _ext_slice(k_parts, blk.key_begin, blk.key_end)
    v = _ext_slice(v_parts, blk.key_begin, blk.key_end)
    out, lse = torch.ops.swa.attention(q[:, :, blk.row_begin:blk.row_end], k, v,
                                       cfg.window_left + blk.shift, cfg.window_right - blk.shift,
                                       cfg.scale, cfg.softcap)
    return out, lse


def _block_backward(cfg: _Config, q, k_parts, v_parts, out, lse, grad_out, grad_lse, blk: RowBlock):
    """(dq rows, dk, dv over the block's extended keys)."""
    r = slice(blk.row_begin, blk.row_end)
    k = _ext_slice(k_parts, blk.key_begin, blk.key_end)
    v = _ext_slice(v_parts, blk.key_begin, blk.key_end)
    return torch.ops.swa.attention_backward(
        grad_out[:, :, r], None if grad_lse is None else grad_lse[:, :, r], q[:, :, r], k, v,
        out[:, :, r], lse[:, :, r], cfg.window_left + blk.shift, cfg.window_right - blk.shift,
        cfg.scale, cfg.softcap, torch.are_deterministic_algorithms_enabled())


def _blocks(cfg: _Config) -> List[Tuple[RowBlock, bool]]:
    """(row block, sees a halo key) in row order, empty blocks dropped."""
    if not cfg.overlap:
        return [(cfg.block((0, cfg.plan.length)), True)] if cfg.plan.length > 0 else []
    left, interior, right = layout.row_split(cfg.plan, cfg.window_left, cfg.window_right)
    return [(cfg.block(rows), rows != interior) for rows in (left, interior, right) if rows[1] > rows[0]]


def _own_coords(blk: RowBlock, plan: HaloPlan) -> RowBlock:
    """An interior block in own-key coordinates (it sees no halo key)."""
    return RowBlock(blk.row_begin, blk.row_end, blk.key_begin - plan.left_len, blk.key_end - plan.left_len,
                    blk.shift)


class HaloAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cfg: _Config):
        plan = cfg.plan
        transfer = exchange.start(_own_sends(plan, k, v), _halo_recvs(plan.left + plan.right, k), k,
                                  cfg.group, exchange.tag(cfg.call_id, False), "forward")
        blocks = _blocks(cfg)
        results = {}
        own = ([k], [v])
        for i, (blk, edge) in enumerate(blocks):  # step 2: no halo needed
            if not edge:
                results[i] = _block_forward(cfg, q, own[0], own[1], _own_coords(blk, plan))
        k_l, v_l, k_r, v_r = _split(transfer.wait(), len(plan.left), k)  # step 3
        k_parts, v_parts = [k_l, k, k_r], [v_l, v, v_r]
        for i, (blk, edge) in enumerate(blocks):
            if edge:
                results[i] = _block_forward(cfg, q, k_parts, v_parts, blk)
        outs = [results[i] for i in range(len(blocks))]
        if not outs:  # an empty shard
            out = torch.empty_like(q)
            lse = q.new_empty(q.shape[:3], dtype=torch.float32)
        elif len(outs) == 1:
            out, lse = outs[0]
        else:
            out = torch.cat([o for o, _ in outs], dim=2)
            lse = torch.cat([s for _, s in outs], dim=2)
        ctx.cfg, ctx.blocks = cfg, blocks
        ctx.save_for_backward(q, k, v, k_l, v_l, k_r, v_r, out, lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor], grad_lse: Optional[Tensor]):
        q, k, v, k_l, v_l, k_r, v_r, out, lse = ctx.saved_tensors
        cfg, blocks, plan = ctx.cfg, ctx.blocks, ctx.cfg.plan
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        elif grad_out.stride(-1) != 1:  # e.g. the expanded gradient of out.sum()
            grad_out = grad_out.contiguous()
        if grad_lse is not None and grad_lse.stride(-1) != 1:
            grad_lse = grad_lse.contiguous()
        k_parts, v_parts = [k_l, k, k_r], [v_l, v, v_r]
        n_l, n = plan.left_len, plan.length
        # Gradients over the extended keys (left halo, own, right halo),
        # accumulated in float32 for 16-bit inputs: own keys sum up to three
        # blocks and the pieces coming back; each halo key gets one block's
        # gradient, sent in the inputs' dtype.
        acc = torch.float32 if k.dtype in (torch.float16, torch.bfloat16) else k.dtype
        dk_ext = k.new_zeros(k.shape[:2] + (n_l + n + plan.right_len, k.shape[3]), dtype=acc)
        dv_ext = torch.zeros_like(dk_ext)
        dq_blocks = {}
        for i, (blk, edge) in enumerate(blocks):  # the edges first: they make the halo's gradients
            if edge:
                dq_blocks[i], dk, dv = _block_backward(cfg, q, k_parts, v_parts, out, lse, grad_out, grad_lse, blk)
                dk_ext[:, :, blk.key_begin:blk.key_end] += dk
                dv_ext[:, :, blk.key_begin:blk.key_end] += dv
        sends = []
        for pieces, at in ((plan.left, 0), (plan.right, n_l + n)):
            for p in pieces:
                r = slice(at, at + p.length)
                sends.append((p.peer, exchange.pack(dk_ext[:, :, r].to(k.dtype), dv_ext[:, :, r].to(k.dtype))))
                at += p.length
        transfer = exchange.start(sends, _halo_recvs(plan.sends, k), k, cfg.group,
                                  exchange.tag(cfg.call_id, True), "backward")
        dk_own, dv_own = dk_ext[:, :, n_l:n_l + n], dv_ext[:, :, n_l:n_l + n]
        for i, (blk, edge) in enumerate(blocks):  # the interior while the gradients travel
            if not edge:
                b = _own_coords(blk, plan)
                dq_blocks[i], dk, dv = _block_backward(cfg, q, [k], [v], out, lse, grad_out, grad_lse, b)
                dk_own[:, :, b.key_begin:b.key_end] += dk
                dv_own[:, :, b.key_begin:b.key_end] += dv
        for p, buf in zip(plan.sends, transfer.wait()):
            r = slice(p.begin - plan.offset, p.end - plan.offset)
            dk_own[:, :, r] += buf[0]
            dv_own[:, :, r] += buf[1]
        dqs = [dq_blocks[i] for i in range(len(blocks))]
        dq = dqs[0] if len(dqs) == 1 else (torch.cat(dqs, dim=2) if dqs else torch.zeros_like(q))
        return dq, dk_own.to(k.dtype).contiguous(), dv_own.to(v.dtype).contiguous(), None

