"""Forward of the Hopper kernel vs the portable kernel vs FlexAttention.

    python bench/bench_sm90.py [--out DIR] [--quick] [--no-flex] [--max-minutes M]

Rows per case (causal sliding window of W keys, Sq = Sk, B = 1):
  ours (sm90)   the default dispatch (the TMA + wgmma kernel on an sm_90 GPU)
  ours (sm80)   the portable tensor-core kernel (SWA_DISABLE_SM90=1)
  flex          compiled FlexAttention with the band's BlockMask
The kernel is picked once per process, so each row runs in its own child
process (this script with --child); every child times all cases with the
same L2-flushing median timer as bench_attention.py and reports the path the
dispatch took (SWA_DEBUG_FORWARD_PATH=1). The parent prints one table and
writes bench_sm90_<stamp>.json (and the differences between the outputs of
the rows) to --out. Without an sm_90 GPU the sm90 row simply reports the path
that ran (sm80).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def cases(quick):
    # (name, dtype, head_dim, heads_q, heads_kv, seqlen, window)
    c = [
        ("bf16 d128 W4096 S16K", "bfloat16", 128, 16, 16, 16384, 4096),
        ("bf16 d64 W4096 S16K", "bfloat16", 64, 16, 16, 16384, 4096),
        ("bf16 d128 W4096 S32K", "bfloat16", 128, 16, 16, 32768, 4096),
        ("bf16 d128 W4096 S16K gqa32/8", "bfloat16", 128, 32, 8, 16384, 4096),
        ("fp16 d128 W4096 S16K", "float16", 128, 16, 16, 16384, 4096),
        ("bf16 d128 W1024 S16K", "bfloat16", 128, 16, 16, 16384, 1024),
    ]
    return c[:3] if quick else c


def visible_pairs(seqlen, window):
    """Sum over rows of min(i + 1, W): the (row, key) pairs of a causal window."""
    w = min(window, seqlen)
    return w * (w + 1) // 2 + (seqlen - w) * w


def flops(case):
    _, _, d, hq, _, s, w = case
    return 4.0 * hq * d * visible_pairs(s, w)


# ---------------------------------------------------------------- child


def child(variant, spec_path, out_dir, max_minutes):
    import torch

    import common
    import peers

    spec = json.load(open(spec_path))
    timer = common.Timer("cuda")
    deadline = time.time() + 60 * max_minutes
    results = {}
    for case in spec:
        name, dtype_name, d, hq, hkv, s, w = case
        if time.time() > deadline:
            results[name] = {"status": "skipped (out of time)"}
            continue
        dtype = getattr(torch, dtype_name)
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(1, hq, s, d, generator=g).to("cuda", dtype)
        k = torch.randn(1, hkv, s, d, generator=g).to("cuda", dtype)
        v = torch.randn(1, hkv, s, d, generator=g).to("cuda", dtype)
        p = peers.Problem(1, hq, hkv, s, s, d, w - 1, 0, dtype)
        sys.stderr.write(f"case {name}\n")
        sys.stderr.flush()
        try:
            impl = peers.build_flex(p, q, k, v) if variant == "flex" else peers.build_ours(p, q, k, v)
            with torch.no_grad():
                out = impl.fwd()
                out = out[0] if isinstance(out, tuple) else out
                torch.cuda.synchronize()
                m = timer.measure(impl.fwd, first_call_done=True)
            rec = {"status": "ok", "ms": m["ms"], "min_ms": m["min_ms"], "reps": m["reps"],
                   "tflops": flops(case) / (m["ms"] * 1e-3) / 1e12}
            torch.save(out.cpu(), os.path.join(out_dir, f"{variant}-{common.sanitize(name)}.pt"))
        except Exception as e:  # Unavailable, OOM, a kernel error: recorded, next case
            rec = {"status": f"error: {type(e).__name__}: {str(e)[:300]}"}
        results[name] = rec
        del q, k, v
        torch.cuda.empty_cache()
    json.dump(results, open(os.path.join(out_dir, f"{variant}.json"), "w"))


# ---------------------------------------------------------------- parent


def run_variant(variant, spec_path, out_dir, max_minutes):
    env = dict(os.environ, SWA_DEBUG_FORWARD_PATH="1")
    env["SWA_DISABLE_SM90"] = "1" if variant == "sm80" else "0"
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant, spec_path, out_dir,
                           str(max_minutes)], env=env, capture_output=True, text=True)
    paths, current = {}, None
    for line in proc.stderr.splitlines():
        if line.startswith("case "):
            current = line[5:]
        elif line.startswith("swa_cuda: forward path ") and current is not None:
            paths.setdefault(current, line.split()[-1])
    path = os.path.join(out_dir, f"{variant}.json")
    if proc.returncode != 0 or not os.path.exists(path):
        print(f"[{variant}] child failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return {}
    res = json.load(open(path))
    for name, rec in res.items():
        rec["path"] = paths.get(name)
    print(f"[{variant}] {len(res)} cases in {time.time() - t0:.0f} s", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--max-minutes", type=float, default=6.0, help="per child: start no case after this")
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "SPEC", "DIR", "MINUTES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant, spec, out_dir, minutes = args.child
        return child(variant, spec, out_dir, float(minutes))

    import torch

    if not torch.cuda.is_available():
        print("bench_sm90: no CUDA GPU, nothing to time")
        return 0
    cap = torch.cuda.get_device_capability(0)
    print(f"bench_sm90: {torch.cuda.get_device_name(0)} (sm_{cap[0]}{cap[1]})", flush=True)
    spec = cases(args.quick)
    variants = ["sm90", "sm80"] + ([] if args.no_flex else ["flex"])
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        json.dump(spec, open(spec_path, "w"))
        budget = args.max_minutes / len(variants)
        res = {v: run_variant(v, spec_path, tmp, budget) for v in variants}
        import common

        diffs = {}
        for case in spec:
            name = case[0]
            outs = {}
            for v in variants:
                f = os.path.join(tmp, f"{v}-{common.sanitize(name)}.pt")
                if os.path.exists(f):
                    outs[v] = torch.load(f).double()
            d = {}
            for a, b in (("sm90", "sm80"), ("sm90", "flex")):
                if a in outs and b in outs:
                    d[f"{a}_vs_{b}_max_abs"] = (outs[a] - outs[b]).abs().max().item()
            diffs[name] = d

    def cell(v, name):
        r = res.get(v, {}).get(name)
        if not r:
            return "-"
        if r.get("status") != "ok":
            return r.get("status", "?")[:28]
        return f"{r['ms']:8.3f} ms {r['tflops']:6.1f} TF"

    print()
    print(f"{'case':30s} {'ours (sm90)':>22s} {'ours (sm80)':>22s} {'flex':>22s}  sm90/sm80  sm90/flex  path  max|sm90-sm80|")
    for case in spec:
        name = case[0]
        r90, r80, rfl = (res.get(v, {}).get(name, {}) for v in ("sm90", "sm80", "flex"))
        sp80 = r80["ms"] / r90["ms"] if r90.get("status") == "ok" and r80.get("status") == "ok" else float("nan")
        spfl = rfl["ms"] / r90["ms"] if r90.get("status") == "ok" and rfl.get("status") == "ok" else float("nan")
        print(f"{name:30s} {cell('sm90', name):>22s} {cell('sm80', name):>22s} {cell('flex', name):>22s}"
              f"  {sp80:8.2f}x  {spfl:8.2f}x  {r90.get('path')}  {diffs[name].get('sm90_vs_sm80_max_abs')}")
    stamp = time.strftime("%Y-%m-%d_%H%M%S")
    path = os.path.join(args.out, f"bench_sm90_{stamp}.json")
    json.dump({"benchmark": "sm90", "device": torch.cuda.get_device_name(0), "capability": list(cap),
               "cases": [dict(zip(("name", "dtype", "head_dim", "heads_q", "heads_kv", "seqlen", "window"), c),
                              flops=flops(c), methods={v: res.get(v, {}).get(c[0]) for v in variants},
                              diffs=diffs[c[0]]) for c in spec]}, open(path, "w"), indent=1)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
