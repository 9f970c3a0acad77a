"""What attention sinks cost: swa_cuda with sink logits (gpt-oss), sink tokens
(StreamingLLM) or both, against the same call without sinks, forward and
forward+backward, and FlexAttention expressing the same sinks (sink tokens in
the mask_mod, a sink logit as an extra value-less key column whose score the
score_mod sets) side by side, forward (FlexAttention has no CPU backward).

The variants of a case are timed round-robin, several rounds, and each keeps
its best median, so load from elsewhere on the machine hits them alike; the
overhead column is variant / plain of the same run.

  python bench/bench_sinks.py            # CPU-sized cases (or GPU ones on a GPU)
  python bench/bench_sinks.py --smoke    # tiny shapes: checks the harness
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

SINK_TOKENS = 4
VARIANTS = ["plain", "logits", "tokens", "both"]


def cases(args, device):
    if args.smoke:
        return [dict(n=256, window=64, dtype=torch.float32)]
    cuda = device.type == "cuda"
    lengths = [16384, 32768] if cuda else [2048, 8192]
    dtypes = [torch.bfloat16] if cuda else [torch.float32, torch.bfloat16]
    windows = [128, 4096] if cuda else [128, 512]
    if args.quick:
        lengths, windows = lengths[-1:], windows[-1:]
    return [dict(n=n, window=w, dtype=dt) for dt in dtypes for w in windows for n in lengths]


def make_inputs(c, device, heads=8, head_dim=64):
    g = torch.Generator().manual_seed(0)
    shape = (1, heads, c["n"], head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(device=device, dtype=c["dtype"]).requires_grad_() for _ in range(3))
    sinks = torch.randn(heads, generator=g).to(device).requires_grad_()
    return q, k, v, sinks


def ours(q, k, v, sinks, window, variant):
    kw = {}
    if variant in ("logits", "both"):
        kw["sinks"] = sinks
    if variant in ("tokens", "both"):
        kw["sink_tokens"] = SINK_TOKENS
    if not kw:
        return torch.ops.swa.attention(q, k, v, window - 1, 0)
    return torch.ops.swa.attention.sinks(q, k, v, window - 1, 0, **kw)


def flex_callable(q, k, v, sinks, window, variant):
    """FlexAttention with the same sinks, forward only (its CPU path has no
    backward and returns no lse): sink tokens join the mask_mod; a sink logit
    is one extra key column (index n, value 0) whose score the score_mod sets
    to sinks[h]."""
    flex, create_block_mask = peers.flex_functions()
    n = q.shape[2]
    tokens = SINK_TOKENS if variant in ("tokens", "both") else 0
    with_logits = variant in ("logits", "both")
    kv_len = n + 1 if with_logits else n

    def mask_mod(b, h, q_idx, kv_idx):
        band = (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < tokens))
        return band | (kv_idx == n) if with_logits else band

    block_mask = create_block_mask(mask_mod, None, None, n, kv_len, device=q.device)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    if with_logits:
        zero = kd.new_zeros(kd.shape[0], kd.shape[1], 1, kd.shape[3])
        kd, vd = torch.cat([kd, zero], 2), torch.cat([vd, zero], 2)
    sink = sinks.detach().float()

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx == n, sink[h].to(score.dtype), score)

    def run():
        with torch.no_grad():
            return flex(qd, kd, vd, score_mod=score_mod if with_logits else None, block_mask=block_mask)

    return run


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds per case")
    args = parser.parse_args()
    device = common.pick_device(args)
    env = common.env_info(device)
    common.banner("attention sinks: overhead vs the same call without sinks")
    common.print_env(env)
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 300.0))
    rows = []
    for c in cases(args, device):
        q, k, v, sinks = make_inputs(c, device)
        fns, agree = {}, {}
        for variant in VARIANTS:
            def fwd(variant=variant):
                with torch.no_grad():
                    return ours(q, k, v, sinks, c["window"], variant)

            def fwd_bwd(variant=variant):
                out, lse = ours(q, k, v, sinks, c["window"], variant)
                inputs = (q, k, v) + ((sinks,) if variant in ("logits", "both") else ())
                return torch.autograd.grad(out.float().square().sum() + lse.sum(), inputs)

            fns[("ours", "forward", variant)] = fwd
            fns[("ours", "forward+backward", variant)] = fwd_bwd
            try:
                flex_fn = flex_callable(q, k, v, sinks, c["window"], variant)
                # The peer computes the same thing: checked once per case.
                diff = (flex_fn().float() - fwd()[0].float()).abs().max().item()
                common.log(f"  flex {variant}: max |flex - ours| = {diff:.2e}")
                agree[variant] = diff
                fns[("flex", "forward", variant)] = flex_fn
            except Exception as e:  # Unavailable, a compile failure
                common.log(f"  flex {variant}: unavailable ({type(e).__name__}: {str(e)[:300]})")
        best = {}
        for r in range(args.rounds):
            for key, fn in fns.items():
                try:
                    ms = timer.measure(fn, first_call_done=r > 0)["ms"]
                except Exception as e:
                    common.log(f"  {key}: failed ({type(e).__name__}: {e})")
                    continue
                best[key] = min(best.get(key, math.inf), ms)
        for impl, direction in sorted({(i, d) for i, d, _ in best}):
            base = best.get((impl, direction, "plain"))
            for variant in VARIANTS:
                ms = best.get((impl, direction, variant))
                if ms is None:
                    continue
                rows.append(dict(impl=impl, direction=direction, variant=variant, n=c["n"], window=c["window"],
                                 dtype=str(c["dtype"]).replace("torch.", ""), ms=ms,
                                 overhead=(ms / base - 1) * 100 if base else None,
                                 flex_vs_ours_max_diff=agree.get(variant) if impl == "flex" else None))
                common.log(f"  {impl:4s} {direction:16s} {rows[-1]['dtype']:8s} n={c['n']:6d} W={c['window']:5d} "
                           f"{variant:6s} {ms:9.2f} ms  {rows[-1]['overhead'] or 0:+6.1f}%")
    columns = [("impl", "impl", "s"), ("pass", "direction", "s"), ("dtype", "dtype", "s"), ("n", "n", "d"),
               ("W", "window", "d"), ("sinks", "variant", "s"), ("ms", "ms", ".2f"),
               ("vs plain %", "overhead", "+.1f")]
    table = common.format_table(rows, columns)
    common.log("\n" + table)
    stem = common.result_stem("sinks", env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(),
                                                     sink_tokens=SINK_TOKENS, rows=rows))
    stem.with_suffix(".md").write_text(
        f"# Attention sinks: cost vs the same call without sinks\n\n`{common.python_command()}`, "
        f"{env['device_name']}, torch {env['torch']}, {env['cpu_threads']} threads, load "
        f"{env['load_avg_1min']}, commit {env['git_commit']}. B = 1, H = 8, D = 64, causal sliding window W, "
        f"sink tokens S = {SINK_TOKENS}, logits one per head; best of {args.rounds} round-robin medians.\n\n"
        f"```\n{table}\n```\n")
    panels = []
    for direction in ("forward", "forward+backward"):
        series = {}
        for r in rows:
            if r["direction"] == direction and r["variant"] != "plain":
                label = f"{r['impl']} {r['variant']} {r['dtype']} W={r['window']}"
                series.setdefault(label, []).append((r["n"], r["overhead"]))
        panels.append(dict(title=f"{direction}: time with sinks vs without", xlabel="sequence length",
                           ylabel="extra time (%)", series=series, ylog=False,
                           hlines=[(3.0, "3% target"), (0.0, "")]))
    common.plot_panels(stem.with_suffix(".png"), panels, "attention sinks overhead")
    common.log(f"wrote {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
