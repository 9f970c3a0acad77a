"""Integrations of swa_cuda with other libraries, each an optional dependency.

- ``swa_cuda.integrations.transformers``: Hugging Face transformers. Call
  ``register()`` once, then load a model with
  ``attn_implementation="swa_cuda"``; ``SWARollingCache(model.config)`` gives
  ``generate()`` a fixed-size cache for the sliding-window layers.

Nothing is imported here eagerly: importing a submodule whose library is not
installed raises an ImportError that says what to install.
"""

__all__ = ["transformers"]
