"""A short training run through the op's autograd: a small transformer with
sliding-window layers (GQA, one softcapped layer) learns a copy task; its loss
curve must follow the same model trained with the float64 dense-mask reference
attention (tests/reference.py) from the same initial weights and batches.

Weights stay float32; the attention runs in the dtype under test. CPU float32
and bf16 through the exact CPU kernels, and bf16 on the GPU, each against the
float64-attention CPU curve, step by step, within a relative tolerance set
from what the CPU runs measure (float32 ~6e-7, bf16 ~1e-3). The reference
must learn (final loss below 0.8x the first), so the curves being compared
are not flat.
"""

import math

import pytest
import torch
from torch import nn

import swa_cuda
from conftest import HAS_CUDA
from reference import attention_ref

VOCAB, DIM, HEADS, KV_HEADS, HEAD_DIM = 32, 128, 2, 1, 64
WINDOWS = (8, 16)  # per layer: W keys including the token itself
SEQ, BATCH, STEPS = 48, 8, 40


class Block(nn.Module):
    def __init__(self, window, softcap):
        super().__init__()
        self.window, self.softcap = window, softcap
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.q = nn.Linear(DIM, HEADS * HEAD_DIM, bias=False)
        self.kv = nn.Linear(DIM, 2 * KV_HEADS * HEAD_DIM, bias=False)
        self.o = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x, attend):
        b, s, _ = x.shape
        h = self.norm1(x)
        # [B, S, H, D] storage viewed as [B, H, S, D]: the layout models hand in.
        q = self.q(h).view(b, s, HEADS, HEAD_DIM).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, KV_HEADS, HEAD_DIM).unbind(2)
        out = attend(q, k.transpose(1, 2), v.transpose(1, 2), self.window, self.softcap)
        x = x + self.o(out.transpose(1, 2).reshape(b, s, HEADS * HEAD_DIM))
        return x + self.mlp(self.norm2(x))


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.position = nn.Embedding(SEQ, DIM)  # the copy needs to know "6 back"
        self.blocks = nn.ModuleList([Block(WINDOWS[0], 0.0), Block(WINDOWS[1], 20.0)])
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, ids, attend):
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, attend)
        return self.head(x)


def swa_attend(dtype):
    def attend(q, k, v, window, softcap):
        out = swa_cuda.sliding_window_attention(q.to(dtype), k.to(dtype), v.to(dtype), window, softcap=softcap)
        return out.to(q.dtype)
    return attend


def reference_attend(q, k, v, window, softcap):
    # GQA by repeating K/V (the reference's business, not the op's).
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    out, _ = attention_ref(q.double(), k.double(), v.double(), window - 1, 0, softcap=softcap)
    return out.to(q.dtype)


def batches(device):
    """A copy task the window can solve: the second half repeats the first
    half shifted by 6 positions (inside both windows)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
        ids[:, 6:] = torch.where(torch.arange(6, SEQ) % 12 < 6, ids[:, :SEQ - 6], ids[:, 6:])
        yield ids.to(device)


def train(device, attend):
    torch.manual_seed(0)
    model = TinyModel().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for ids in batches(device):
        logits = model(ids[:, :-1], attend)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def reference_curve():
    return train("cpu", reference_attend)


CASES = [
    ("cpu", torch.float32, 1e-4),  # exact kernels: on the float64 curve (measured ~6e-7)
    ("cpu", torch.bfloat16, 1e-2),  # bf16 inputs: measured ~1e-3 over the run
    pytest.param("cuda", torch.bfloat16, 2e-2,
                 marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
]


@pytest.mark.parametrize("device, dtype, tolerance", CASES)
def test_training_follows_reference(device, dtype, tolerance, reference_curve):
    curve = train(device, swa_attend(dtype))
    assert all(math.isfinite(x) for x in curve)
    assert reference_curve[-1] < 0.8 * reference_curve[0]  # the task is learnable
    rel = max(abs(a - b) / b for a, b in zip(curve, reference_curve))
    assert rel < tolerance, (rel, curve, reference_curve)
