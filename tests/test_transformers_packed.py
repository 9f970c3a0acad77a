"""Packed training batches in the transformers integration: documents packed
in one row (DataCollatorWithFlattening: position ids restarting inside the
row, or its flash-attention keywords cu_seq_lens_q/k, max_length_q/k) run
through attention.varlen. Tiny random-weight Mistral (every layer sliding)
and Gemma 2 (sliding and full layers, softcap) models, fp32 on the CPU: the
logits and the gradients of a packed batch of three documents equal those of
the three documents run one by one, within 1e-5.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from swa_cuda.integrations import transformers as swa_hf  # noqa: E402
from test_transformers_integration import make_model  # noqa: E402

LENGTHS = [7, 12, 9]  # one document shorter than the window (6), two longer


@pytest.fixture(scope="module", autouse=True)
def _register():
    swa_hf.register()


def documents():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 128, (1, n), generator=g) for n in LENGTHS]


def packed_inputs(docs, flash_kwargs):
    ids = torch.cat(docs, 1)
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs]).unsqueeze(0)
    kwargs = dict(input_ids=ids, position_ids=position_ids, use_cache=False)
    if flash_kwargs:  # what DataCollatorWithFlattening(return_flash_attn_kwargs=True) adds
        cu = torch.tensor([0] + list(torch.tensor(LENGTHS).cumsum(0)), dtype=torch.int32)
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS))
    return kwargs


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
@pytest.mark.parametrize("flash_kwargs", [False, True], ids=["position_ids", "cu_seq_lens"])
def test_packed_batch_equals_documents_one_by_one(kind, flash_kwargs):
    model = make_model(kind)
    model.set_attn_implementation("swa_cuda")
    model.train()  # dropout is 0 in these configs: train mode changes nothing but the autograd path
    docs = documents()

    # One by one.
    one_logits, one_grads = [], None
    model.zero_grad()
    for d in docs:
        out = model(input_ids=d, use_cache=False).logits
        one_logits.append(out)
        out.square().mean().backward()
    one_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Packed.
    model.zero_grad()
    logits = model(**packed_inputs(docs, flash_kwargs)).logits
    torch.testing.assert_close(logits, torch.cat(one_logits, 1), atol=1e-5, rtol=1e-5)
    loss = sum(logits[:, s:s + n].square().mean() for s, n in zip([0, 7, 19], LENGTHS))
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        torch.testing.assert_close(p.grad, one_grads[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_packed_is_not_the_unpacked_row():
    """Without the packing the documents would see each other: the logits of
    the second and third documents would change."""
    model = make_model("mistral")
    model.set_attn_implementation("swa_cuda")
    docs = documents()
    with torch.no_grad():
        packed = model(**packed_inputs(docs, False)).logits
        row = model(input_ids=torch.cat(docs, 1), use_cache=False).logits
    assert (packed[:, 7:] - row[:, 7:]).abs().max() > 1e-3
    assert torch.allclose(packed[:, :7], row[:, :7], atol=1e-5)
