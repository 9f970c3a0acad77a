"""Schema stability: other code depends on these exact schemas. Changing one
fails here on purpose; new capabilities arrive as overloads (e.g.
attention.varlen), never as edits of a released schema."""

import torch

import swa_cuda  # noqa: F401

RELEASED = {
    "attention": "swa::attention(Tensor q, Tensor k, Tensor v, int window_left=-1, int window_right=0, "
    "float? scale=None, float softcap=0.) -> (Tensor out, Tensor lse)",
    "attention_backward": "swa::attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, "
    "Tensor v, Tensor out, Tensor lse, int window_left, int window_right, float? scale, float softcap, "
    "bool deterministic=False) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)",
    "cache_append": "swa::cache_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, "
    "Tensor pos) -> ()",
    "cache_gather": "swa::cache_gather(Tensor k_cache, Tensor v_cache, Tensor pos, int n) -> (Tensor, Tensor)",
    "cache_attention": "swa::cache_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor k_cache, "
    "Tensor v_cache, Tensor pos, int window, float? scale=None, float softcap=0.) -> (Tensor, Tensor)",
}


def test_released_schemas_are_unchanged():
    for name, schema in RELEASED.items():
        assert str(getattr(torch.ops.swa, name).default._schema) == schema, name


def test_no_unreleased_default_ops():
    """A new op must be added to RELEASED deliberately, with its schema."""
    ops = {name for name in dir(torch.ops.swa) if not name.startswith("_")}
    ops -= {"name", "overloads"}  # OpOverloadPacket namespace attributes, if any
    assert set(RELEASED) <= ops
    unknown = {n for n in ops - set(RELEASED) if hasattr(getattr(torch.ops.swa, n), "default")}
    assert not unknown, f"ops without a recorded schema: {unknown}"
