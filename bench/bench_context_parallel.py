"""Context parallelism: bytes each rank sends per layer, and wall time on the
CPU with gloo, for swa_cuda.distributed's halo exchange.

    python bench/bench_context_parallel.py [--smoke] [--out bench/results]

1. Bytes per rank per layer, forward and backward, by formula, for the halo
   exchange vs all-gather CP (Transformer Engine: all-gather K/V in the
   forward, reduce-scatter dK/dV in the backward) vs ring attention (K/V
   blocks passed P-1 times; in the backward K/V again and the dK/dV
   accumulators P times, back to their owner) at the issue's configuration:
   128K tokens, 8 ranks, W = 4096, Hkv = 8, D = 128, bf16, batch 1.
2. The same bytes measured on a small configuration actually run with 4
   gloo ranks (swa_cuda.distributed.TRAFFIC counts what the exchange hands
   to isend), next to the formula for that configuration.
3. Wall time for P = 1, 2, 4 processes at a fixed total length (strong
   scaling) and a fixed shard length (weak scaling), forward and
   forward+backward, one thread per process (P = 4 oversubscribes a 2-core
   machine: said in the output); the halo exchange with overlap on and off,
   the time blocked waiting for the transfer (what the interior did not
   hide), the op on each shard alone with no exchange (the lower bound under
   the same load: the machine is shared, so compare within a row group), and
   all-gather CP's forward for comparison.
Results: a table on stdout, bench/results/context_parallel_<device>_<date>.json,
.md (the tables) and .png.
"""

import argparse
import datetime
import os
import pickle
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

MiB = 2 ** 20
BIG = dict(tokens=131072, ranks=8, window=4096, heads_kv=8, head_dim=128, itemsize=2, batch=1)
SMALL = dict(tokens=8192, ranks=4, window=512, heads_kv=2, head_dim=32, itemsize=2, batch=1)


# --------------------------------------------------------------- formulas


def formula_bytes(tokens, ranks, window, heads_kv, head_dim, itemsize, batch=1, window_right=0):
    """Bytes a middle rank sends per layer, {method: (forward, backward)}, with
    even shards of at least W-1 tokens."""
    kv_token = 2 * batch * heads_kv * head_dim * itemsize  # K and V of one token
    shard = tokens // ranks
    halo = (window - 1 + window_right) * kv_token
    gathered = (ranks - 1) * shard * kv_token
    return {
        "halo (swa_cuda)": (halo, halo),
        "all-gather CP": (gathered, gathered),
        "ring attention": (gathered, (2 * ranks - 1) * shard * kv_token),
    }


def halo_bytes_of_rank(rank, cfg, window_right=0):
    """Forward / backward bytes rank `rank` sends in cfg (even shards >= W-1):
    K/V to the successor's left halo and the predecessor's right halo; in the
    backward the gradients of its own halos back to their owners."""
    kv_token = 2 * cfg["batch"] * cfg["heads_kv"] * cfg["head_dim"] * cfg["itemsize"]
    last = cfg["ranks"] - 1
    fwd = (cfg["window"] - 1) * (rank < last) + window_right * (rank > 0)
    bwd = (cfg["window"] - 1) * (rank > 0) + window_right * (rank < last)
    return fwd * kv_token, bwd * kv_token


# ----------------------------------------------------------------- workers


def _inputs(job, rank):
    g = torch.Generator().manual_seed(1000 + rank)
    s, b, d = job["lengths"][rank], job.get("batch", 1), job["head_dim"]
    dtype = getattr(torch, job["dtype"])
    q = torch.randn(b, job["heads_q"], s, d, generator=g).to(dtype)
    k = torch.randn(b, job["heads_kv"], s, d, generator=g).to(dtype)
    v = torch.randn(b, job["heads_kv"], s, d, generator=g).to(dtype)
    return q, k, v


def _call(job, q, k, v):
    import torch.distributed as dist

    import swa_cuda.distributed as cp

    w, wr = job["window"], job.get("window_right", 0)
    if job["method"] == "local":  # the op on the shard alone: no exchange, no halo (a lower bound)
        return torch.ops.swa.attention(q, k, v, w - 1, wr, None, 0.0)[0]
    if job["method"] == "allgather":  # all-gather CP forward: every shard's K/V everywhere
        kv = torch.stack((k, v))
        parts = [torch.empty_like(kv) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, kv)
        rank = dist.get_rank()
        kv_all = torch.cat(parts[:rank + 1], dim=3)  # keys up to this shard's end (causal)
        return torch.ops.swa.attention(q, kv_all[0], kv_all[1], w - 1, 0, None, 0.0)[0]
    lengths = cp.checks.check_and_exchange_lengths(q, k, v, w, wr, None, 0.0, q.requires_grad, None)
    return cp._attention(q, k, v, lengths, w - 1, wr, None, 0.0, None, overlap=job["overlap"])[0]


