"""swa_cuda: sliding-window (banded) attention for PyTorch.

The ops live in torch.ops.swa (attention, attention_backward, cache_append,
cache_gather, cache_attention); this package loads their library, registers
their fake kernels, and offers thin Python fronts.
"""

from . import _library

_library.load()

from . import ops  # noqa: E402  (fake kernels; needs the library loaded)
from ._library import cmake_prefix_path, include_dir, library_path  # noqa: E402
from .cache import RollingKVCache  # noqa: E402  (also registers the cache ops' fake kernels)
from . import distributed  # noqa: E402  (context parallelism: swa_cuda.distributed.sliding_window_attention)
from .ops import local_attention, sliding_window_attention, varlen_attention  # noqa: E402
from .longformer import longformer_attention  # noqa: E402  (dilation, global tokens)

__version__ = "0.1.0"

__all__ = [
    "sliding_window_attention",
    "local_attention",
    "varlen_attention",
    "longformer_attention",
    "RollingKVCache",
    "include_dir",
    "library_path",
    "cmake_prefix_path",
]
