"""Context parallelism for sliding-window attention on torch.distributed.

The sequence is sharded across the ranks of a process group (rank r of the
group holds the r-th consecutive shard, lengths may differ). With a window of
W keys a query needs only the W - 1 keys before it, so a rank needs a halo of
min(W - 1, its offset) keys from its predecessor(s) (and, with
window_right > 0, window_right keys from its successor(s)): bytes per rank
independent of the sequence length and of the number of ranks, where
all-gather CP or ring attention move (P - 1)/P of the whole K/V.

Modules: layout (shard offsets, halo pieces, row blocks: pure index math),
checks (the collective input check that also exchanges the shard lengths),
exchange (P2P transfer with batch_isend_irecv, byte counter), attention (the
autograd.Function: overlap of the transfer with the interior rows, backward
that returns the halo's dK/dV to their owners).

Extension points for features that do not exist yet: packed sequences
(cu_seqlens) clip the halo ranges at document boundaries (layout.halo_ranges);
attention sinks live on rank 0 and are broadcast once per call to every
row block's op call (attention.py's module docstring).
"""

from typing import Optional, Tuple, Union

import torch.distributed as dist
from torch import Tensor

from . import attention, checks, exchange, layout
from .exchange import TRAFFIC

__all__ = ["sliding_window_attention", "TRAFFIC"]


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    group=None,
    window_right: int = 0,
    scale: Optional[float] = None,
    softcap: float = 0.0,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Sliding-window attention over a sequence sharded across `group`.

    q [B, Hq, S_r, D], k/v [B, Hkv, S_r, D]: this rank's contiguous shard of
    the sequence (ranks in group order hold consecutive shards; S_r may
    differ between ranks, also be shorter than W - 1 or 0). `window` = W keys
    including self (as swa_cuda.sliding_window_attention, window_left = W - 1),
    `window_right` extra keys after self; `scale` and `softcap` as in
    torch.ops.swa.attention. Returns this shard's out [B, Hq, S_r, D] (and
    lse [B, Hq, S_r] float32 if return_lse), equal to the single-process op
    on the gathered sequence. Differentiable in q, k, v through both outputs.

    A collective call: every rank of the group calls it, in the same order,
    with the same batch, heads, head dim, dtype, window, scale, softcap and
    requires_grad; arguments that are wrong on any rank raise the same
    ValueError on every rank. A backward that involves the outputs must run
    on every rank (it exchanges the halo gradients), as with DDP.
    """
    requires_grad = any(isinstance(t, Tensor) and t.requires_grad for t in (q, k, v))
    lengths = checks.check_and_exchange_lengths(q, k, v, window, window_right, scale, softcap,
                                                requires_grad, group)
    out, lse = _attention(q, k, v, lengths, window - 1, window_right, scale, float(softcap), group,
                          overlap=True)
    return (out, lse) if return_lse else out


def _attention(q, k, v, lengths, window_left, window_right, scale, softcap, group, overlap):
    """After the check: the exchange and the local op (overlap=False waits for
    the halo before computing anything, the benchmark's baseline)."""
    rank = dist.get_rank(group)
    plan = layout.halo_plan(lengths, rank, window_left, window_right)
    cfg = attention._Config(plan, window_left, window_right, scale, softcap, group,
                            exchange.next_call_id(group), overlap)
    return attention.HaloAttention.apply(q, k, v, cfg)
