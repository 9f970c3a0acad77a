"""gpt-oss with attn_implementation="swa_cuda": its attention sinks (s_aux, the
attention module's `sinks` parameter) on sliding and full layers, against
eager. A tiny random-weight GptOssConfig built here (no downloads), fp32 on
the CPU: logits within 1e-4 of eager (with right and left padding), greedy
generation of 50 tokens identical to eager with transformers' cache and with
SWARollingCache (sliding layers on rings), and the gradients of every
parameter, the sinks included, within 1e-4 of eager's.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "GptOssConfig"):  # pragma: no cover - older transformers
    pytest.skip("this transformers has no gpt-oss", allow_module_level=True)

from swa_cuda.integrations import transformers as swa_hf  # noqa: E402

WINDOW = 6
PROMPT = 20
NEW_TOKENS = 50


@pytest.fixture(scope="module", autouse=True)
def _register():
    swa_hf.register()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed=0):
    """Two layers (sliding then full, as gpt-oss alternates), MoE of 4 experts,
    random weights and sink logits far from 0 (so that they matter)."""
    torch.manual_seed(seed)
    config = transformers.GptOssConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
        num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512, initializer_range=0.1,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager")
    model = transformers.GptOssForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.linspace(-2.0, 3.0, config.num_attention_heads))
    return model


def make_batch(padding):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (3, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    if padding == "left":  # 0, 5 and 13 padding tokens (13 > the window)
        mask[1, :5] = 0
        mask[2, :13] = 0
    elif padding == "right":
        mask[1, -5:] = 0
        mask[2, -13:] = 0
    ids[mask == 0] = 0
    return ids, mask


def logits(model, impl, ids, mask):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits.float()


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_logits_match_eager(padding):
    model = make_model()
    ids, mask = make_batch(padding)
    got, want = logits(model, "swa_cuda", ids, mask), logits(model, "eager", ids, mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() < 1e-4
    # The sinks matter: without them the logits move.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.zero_()
    moved = logits(model, "swa_cuda", ids, mask)
    assert (moved[real] - got[real]).abs().max().item() > 1e-3


def test_greedy_generation_matches_eager():
    model = make_model()
    ids, mask = make_batch("left")

    def generate(impl, cache=None):
        model.set_attn_implementation(impl)
        extra = {} if cache is None else {"past_key_values": cache}
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                  do_sample=False, **extra)

    want = generate("eager")
    assert torch.equal(generate("swa_cuda"), want)
    cache = swa_hf.SWARollingCache(model.config)
    assert torch.equal(generate("swa_cuda", cache), want)
    ring = cache.layers[0]
    assert isinstance(ring, swa_hf.RollingSlidingWindowLayer)  # the sliding layer ran on a ring
    assert ring.positions == [int(n) + NEW_TOKENS - 1 for n in mask.sum(1)]  # the last token is not fed back


def test_gradients_match_eager_after_a_training_step():
    ids, mask = make_batch("right")
    labels = ids.masked_fill(mask == 0, -100)
    grads = {}
    for impl in ("eager", "swa_cuda"):
        model = make_model()
        model.train()
        model.set_attn_implementation(impl)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):  # the second step's gradients, after one update
            opt.zero_grad()
            model(ids, attention_mask=mask, labels=labels).loss.backward()
            if _ == 0:
                opt.step()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["eager"].keys() == grads["swa_cuda"].keys()
    assert any("sinks" in n for n in grads["swa_cuda"])
    for name, g in grads["eager"].items():
        err = (grads["swa_cuda"][name] - g).abs().max().item()
        assert err < 1e-4, f"{name}: {err:.3g}"