def _run_job(job, rank):
    """Every variant of the job once per rep, interleaved, so that they share
    the machine's load (other processes') alike."""
    import torch.distributed as dist

    import swa_cuda.distributed as cp

    q, k, v = _inputs(job, rank)
    backward = job["pass"] == "fwd+bwd"
    grad = torch.randn_like(q) if backward else None
    res = [{"times": [], "waits": [], "sent": {}} for _ in job["variants"]]
    for rep in range(job["reps"] + 1):  # the first is a warm-up
        for variant, r in zip(job["variants"], res):
            qq, kk, vv = (t.detach().requires_grad_(backward) for t in (q, k, v))
            cp.TRAFFIC.reset()
            dist.barrier()
            t0 = time.perf_counter()
            out = _call(dict(job, **variant), qq, kk, vv)
            if backward:
                out.backward(grad)
            elapsed = time.perf_counter() - t0
            if rep:
                r["times"].append(elapsed)
                r["waits"].append(cp.TRAFFIC.wait_s["forward"] + cp.TRAFFIC.wait_s["backward"])
            r["sent"] = dict(cp.TRAFFIC.sent)
    return res


def _worker(rank, world, port, out_dir, jobs):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    import torch.distributed as dist

    results = []
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
        for job in jobs:
            results.append(_run_job(job, rank))
        dist.destroy_process_group()
    except Exception:
        results.append({"crash": traceback.format_exc()})
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)


