"""Kernel microbenchmark: swa_cuda sliding-window attention against its peers,
all in one run on one device.

    python bench/bench_attention.py [--quick] [--out bench/results] [--cpu]

CUDA GPU: bf16, lengths 1K..128K, W in {512, 4096}, head dims 64 and 128,
batch adjusted so batch * length stays about constant, one GQA series and a
fixed-batch series for the time(2n)/time(n) scaling check. Methods: ours
(torch.ops.swa.attention; forward, backward kernel, forward+backward through
autograd), FlexAttention with a sliding-window block mask (torch.compile),
SDPA with a dense banded boolean mask (up to 32K), SDPA flash full causal,
and a dense bf16 matmul as the device's practical peak.

No GPU (or --cpu): CPU-sized fp32 cases, ours vs SDPA + banded mask vs
compiled FlexAttention, with the foundation issue's headline case
(Sq = Sk = 8192, W = 512, D = 64, 8 heads, B = 1, forward; goal: ours >= 2x
FlexAttention) printed prominently.

FLOPs count only the visible (query, key) pairs (bench/flops.py): forward
4 * B * Hq * D * pairs, backward 2.5x that. Results: a table on stdout, and
bench/results/attention_<device>_<date>.json / .png.
"""

import argparse
import sys
import time
from dataclasses import asdict, dataclass

import torch

import common
import flops
import peers
from common import log

K = 1024


@dataclass
class Case:
    series: str  # "main", "gqa", "scaling", "headline", "cpu", "smoke"
    problem: peers.Problem

    @property
    def name(self):
        p = self.problem
        w = "full" if p.window_left < 0 else (f"W{p.window}" if p.window else f"({p.window_left},{p.window_right})")
        return (f"{self.series} B{p.batch} H{p.heads_q}/{p.heads_kv} S{_k(p.seqlen_q)} D{p.head_dim} {w} "
                f"{str(p.dtype).replace('torch.', '')}")


def _k(n):
    return f"{n // K}K" if n % K == 0 else str(n)


def _problem(batch, heads_q, seqlen, head_dim, window, dtype, heads_kv=None):
    return peers.Problem(batch, heads_q, heads_kv or heads_q, seqlen, seqlen, head_dim, window - 1, 0, dtype)


