"""torch.ops.swa.attention and its backward against the float64 dense-mask
reference, on every device (CUDA cases skip without a GPU).

Accuracy rule (FlashAttention's): for 16-bit inputs the kernel's max error
against the float64 reference must be at most 2x (3x for gradients) the error
of the same reference computed in the input dtype, plus a tiny atol.
"""

import pytest
import torch

from conftest import DEVICES, case_id, make_qkv, random_cases
from reference import assert_fa_rule, attention_ref, max_err

CASES = random_cases(24, seed=1)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-5


def assert_lse_close(lse, lse_ref):
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref)), "lse: -inf rows differ"
    finite = torch.isfinite(lse_ref)
    torch.testing.assert_close(lse[finite], lse_ref[finite], rtol=1e-3, atol=1e-3)


def run_case(c, dtype, device, layout="bhsd", grad=False, seed=0):
    q, k, v = make_qkv(c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"],
                       c["head_dim"], dtype, device, layout=layout, requires_grad=grad, seed=seed)
    args = (c["window_left"], c["window_right"], None, c["softcap"])
    return q, k, v, args


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_reference(case, dtype, device):
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16) and case["head_dim"] not in (32, 64, 96, 128, 256):
        pytest.skip("head dim without a CUDA tensor-core kernel (see test_bad_input)")
    q, k, v, args = run_case(case, dtype, device)
    out, lse = torch.ops.swa.attention(q, k, v, *args)
    ref_out, ref_lse = attention_ref(q, k, v, *args)
    ref_lowp, _ = attention_ref(q, k, v, *args, upcast=False)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3] and lse.is_contiguous()
    assert_fa_rule(out, ref_out, ref_lowp, 2, tolerance(dtype), "out")
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:12], ids=case_id)
def test_backward_matches_reference(case, dtype, device):
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16) and case["head_dim"] not in (32, 64, 96, 128, 256):
        pytest.skip("head dim without a CUDA tensor-core kernel")
    q, k, v, args = run_case(case, dtype, device, grad=True)
    out, lse = torch.ops.swa.attention(q, k, v, *args)
    g = torch.Generator(device="cpu").manual_seed(7)
    dout = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    dlse = torch.randn(lse.shape, generator=g).to(device)
    finite = torch.isfinite(lse).detach()

    def loss(o, l):
        return (o.double() * dout.double()).sum() + (l.double() * dlse.double())[finite].sum()

    grads = torch.autograd.grad(loss(out, lse), (q, k, v))
    ref = torch.autograd.grad(loss(*attention_ref(q, k, v, *args)), (q, k, v))
    ref_lowp = torch.autograd.grad(loss(*attention_ref(q, k, v, *args, upcast=False)), (q, k, v))
    for name, got, r64, rlp in zip("qkv", grads, ref, ref_lowp):
        assert got.dtype == dtype and not got.isnan().any(), f"d{name}"
        assert_fa_rule(got, r64, rlp, 3, tolerance(dtype), f"d{name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "window,softcap,heads",
    [((3, 0), 0.0, (2, 1)), ((-1, 0), 2.0, (2, 2)), ((2, 3), 0.0, (3, 1)), ((0, -1), 0.0, (2, 2))],
)
def test_gradcheck(window, softcap, heads, device):
    q, k, v = make_qkv(1, heads[0], heads[1], 9, 11, 4, torch.float64, device, requires_grad=True)
    attn = lambda q, k, v: torch.ops.swa.attention(q, k, v, window[0], window[1], None, softcap)  # noqa: E731
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v)[0], (q, k, v))
    # lse is float32 by contract: finite differences need a larger step.
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v)[1], (q, k, v), eps=1e-3, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_layout_needs_no_copy_and_keeps_it(device):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    c = dict(batch=2, heads_q=4, heads_kv=2, seqlen_q=77, seqlen_k=77, head_dim=64,
             window_left=15, window_right=0, softcap=0.0)
    q, k, v, args = run_case(c, dtype, device, layout="bshd")
    assert not q.is_contiguous()
    out, _ = torch.ops.swa.attention(q, k, v, *args)
    assert out.stride() == q.stride(), "out keeps q's [B, S, H, D] storage layout"
    ref, _ = attention_ref(q, k, v, *args)
    ref_lowp, _ = attention_ref(q, k, v, *args, upcast=False)
    assert_fa_rule(out, ref, ref_lowp, 2, 1e-5, "out")