def run_world(world, jobs, timeout_s):
    """Per job: the per-rank results of `world` spawned gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_worker, args=(world, port, tmp, jobs), nprocs=world, join=False,
                                 start_method="spawn")
        t0 = time.monotonic()
        try:
            while not ctx.join(timeout=5):
                if time.monotonic() - t0 > timeout_s:
                    raise RuntimeError(f"{world} processes did not finish in {timeout_s} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        per_rank = []
        for r in range(world):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                per_rank.append(pickle.load(f))
    for r, res in enumerate(per_rank):
        if res and "crash" in res[-1]:
            raise RuntimeError(f"rank {r} of {world} crashed:\n{res[-1]['crash']}")
    return [[per_rank[r][j] for r in range(world)] for j in range(len(jobs))]


# ------------------------------------------------------------------- cases


def timing_jobs(world, args):
    """Strong scaling at a fixed total, weak at a fixed shard; per pass the
    halo exchange with overlap on and off, the op on the shard alone (no
    exchange: what the same load allows) and all-gather CP (forward),
    interleaved."""
    base = dict(window=args.window, heads_q=args.heads_q, heads_kv=args.heads_kv, head_dim=args.head_dim,
                dtype="float32", reps=args.reps)
    jobs = []
    for scaling, total in (("strong", args.tokens), ("weak", args.shard * world)):
        for pass_ in ("fwd", "fwd+bwd"):
            variants = [dict(method="halo", overlap=True), dict(method="halo", overlap=False),
                        dict(method="local", overlap=None)]
            if pass_ == "fwd":
                variants.append(dict(method="allgather", overlap=None))
            jobs.append(dict(base, scaling=scaling, lengths=[total // world] * world, variants=variants,
                             **{"pass": pass_}))
    return jobs


def bytes_jobs(cfg, window_right):
    shard = cfg["tokens"] // cfg["ranks"]
    return [dict(window=cfg["window"], window_right=window_right, heads_q=cfg["heads_kv"] * 2,
                 heads_kv=cfg["heads_kv"], head_dim=cfg["head_dim"], dtype="bfloat16", reps=0,
                 lengths=[shard] * cfg["ranks"], variants=[dict(method="halo", overlap=True)], batch=cfg["batch"],
                 **{"pass": "fwd+bwd"})]


def summarize(job, per_rank, world):
    """One row per variant. A step's time is its slowest rank's (each call
    starts at a barrier)."""
    rows = []
    for i, variant in enumerate(job["variants"]):
        steps = [max(r[i]["times"][n] for r in per_rank) for n in range(job["reps"])]
        waits = [max(r[i]["waits"][n] for r in per_rank) for n in range(job["reps"])]
        rows.append(dict(scaling=job["scaling"], P=world, tokens=sum(job["lengths"]), shard=job["lengths"][0],
                         **variant, **{"pass": job["pass"]}, ms=1e3 * statistics.median(steps),
                         min_ms=1e3 * min(steps), wait_ms=1e3 * statistics.median(waits), reps=job["reps"],
                         oversubscribed=world > (os.cpu_count() or 1)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(common.RESULTS_DIR))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness in seconds")
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--tokens", type=int, default=16384, help="strong scaling: total tokens")
    parser.add_argument("--shard", type=int, default=4096, help="weak scaling: tokens per rank")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--heads-q", type=int, default=8)
    parser.add_argument("--heads-kv", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.shard, args.window, args.reps = 512, 256, 64, 2
    worlds = [int(x) for x in args.worlds.split(",")]
    env = common.env_info("cpu")
    env["cpu_count"] = os.cpu_count()
    env["threads_per_process"] = 1
    common.banner("Context parallelism: bytes per rank per layer (formula)")
    common.print_env(env)

    big_rows = []
    for method, (fwd, bwd) in formula_bytes(**BIG).items():
        big_rows.append(dict(method=method, fwd_mib=fwd / MiB, bwd_mib=bwd / MiB, fwd_bytes=fwd, bwd_bytes=bwd))
    big_cols = [("method", "method", ""), ("forward MiB", "fwd_mib", ".1f"), ("backward MiB", "bwd_mib", ".1f"),
                ("forward bytes", "fwd_bytes", "d"), ("backward bytes", "bwd_bytes", "d")]
    big_title = ("{tokens} tokens, {ranks} ranks, W = {window}, Hkv = {heads_kv}, D = {head_dim}, bf16, "
                 "batch {batch}").format(**BIG)
    common.log(big_title)
    common.log(common.format_table(big_rows, big_cols))

    common.banner(f"Measured bytes: {SMALL['ranks']} gloo ranks, {SMALL['tokens']} tokens, W = {SMALL['window']}, "
                  f"Hkv = {SMALL['heads_kv']}, D = {SMALL['head_dim']}, bf16")
    measured_rows = []
    for wr in (0, SMALL["window"] // 4):
        (per_rank,) = run_world(SMALL["ranks"], bytes_jobs(SMALL, wr), timeout_s=300)
        for rank, (res,) in enumerate(per_rank):
            f_fwd, f_bwd = halo_bytes_of_rank(rank, SMALL, wr)
            measured_rows.append(dict(window_right=wr, rank=rank, fwd=res["sent"]["forward"], fwd_formula=f_fwd,
                                      bwd=res["sent"]["backward"], bwd_formula=f_bwd,
                                      metadata=res["sent"]["metadata"],
                                      match=res["sent"]["forward"] == f_fwd and res["sent"]["backward"] == f_bwd))
    measured_cols = [("window_right", "window_right", "d"), ("rank", "rank", "d"),
                     ("fwd sent", "fwd", "d"), ("fwd formula", "fwd_formula", "d"),
                     ("bwd sent", "bwd", "d"), ("bwd formula", "bwd_formula", "d"),
                     ("metadata", "metadata", "d"), ("match", "match", "")]
    for r in measured_rows:
        r["match"] = "yes" if r["match"] else "NO"
    common.log(common.format_table(measured_rows, measured_cols))

    common.banner(f"Wall time, CPU gloo, 1 thread per process, {os.cpu_count()} cores"
                  + (" (P > cores oversubscribes)" if max(worlds) > (os.cpu_count() or 1) else ""))
    time_rows = []
    for world in worlds:
        jobs = timing_jobs(world, args)
        for job, per_rank in zip(jobs, run_world(world, jobs, timeout_s=900)):
            for row in summarize(job, per_rank, world):
                time_rows.append(row)
                common.log(f"  P={world} {row['scaling']} {row['method']} overlap={row['overlap']} {row['pass']}: "
                           f"{row['ms']:.1f} ms (wait {row['wait_ms']:.2f} ms)")
    time_cols = [("scaling", "scaling", ""), ("P", "P", "d"), ("tokens", "tokens", "d"), ("shard", "shard", "d"),
                 ("method", "method", ""), ("overlap", "overlap", ""), ("pass", "pass", ""),
                 ("median ms", "ms", ".1f"), ("min ms", "min_ms", ".1f"), ("wait ms", "wait_ms", ".2f"),
                 ("oversubscribed", "oversubscribed", "")]
    for r in time_rows:
        r["overlap"] = "-" if r["overlap"] is None else ("on" if r["overlap"] else "off")
    timing_table = common.format_table(time_rows, time_cols)
    common.log(timing_table)

    stem = common.result_stem("context_parallel", env, args.out)
    config = dict(vars(args), dtype="float32")
    common.save_json(stem.with_suffix(".json"), dict(
        env=env, command=common.python_command(), big_config=BIG, bytes_formula=big_rows,
        small_config=SMALL, bytes_measured=measured_rows, timing_config=config, timing=time_rows))
    md = [f"# Context parallelism ({env['date']}, {env['device_name']}, {os.cpu_count()} cores, "
          f"load {env['load_avg_1min']:.1f})", "", f"Bytes per rank per layer (formula): {big_title}", "",
          common.format_table(big_rows, big_cols), "",
          "Measured bytes (4 gloo ranks, " + f"{SMALL['tokens']} tokens, W = {SMALL['window']}, bf16)", "",
          common.format_table(measured_rows, measured_cols), "",
          f"Wall time (CPU gloo, 1 thread per process; W = {args.window}, Hq = {args.heads_q}, "
          f"Hkv = {args.heads_kv}, D = {args.head_dim}, fp32, {args.reps} reps, median of the slowest rank)", "",
          timing_table, "",
          "halo: swa_cuda.distributed (overlap on: interior rows computed while the halo travels; off: wait "
          "first, one call). local: the op on each shard alone, no exchange and no halo keys (its first W-1 "
          "rows see fewer keys: about W/(2 S_r) less work than halo) - the lower bound under the same load. "
          "allgather: all_gather of K/V then the op over the keys up to the shard's end. wait ms: time blocked "
          "in the exchange's wait() (transfer and the other ranks' lag not hidden by computation). Variants "
          "are interleaved rep by rep so they share the machine's load; compare within a (scaling, P, pass) "
          "group. The machine is shared with other jobs (load above), so scaling across P is not "
          "a clean measurement; P above the core count oversubscribes.", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    plot(stem.with_suffix(".png"), time_rows, args)
    common.log(f"\nwrote {stem}.json / .md / .png")


def plot(path, rows, args):
    def series(scaling, pass_):
        out = {}
        for r in rows:
            if r["scaling"] == scaling and r["pass"] == pass_:
                label = r["method"] + (f" overlap {r['overlap']}" if r["method"] == "halo" else "")
                out.setdefault(label, []).append((r["P"], r["ms"]))
        return out

    sweep = [2 ** i for i in range(15, 21)]
    bytes_series = {m: [] for m in formula_bytes(**BIG)}
    for tokens in sweep:
        for m, (fwd, bwd) in formula_bytes(**dict(BIG, tokens=tokens)).items():
            bytes_series[m].append((tokens, (fwd + bwd) / MiB))
    panels = []
    for scaling, what in (("strong", f"{args.tokens} tokens in all"), ("weak", f"{args.shard} tokens per process")):
        for pass_ in ("fwd", "fwd+bwd"):
            panels.append(dict(title=f"{scaling} scaling, {pass_}: {what}", xlabel="processes P",
                               ylabel="ms (median, slowest rank)", series=series(scaling, pass_), ylog=False,
                               y_from_zero=True))
    panels.append(dict(title=f"bytes per rank per layer, fwd+bwd (formula)\n{BIG['ranks']} ranks, "
                             f"W = {BIG['window']}, Hkv = {BIG['heads_kv']}, D = {BIG['head_dim']}, bf16",
                       xlabel="sequence length", ylabel="MiB", series=bytes_series))
    common.plot_panels(path, panels, f"swa_cuda.distributed on CPU gloo: W = {args.window}, Hq = {args.heads_q}, "
                       f"Hkv = {args.heads_kv}, D = {args.head_dim}, fp32; {os.cpu_count()} cores shared with "
                       "other jobs, 1 thread per process (P = 4 oversubscribes)")


if __name__ == "__main__":
    main()
