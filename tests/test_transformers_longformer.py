"""The Longformer drop-in (swa_hf.enable_longformer) against transformers' own
LongformerSelfAttention on a tiny random-weight LongformerModel (no
downloads), fp32 on the CPU: hidden states within 1e-5 and parameter
gradients within 1e-5 of each tensor's scale, with and without global tokens, with the model's padding to the window
and the caller's right padding."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from swa_cuda.integrations import transformers as swa_hf  # noqa: E402


def tiny_model(windows=(8, 4), seed=0):
    torch.manual_seed(seed)
    config = transformers.LongformerConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=len(windows), num_attention_heads=4,
        intermediate_size=64, attention_window=list(windows), max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
    return transformers.LongformerModel(config).eval()


def batch(lengths, seq_len, global_positions, seed=1):
    """input_ids [B, seq_len] right-padded to seq_len, attention_mask 0
    (padding) / 1 (local) / 2 (global, transformers' convention)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (len(lengths), seq_len), generator=g)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 1
        for p in global_positions.get(b, []):
            mask[b, p] = 2
    return ids, mask


SETUPS = {
    "band only": ([37, 37], 37, {}),
    "global tokens": ([40, 40], 40, {0: [0, 5], 1: [0]}),
    "right padding": ([29, 40, 12], 40, {}),
    "padding and global tokens": ([29, 40, 12], 40, {0: [0], 1: [3, 20, 39], 2: [11]}),
    "all global": ([9], 9, {0: list(range(9))}),
}


@pytest.mark.parametrize("setup", list(SETUPS), ids=str)
def test_hidden_states_and_gradients_match_transformers(setup):
    lengths, seq_len, global_positions = SETUPS[setup]
    ids, mask = batch(lengths, seq_len, global_positions)
    ours_model = tiny_model()
    theirs = copy.deepcopy(ours_model)
    assert swa_hf.enable_longformer(ours_model) == 2

    def run(model):
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        g = torch.Generator().manual_seed(2)
        weights = torch.randn(out.shape, generator=g)
        real = (mask > 0)[..., None]  # padding rows: compared too (both give attention output 0 there)
        (out * weights * real).sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run(ours_model)
    ref, ref_grads = run(theirs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, ref_grad in ref_grads.items():
        # Relative to the tensor's scale: a parameter's gradient sums over every token (the
        # embeddings' over the whole batch), and its small entries are differences of large sums.
        err = (grads[name] - ref_grad).abs().max().item()
        assert err <= 1e-5 * max(1.0, ref_grad.abs().max().item()), f"grad {name}: max error {err:.3g}"
    if global_positions:  # the global projections are used, and get their gradients
        assert any("query_global" in n for n in grads) and any("key_global" in n for n in grads)


def test_the_drop_in_is_what_runs_and_falls_back_where_it_must(monkeypatch):
    model = tiny_model()
    swa_hf.enable_longformer(model)
    calls = []
    real = swa_hf._longformer.swa_cuda.longformer_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(swa_hf._longformer.swa_cuda, "longformer_attention", spy)
    ids, mask = batch([20, 13], 20, {0: [0]})
    model(input_ids=ids, attention_mask=mask)
    assert len(calls) == 2 * 2  # two layers, two padding groups each
    calls.clear()
    # Attention probabilities are transformers' to form: its own code runs.
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert not calls and out.attentions is not None
    # A mask with a hole is not a padded prefix: transformers' own code too.
    holed = mask.clone()
    holed[1, 5] = 0
    model(input_ids=ids, attention_mask=holed)
    assert not calls
    assert swa_hf.disable_longformer(model) == 2
    model(input_ids=ids, attention_mask=mask)
    assert not calls


def test_enable_needs_a_longformer():
    with pytest.raises(ValueError, match="no LongformerSelfAttention"):
        swa_hf.enable_longformer(torch.nn.Linear(2, 2))
