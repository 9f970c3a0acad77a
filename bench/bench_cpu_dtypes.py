"""The CPU forward and backward by dtype, side by side in one run: what each
kernel build does with bf16 and fp16 inputs (csrc/cpu/isa.h), the backward's
time against the forward's, beside torch's own matmul rates in the same
dtypes.

Per shape (B = 1, H = 8, Hkv 8 and 2, D 64 and 128, W 512 and 4096, n 2K ..
32K): the forward in float32, bf16 and fp16 on the native build (AVX512-BF16
where the CPU has it: vdpbf16ps products), and bf16 again on the AVX-512 build
without BF16 (SWA_CPU_ISA=avx512, a child process; only where the native
build is the BF16 one), each the best of --rounds round-robin medians; the
backward (attention_backward from the forward's out and lse) in float32 and
bf16, and float32 again with the two-pass backward
(SWA_CPU_BACKWARD_TWO_PASS=1, a child process).
Window-aware FLOPs: 4 D per visible (query, key) pair. The matmul yardstick
is torch.mm of 2048^3 in float32 and bf16 (oneDNN; AMX where present).
Threads: the default and 1 (the code does not assume 2).

  python bench/bench_cpu_dtypes.py            # the sweep (~10 min on 2 cores)
  python bench/bench_cpu_dtypes.py --smoke    # tiny shapes: checks the harness
"""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

K = 1024
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_build():
    flags = cpu_flags()
    if os.environ.get("SWA_CPU_ISA"):
        return f"forced {os.environ['SWA_CPU_ISA']}"
    if {"avx512f", "avx512dq", "avx512vl", "avx512bw"} <= flags:
        return "avx512_bf16" if "avx512_bf16" in flags else "avx512"
    return "avx2" if "avx2" in flags else "baseline"


def shapes(smoke):
    """(n, heads_kv, head_dim, window)."""
    if smoke:
        return [(512, 2, 64, 64), (256, 1, 128, 32)]
    out = [(8 * K, hkv, d, w) for d in (64, 128) for w in (512, 4096) for hkv in (8, 2)]
    out += [(2 * K, 8, 64, 512), (32 * K, 8, 64, 512)]
    return out


def visible_pairs(n, window):
    w = min(window, n)
    return n * w - w * (w - 1) // 2


def measure(cases, dtypes, rounds, timer, threads, backward=()):
    """{"n/hkv/d/w/name": best median ms} with torch's thread count set to
    threads; names are the forward's dtypes and "bwd-<dtype>" for backward."""
    torch.set_num_threads(threads)
    import swa_cuda  # noqa: F401

    best = {}
    for n, hkv, d, w in cases:
        g = torch.Generator().manual_seed(0)
        base = [torch.randn(1, h, n, d, generator=g) for h in (8, hkv, hkv)]
        fns = {}
        for name in dtypes:
            q, k, v = (t.to(DTYPES[name]) for t in base)
            fns[name] = (lambda q=q, k=k, v=v: torch.ops.swa.attention(q, k, v, w - 1, 0))
        for name in backward:
            q, k, v = (t.to(DTYPES[name]) for t in base)
            out, lse = torch.ops.swa.attention(q, k, v, w - 1, 0)
            dout = torch.randn(out.shape, generator=g).to(out.dtype)
            fns[f"bwd-{name}"] = (lambda q=q, k=k, v=v, out=out, lse=lse, dout=dout: torch.ops.swa.attention_backward(
                dout, None, q, k, v, out, lse, w - 1, 0, None, 0.0, False))
        for r in range(rounds):
            for name, fn in fns.items():
                ms = timer.measure(fn, first_call_done=r > 0)["ms"]
                key = f"{n}/{hkv}/{d}/{w}/{name}"
                best[key] = min(best.get(key, math.inf), ms)
        common.log(f"  threads {threads} n {n} Hkv {hkv} D {d} W {w}: " +
                   ", ".join(f"{name} {best[f'{n}/{hkv}/{d}/{w}/{name}']:.1f} ms" for name in fns))
    return best


def child(args):
    timer = common.Timer(torch.device("cpu"), rep_ms=args.rep_ms or (40.0 if args.smoke else 400.0))
    dtypes, backward = (["bfloat16"], ["bfloat16"]) if args.child == "bf16-no-dot" else ([], ["float32"])
    out = {str(t): measure(shapes(args.smoke), dtypes, args.rounds, timer, t, backward) for t in args.thread_list}
    print("RESULT " + json.dumps(out))


