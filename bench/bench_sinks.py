"""What attention sinks cost: swa_cuda with sink logits (gpt-oss), sink tokens
(StreamingLLM) or both, against the same call without sinks, forward and
forward+backward, and FlexAttention expressing the same sinks (sink tokens in
the mask_mod, a sink logit as an extra value-less key column whose score the
score_mod sets) side by side, forward (FlexAttention has no CPU backward).

Our variants of a case are timed call by call in turn (plain, logits, tokens,
both, plain again, in an order shuffled every turn) for a fixed time, and each keeps the 20th percentile
of its calls, so load from elsewhere on the machine hits them alike; the
overhead column is variant / plain of the same run. "plain again" is the
plain call timed as a fifth variant: its overhead is the noise floor of the
run (an A/A test). FlexAttention's variants are timed round-robin, several
rounds of the harness's Timer, each keeping its best median.

  python bench/bench_sinks.py            # CPU-sized cases (or GPU ones on a GPU)
  python bench/bench_sinks.py --smoke    # tiny shapes: checks the harness

  python bench/bench_sinks.py --instructions   # instruction counts instead of times

--instructions (CPU, valgrind) counts the instructions the kernels execute
for the float32 cases of the smallest length (callgrind, counting only inside
the forward and backward task loops): a measure of the sinks' extra work that
no load on the machine moves, where a shared machine's timings wander by a few
percent from one second to the next. valgrind has no AVX-512: the counts are
those of the AVX2 kernels. (About two minutes per variant: python under
valgrind.)
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

SINK_TOKENS = 4
VARIANTS = ["plain", "logits", "tokens", "both"]
AGAIN = "plain again"  # the A/A control: plain, timed as one more variant


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


def interleaved(fns, seconds, sync):
    """Calls every fn once per turn, in an order shuffled each turn (a call
    right after another one runs measurably differently from one after the
    harness's own work), until `seconds` have passed (at least 5 turns);
    returns the 20th percentile (ms) of each fn's calls."""
    for fn in fns.values():
        fn()  # first call: lazy init, allocator growth
    times = {key: [] for key in fns}
    order = list(fns)
    rng = random.Random(0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(len(t) for t in times.values()) < 5:
        rng.shuffle(order)
        for key in order:
            fn = fns[key]
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {key: sorted(t)[len(t) // 5] for key, t in times.items()}


INSTRUCTIONS_SCRIPT = """
import sys, torch
sys.path.insert(0, {bench!r})
import swa_cuda, bench_sinks as b
torch.set_num_threads(1)
c = dict(n={n}, window={window}, dtype=torch.float32)
q, k, v, sinks = b.make_inputs(c, torch.device("cpu"))
out, lse = b.ours(q, k, v, sinks, c["window"], {variant!r})
inputs = (q, k, v) + ((sinks,) if {variant!r} in ("logits", "both") else ())
torch.autograd.grad(out.float().square().sum() + lse.sum(), inputs)
"""


def instruction_counts(c, variant):
    """Instructions the CPU kernels execute for one forward and one backward
    of case c (callgrind, single thread): {"forward": n, "backward": n}, or
    None without valgrind."""
    import re
    import shutil
    import subprocess
    import tempfile
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        script = INSTRUCTIONS_SCRIPT.format(bench=str(Path(__file__).resolve().parent), n=c["n"],
                                            window=c["window"], variant=variant)
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no",
                        "--toggle-collect=*run_tasks*", "--toggle-collect=*run_backward_tasks*",
                        sys.executable, "-c", script], check=True, capture_output=True)
        report = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)], check=True,
                                capture_output=True, text=True).stdout
    counts = {"forward": 0, "backward": 0}
    for line in report.splitlines():
        m = re.match(r"\s*([\d,]+) .*(run_tasks|run_backward_tasks)<", line)
        if m:
            counts["forward" if m.group(2) == "run_tasks" else "backward"] += int(m.group(1).replace(",", ""))
    return counts


