"""attn_implementation="swa_cuda" in Hugging Face transformers, against eager.

Tiny random-weight Mistral (every layer sliding) and Gemma 2 (sliding and full
layers alternating, logit softcap) models built here, no downloads. On the
CPU in fp32: logits within 1e-4 of eager (with left padding too), greedy
generation of 50 tokens identical to eager with transformers' cache and with
SWARollingCache, whose memory stays fixed. On a GPU the same in bf16 under
FlashAttention's accuracy rule (skipped without CUDA).

Needs `pip install transformers` (tested with 5.17 and 5.23); skipped without it.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from swa_cuda.integrations import transformers as swa_hf  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
WINDOW = 6
PROMPT = 20
NEW_TOKENS = 50


@pytest.fixture(scope="module", autouse=True)
def _register():
    swa_hf.register()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The models are tiny: intra-op threads only add overhead, and on a busy
    # 2-core machine they made these tests 10-30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(kind, head_dim=16, dtype=torch.float32, device="cpu", seed=0, window=WINDOW, **overrides):
    """A 2-layer model with random weights (initializer_range 0.1, so that the
    window visibly matters: changing it moves logits by ~1)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, sliding_window=window,
                  max_position_embeddings=512, initializer_range=0.1, pad_token_id=0, eos_token_id=1,
                  bos_token_id=2, attn_implementation="eager")
    common.update(overrides)
    if kind == "mistral":
        config = transformers.MistralConfig(**common)
        model = transformers.MistralForCausalLM(config)
    elif kind == "gemma2":
        common.setdefault("query_pre_attn_scalar", head_dim)
        common.setdefault("attn_logit_softcapping", 5.0)
        config = transformers.Gemma2Config(**common)
        model = transformers.Gemma2ForCausalLM(config)
    else:
        raise ValueError(kind)
    return model.to(device=device, dtype=dtype).eval()


def make_batch(device="cpu", left_padding=True):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (3, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    if left_padding:  # 0, 5 and 13 padding tokens (13 > the window)
        mask[1, :5] = 0
        mask[2, :13] = 0
        ids[mask == 0] = 0
    return ids.to(device), mask.to(device)


def logits(model, impl, ids, mask, **kwargs):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, attention_mask=mask, **kwargs).logits.float()


def generate(model, impl, ids, mask, cache=None, **kwargs):
    model.set_attn_implementation(impl)
    extra = {} if cache is None else {"past_key_values": cache}
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, **extra, **kwargs)


class CountOps:
    """Counts the op calls of the integration (proves eager was not used)."""

    def __init__(self, monkeypatch):
        self.attention = 0
        op = swa_hf._attention._op

        def counting(*args, **kwargs):
            self.attention += 1
            return op(*args, **kwargs)

        monkeypatch.setattr(swa_hf._attention, "_op", counting)


# ---- CPU, fp32 --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
@pytest.mark.parametrize("left_padding", [False, True], ids=["nopad", "leftpad"])
def test_logits_match_eager(kind, left_padding, monkeypatch):
    model = make_model(kind)
    ids, mask = make_batch(left_padding=left_padding)
    counter = CountOps(monkeypatch)
    ref = logits(model, "eager", ids, mask)
    out = logits(model, "swa_cuda", ids, mask)
    assert counter.attention >= 2  # at least one call per layer
    real = mask.bool()  # outputs at padding positions are meaningless in both
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=0)
    # The test has power: another window moves the logits far beyond 1e-4.
    model.config.sliding_window = WINDOW + 1
    other = logits(model, "eager", ids, mask)
    assert (other[real] - ref[real]).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
