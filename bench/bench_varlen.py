"""Packed variable-length batches: one attention.varlen call vs the same batch
padded to its longest sequence (one padded call) vs one call per sequence,
forward and forward+backward, causal sliding window W.

A batch of 16 sequences with lengths drawn log-uniformly between the bounds
(seeded); the per-sequence calls are the useful work, so varlen should cost
about their sum (<= 1.05x) and beat the padded call by about the padding
fraction. Variants are timed round-robin; each keeps its best median.

  python bench/bench_varlen.py            # CPU-sized (or GPU-sized on a GPU)
  python bench/bench_varlen.py --smoke
"""

import argparse
import math
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def batches(args, device):
    if args.smoke:
        return [dict(count=4, low=16, high=128, window=32, dtype=torch.float32, heads=2)]
    if device.type == "cuda":
        return [dict(count=16, low=256, high=16384, window=w, dtype=torch.bfloat16, heads=16) for w in (4096, 512)]
    # CPU-sized: the same shape of batch, 16x fewer tokens.
    return [dict(count=16, low=64, high=4096, window=w, dtype=dt, heads=4)
            for dt in (torch.float32, torch.bfloat16) for w in (512, 128)]


def lengths(c, seed=0):
    rng = random.Random(seed)
    return [int(math.exp(rng.uniform(math.log(c["low"]), math.log(c["high"])))) for _ in range(c["count"])]


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = common.pick_device(args)
    env = common.env_info(device)
    common.banner("varlen: packed vs padded vs per-sequence")
    common.print_env(env)
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 200.0))
    rows = []
    for c in batches(args, device):
        lens = lengths(c)
        total, longest = sum(lens), max(lens)
        heads, dim = c["heads"], 64
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(total, heads, dim, generator=g).to(device=device, dtype=c["dtype"]).requires_grad_()
                   for _ in range(3))
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)
        left = c["window"] - 1
        # The padded batch: each sequence at the start of its row, zeros after.
        def pad(t):
            out = t.new_zeros(len(lens), heads, longest, dim)
            for b, (s, n) in enumerate(zip(cu[:-1].tolist(), lens)):
                out[b, :, :n] = t[s:s + n].transpose(0, 1)
            return out.detach().requires_grad_()
        qp, kp, vp = pad(q), pad(k), pad(v)
        views = [tuple(t[s:s + n].transpose(0, 1).unsqueeze(0).detach().requires_grad_() for t in (q, k, v))
                 for s, n in zip(cu[:-1].tolist(), lens)]

        def varlen():
            return torch.ops.swa.attention.varlen(q, k, v, cu, cu, longest, longest, left, 0)

        def padded():
            return torch.ops.swa.attention(qp, kp, vp, left, 0)

        def per_seq():
            return [torch.ops.swa.attention(*t, left, 0) for t in views]

        def with_backward(fn, inputs):
            def run():
                res = fn()
                res = res if isinstance(res, list) else [res]
                loss = sum(o.float().square().sum() for o, _ in res)
                return torch.autograd.grad(loss, inputs)
            return run

        per_inputs = [t for trio in views for t in trio]
        fns = {("forward", "varlen"): lambda: torch.no_grad()(varlen)(),
               ("forward", "padded"): lambda: torch.no_grad()(padded)(),
               ("forward", "per-sequence"): lambda: torch.no_grad()(per_seq)(),
               ("forward+backward", "varlen"): with_backward(varlen, (q, k, v)),
               ("forward+backward", "padded"): with_backward(padded, (qp, kp, vp)),
               ("forward+backward", "per-sequence"): with_backward(per_seq, per_inputs)}
        best = {}
        for r in range(args.rounds):
            for key, fn in fns.items():
                best[key] = min(best.get(key, math.inf), timer.measure(fn, first_call_done=r > 0)["ms"])
        padding = 1 - total / (len(lens) * longest)
        for direction in ("forward", "forward+backward"):
            ref = best[(direction, "per-sequence")]
            for kind in ("varlen", "padded", "per-sequence"):
                ms = best[(direction, kind)]
                rows.append(dict(direction=direction, kind=kind, dtype=str(c["dtype"]).replace("torch.", ""),
                                 window=c["window"], tokens=total, longest=longest, padding=padding * 100, ms=ms,
                                 vs_per_sequence=ms / ref, lengths=lens))
                common.log(f"  {direction:16s} {rows[-1]['dtype']:8s} W={c['window']:5d} {kind:13s} {ms:9.2f} ms  "
                           f"{ms / ref:5.2f}x per-sequence  (padding {padding * 100:.0f}%)")
    columns = [("pass", "direction", "s"), ("dtype", "dtype", "s"), ("W", "window", "d"), ("tokens", "tokens", "d"),
               ("longest", "longest", "d"), ("padding %", "padding", ".0f"), ("call", "kind", "s"), ("ms", "ms", ".2f"),
               ("x per-seq sum", "vs_per_sequence", ".3f")]
    table = common.format_table(rows, columns)
    common.log("\n" + table)
    stem = common.result_stem("varlen", env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(), rows=rows))
    stem.with_suffix(".md").write_text(
        f"# Varlen: packed vs padded vs per-sequence\n\n`{common.python_command()}`, {env['device_name']}, torch "
        f"{env['torch']}, {env['cpu_threads']} threads, load {env['load_avg_1min']}, commit {env['git_commit']}. "
        f"16 sequences, lengths log-uniform (seeded), H = {batches(args, device)[0]['heads']}, D = 64, causal "
        f"sliding window W; best of {args.rounds} round-robin medians.\n\n```\n{table}\n```\n")
    panels = []
    for direction in ("forward", "forward+backward"):
        series = {}
        for r in rows:
            if r["direction"] == direction:
                series.setdefault(f"{r['kind']} {r['dtype']}", []).append((r["window"], r["vs_per_sequence"]))
        panels.append(dict(title=f"{direction}: time / sum of per-sequence calls", xlabel="window W",
                           ylabel="x per-sequence", series=series, ylog=False, y_from_zero=True,
                           hlines=[(1.05, "1.05x target")]))
    common.plot_panels(stem.with_suffix(".png"), panels, "packed varlen vs padded vs per-sequence")
    common.log(f"wrote {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
