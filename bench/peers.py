"""The implementations the attention benchmark times, behind one interface.

Each `build_<method>(problem, q, k, v)` returns an `Impl` whose
  fwd()      runs the forward (called under torch.no_grad()),
  fwd_bwd()  runs forward + backward through autograd on the grad-enabled
             inputs it was given (None when not supported),
  bwd()      runs only the backward kernel (ours only),
or raises Unavailable(reason). All take q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D].
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import common


class Unavailable(Exception):
    """This method cannot run this case (a reason, not a crash)."""


@dataclass
class Problem:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    window_left: int  # -1 = unbounded
    window_right: int
    dtype: torch.dtype

    @property
    def gqa(self):
        return self.heads_q != self.heads_kv

    @property
    def window(self):
        """W keys of a causal sliding window, or None."""
        return self.window_left + 1 if self.window_right == 0 and self.window_left >= 0 else None


@dataclass
class Impl:
    fwd: Callable
    fwd_bwd: Optional[Callable] = None
    bwd: Optional[Callable] = None
    extra: dict = field(default_factory=dict)  # one-time costs, notes (go to the JSON)


def upstream_grad(q):
    """The gradient of out fed to every method's backward: the same tensor
    values for all of them, so their dq, dk, dv can be compared."""
    g = torch.Generator(device=q.device).manual_seed(1234)
    return torch.randn(q.shape, generator=g, device=q.device, dtype=q.dtype)


def _grad_fn(forward, q, k, v):
    """fwd_bwd closure: out = forward(q, k, v), then d(q, k, v) for the fixed
    upstream gradient (torch.autograd.grad: no accumulation into .grad)."""
    inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    grad_out = upstream_grad(q)

    def run():
        out = forward(*inputs)
        return torch.autograd.grad(out, inputs, grad_out)

    return run


# ------------------------------------------------------------------ ours


def build_ours(p, q, k, v):
    reason = common.op_status("attention", q.device)
    if reason:
        raise Unavailable(reason)
    import swa_cuda

    wl, wr = p.window_left, p.window_right

    def fwd():
        return torch.ops.swa.attention(q, k, v, wl, wr)

    impl = Impl(fwd=fwd)
    impl.fwd_bwd = _grad_fn(lambda a, b, c: swa_cuda.local_attention(a, b, c, (wl, wr)), q, k, v)
    if common.op_status("attention_backward", q.device) is None:
        out, lse = fwd()
        grad_out = upstream_grad(q)
        impl.bwd = lambda: torch.ops.swa.attention_backward(grad_out, None, q, k, v, out, lse, wl, wr, None, 0.0)
    return impl


def build_standin(p, q, k, v):
    """NOT our kernel: SDPA with a banded mask, used to exercise the harness
    (--standin) where the real op is missing. Labelled as such everywhere."""
    impl = build_sdpa_banded(p, q, k, v, max_len=None)
    impl.extra["note"] = "STAND-IN for ours (SDPA + banded mask), not the swa_cuda kernel"
    return impl


# --------------------------------------------------------- FlexAttention

_flex = {}


def flex_functions():
    """(compiled flex_attention, create_block_mask) or raises Unavailable."""
    if "error" in _flex:
        raise Unavailable(_flex["error"])
    if "fn" not in _flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except Exception as e:
            _flex["error"] = f"flex_attention not importable: {e}"
            raise Unavailable(_flex["error"])
        common.set_compile_limits()
        _flex["fn"] = torch.compile(flex_attention, dynamic=False)
        _flex["create_block_mask"] = create_block_mask
        _flex["compiled_create_block_mask"] = torch.compile(create_block_mask)
    return _flex["fn"], _flex["create_block_mask"]


def band_mask_mod(seqlen_q, seqlen_k, window_left, window_right):
    """FlexAttention mask_mod of the band with bottom-right alignment: query
    q_idx sits at key position q_idx + (Sk - Sq). For a sliding window of W
    keys this is (p >= kv_idx) & (p - kv_idx < W), p = q_idx + offset."""
    offset = seqlen_k - seqlen_q

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + offset
        keep = kv_idx >= 0  # all-true of the right type
        if window_right >= 0:
            keep = keep & (kv_idx <= pos + window_right)
        if window_left >= 0:
            keep = keep & (pos - kv_idx <= window_left)
        return keep

    return mask_mod


def band_block_mask(p, device):
    """(BlockMask, build seconds). Eager create_block_mask evaluates the
    mask_mod on the dense [Sq, Sk] grid (int64 intermediates: 8 GiB at 32K),
    so above 16K x 16K the builder is compiled, which never materialises it."""
    _, create_block_mask = flex_functions()
    mask_mod = band_mask_mod(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right)
    t0 = time.perf_counter()
    if p.seqlen_q * p.seqlen_k <= 2**28:
        bm = create_block_mask(mask_mod, None, None, p.seqlen_q, p.seqlen_k, device=device)
    else:
        try:
            bm = _flex["compiled_create_block_mask"](mask_mod, None, None, p.seqlen_q, p.seqlen_k, device=device)
        except Exception as e:
            raise Unavailable(f"compiled create_block_mask failed ({type(e).__name__}: {e}) and the dense "
                              "mask is too large to build eagerly")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return bm, time.perf_counter() - t0


def build_flex(p, q, k, v):
    flex, _ = flex_functions()
    bm, build_s = band_block_mask(p, q.device)
    gqa = p.gqa

    def forward(a, b, c):
        return flex(a, b, c, block_mask=bm, enable_gqa=gqa)

    impl = Impl(fwd=lambda: forward(q, k, v), extra={"block_mask_build_ms": build_s * 1e3})
    impl.fwd_bwd = _grad_fn(forward, q, k, v)
    return impl


# ------------------------------------------------------------------ SDPA


def banded_bool_mask(p, device):
    """Dense [Sq, Sk] boolean mask of the band (True = attend)."""
    pos = torch.arange(p.seqlen_q, device=device)[:, None] + (p.seqlen_k - p.seqlen_q)
    key = torch.arange(p.seqlen_k, device=device)[None, :]
    keep = torch.ones(p.seqlen_q, p.seqlen_k, dtype=torch.bool, device=device)
    if p.window_right >= 0:
        keep &= key <= pos + p.window_right
    if p.window_left >= 0:
        keep &= pos - key <= p.window_left
    return keep


def build_sdpa_banded(p, q, k, v, max_len=32768):
    if max_len is not None and max(p.seqlen_q, p.seqlen_k) > max_len:
        mib = p.seqlen_q * p.seqlen_k / 2**20
        raise Unavailable(f"skipped above {max_len // 1024}K: the dense [Sq, Sk] mask alone is {mib:,.0f} MiB "
                          "(and SDPA turns it into a bias of q's dtype)")
    mask = banded_bool_mask(p, q.device)
    gqa = p.gqa

    def forward(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, attn_mask=mask, enable_gqa=gqa)

    impl = Impl(fwd=lambda: forward(q, k, v), extra={"mask_mb": mask.numel() / 2**20})
    impl.fwd_bwd = _grad_fn(forward, q, k, v)
    return impl


def build_sdpa_causal(p, q, k, v):
    """Full causal attention (not windowed) with the flash backend: what the
    window saves. SDPA's is_causal is top-left aligned, the same as ours only
    when Sq == Sk."""
    if p.seqlen_q != p.seqlen_k:
        raise Unavailable("is_causal is top-left aligned: only Sq == Sk compares")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = p.gqa

    def forward(a, b, c):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=gqa)

    impl = Impl(fwd=lambda: forward(q, k, v), extra={"note": "full causal attention (no window)"})
    impl.fwd_bwd = _grad_fn(forward, q, k, v)
    return impl


# name -> (builder, FLOPs window: "band" counts the band, "causal" counts full causal)
METHODS = {
    "ours": (build_ours, "band"),
    "flex": (build_flex, "band"),
    "sdpa_banded": (build_sdpa_banded, "band"),
    "sdpa_flash_causal": (build_sdpa_causal, "causal"),
}

LABELS = {
    "ours": "swa_cuda (ours)",
    "standin": "STAND-IN sdpa+band (not ours)",
    "flex": "FlexAttention + block mask",
    "sdpa_banded": "SDPA + dense band mask",
    "sdpa_flash_causal": "SDPA flash, full causal",
}
