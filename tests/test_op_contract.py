"""The op contract beyond numbers: opcheck, torch.compile, bad input errors."""

import pytest
import torch

from conftest import DEVICES, make_qkv


def attention_samples(device):
    dtypes = [torch.float32, torch.float64] if device == "cpu" else [torch.bfloat16, torch.float16, torch.float32]
    samples = []
    for i, dtype in enumerate(dtypes):
        q, k, v = make_qkv(2, 4, 2, 37, 45, 64, dtype, device, requires_grad=True, seed=i)
        samples.append(((q, k, v, 16, 0, None, 0.0), {}))
        samples.append(((q, k, v), {"window_left": 3, "window_right": 2, "scale": 0.2, "softcap": 4.0}))
    q, k, v = make_qkv(1, 2, 1, 20, 20, 32, dtypes[0], device, layout="bshd", requires_grad=True)
    samples.append(((q, k, v, -1, -1, None, 0.0), {}))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_attention(device):
    for args, kwargs in attention_samples(device):
        torch.library.opcheck(torch.ops.swa.attention.default, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_attention_backward(device):
    for (q, k, v, *rest), kwargs in attention_samples(device)[:2]:
        q, k, v = q.detach(), k.detach(), v.detach()
        wl, wr = (rest[0], rest[1]) if rest else (kwargs["window_left"], kwargs["window_right"])
        scale = rest[2] if rest else kwargs["scale"]
        softcap = rest[3] if rest else kwargs["softcap"]
        out, lse = torch.ops.swa.attention(q, k, v, wl, wr, scale, softcap)
        dout, dlse = torch.randn_like(out), torch.randn_like(lse)
        for grad_lse in (dlse, None):
            for det in (False, True):
                torch.library.opcheck(torch.ops.swa.attention_backward.default,
                                      (dout, grad_lse, q, k, v, out, lse, wl, wr, scale, softcap, det))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_forward_and_backward(device):
    import swa_cuda

    torch._dynamo.reset()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16

    def block(q, k, v):
        out, lse = swa_cuda.sliding_window_attention(q, k, v, 16, return_lse=True)
        return (out.float() ** 2).sum() + lse.sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    q, k, v = make_qkv(2, 4, 2, 50, 50, 32 if device == "cpu" else 64, dtype, device, requires_grad=True)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    eager_grads = torch.autograd.grad(block(q, k, v), (q, k, v))
    torch.testing.assert_close(loss, block(q, k, v))
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    torch._dynamo.reset()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v = make_qkv(1, 2, 2, 40, 40, 64, dtype, device, requires_grad=True)
    fn = lambda q, k, v: torch.ops.swa.attention(q, k, v, 8, 0)[0].sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    loss = compiled(q, k, v)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def good(device="cpu", dtype=torch.float32):
    return make_qkv(1, 4, 2, 8, 8, 16, dtype, device)


BAD_INPUTS = [
    ("rank", lambda q, k, v: (q[0], k, v), "q must have 4 dims"),
    ("k rank", lambda q, k, v: (q, k[0], v), "k must have 4 dims"),
    ("k dtype", lambda q, k, v: (q, k.double(), v), "k must have q's dtype"),
    ("int dtype", lambda q, k, v: (q.int(), k.int(), v.int()), "q must be float16, bfloat16, float32 or float64"),
    ("head dim", lambda q, k, v: (q, k[..., :8], v[..., :8]), "head dim"),
    ("gqa", lambda q, k, v: (q[:, :3], k, v), "multiple of k's"),
    ("v shape", lambda q, k, v: (q, k, v[:, :, :5]), "k and v must have the same shape"),
    ("batch", lambda q, k, v: (q, torch.cat([k, k]), torch.cat([v, v])), "batch size"),
    ("last dim", lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v), "contiguous last dim"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(name, mutate, message):
    q, k, v = mutate(*good())
    with pytest.raises(RuntimeError, match=message):
        torch.ops.swa.attention(q, k, v, 3, 0)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"window_left": -2}, "window_left must be >= -1"), ({"window_right": -5}, "window_right must be >= -1"),
     ({"softcap": -1.0}, "softcap must be"), ({"softcap": float("nan")}, "softcap must be"),
     ({"scale": float("inf")}, "scale must be")],
)
def test_bad_scalars(kwargs, message):
    q, k, v = good()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.swa.attention(q, k, v, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bad_input_cuda():
    q, k, v = good("cuda", torch.bfloat16)
    with pytest.raises(RuntimeError, match="must be on q's device"):
        torch.ops.swa.attention(q, k.cpu(), v, 3, 0)
    q, k, v = make_qkv(1, 2, 2, 8, 8, 72, torch.bfloat16, "cuda")
    with pytest.raises(RuntimeError, match="head dim"):
        torch.ops.swa.attention(q, k, v, 3, 0)


def test_backward_bad_input():
    q, k, v = good()
    out, lse = torch.ops.swa.attention(q, k, v, 3, 0)
    with pytest.raises(RuntimeError, match="lse must be float32"):
        torch.ops.swa.attention_backward(out, None, q, k, v, out, lse.double(), 3, 0, None, 0.0, False)
    with pytest.raises(RuntimeError, match="grad_out and out must have q's shape"):
        torch.ops.swa.attention_backward(out[:, :, :4], None, q, k, v, out, lse, 3, 0, None, 0.0, False)
    with pytest.raises(RuntimeError, match="grad_lse must be float32"):
        torch.ops.swa.attention_backward(out, lse[0], q, k, v, out, lse, 3, 0, None, 0.0, False)