def count_instructions(args, device, env):
    """--instructions: the kernels' instruction counts per variant, table and JSON."""
    if device.type != "cpu":
        common.log("instructions: CPU only")
        return
    instr_rows = []
    n_min = min(c["n"] for c in cases(args, device))
    for c in cases(args, device):
        if c["dtype"] != torch.float32 or c["n"] != n_min:
            continue
        counts = {}
        for variant in VARIANTS:
            common.log(f"  instructions: n={c['n']} W={c['window']} {variant} (callgrind)")
            counts[variant] = instruction_counts(c, variant)
            if counts[variant] is None:
                common.log("  instructions: skipped (no valgrind)")
                return
        for variant in VARIANTS:
            for part in ("forward", "backward"):
                base = counts["plain"][part]
                instr_rows.append(dict(part=part, n=c["n"], window=c["window"], variant=variant,
                                       instructions=counts[variant][part],
                                       overhead=(counts[variant][part] / base - 1) * 100))
    table = common.format_table(instr_rows, [("kernels", "part", "s"), ("n", "n", "d"), ("W", "window", "d"),
                                             ("sinks", "variant", "s"), ("instructions", "instructions", "d"),
                                             ("vs plain %", "overhead", "+.2f")])
    stem = write_results(args, env, "sinks_instructions", instr_rows, table,
                         "instructions the CPU kernels execute, vs the same call without sinks",
                         f"commit {env['git_commit']}. callgrind, one thread, counting inside the forward and "
                         f"backward task loops only; the AVX2 kernels (valgrind has no AVX-512). B = 1, H = 8, "
                         f"D = 64, float32, causal sliding window W, sink tokens S = {SINK_TOKENS}, logits one per "
                         f"head.")
    common.log(f"wrote {stem}.json / .md")


def write_results(args, env, name, rows, table, title, description):
    """Logs the table; writes bench/results/<name>_... .json (the rows) and
    .md (title, command, description, table). Returns the stem."""
    common.log("\n" + table)
    stem = common.result_stem(name, env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(),
                                                     sink_tokens=SINK_TOKENS, rows=rows))
    stem.with_suffix(".md").write_text(f"# Attention sinks: {title}\n\n`{common.python_command()}`, "
                                       f"{description}\n\n```\n{table}\n```\n")
    return stem


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=3, help="FlexAttention: round-robin rounds per case")
    parser.add_argument("--instructions", action="store_true",
                        help="count the kernels' instructions under callgrind instead of timing (CPU)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="ours: seconds of interleaved calls per case and pass (default 20, smoke 1)")
    args = parser.parse_args()
    device = common.pick_device(args)
    env = common.env_info(device)
    common.banner("attention sinks: overhead vs the same call without sinks")
    common.print_env(env)
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 300.0))
    if args.instructions:
        return count_instructions(args, device, env)
    rows = []
    seconds = args.seconds if args.seconds is not None else (1.0 if args.smoke else 20.0)
    for c in cases(args, device):
        q, k, v, sinks = make_inputs(c, device)
        fns, agree, ours_fns = {}, {}, {"forward": {}, "forward+backward": {}}
        for variant in VARIANTS + [AGAIN]:
            kind = "plain" if variant == AGAIN else variant

            def fwd(kind=kind):
                with torch.no_grad():
                    return ours(q, k, v, sinks, c["window"], kind)

            def fwd_bwd(kind=kind):
                out, lse = ours(q, k, v, sinks, c["window"], kind)
                inputs = (q, k, v) + ((sinks,) if kind in ("logits", "both") else ())
                return torch.autograd.grad(out.float().square().sum() + lse.sum(), inputs)

            ours_fns["forward"][variant] = fwd
            ours_fns["forward+backward"][variant] = fwd_bwd
            if variant == AGAIN:
                continue
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
        for direction, direction_fns in ours_fns.items():
            common.log(f"  ours {direction}: {seconds:g} s of interleaved calls")
            for variant, ms in interleaved(direction_fns, seconds, timer.sync).items():
                best[("ours", direction, variant)] = ms
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
            for variant in VARIANTS + [AGAIN]:
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
    stem = write_results(
        args, env, "sinks", rows, table, "cost vs the same call without sinks",
        f"{env['device_name']}, torch {env['torch']}, {env['cpu_threads']} threads, load "
        f"{env['load_avg_1min']}, commit {env['git_commit']}. B = 1, H = 8, D = 64, causal sliding window W, "
        f"sink tokens S = {SINK_TOKENS}, logits one per head. Ours: 20th percentile of calls interleaved "
        f"variant by variant for {seconds:g} s per case and pass; '{AGAIN}' is the plain call timed again, "
        f"the run's noise floor. FlexAttention: best of {args.rounds} round-robin medians.")
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