@pytest.mark.parametrize("device", DEVICES)
def test_sliced_inputs(device):
    dtype = torch.float32 if device == "cpu" else torch.float16
    q, k, v = make_qkv(2, 4, 4, 64, 64, 64, dtype, device)
    big_k = torch.randn(2, 4, 100, 128, device=device, dtype=dtype)
    k = big_k[:, :, 10:90:2, 64:]   # row stride 256, a slice of a longer sequence
    v = big_k[:, :, 11:91:2, :64]
    q = q[:, :, 3:50]
    out, lse = torch.ops.swa.attention(q, k, v, 7, 2)
    ref, ref_lse = attention_ref(q, k, v, 7, 2)
    ref_lowp, _ = attention_ref(q, k, v, 7, 2, upcast=False)
    assert_fa_rule(out, ref, ref_lowp, 2, 1e-5, "out")
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("device", DEVICES)
def test_window_of_one_returns_own_value(device):
    q, k, v = make_qkv(1, 2, 2, 50, 50, 32, torch.float64, device)
    out, lse = torch.ops.swa.attention(q, k, v, 0, 0)
    torch.testing.assert_close(out, v)
    torch.testing.assert_close(lse.double(), ((q * k).sum(-1) / 32**0.5), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_wide_window_equals_causal_and_full(device):
    q, k, v = make_qkv(1, 2, 1, 40, 60, 16, torch.float64, device)
    causal, _ = torch.ops.swa.attention(q, k, v, -1, 0)
    wide, _ = torch.ops.swa.attention(q, k, v, 10**6, 0)
    torch.testing.assert_close(wide, causal, rtol=0, atol=0)
    full, _ = torch.ops.swa.attention(q, k, v, -1, -1)
    both, _ = torch.ops.swa.attention(q, k, v, 10**6, 10**6)
    torch.testing.assert_close(both, full, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_that_see_nothing(device):
    # Sq > Sk with a causal window: the first Sq - Sk rows have no key.
    q, k, v = make_qkv(1, 2, 2, 20, 8, 8, torch.float64, device, requires_grad=True)
    out, lse = torch.ops.swa.attention(q, k, v, 3, 0)
    assert torch.all(out[:, :, :12] == 0) and torch.all(torch.isneginf(lse[:, :, :12]))
    assert torch.isfinite(lse[:, :, 12:]).all()
    (out.sum() + lse[:, :, 12:].sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[:, :, :12] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (2, 2, 0, 5), (2, 2, 5, 0), (2, 0, 5, 5)])
def test_empty_inputs(shape, device):
    b, h, sq, sk = shape
    q, k, v = make_qkv(b, h, max(h, 1), sq, sk, 8, torch.float32, device, requires_grad=True)
    out, lse = torch.ops.swa.attention(q, k, v, 2, 0)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    if sk == 0:
        assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape and torch.all(t.grad == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward_is_bitwise_repeatable(device):
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    q, k, v = make_qkv(2, 8, 2, 300, 300, 64, dtype, device)
    out, lse = torch.ops.swa.attention(q, k, v, 63, 0)
    dout = torch.randn_like(out)
    first = torch.ops.swa.attention_backward(dout, None, q, k, v, out, lse, 63, 0, None, 0.0, True)
    for _ in range(3):
        again = torch.ops.swa.attention_backward(dout, None, q, k, v, out, lse, 63, 0, None, 0.0, True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_python_fronts_and_conventions():
    import swa_cuda

    q, k, v = make_qkv(1, 4, 2, 33, 33, 16, torch.float64, "cpu")
    out = swa_cuda.sliding_window_attention(q, k, v, 5)
    torch.testing.assert_close(out, swa_cuda.local_attention(q, k, v, (4, 0)), rtol=0, atol=0)
    torch.testing.assert_close(out, attention_ref(q, k, v, 4, 0)[0])
    causal, lse = swa_cuda.sliding_window_attention(q, k, v, None, return_lse=True)
    torch.testing.assert_close(causal, attention_ref(q, k, v, -1, 0)[0])
    full = swa_cuda.local_attention(q, k, v)
    torch.testing.assert_close(full, attention_ref(q, k, v, -1, -1)[0])
    scaled = swa_cuda.local_attention(q, k, v, (3, 1), scale=0.3, softcap=1.5)
    torch.testing.assert_close(scaled, attention_ref(q, k, v, 3, 1, 0.3, 1.5)[0])
    with pytest.raises(ValueError, match="window must be >= 1"):
        swa_cuda.sliding_window_attention(q, k, v, 0)