def run_child(args, what, env):
    cmd = [sys.executable, __file__, "--child", what, "--rounds", str(args.rounds),
           "--thread-list", *map(str, args.thread_list)] + (["--smoke"] if args.smoke else [])
    if args.rep_ms:
        cmd += ["--rep-ms", str(args.rep_ms)]
    run = subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True)
    sys.stderr.write(run.stderr[-2000:])
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else None


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds (each keeps its best median)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--thread-list", type=int, nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    args.thread_list = args.thread_list or sorted({default_threads, 1}, reverse=True)
    if args.child:
        return child(args)
    device = torch.device("cpu")
    env = common.env_info(device)
    build = native_build()
    env["native_cpu_build"] = build
    common.banner(f"CPU forward and backward by dtype (native build {build})")
    common.print_env(env)
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 400.0))
    mm_n = 512 if args.smoke else 2048
    matmul = {}
    for t in args.thread_list:
        torch.set_num_threads(t)
        for name in ("float32", "bfloat16"):
            matmul[f"{t}/{name}"] = common.matmul_peak(device, DTYPES[name], mm_n, timer)["tflops"] * 1e3
            common.log(f"  torch.mm {mm_n}^3 {name}, {t} threads: {matmul[f'{t}/{name}']:.0f} GFLOP/s")
    best = {str(t): measure(shapes(args.smoke), list(DTYPES), args.rounds, timer, t, ["float32", "bfloat16"])
            for t in args.thread_list}
    no_dot = None
    if build == "avx512_bf16":
        common.log("  bf16 on the AVX-512 build without BF16 (SWA_CPU_ISA=avx512):")
        no_dot = run_child(args, "bf16-no-dot", {"SWA_CPU_ISA": "avx512"})
    common.log("  float32 backward in two passes (SWA_CPU_BACKWARD_TWO_PASS=1):")
    two_pass = run_child(args, "backward-fp32", {"SWA_CPU_BACKWARD_TWO_PASS": "1"})

    rows = []
    for t in args.thread_list:
        for n, hkv, d, w in shapes(args.smoke):
            key = f"{n}/{hkv}/{d}/{w}"
            ms = {name: best[str(t)][f"{key}/{name}"] for name in DTYPES}
            flops = 4 * 8 * d * visible_pairs(n, w)
            row = dict(threads=t, n=n, heads_kv=hkv, head_dim=d, window=w, ms_fp32=ms["float32"],
                       ms_bf16=ms["bfloat16"], ms_fp16=ms["float16"],
                       gflops_fp32=flops / ms["float32"] / 1e6, gflops_bf16=flops / ms["bfloat16"] / 1e6,
                       bf16_speedup=ms["float32"] / ms["bfloat16"], fp16_speedup=ms["float32"] / ms["float16"],
                       bf16_pct_of_bf16_mm=100 * flops / ms["bfloat16"] / 1e6 / matmul[f"{t}/bfloat16"],
                       fp32_pct_of_fp32_mm=100 * flops / ms["float32"] / 1e6 / matmul[f"{t}/float32"])
            if no_dot is not None:
                row["ms_bf16_no_dot"] = no_dot[str(t)][f"{key}/bfloat16"]
                row["bf16_dot_speedup"] = row["ms_bf16_no_dot"] / ms["bfloat16"]
            for name, short in (("float32", "fp32"), ("bfloat16", "bf16")):
                row[f"ms_bwd_{short}"] = best[str(t)][f"{key}/bwd-{name}"]
                row[f"bwd_over_fwd_{short}"] = row[f"ms_bwd_{short}"] / ms[name]
                # The backward's FLOPs: 2.5x the forward's (S, dP, dV, dK, dQ: 10 D per pair).
                row[f"bwd_pct_of_{short}_mm"] = 100 * 2.5 * flops / row[f"ms_bwd_{short}"] / 1e6 / matmul[f"{t}/{name}"]
            if no_dot is not None:
                row["ms_bwd_bf16_no_dot"] = no_dot[str(t)][f"{key}/bwd-bfloat16"]
                row["bwd_bf16_dot_speedup"] = row["ms_bwd_bf16_no_dot"] / row["ms_bwd_bf16"]
            if two_pass is not None:
                row["ms_bwd_fp32_two_pass"] = two_pass[str(t)][f"{key}/bwd-float32"]
                row["bwd_two_pass_over_fwd_fp32"] = row["ms_bwd_fp32_two_pass"] / ms["float32"]
            rows.append(row)
    columns = [("thr", "threads", "d"), ("n", "n", "d"), ("Hkv", "heads_kv", "d"), ("D", "head_dim", "d"),
               ("W", "window", "d"), ("fp32 ms", "ms_fp32", ".1f"), ("bf16 ms", "ms_bf16", ".1f"),
               ("fp16 ms", "ms_fp16", ".1f"), ("bf16 ms (no BF16)", "ms_bf16_no_dot", ".1f"),
               ("fp32/bf16", "bf16_speedup", ".2f"), ("fp32/fp16", "fp16_speedup", ".2f"),
               ("dot gain", "bf16_dot_speedup", ".2f"), ("bf16 GF/s", "gflops_bf16", ".0f"),
               ("% bf16 mm", "bf16_pct_of_bf16_mm", ".0f"), ("% fp32 mm", "fp32_pct_of_fp32_mm", ".0f")]
    table = common.format_table(rows, columns)
    common.log("\n" + table)
    bwd_columns = [("thr", "threads", "d"), ("n", "n", "d"), ("Hkv", "heads_kv", "d"), ("D", "head_dim", "d"),
                   ("W", "window", "d"), ("fp32 bwd ms", "ms_bwd_fp32", ".1f"), ("bwd/fwd fp32", "bwd_over_fwd_fp32", ".2f"),
                   ("fp32 bwd ms, 2 passes", "ms_bwd_fp32_two_pass", ".1f"),
                   ("bwd/fwd, 2 passes", "bwd_two_pass_over_fwd_fp32", ".2f"),
                   ("fp32 bwd % fp32 mm", "bwd_pct_of_fp32_mm", ".0f"),
                   ("bf16 bwd ms", "ms_bwd_bf16", ".1f"), ("bwd/fwd bf16", "bwd_over_fwd_bf16", ".2f"),
                   ("bf16 bwd % bf16 mm", "bwd_pct_of_bf16_mm", ".0f"),
                   ("bf16 bwd ms (no BF16)", "ms_bwd_bf16_no_dot", ".1f"), ("bwd dot gain", "bwd_bf16_dot_speedup", ".2f")]
    bwd_table = common.format_table(rows, bwd_columns)
    common.log("\n" + bwd_table)
    stem = common.result_stem("cpu_dtypes", env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(), matmul_gflops=matmul,
                                                     rows=rows))
    mm = ", ".join(f"{k.split('/')[1]} {v:.0f} GFLOP/s ({k.split('/')[0]} thr)" for k, v in matmul.items())
    stem.with_suffix(".md").write_text(
        f"# CPU forward and backward by dtype\n\n`{common.python_command()}`, {env['device_name']}, "
        f"native build {build}, torch {env['torch']}, load {env['load_avg_1min']}, commit {env['git_commit']}. "
        f"B = 1, Hq = 8, causal windows; best of {args.rounds} round-robin medians. 'bf16 ms (no BF16)': the "
        f"AVX-512 build forced by SWA_CPU_ISA=avx512 (bf16 rows widened to float32); 'dot gain' = that / bf16 ms. "
        f"GFLOP/s count the visible pairs only (4 D per pair). torch.mm {mm_n}^3 in the same run: {mm}.\n\n"
        f"```\n{table}\n```\n\nBackward (attention_backward from the forward's out and lse; '2 passes': "
        f"SWA_CPU_BACKWARD_TWO_PASS=1 in a child process; 'no BF16': "
        f"SWA_CPU_ISA=avx512, the float32 one pass on bf16 rows widened; '% mm': the backward's FLOPs, 2.5x the "
        f"forward's (10 D per visible pair), against torch.mm's rate in the same dtype):\n\n```\n{bwd_table}\n```\n")
    panels = []
    for t in args.thread_list:
        series = {}
        for label, col in (("fp32", "ms_fp32"), ("bf16", "ms_bf16"), ("fp16", "ms_fp16"), ("bf16, no BF16", "ms_bf16_no_dot")):
            pts = [(i, r[col]) for i, r in enumerate(x for x in rows if x["threads"] == t) if r.get(col)]
            if pts:
                series[label] = pts
        panels.append(dict(title=f"{t} threads (x: shape index, see the table)", xlabel="shape", ylabel="ms",
                           xlog=False, ylog=True, series=series))
    common.plot_panels(stem.with_suffix(".png"), panels, f"CPU forward by dtype, {env['device_name']}")
    common.log(f"wrote {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
