"""Continuous batching in the rolling cache: one cache_attention.varlen call
over a batch that mixes decoding sequences (1 new token each) with prefill
chunks, vs the separate calls a server makes without it (one padded decode
call over the decoding sequences, one padded prefill call over the chunks).
Both read the same rings; the packed call should cost about the sum of the
two (<= 1.05x) while saving a launch and the batch reshuffling.

  python bench/bench_cache_mixed.py
  python bench/bench_cache_mixed.py --smoke
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def configs(args, device):
    if args.smoke:
        return [dict(decodes=4, prefills=1, chunk=32, window=64, dtype=torch.float32, heads=(4, 2))]
    if device.type == "cuda":
        return [dict(decodes=64, prefills=4, chunk=512, window=w, dtype=torch.bfloat16, heads=(32, 8))
                for w in (4096, 512)]
    return [dict(decodes=16, prefills=2, chunk=256, window=w, dtype=dt, heads=(8, 2))
            for dt in (torch.float32, torch.bfloat16) for w in (1024, 128)]


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = common.pick_device(args)
    env = common.env_info(device)
    common.banner("rolling cache: mixed decode + prefill in one packed call vs separate calls")
    common.print_env(env)
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 200.0))
    rows = []
    for c in configs(args, device):
        (hq, hkv), dim, W = c["heads"], 64, c["window"]
        Bd, Bp, T = c["decodes"], c["prefills"], c["chunk"]
        B = Bd + Bp
        g = torch.Generator().manual_seed(0)
        rand = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=c["dtype"])
        kc, vc = rand(B, hkv, W, dim), rand(B, hkv, W, dim)
        # Decoding sequences deep into their streams, prefill chunks after a first one.
        pos = torch.tensor([3 * W + 17 * b for b in range(Bd)] + [T] * Bp, device=device)
        lengths = [1] * Bd + [T] * Bp
        total = sum(lengths)
        q, k, v = rand(total, hq, dim), rand(total, hkv, dim), rand(total, hkv, dim)
        cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)
        # The separate calls' padded operands (built once, outside the timing).
        qd, kd, vd = (t[:Bd].unsqueeze(2) for t in (q, k, v))  # [Bd, H, 1, D]
        qp, kp, vp = (t[Bd:].view(Bp, T, t.shape[1], dim).transpose(1, 2) for t in (q, k, v))

        def packed():
            return torch.ops.swa.cache_attention.varlen(q, k, v, cu, T, kc, vc, pos, W)

        def separate():
            return (torch.ops.swa.cache_attention(qd, kd, vd, kc[:Bd], vc[:Bd], pos[:Bd], W),
                    torch.ops.swa.cache_attention(qp, kp, vp, kc[Bd:], vc[Bd:], pos[Bd:], W))

        # The same numbers either way (the packed op is the padded one per sequence).
        out, _ = packed()
        (od, _), (op_, _) = separate()
        torch.testing.assert_close(out[:Bd], od[:, :, 0].to(out.dtype), atol=0, rtol=0)
        torch.testing.assert_close(out[Bd:].view(Bp, T, hq, dim).transpose(1, 2), op_, atol=0, rtol=0)
        fns = {"packed (one call)": packed, "separate (decode + prefill)": separate}
        best = {}
        with torch.no_grad():
            for r in range(args.rounds):
                for key, fn in fns.items():
                    best[key] = min(best.get(key, math.inf), timer.measure(fn, first_call_done=True)["ms"])
        ref = best["separate (decode + prefill)"]
        for kind, ms in best.items():
            rows.append(dict(kind=kind, dtype=str(c["dtype"]).replace("torch.", ""), window=W, decodes=Bd,
                             prefills=Bp, chunk=T, heads_q=hq, heads_kv=hkv, ms=ms, vs_separate=ms / ref))
            common.log(f"  {rows[-1]['dtype']:8s} W={W:5d} {Bd} decodes + {Bp}x{T} prefill  {kind:28s} "
                       f"{ms:8.3f} ms  {ms / ref:5.2f}x separate")
    columns = [("dtype", "dtype", "s"), ("W", "window", "d"), ("decodes", "decodes", "d"),
               ("prefills", "prefills", "d"), ("chunk", "chunk", "d"), ("call", "kind", "s"), ("ms", "ms", ".3f"),
               ("x separate", "vs_separate", ".3f")]
    table = common.format_table(rows, columns)
    common.log("\n" + table)
    stem = common.result_stem("cache_mixed", env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(), rows=rows))
    stem.with_suffix(".md").write_text(
        f"# Rolling cache: mixed decode + prefill, packed vs separate calls\n\n`{common.python_command()}`, "
        f"{env['device_name']}, torch {env['torch']}, {env['cpu_threads']} threads, load {env['load_avg_1min']}, "
        f"commit {env['git_commit']}. D = 64; rings of W slots; best of {args.rounds} round-robin medians.\n\n"
        f"```\n{table}\n```\n")
    series = {}
    for r in rows:
        series.setdefault(f"{r['kind']} {r['dtype']}", []).append((r["window"], r["vs_separate"]))
    common.plot_panels(stem.with_suffix(".png"), [dict(title="time / separate calls", xlabel="window W",
                                                       ylabel="x separate", series=series, ylog=False,
                                                       y_from_zero=True, hlines=[(1.05, "1.05x")])],
                       "mixed decode + prefill: one packed call vs separate calls")
    common.log(f"wrote {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
