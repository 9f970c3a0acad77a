"""Small runs of the forward for compute-sanitizer and Nsight Compute.

    python bench/sm90_smoke.py            # a few small cases, checked (exit 1 on a mismatch)
    python bench/sm90_smoke.py --profile  # one headline-sized case, run twice (for ncu)

On an sm_90 GPU the dispatch takes the Hopper kernel for these shapes
(split-KV is turned off here; SWA_DEBUG_FORWARD_PATH=1 shows the path). The check compares against a float32
dense-mask reference computed with torch on the GPU.
"""

import math
import os
import sys

# Small grids with long key ranges would take the portable split-KV kernel
# (forward_dispatch.cu); these runs are for the Hopper kernel.
os.environ.setdefault("SWA_DISABLE_SPLIT_KV", "1")

import torch  # noqa: E402

import swa_cuda  # noqa: F401,E402  (loads torch.ops.swa)

SMALL = [
    # (B, Hq, Hkv, Sq, Sk, D, window_left, window_right, softcap, dtype)
    (1, 2, 1, 300, 300, 128, 63, 0, 0.0, torch.bfloat16),
    (2, 2, 2, 129, 200, 64, -1, 0, 0.0, torch.float16),
    (1, 2, 2, 260, 130, 128, 31, 5, 5.0, torch.bfloat16),
    (1, 1, 1, 384, 384, 64, -1, -1, 0.0, torch.bfloat16),
]


def reference(q, k, v, wl, wr, softcap):
    sq, sk = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    qf, kf, vf = q.float(), k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device)[:, None] + sk - sq
    j = torch.arange(sk, device=q.device)[None, :]
    vis = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if wl >= 0:
        vis &= j >= i - wl
    if wr >= 0:
        vis &= j <= i + wr
    any_ = vis.any(-1, keepdim=True)
    s = s.masked_fill(~vis, float("-inf")).masked_fill(~any_, 0.0)
    p = torch.softmax(s, -1) * any_
    return p @ vf


def main():
    torch.manual_seed(0)
    if "--profile" in sys.argv:
        q = torch.randn(1, 16, 16384, 128, device="cuda", dtype=torch.bfloat16)
        k, v = torch.randn_like(q), torch.randn_like(q)
        for _ in range(2):
            torch.ops.swa.attention(q, k, v, 4095, 0, None, 0.0)
        torch.cuda.synchronize()
        print("profile run done")
        return 0
    bad = 0
    for b, hq, hkv, sq, sk, d, wl, wr, cap, dt in SMALL:
        q = torch.randn(b, hq, sq, d, device="cuda", dtype=dt)
        k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dt)
        v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dt)
        out, lse = torch.ops.swa.attention(q, k, v, wl, wr, None, cap)
        err = (out.float() - reference(q, k, v, wl, wr, cap)).abs().max().item()
        ok = err < (2e-2 if dt == torch.bfloat16 else 4e-3) and not torch.isnan(lse).any().item()
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} b{b} h{hq}/{hkv} q{sq} k{sk} d{d} w({wl},{wr}) cap {cap} {dt}: max err {err:.3g}")
    torch.cuda.synchronize()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
