"""Longformer drop-in: transformers' LongformerSelfAttention computed by
swa_cuda.longformer_attention.

Longformer does not go through transformers' AttentionInterface (it has its
own chunked band code), so :func:`enable_longformer` swaps the forward of each
``LongformerSelfAttention`` module of a model for :func:`longformer_forward`,
which keeps the module's weights (query/key/value and the global
query_global/key_global/value_global projections) and computes:

- the band of ``attention_window[layer] // 2`` keys on each side;
- global tokens (``attention_mask == 2`` in the model's input): their keys
  seen by every query with the local projections, their rows by the global
  projections over every key (Longformer's two kinds of global attention);
- padding (the model's own padding to a multiple of the window and the
  caller's): a sequence's real tokens are a prefix of its row (right
  padding), so each group of sequences of the same real length attends over
  that prefix only; padding rows get a zero attention output, as in
  transformers' own code.

It falls back to transformers' computation, unchanged, for what it does not
compute: ``output_attentions=True`` (it forms no probabilities), attention
dropout in training, and padding that is not a suffix of each row.
"""

import types

import torch
from torch import Tensor

import swa_cuda

_ORIGINAL = "_swa_original_forward"


def enable_longformer(model: torch.nn.Module) -> int:
    """Runs every LongformerSelfAttention of `model` (a LongformerModel or a
    model holding one) through swa_cuda. Idempotent; returns the number of
    attention modules switched."""
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    count = 0
    for module in model.modules():
        if isinstance(module, LongformerSelfAttention):
            if not hasattr(module, _ORIGINAL):
                setattr(module, _ORIGINAL, module.forward)
                module.forward = types.MethodType(longformer_forward, module)
            count += 1
    if count == 0:
        raise ValueError("enable_longformer: the model has no LongformerSelfAttention module")
    return count


def disable_longformer(model: torch.nn.Module) -> int:
    """Undoes enable_longformer; returns the number of modules restored."""
    count = 0
    for module in model.modules():
        if hasattr(module, _ORIGINAL):
            module.forward = getattr(module, _ORIGINAL)
            delattr(module, _ORIGINAL)
            count += 1
    return count


def _real_lengths(is_index_masked: Tensor):
    """Each row's real length when its padding is a suffix, else None."""
    lengths = (~is_index_masked).sum(-1)
    positions = torch.arange(is_index_masked.shape[1], device=is_index_masked.device)
    if not torch.equal(is_index_masked, positions[None, :] >= lengths[:, None]):
        return None
    return lengths


def longformer_forward(self, hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                       is_global_attn=None, output_attentions=False):
    """LongformerSelfAttention.forward by swa_cuda (same arguments and
    outputs; hidden_states [B, S, E], S a multiple of the window as
    LongformerModel pads it)."""
    original = getattr(self, _ORIGINAL)
    if output_attentions or (self.training and self.dropout > 0) or is_index_masked is None:
        return original(hidden_states, attention_mask, is_index_masked, is_index_global_attn, is_global_attn,
                        output_attentions)
    lengths = _real_lengths(is_index_masked)
    if lengths is None:
        return original(hidden_states, attention_mask, is_index_masked, is_index_global_attn, is_global_attn,
                        output_attentions)

    B, S, E = hidden_states.shape
    H, D = self.num_heads, self.head_dim

    def heads(x: Tensor) -> Tensor:  # [B, S, E] -> [B, H, S, D] (a view)
        return x.view(B, S, H, D).transpose(1, 2)

    q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
    window = (self.one_sided_attn_window_size, self.one_sided_attn_window_size)
    glob = is_index_global_attn if is_global_attn else None
    projections = (None, None, None)
    if glob is not None:
        # The global queries only at the global rows (as transformers does); keys/values everywhere.
        rows = glob.nonzero(as_tuple=True)
        q_global = hidden_states.new_zeros(B, S, E)
        q_global = q_global.index_put(rows, self.query_global(hidden_states[rows]))
        projections = (heads(q_global), heads(self.key_global(hidden_states)),
                       heads(self.value_global(hidden_states)))

    out = hidden_states.new_zeros(B, H, S, D)
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        batch = (lengths == length).nonzero(as_tuple=True)[0]
        pick = (lambda t: t[batch, :, :length]) if len(batch) < B else (lambda t: t[:, :, :length])
        group_projections = tuple(None if t is None else pick(t) for t in projections)
        o = swa_cuda.longformer_attention(
            pick(q), pick(k), pick(v), window, global_mask=None if glob is None else glob[batch, :length],
            global_q=group_projections[0], global_k=group_projections[1], global_v=group_projections[2])
        out = out.index_put((batch,), torch.nn.functional.pad(o, (0, 0, 0, S - length)))
    return (out.transpose(1, 2).reshape(B, S, E),)