def test_greedy_generation_matches_eager(kind):
    model = make_model(kind)
    ids, mask = make_batch(left_padding=True)
    ref = generate(model, "eager", ids, mask)
    assert ref.shape == (3, PROMPT + NEW_TOKENS)
    assert torch.equal(generate(model, "swa_cuda", ids, mask), ref)  # transformers' DynamicCache
    # transformers' StaticCache: masks prepared by generate(), keys in fixed slots
    assert torch.equal(generate(model, "swa_cuda", ids, mask, cache_implementation="static"), ref)
    cache = swa_hf.SWARollingCache(model.config)
    assert torch.equal(generate(model, "swa_cuda", ids, mask, cache=cache), ref)
    # Each sequence's ring holds its real tokens only (the last one generated is not fed back).
    real = mask.sum(-1).tolist()
    for layer in cache.layers:
        if isinstance(layer, swa_hf.RollingSlidingWindowLayer):
            assert layer.positions == [n + NEW_TOKENS - 1 for n in real]
            assert layer.get_seq_length() == PROMPT + NEW_TOKENS - 1


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
def test_rolling_cache_memory_is_constant(kind):
    model = make_model(kind)
    model.set_attn_implementation("swa_cuda")
    ids, mask = make_batch(left_padding=True)
    cache = swa_hf.SWARollingCache(model.config)
    rolling = [layer for layer in cache.layers if isinstance(layer, swa_hf.RollingSlidingWindowLayer)]
    assert rolling
    ring_bytes, pointers = [], None
    with torch.no_grad():
        out = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        pointers = [layer.keys.data_ptr() for layer in rolling]
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(3 * WINDOW):
            mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
            out = model(token, attention_mask=mask, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            ring_bytes.append(sum(layer.nbytes for layer in rolling))
    # 2 (K, V) * B * Hkv * W * D * 4 bytes per sliding layer, from the first token to the last
    expected = len(rolling) * 2 * 3 * 2 * WINDOW * 16 * 4
    assert ring_bytes == [expected] * len(ring_bytes)
    assert [layer.keys.data_ptr() for layer in rolling] == pointers  # written in place, never reallocated
    if kind == "mistral":  # every layer sliding: the whole cache is constant
        assert cache.nbytes == expected


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
def test_gradients_match_eager(kind):
    model = make_model(kind)
    ids, mask = make_batch(left_padding=True)
    # No loss term may read a padding position's output: besides the padding
    # itself, the first real token (which a padding position would predict).
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    grads = {}
    for impl in ("eager", "swa_cuda"):
        model.zero_grad()
        model.set_attn_implementation(impl)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[impl] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    for name, ref in grads["eager"].items():
        torch.testing.assert_close(grads["swa_cuda"][name], ref, atol=1e-5, rtol=1e-4, msg=name)


def test_from_pretrained_with_attn_implementation(tmp_path):
    model = make_model("mistral")
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="swa_cuda")
    assert loaded.config._attn_implementation == "swa_cuda"
    ids, mask = make_batch()
    torch.testing.assert_close(logits(loaded, "swa_cuda", ids, mask)[mask.bool()],
                               logits(model, "eager", ids, mask)[mask.bool()], atol=1e-4, rtol=0)


def test_right_padding_and_full_attention_layers():
    # Right padding is exact for every real token too (one contiguous run).
    model = make_model("gemma2")
    ids, mask = make_batch(left_padding=False)
    mask[0, 15:] = 0
    real = mask.bool()
    torch.testing.assert_close(logits(model, "swa_cuda", ids, mask)[real], logits(model, "eager", ids, mask)[real],
                               atol=1e-4, rtol=0)
    # A model without a window: every layer full causal.
    model = make_model("mistral", window=None)
    torch.testing.assert_close(logits(model, "swa_cuda", ids, mask)[real], logits(model, "eager", ids, mask)[real],
                               atol=1e-4, rtol=0)


# ---- refusals: never silently wrong ------------------------------------------------------


def test_refuses_what_it_does_not_implement():
    model = make_model("mistral")
    model.set_attn_implementation("swa_cuda")
    ids, mask = make_batch(left_padding=False)
    attn = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    k = v = torch.randn(1, 2, 5, 16)
    # Sink logits are computed (tests/test_transformers_gptoss.py), but must be one per query head.
    with pytest.raises(ValueError, match=r"s_aux \(attention sinks\) must hold one logit per query head \(4\)"):
        swa_hf.swa_attention_forward(attn, q, k, v, None, sliding_window=WINDOW, s_aux=torch.zeros(3))
    with pytest.raises(NotImplementedError, match="dropout"):
        swa_hf.swa_attention_forward(attn, q, k, v, None, dropout=0.1)
    with pytest.raises(TypeError, match="SWAMask"):
        swa_hf.swa_attention_forward(attn, q, k, v, torch.zeros(1, 1, 5, 5), sliding_window=WINDOW)
    with pytest.raises(ValueError, match="sliding_window"):
        swa_hf.swa_attention_forward(attn, q, k, v, swa_hf.SWAMask(causal=True, window=3), sliding_window=4)
    # Holes in the padding mask.
    holes = mask.clone()
    holes[0, 7] = 0
    with pytest.raises(NotImplementedError, match="between real tokens"):
        logits(model, "swa_cuda", ids, holes)
    # (Packed sequences are computed: tests/test_transformers_packed.py.)


def test_rolling_cache_refusals():
    model = make_model("mistral")
    ids, mask = make_batch(left_padding=False)
    # Without attn_implementation="swa_cuda" nothing would ever be written to the ring.
    model.set_attn_implementation("eager")
    cache = swa_hf.SWARollingCache(model.config)
    with pytest.raises(RuntimeError, match="attn_implementation='swa_cuda'"), torch.no_grad():
        model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    # Right padding cannot be continued by generation.
    model.set_attn_implementation("swa_cuda")
    right = mask.clone()
    right[0, 15:] = 0
    cache = swa_hf.SWARollingCache(model.config)
    with pytest.raises(NotImplementedError, match="left"), torch.no_grad():
        model(ids, attention_mask=right, past_key_values=cache, use_cache=True)