def gpu_cases(quick):
    bf16 = torch.bfloat16
    if quick:
        # Fixed batch, so 16K -> 32K (-> 64K) is the scaling check too; the
        # headline pair first, the cases compiled last are dropped first when
        # --max-minutes runs out.
        cases = [Case("headline", _problem(2, 16, s, 128, 4096, bf16)) for s in (16 * K, 32 * K)]
        cases += [Case("main", _problem(2, 32, s, 64, 512, bf16)) for s in (16 * K, 32 * K)]
        cases += [Case("gqa", _problem(2, 32, 32 * K, 128, 4096, bf16, heads_kv=8))]
        cases += [Case("headline", _problem(2, 16, 64 * K, 128, 4096, bf16))]
        cases += [Case("main", _problem(2, 16, 32 * K, 128, 512, bf16))]
        return cases
    tokens = 64 * K
    lengths = [K << i for i in range(8)]  # 1K .. 128K
    cases = []
    for head_dim, heads in ((128, 16), (64, 32)):
        for window in (4096, 512):
            cases += [Case("main", _problem(max(1, tokens // s), heads, s, head_dim, window, bf16)) for s in lengths]
    cases += [Case("gqa", _problem(max(1, tokens // s), 32, s, 128, 4096, bf16, heads_kv=8))
              for s in (4 * K, 16 * K, 64 * K)]
    # Fixed B and H: time(2n)/time(n) should be ~2 for a window, ~4 for full causal.
    cases += [Case("scaling", _problem(1, 16, s, 128, 4096, bf16)) for s in lengths[3:]]  # 8K .. 128K
    return cases


def cpu_cases():
    f32 = torch.float32
    # Fixed B and H (scaling check); 8K is the foundation issue's headline case.
    cases = [Case("cpu", _problem(1, 8, s, 64, 512, f32)) for s in (2 * K, 4 * K, 8 * K, 16 * K)]
    cases += [Case("cpu", _problem(1, 8, 8 * K, 64, 128, f32)), Case("cpu", _problem(1, 8, 4 * K, 128, 512, f32))]
    return cases


def smoke_cases(device):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = [Case("smoke", _problem(2, 4, s, 32, 64, dtype)) for s in (256, 512)]
    cases.append(Case("smoke", _problem(2, 4, 256, 64, 64, dtype, heads_kv=2)))
    return cases


def is_gpu_headline(c):
    """B 2, H 16, S 32K, D 128, W 4096, bf16: in --quick and in the full sweep."""
    return (c["heads_q"], c["heads_kv"], c["seqlen_q"], c["head_dim"], c["window"], c["dtype"]) == (
        16, 16, 32 * K, 128, 4096, "bfloat16") and c["series"] in ("headline", "main")


def is_cpu_headline(p):
    return (p.batch, p.heads_q, p.seqlen_q, p.seqlen_k, p.head_dim, p.window, p.dtype) == (
        1, 8, 8 * K, 8 * K, 64, 512, torch.float32)


# ------------------------------------------------------------- measuring


def case_flops(p, window_kind):
    wl, wr = (p.window_left, p.window_right) if window_kind == "band" else (-1, 0)
    return flops.attention_fwd_flops(p.batch, p.heads_q, p.seqlen_q, p.seqlen_k, p.head_dim, wl, wr)


def make_inputs(p, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(h, s):
        return torch.randn(p.batch, h, s, p.head_dim, generator=g, device=device, dtype=p.dtype)

    return rand(p.heads_q, p.seqlen_q), rand(p.heads_kv, p.seqlen_k), rand(p.heads_kv, p.seqlen_k)


def diff_stats(a, b):
    """max |a - b| and that relative to max |b| (b: the peer's result)."""
    diff = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    return {"max_abs_diff": diff, "rel_diff": diff / scale if scale else float("nan")}


def measure_method(name, builder, window_kind, p, qkv, timer, device, backward, peak):
    """Builds and times one method on one case; never raises."""
    rec = {"method": name, "status": "ok"}
    fwd_flops = case_flops(p, window_kind)
    rec["fwd_flops"] = fwd_flops
    try:
        impl = builder(p, *qkv)
    except peers.Unavailable as e:
        return {"method": name, "status": "unavailable", "reason": str(e)}, None
    except Exception as e:
        return {"method": name, **common.error_record(e)}, None
    rec.update(impl.extra)
    outputs = {}
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            outputs["out"] = impl.fwd()
            timer.sync()
            rec["first_call_ms"] = (time.perf_counter() - t0) * 1e3  # includes compilation
            t = timer.measure(impl.fwd, first_call_done=True)
            rec["fwd_mem_mb"] = common.peak_memory_mb(impl.fwd, device)
        rec["fwd_ms"], rec["fwd_min_ms"], rec["fwd_reps"] = t["ms"], t["min_ms"], t["reps"]
        rec["fwd_tflops"] = fwd_flops / (t["ms"] * 1e-3) / 1e12
    except Exception as e:
        return {**rec, **common.error_record(e)}, None
    if isinstance(outputs["out"], tuple):
        outputs["out"] = outputs["out"][0]
    if backward and impl.fwd_bwd is not None:
        try:
            outputs["grads"] = impl.fwd_bwd()
            t = timer.measure(impl.fwd_bwd, first_call_done=True)
            rec["fwd_bwd_ms"], rec["fwd_bwd_min_ms"] = t["ms"], t["min_ms"]
            rec["fwd_bwd_tflops"] = (1 + flops.BACKWARD_FACTOR) * fwd_flops / (t["ms"] * 1e-3) / 1e12
            rec["fwd_bwd_mem_mb"] = common.peak_memory_mb(impl.fwd_bwd, device)
        except Exception as e:
            rec["fwd_bwd_error"] = common.error_record(e)["reason"]
    if backward and impl.bwd is not None:
        try:
            t = timer.measure(impl.bwd)
            rec["bwd_ms"], rec["bwd_min_ms"] = t["ms"], t["min_ms"]
            rec["bwd_tflops"] = flops.BACKWARD_FACTOR * fwd_flops / (t["ms"] * 1e-3) / 1e12
            rec["bwd_mem_mb"] = common.peak_memory_mb(impl.bwd, device)
        except Exception as e:
            rec["bwd_error"] = common.error_record(e)["reason"]
    if peak:
        for phase in ("fwd", "fwd_bwd", "bwd"):
            if rec.get(f"{phase}_tflops") is not None:
                rec[f"{phase}_pct_peak"] = 100 * rec[f"{phase}_tflops"] / peak
    del impl
    return rec, outputs


def describe(rec):
    if rec["status"] != "ok":
        return f"{rec['status']}: {rec.get('reason', '')}"
    parts = [f"fwd {rec['fwd_ms']:9.3f} ms {rec['fwd_tflops']:7.3g} TFLOP/s"]
    if rec.get("fwd_pct_peak") is not None:
        parts[-1] += f" ({rec['fwd_pct_peak']:4.1f}% mm)"
    if rec.get("fwd_bwd_ms") is not None:
        parts.append(f"fwd+bwd {rec['fwd_bwd_ms']:9.3f} ms {rec['fwd_bwd_tflops']:7.3g} TFLOP/s")
    elif rec.get("fwd_bwd_error"):
        parts.append(f"fwd+bwd error: {rec['fwd_bwd_error'][:80]}")
    if rec.get("bwd_ms") is not None:
        parts.append(f"bwd {rec['bwd_ms']:8.3f} ms")
    if rec.get("fwd_mem_mb") is not None:
        mem = f"mem fwd {rec['fwd_mem_mb']:.0f} MB"
        if rec.get("fwd_bwd_mem_mb") is not None:
            mem += f", fwd+bwd {rec['fwd_bwd_mem_mb']:.0f} MB"
        parts.append(mem)
    for phase in ("fwd", "fwd_bwd"):
        if rec.get(f"ours_speedup_{phase}") is not None:
            parts.append(f"ours speedup ({phase}) {rec[f'ours_speedup_{phase}']:.2f}x")
    return " | ".join(parts)


def run_case(case, methods, timer, device, backward, peak):
    p = case.problem
    qkv = make_inputs(p, device)
    entry = {"name": case.name, "series": case.series, **{k: v for k, v in asdict(p).items() if k != "dtype"},
             "dtype": str(p.dtype).replace("torch.", ""), "window": p.window,
             "fwd_flops_band": case_flops(p, "band"), "methods": {}}
    ours_out = None
    check = {}
    for name, (builder, window_kind) in methods.items():
        rec, outputs = measure_method(name, builder, window_kind, p, qkv, timer, device, backward, peak)
        ours = entry["methods"].get("ours") or entry["methods"].get("standin")
        if name in ("ours", "standin"):
            ours_out = outputs
        elif ours and ours["status"] == "ok" and rec["status"] == "ok":
            for phase in ("fwd", "fwd_bwd"):
                if ours.get(f"{phase}_ms") and rec.get(f"{phase}_ms"):
                    rec[f"ours_speedup_{phase}"] = rec[f"{phase}_ms"] / ours[f"{phase}_ms"]
            # Accuracy of ours against the first windowed peer that produced
            # each result (outputs and gradients separately).
            if window_kind == "band" and ours_out and outputs:
                pairs = [("out", ours_out.get("out"), outputs.get("out"))]
                pairs += list(zip(("dq", "dk", "dv"), ours_out.get("grads") or (), outputs.get("grads") or ()))
                for what, a, b in pairs:
                    if a is not None and b is not None and what not in check:
                        check[what] = {"reference": name, **diff_stats(a, b)}
        entry["methods"][name] = rec
        log(f"    {peers.LABELS.get(name, name):30s} {describe(rec)}")
        del outputs
        if common.is_fatal_cuda_error(rec):
            raise common.FatalCudaError(f"{name}: {rec.get('reason')}")
    if check:
        entry["check_vs_peer"] = check
        log("    check of ours: " + ", ".join(
            f"{what} vs {c['reference']}: max|diff| {c['max_abs_diff']:.3g} (rel {c['rel_diff']:.2g})"
            for what, c in check.items()))
    del qkv, ours_out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


# ------------------------------------------------------------- reporting


TABLE_COLUMNS = [
    ("case", "case", ""), ("method", "label", ""),
    ("fwd ms", "fwd_ms", ".3f"), ("fwd TF/s", "fwd_tflops", ".3g"), ("%mm", "fwd_pct_peak", ".0f"),
    ("ours x (fwd)", "ours_speedup_fwd", ".2f"),
    ("f+b ms", "fwd_bwd_ms", ".3f"), ("f+b TF/s", "fwd_bwd_tflops", ".3g"), ("%mm", "fwd_bwd_pct_peak", ".0f"),
    ("ours x (f+b)", "ours_speedup_fwd_bwd", ".2f"),
    ("bwd ms", "bwd_ms", ".3f"), ("bwd TF/s", "bwd_tflops", ".3g"),
    ("mem fwd MB", "fwd_mem_mb", ".0f"), ("mem f+b MB", "fwd_bwd_mem_mb", ".0f"), ("note", "note", ""),
]


def table_rows(cases):
    rows = []
    for c in cases:
        for name, rec in c["methods"].items():
            row = dict(rec, case=c["name"], label=peers.LABELS.get(name, name))
            if rec["status"] != "ok":
                row["note"] = rec["status"] + ": " + rec.get("reason", "")[:50]
            elif rec.get("fwd_bwd_error"):
                row["note"] = "fwd+bwd: " + rec["fwd_bwd_error"][:50]
            else:
                row["note"] = rec.get("note", "")
            rows.append(row)
    return rows


def scaling_ratios(cases):
    """time(2n)/time(n) for every method and phase at fixed (B, H, D, W)."""
    by_config = {}
    for c in cases:
        key = (c["batch"], c["heads_q"], c["heads_kv"], c["head_dim"], c["window"], c["dtype"])
        by_config.setdefault(key, {})[c["seqlen_q"]] = c
    out = []
    for key, by_len in by_config.items():
        for n in sorted(by_len):
            if 2 * n not in by_len:
                continue
            for name in by_len[n]["methods"]:
                for phase in ("fwd", "fwd_bwd", "bwd"):
                    a = by_len[n]["methods"][name].get(f"{phase}_ms")
                    b = by_len[2 * n]["methods"].get(name, {}).get(f"{phase}_ms")
                    if a and b:
                        out.append({"method": name, "phase": phase, "config": f"B{key[0]} H{key[1]}/{key[2]} "
                                    f"D{key[3]} W{key[4]} {key[5]}", "n": n, "ratio": b / a})
    return out


def plot(path, cases, title):
    """Time vs length at fixed batch (log-log), one line per method."""
    series = [c for c in cases if c["series"] in ("scaling", "headline", "cpu", "smoke")]
    configs = {}
    for c in series:
        configs.setdefault((c["series"], c["batch"], c["heads_q"], c["head_dim"], c["window"]), []).append(c)
    if not configs:
        return None
    key, chosen = max(configs.items(), key=lambda kv: len(kv[1]))
    panels = []
    for phase, label in (("fwd", "forward"), ("fwd_bwd", "forward + backward")):
        lines = {}
        for c in chosen:
            for name, rec in c["methods"].items():
                if rec.get(f"{phase}_ms") is not None:
                    lines.setdefault(peers.LABELS.get(name, name), []).append((c["seqlen_q"], rec[f"{phase}_ms"]))
        panels.append({"title": f"{label}: B{key[1]} H{key[2]} D{key[3]} W{key[4]}", "xlabel": "sequence length",
                       "ylabel": "time (ms)", "series": lines,
                       "ref_slopes": [(1, "slope 1 (window)"), (2, "slope 2 (full)")]})
    return common.plot_panels(path, panels, title)


def headline(cases, device):
    """The one number each mode is judged by, printed prominently."""
    for c in cases:
        p = peers.Problem(**{k: c[k] for k in ("batch", "heads_q", "heads_kv", "seqlen_q", "seqlen_k",
                                              "head_dim", "window_left", "window_right")},
                          dtype=getattr(torch, c["dtype"]))
        ours = c["methods"].get("ours") or c["methods"].get("standin") or {}
        flex = c["methods"].get("flex", {})
        if device.type == "cpu" and is_cpu_headline(p):
            h = {"case": c["name"], "goal": "ours CPU forward >= 2x compiled FlexAttention",
                 "ours_fwd_ms": ours.get("fwd_ms"), "flex_fwd_ms": flex.get("fwd_ms"),
                 "ours_impl": "standin" if "standin" in c["methods"] else "ours"}
            if ours.get("fwd_ms") and flex.get("fwd_ms"):
                h["speedup_vs_flex"] = flex["fwd_ms"] / ours["fwd_ms"]
                h["speedup_vs_flex_best_of"] = flex["fwd_min_ms"] / ours["fwd_min_ms"]  # less load-sensitive
                h["goal_met"] = h["speedup_vs_flex"] >= 2.0
            else:
                h["speedup_vs_flex"] = None
                h["why_missing"] = ours.get("reason") or flex.get("reason") or "not measured"
            return h
        if device.type == "cuda" and is_gpu_headline(c):
            h = {"case": c["name"]}
            for phase in ("fwd", "fwd_bwd"):
                h[f"ours_{phase}_ms"] = ours.get(f"{phase}_ms")
                h[f"ours_{phase}_pct_peak"] = ours.get(f"{phase}_pct_peak")
                for peer in ("flex", "sdpa_banded", "sdpa_flash_causal"):
                    h[f"speedup_vs_{peer}_{phase}"] = c["methods"].get(peer, {}).get(f"ours_speedup_{phase}")
            return h
    return None


def print_headline(h):
    if not h:
        return
    common.banner("HEADLINE")
    if "goal" in h:
        log(f"  {h['case']}  (CPU, forward)  goal: {h['goal']}")
        if h["speedup_vs_flex"] is None:
            log(f"  ratio unavailable: {h['why_missing']}")
        else:
            impl = "" if h["ours_impl"] == "ours" else "  [STAND-IN, not our kernel]"
            log(f"  ours {h['ours_fwd_ms']:.1f} ms vs FlexAttention {h['flex_fwd_ms']:.1f} ms (medians)  ->  "
                f"ours is {h['speedup_vs_flex']:.2f}x FlexAttention  "
                f"[goal {'MET' if h['goal_met'] else 'NOT MET'}]{impl}")
            log(f"  (best-of-reps ratio {h['speedup_vs_flex_best_of']:.2f}x; load average at start "
                f"{h.get('load_avg_1min') or '?'}: a busy machine skews CPU timings)")
    else:
        log(f"  {h['case']}")
        for phase in ("fwd", "fwd_bwd"):
            if h.get(f"ours_{phase}_ms") is None:
                continue
            ratios = ", ".join(f"{peer} {h[f'speedup_vs_{peer}_{phase}']:.2f}x" for peer in
                               ("flex", "sdpa_banded", "sdpa_flash_causal")
                               if h.get(f"speedup_vs_{peer}_{phase}"))
            pct = h.get(f"ours_{phase}_pct_peak")
            log(f"  {phase:8s} ours {h[f'ours_{phase}_ms']:.3f} ms"
                + (f" ({pct:.0f}% of matmul peak)" if pct else "") + f"; ours speedup vs {ratios or '-'}")


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    ap = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    ap.add_argument("--backward", action=argparse.BooleanOptionalAction, default=None,
                    help="time backward and fwd+bwd too (default: on for GPU, off on CPU)")
    ap.add_argument("--methods", default=None,
                    help="comma list of methods (ours,flex,sdpa_banded,sdpa_flash_causal; default all)")
    ap.add_argument("--series", default=None, help="comma list of case series to run (main,gqa,scaling,...)")
    ap.add_argument("--lengths", default=None, help="comma list of sequence lengths to keep, e.g. 16384,32768")
    ap.add_argument("--standin", action="store_true",
                    help="where the real op is missing, time a clearly labelled SDPA stand-in as 'ours' "
                         "(harness testing only)")
    return ap.parse_args(argv)


def select_cases(args, device):
    if args.smoke:
        cases = smoke_cases(device)
    elif device.type == "cuda":
        cases = gpu_cases(args.quick)
    else:
        cases = cpu_cases()
        if args.quick:
            cases = [c for c in cases if c.problem.seqlen_q <= 8 * K][:3]
    if args.series:
        keep = set(args.series.split(","))
        cases = [c for c in cases if c.series in keep]
    if args.lengths:
        keep = {int(x) for x in args.lengths.split(",")}
        cases = [c for c in cases if c.problem.seqlen_q in keep]
    return cases


def select_methods(args, device):
    methods = dict(peers.METHODS)
    if device.type == "cpu":
        # The banded SDPA computes all Sq x Sk scores: keep it to 8K on 2 cores.
        methods["sdpa_banded"] = (lambda p, q, k, v: peers.build_sdpa_banded(p, q, k, v, max_len=8 * K), "band")
    if args.methods:
        keep = args.methods.split(",")
        unknown = set(keep) - set(methods)
        if unknown:
            sys.exit(f"unknown methods {sorted(unknown)}; choose from {sorted(methods)}")
        methods = {k: v for k, v in methods.items() if k in keep}
    if "ours" in methods:
        reason = common.op_status("attention", device)
        if reason:
            if args.standin:
                log(f"!! ours unavailable ({reason}): timing a STAND-IN (SDPA + banded mask) in its place. "
                    "These numbers are NOT swa_cuda's.")
                methods = {"standin": (peers.build_standin, "band"),
                           **{k: v for k, v in methods.items() if k != "ours"}}
            else:
                log(f"!! ours unavailable: {reason}. Peers are still timed (use --standin to test the harness).")
    return methods


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args)
    backward = args.backward if args.backward is not None else (device.type == "cuda" or args.smoke)
    env = common.env_info(device)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    common.banner(f"swa_cuda attention benchmark: {device.type.upper()} mode ({mode})"
                  + ("  -- CPU-sized cases, not GPU numbers" if device.type == "cpu" else ""))
    common.print_env(env)
    cases = select_cases(args, device)
    methods = select_methods(args, device)
    cuda = device.type == "cuda"
    rep_ms = args.rep_ms or (100.0 if cuda else (20.0 if args.smoke else 1000.0))
    timer = common.Timer(device, warmup_ms=25.0 if cuda else rep_ms / 4, rep_ms=rep_ms,
                         min_reps=3 if cuda else 3, max_reps=200 if cuda else 20)
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    peak = common.matmul_peak(device, mm_dtype, 8192 if cuda else 2048, timer)
    log(f"  matmul peak: {peak['n']}^3 {peak['dtype']}: {peak['ms']:.3f} ms = {peak['tflops']:.1f} TFLOP/s")
    log(f"  {len(cases)} cases x methods {list(methods)}; backward {'on' if backward else 'off'}; "
        f"timer: median of >= {timer.min_reps} reps over ~{rep_ms:.0f} ms" + (", L2 flushed" if cuda else ""))
    stem = common.result_stem("attention", env, args.out)
    payload = {"benchmark": "attention", "command": common.python_command(), "mode": mode, "env": env,
               "matmul_peak": peak, "backward": backward,
               "flops_rule": "fwd = 4*B*Hq*D*visible_pairs (bench/flops.py), bwd = 2.5x fwd, fwd+bwd = 3.5x",
               "cases": []}
    deadline = common.Deadline(args.max_minutes)
    for i, case in enumerate(cases):
        if deadline.passed():
            log(f"[{i + 1}/{len(cases)}] {case.name}: skipped, --max-minutes reached")
            payload.setdefault("skipped_for_time", []).append(case.name)
            continue
        log(f"[{i + 1}/{len(cases)}] {case.name}")
        try:
            payload["cases"].append(run_case(case, methods, timer, device, backward, peak["tflops"]))
        except common.FatalCudaError as e:
            # A sticky CUDA error (illegal address, ...) fails every later call.
            payload["fatal_error"] = str(e)
            log(f"!! FATAL CUDA error, stopping the benchmark (the context is unusable): {e}")
            break
        finally:
            common.save_json(stem.with_suffix(".json"), payload)
    payload["scaling"] = scaling_ratios(payload["cases"])
    payload["headline"] = headline(payload["cases"], device)
    if payload["headline"] is not None:
        payload["headline"]["load_avg_1min"] = env.get("load_avg_1min")
    common.banner("Results (FLOPs over visible pairs only; 'ours x' = peer time / ours time)")
    log(common.format_table(table_rows(payload["cases"]), TABLE_COLUMNS))
    if payload["scaling"]:
        common.banner("Scaling at fixed B, H: time(2n) / time(n)  (window: ~2, full attention: ~4)")
        log(common.format_table(payload["scaling"], [("method", "method", ""), ("phase", "phase", ""),
                                                     ("config", "config", ""), ("n", "n", "d"),
                                                     ("t(2n)/t(n)", "ratio", ".2f")]))
    print_headline(payload["headline"])
    common.save_json(stem.with_suffix(".json"), payload)
    png = plot(stem.with_suffix(".png"), payload["cases"],
               f"sliding-window attention, {env['device_name']}, torch {env['torch']}")
    log(f"\nwrote {stem.with_suffix('.json')}" + (f" and {png}" if png else ""))
    return payload


if __name__ == "__main__":
    main()
