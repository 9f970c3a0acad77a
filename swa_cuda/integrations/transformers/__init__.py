"""Hugging Face transformers integration: ``attn_implementation="swa_cuda"``
and a rolling KV cache for ``generate()``.

Use::

    from swa_cuda.integrations import transformers as swa_hf

    swa_hf.register()                                   # once per process
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="swa_cuda")
    out = model.generate(**inputs)                      # HF's caches work (dynamic, static)
    out = model.generate(**inputs, past_key_values=swa_hf.SWARollingCache(model.config))

``register()`` adds ``"swa_cuda"`` to transformers' ``AttentionInterface``
(the attention function, :func:`swa_attention_forward`) and to its
``AttentionMaskInterface`` (:func:`swa_mask`). Every attention layer then runs
through ``torch.ops.swa.attention`` (or ``torch.ops.swa.cache_attention`` for
the layers of an :class:`SWARollingCache`): sliding-window layers with their
``sliding_window`` (W tokens, the token itself included), full layers
causally, ``scaling`` and ``softcap`` as given, GQA without repeating K/V.

Masks. Transformers hands an attention implementation the object that its
registered mask function returns. :func:`swa_mask` returns a small
:class:`SWAMask` (the pattern, the query/key offsets and the 2D padding mask)
instead of a dense ``[B, 1, Sq, Sk]`` tensor: the band is computed by the
kernels. It recognises exactly the patterns transformers builds for causal,
sliding-window causal, bidirectional and sliding-window bidirectional layers,
checks each one numerically on a probe row, and refuses anything else
(chunked attention, image-token overlays, ...) with an
error that names the pattern, rather than computing something else.

Padding. Positions in a transformers mask are indices into the padded batch
(cache positions). Left padding is a contiguous run of padding before each
sequence's tokens, so index distances between real tokens equal their real
distances and the sliding window means the same thing in both coordinates.
The op takes one window for the whole batch and no per-sequence key mask, so
a padded batch is computed per group of sequences with the same padding: each
group's real queries attend to its real keys only (a slice of K/V, no
copy for a group of one). Any padding pattern whose real tokens form one
contiguous run (left padding, right padding) is exact for every real token;
a mask with holes is refused. The outputs at padding positions are zeros (as
FlashAttention's unpadded path gives; eager gives arbitrary values there, and
nothing downstream reads them: padding keys are masked everywhere). Compare
logits at real tokens only, and in training keep padding positions out of the
loss: with left padding and the usual shifted labels, also label a
sequence's first real token -100 (a padding position would predict it).
Gradients then match eager.

Rolling cache. :class:`SWARollingCache` is a transformers ``Cache`` whose
sliding-window layers are :class:`RollingSlidingWindowLayer` (each backed by
a :class:`swa_cuda.RollingKVCache` ring of W tokens: fixed memory however
many tokens are generated, written in place) and whose full layers are the
usual growing ``DynamicLayer``. Its ``update()`` only hands the new K/V to the
attention function, which attends over ring + new tokens with
``cache_attention`` and then appends them: so it needs
``attn_implementation="swa_cuda"`` (it says so otherwise). Padding tokens are
never written to a ring: each sequence keeps its own position (its count of
real tokens), so a left-padded batch is exact too, provided the padding comes
with each sequence's first chunk.
"""

try:
    import transformers as _hf
except ImportError as _e:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "swa_cuda.integrations.transformers needs Hugging Face transformers (an optional dependency of "
        "swa_cuda): `pip install transformers` (tested with transformers 5.17 and 5.23). "
        f"Import failed with: {_e}"
    ) from _e
try:
    from transformers import AttentionInterface
    from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, get_layer_types_and_kwargs  # noqa: F401
    from transformers.masking_utils import (  # noqa: F401
        AttentionMaskInterface,
        bidirectional_mask_function,
        causal_mask_function,
    )
except ImportError as _e:  # pragma: no cover - an older transformers
    raise ImportError(
        f"swa_cuda.integrations.transformers: transformers {_hf.__version__} lacks the attention/mask/cache "
        "interfaces this integration uses; install transformers 5 (`pip install -U transformers`; tested with "
        f"5.17 and 5.23). Import failed with: {_e}"
    ) from _e

import swa_cuda  # noqa: F401,E402  (loads torch.ops.swa)

from ._constants import ATTN_IMPLEMENTATION, TESTED_TRANSFORMERS  # noqa: E402
from ._mask import SWAMask, swa_mask  # noqa: E402
from ._attention import swa_attention_forward  # noqa: E402
from ._cache import RollingSlidingWindowLayer, SWARollingCache  # noqa: E402
from ._longformer import disable_longformer, enable_longformer, longformer_forward  # noqa: E402

__all__ = [
    "ATTN_IMPLEMENTATION",
    "register",
    "is_registered",
    "swa_attention_forward",
    "swa_mask",
    "SWAMask",
    "SWARollingCache",
    "RollingSlidingWindowLayer",
    "enable_longformer",
    "disable_longformer",
    "longformer_forward",
]

# ---- registration ----------------------------------------------------------------


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Adds the attention implementation `name` (default "swa_cuda") to
    transformers' AttentionInterface and AttentionMaskInterface. Idempotent.
    Returns the name, to pass as ``attn_implementation``."""
    AttentionInterface.register(name, swa_attention_forward)
    AttentionMaskInterface.register(name, swa_mask)
    return name


def is_registered(name: str = ATTN_IMPLEMENTATION) -> bool:
    return (AttentionInterface._global_mapping.get(name) is swa_attention_forward
            and AttentionMaskInterface._global_mapping.get(name) is swa_mask)


