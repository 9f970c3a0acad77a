"""What per-head windows cost: one call of torch.ops.swa.attention.per_head
(each query head its own causal window, the kernels skipping each head's
tiles) against the ways a library without them runs the same heads, side by
side in one run: one call of the plain op per head (the same work, Hq
launches and head-sliced views), the plain op with every head at the widest
window (what "one window for all" costs), and FlexAttention compiled with the
per-head mask_mod. Window-aware FLOPs: 4 D sum_h (keys seen by head h).

  python bench/bench_per_head.py            # n = 16K, 8 heads, windows 64 .. 8192 (CPU) / 64K (GPU)
  python bench/bench_per_head.py --smoke    # tiny shapes: checks the harness
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

HEAD_DIM = 64


def setup(args, device):
    if args.smoke:
        return dict(n=512, heads_q=4, heads_kv=2, windows=[8, 32, 64, 128], dtype=torch.float32)
    if device.type == "cuda":
        return dict(n=65536, heads_q=8, heads_kv=2, windows=[128, 256, 512, 1024, 2048, 4096, 8192, 16384],
                    dtype=torch.bfloat16)
    return dict(n=16384, heads_q=8, heads_kv=2, windows=[64, 128, 256, 512, 1024, 2048, 4096, 8192],
                dtype=torch.float32)


def keys_seen(n, window):
    """Visible (query, key) pairs of a causal window of `window` keys over n tokens."""
    w = min(window, n)
    return n * w - w * (w - 1) // 2


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (each keeps its best median)")
    args = parser.parse_args()
    device = common.pick_device(args)
    env = common.env_info(device)
    common.banner("Per-head windows: one call vs per-head calls, the widest window, FlexAttention")
    common.print_env(env)
    s = setup(args, device)
    n, hq, hkv, windows, dtype = s["n"], s["heads_q"], s["heads_kv"], s["windows"], s["dtype"]
    group = hq // hkv
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 300.0))
    import swa_cuda  # noqa: F401

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, hq, n, HEAD_DIM, generator=g).to(device=device, dtype=dtype)
    k, v = (torch.randn(1, hkv, n, HEAD_DIM, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    left = torch.tensor([w - 1 for w in windows])
    right = torch.zeros(hq, dtype=torch.int64)
    flops = 4 * HEAD_DIM * sum(keys_seen(n, w) for w in windows)
    flops_widest = 4 * HEAD_DIM * hq * keys_seen(n, max(windows))

    def per_head_call(q, k, v):
        return torch.ops.swa.attention.per_head(q, k, v, left, right)[0]

    def per_head_loop(q, k, v):
        return torch.cat([torch.ops.swa.attention(q[:, h:h + 1], k[:, h // group:h // group + 1],
                                                  v[:, h // group:h // group + 1], windows[h] - 1, 0)[0]
                          for h in range(hq)], dim=1)

    def widest(q, k, v):
        return torch.ops.swa.attention(q, k, v, max(windows) - 1, 0)[0]

    def forward(fn):
        def run():
            with torch.no_grad():
                return fn(q, k, v)
        return run

    def forward_backward(fn):
        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

        def run():
            return torch.autograd.grad(fn(qg, kg, vg).float().square().sum(), (qg, kg, vg))
        return run

    fns = {}
    for name, fn in (("per-head call", per_head_call), ("per-head loop", per_head_loop), ("widest window", widest)):
        fns[(name, "forward")] = forward(fn)
        fns[(name, "forward+backward")] = forward_backward(fn)
    diff = (per_head_call(q, k, v).float() - per_head_loop(q, k, v).float()).abs().max().item()
    common.log(f"  max |per-head call - per-head loop| = {diff:.2e}")
    try:
        flex, _ = peers.flex_functions()
        build = peers._flex["compiled_create_block_mask"]
        wl = left.to(device)

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx <= wl[h])

        block_mask = build(mask_mod, 1, hq, n, n, device=device)
        flex_fn = lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True)  # noqa: E731
        diff = (flex_fn().float() - per_head_call(q, k, v).float()).abs().max().item()
        common.log(f"  max |flex - per-head call| = {diff:.2e}")
        fns[("flex", "forward")] = flex_fn
    except Exception as e:
        common.log(f"  flex: unavailable ({type(e).__name__}: {str(e)[:300]})")

    best = {}
    for r in range(args.rounds):
        for key, fn in fns.items():
            try:
                ms = timer.measure(fn, first_call_done=r > 0)["ms"]
            except Exception as e:
                common.log(f"  {key}: failed ({type(e).__name__}: {e})")
                continue
            best[key] = min(best.get(key, math.inf), ms)
            common.log(f"  round {r}: {key[0]:14s} {key[1]:16s} {ms:9.2f} ms")

    rows = []
    for (impl, direction), ms in best.items():
        call = best.get(("per-head call", direction))
        work = flops_widest if impl == "widest window" else flops
        passes = 1.0 if direction == "forward" else 3.5  # fwd + bwd (recompute, dS, dQ, dK, dV) ~ 3.5x the forward
        rows.append(dict(impl=impl, direction=direction, n=n, heads_q=hq, heads_kv=hkv, windows=windows,
                         dtype=str(dtype).replace("torch.", ""), ms=ms,
                         tflops=passes * work / (ms * 1e-3) / 1e12,
                         vs_per_head_call=ms / call if call else None))
    columns = [("impl", "impl", "s"), ("pass", "direction", "s"), ("ms", "ms", ".2f"),
               ("TFLOP/s (window-aware)", "tflops", ".3f"), ("x per-head call", "vs_per_head_call", ".2f")]
    table = common.format_table(rows, columns)
    common.log("\n" + table)
    stem = common.result_stem("per_head", env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(), rows=rows))
    stem.with_suffix(".md").write_text(
        f"# Per-head windows\n\n`{common.python_command()}`, {env['device_name']}, torch {env['torch']}, "
        f"{env['cpu_threads']} threads, load {env['load_avg_1min']}, commit {env['git_commit']}. B = 1, Hq = {hq}, "
        f"Hkv = {hkv}, D = {HEAD_DIM}, {str(dtype).replace('torch.', '')}, n = {n}, causal windows {windows} "
        f"(query head h sees its W_h most recent keys). Best of {args.rounds} round-robin medians. 'per-head "
        f"call': one attention.per_head call; 'per-head loop': the plain op once per head on head slices (the "
        f"same work); 'widest window': the plain op with every head at {max(windows)} (its FLOPs are its own); "
        f"flex: FlexAttention compiled with the per-head mask_mod. TFLOP/s count the visible pairs only "
        f"(4 D per pair forward, x3.5 forward+backward).\n\n```\n{table}\n```\n")
    panels = [dict(title=f"n = {n}, Hq = {hq}, windows {windows[0]} .. {windows[-1]}", xlabel="implementation",
                   ylabel="ms", xlog=False, ylog=False, y_from_zero=True,
                   series={direction: [(i, best[(impl, direction)]) for i, impl in
                                       enumerate(["per-head call", "per-head loop", "widest window", "flex"])
                                       if (impl, direction) in best]
                           for direction in ("forward", "forward+backward")})]
    common.plot_panels(stem.with_suffix(".png"), panels, "Per-head windows (x: 0 call, 1 loop, 2 widest, 3 flex)")
    common.log(f"wrote {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