def test_mask_patterns():
    from transformers import masking_utils as mu

    assert swa_hf._mask._classify_mask_function(mu.causal_mask_function) == (True, None)
    assert swa_hf._mask._classify_mask_function(mu.sliding_window_causal_mask_function(7)) == (True, 7)
    assert swa_hf._mask._classify_mask_function(mu.bidirectional_mask_function) == (False, None)
    assert swa_hf._mask._classify_mask_function(mu.sliding_window_bidirectional_mask_function(3)) == (False, 3)
    for unsupported in (mu.chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long)),
                        mu.or_masks(mu.causal_mask_function, mu.bidirectional_mask_function)):
        with pytest.raises(NotImplementedError, match="not supported"):
            swa_hf._mask._classify_mask_function(unsupported)


@pytest.mark.parametrize("window", [None, 3])
def test_bidirectional_matches_dense_mask(window):
    # No stock decoder builds a plain bidirectional mask; check the path against
    # transformers' own eager mask directly (padding on both sides).
    from transformers import masking_utils as mu

    fn = mu.bidirectional_mask_function if window is None else mu.sliding_window_bidirectional_mask_function(window)
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[1, :2] = False
    pad[1, 7:] = False
    dense = mu.sdpa_mask(batch_size=2, q_length=9, kv_length=9, mask_function=fn, attention_mask=pad,
                         allow_is_causal_skip=False)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           attn_mask=dense).transpose(1, 2)
    swa_mask = swa_hf.swa_mask(batch_size=2, q_length=9, kv_length=9, mask_function=fn, attention_mask=pad)

    class Module(torch.nn.Module):
        is_causal = False

    out, _ = swa_hf.swa_attention_forward(Module(), q, k, v, swa_mask, sliding_window=window)
    real = pad  # [B, S]
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=0)


def test_missing_transformers_message(monkeypatch):
    import builtins
    import importlib
    import sys

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    saved = sys.modules.pop("swa_cuda.integrations.transformers")
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    try:
        with pytest.raises(ImportError, match="pip install transformers"):
            importlib.import_module("swa_cuda.integrations.transformers")
    finally:
        monkeypatch.setattr(builtins, "__import__", real_import)
        sys.modules["swa_cuda.integrations.transformers"] = saved


def test_demo_runs(tmp_path, capsys):
    from swa_cuda import demo

    png = tmp_path / "demo.png"
    rc = demo.main(["--tokens", "12", "--out", str(png), "--device", "cpu", "--window", "4", "--layers", "2",
                    "--prompt", "5", "--head-dim", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "same tokens generated by both: yes" in out
    assert (tmp_path / "demo.csv").exists()


# ---- GPU, bf16 --------------------------------------------------------------------------


def _accuracy_rule(out, ref_low, ref_exact, factor=2.0, slack=1e-2):
    """FlashAttention's rule: the kernel's error against the exact reference is
    at most `factor` times eager's own low-precision error (plus a little)."""
    err = (out - ref_exact).abs().max().item()
    base = (ref_low - ref_exact).abs().max().item()
    assert err <= factor * base + slack, f"swa_cuda error {err:.4g} vs eager bf16 error {base:.4g}"


def _greedy_agrees(tokens, ref_tokens, ref_scores, prompt_len, tolerance):
    """Identical, or diverging only where eager's own logits were a near-tie
    (bf16 rounding may legitimately flip those)."""
    for b in range(tokens.shape[0]):
        diff = (tokens[b, prompt_len:] != ref_tokens[b, prompt_len:]).nonzero()
        if diff.numel():
            t = diff[0].item()
            scores = ref_scores[t][b].float()
            margin = (scores[ref_tokens[b, prompt_len + t]] - scores[tokens[b, prompt_len + t]]).item()
            assert margin <= tolerance, f"sequence {b} diverges at new token {t} with eager margin {margin:.4g}"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_bf16(kind, head_dim):
    exact = make_model(kind, head_dim=head_dim, device="cuda", dtype=torch.float32)
    model = make_model(kind, head_dim=head_dim, device="cuda", dtype=torch.bfloat16)
    ids, mask = make_batch(device="cuda", left_padding=True)
    real = mask.bool()
    ref_exact = logits(exact, "eager", ids, mask)[real]
    ref_low = logits(model, "eager", ids, mask)[real]
    out = logits(model, "swa_cuda", ids, mask)[real]
    _accuracy_rule(out, ref_low, ref_exact)

    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    for cache in (None, swa_hf.SWARollingCache(model.config)):
        tokens = generate(model, "swa_cuda", ids, mask, cache=cache)
        _greedy_agrees(tokens, ref.sequences, ref.scores, PROMPT, tolerance=0.1)
    # The rings are allocated once, on the GPU, in bf16.
    layer = next(layer for layer in cache.layers if isinstance(layer, swa_hf.RollingSlidingWindowLayer))
    assert layer.keys.is_cuda and layer.keys.dtype == torch.bfloat16
    assert layer.nbytes == 2 * 3 * 2 * WINDOW * head_dim * 2
