"""Decode benchmark of the rolling KV cache (issue 5).

    python bench/bench_decode.py [--quick] [--out bench/results] [--cpu]

1. Decode step (T = 1 new token) of torch.ops.swa.cache_attention over a ring
   of capacity C = W, against the bytes it must read, 2 * B * Hkv * W * D *
   itemsize (the K and V windows), as GB/s next to the same run's
   device-to-device copy bandwidth (a large tensor copy_, bytes read + written)
   and, per case, the memory-read bandwidth yardstick: torch.sum over a
   float32 tensor of the same byte size, timed right before and after the
   case (their mean is the yardstick; "% sum" in the table). Peers decode
   over an unrolled cache (the W keys gathered contiguous): SDPA and compiled
   FlexAttention, timed without the unrolling, and cache_gather + SDPA, timed
   with it. On the CPU also ours on one thread (threading scaling). Window
   K/V from a few MB to 512 MiB (CPU: float32 and bfloat16, B = 16 and B = 1
   with a long window; the last-level cache is far smaller).
2. A generation loop of 10 * W tokens through swa_cuda.RollingKVCache,
   recording torch.cuda.memory_allocated after every step: it must be flat.

Every op that does not exist yet (or has no kernel for the device) is
reported and its section skipped, so the script runs at every stage.
Results: a table on stdout and bench/results/decode_<device>_<date>.json / .png.
"""

import argparse
import time

import torch
import torch.nn.functional as F

import common
import flops
import peers
from common import log

K = 1024


def decode_configs(device, quick, smoke):
    """(B, Hq, Hkv, D, W, dtype) per case."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if smoke:
        return [(1, 4, 2, 32, 64, fp32), (2, 4, 4, 32, 128, bf16)]
    if device.type == "cuda":
        # bf16, D = 128, Hq = 32, Hkv = 8 (Mistral-like GQA); K/V window 4, 16, 64, 256 MiB; MHA 64 MiB.
        cfgs = [(1, 32, 8, 128, K), (1, 32, 8, 128, 4 * K), (4, 32, 8, 128, 4 * K), (16, 32, 8, 128, 4 * K),
                (1, 32, 32, 128, 4 * K)]
        cfgs = cfgs[:4] if quick else cfgs + [(8, 32, 8, 128, 8 * K), (32, 32, 8, 128, 4 * K)]
        return [c + (bf16,) for c in cfgs]
    # CPU: small windows (0.5 .. 64 MiB, fp32), then K/V of 512 MiB, far past the
    # last-level cache: B = 16 (Mistral-like heads) and B = 1 with a long window.
    small = [(1, 8, 2, 64, 512, fp32), (1, 8, 8, 64, 4 * K, fp32), (4, 8, 8, 64, 4 * K, fp32)]
    big = [(16, 32, 8, 128, 4 * K, fp32), (16, 32, 8, 128, 8 * K, bf16), (1, 32, 8, 128, 64 * K, fp32),
           (1, 32, 8, 128, 128 * K, bf16)]
    return small[:1] + big[:2] if quick else small + big


def generation_config(device, quick, smoke):
    """(B, Hq, Hkv, D, W) of the 10 * W-token generation loop."""
    if smoke:
        return (1, 4, 2, 32, 32)
    if device.type == "cuda":
        return (1, 32, 8, 128, K if quick else 4 * K)
    return (1, 8, 2, 64, 256)


def ring_positions(batch, window):
    """Steady-state positions (the ring has wrapped several times), different
    per sequence so the window straddles the ring's end at different slots."""
    return torch.tensor([5 * window + 3 + 11 * b for b in range(batch)], dtype=torch.int64)


def unrolled_window(k_cache, v_cache, k_new, v_new, pos, window):
    """The W keys a decode query at position pos sees, oldest first, gathered
    contiguous in plain PyTorch: positions pos-W+1 .. pos-1 from ring slots
    (position mod C), then the new token. Independent of swa_cuda's ops."""
    capacity = k_cache.shape[2]
    ks, vs = [], []
    for b, p in enumerate(pos.tolist()):
        slots = torch.tensor([q % capacity for q in range(p - window + 1, p)], device=k_cache.device)
        ks.append(torch.cat([k_cache[b][:, slots], k_new[b]], dim=1))
        vs.append(torch.cat([v_cache[b][:, slots], v_new[b]], dim=1))
    return torch.stack(ks).contiguous(), torch.stack(vs).contiguous()


# Compiled FlexAttention on the CPU only up to this window size (its compile
# and run time on the 512 MiB cases would dominate the benchmark).
CPU_FLEX_MAX_BYTES = 64 * 2**20


def build_decode_methods(cfg, dtype, device):
    """{name: (callable or None, note)}: every method's decode step for cfg."""
    batch, hq, hkv, d, w = cfg[:5]
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(device, dtype)

    q, k_new, v_new = rand(batch, hq, 1, d), rand(batch, hkv, 1, d), rand(batch, hkv, 1, d)
    k_cache, v_cache = rand(batch, hkv, w, d), rand(batch, hkv, w, d)  # capacity C = W
    pos_cpu = ring_positions(batch, w)
    pos = pos_cpu.to(device)
    k_win, v_win = unrolled_window(k_cache, v_cache, k_new, v_new, pos_cpu, w)
    gqa = hq != hkv
    methods = {}

    reason = common.op_status("cache_attention", device)
    methods["ours"] = (None, reason) if reason else (
        lambda: torch.ops.swa.cache_attention(q, k_new, v_new, k_cache, v_cache, pos, w)[0], "cache_attention")
    if device.type == "cpu" and torch.get_num_threads() > 1:
        def ours_one_thread():
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return torch.ops.swa.cache_attention(q, k_new, v_new, k_cache, v_cache, pos, w)[0]
            finally:
                torch.set_num_threads(before)
        methods["ours_1thread"] = (None, reason) if reason else (ours_one_thread, "cache_attention, 1 thread")
    methods["sdpa_unrolled"] = (
        lambda: F.scaled_dot_product_attention(q, k_win, v_win, enable_gqa=gqa), "SDPA over the gathered window")
    kv_bytes = 2 * k_cache.numel() * k_cache.element_size()
    try:
        if device.type == "cpu" and kv_bytes > CPU_FLEX_MAX_BYTES:
            raise peers.Unavailable(f"not run on the CPU past {CPU_FLEX_MAX_BYTES >> 20} MiB of K/V (compile and run time)")
        flex, _ = peers.flex_functions()
        methods["flex_unrolled"] = (lambda: flex(q, k_win, v_win, enable_gqa=gqa),
                                    "compiled FlexAttention over the gathered window")
    except peers.Unavailable as e:
        methods["flex_unrolled"] = (None, str(e))
    reason = common.op_status("cache_gather", device)
    if reason:
        methods["gather_sdpa"] = (None, reason)
    else:
        # The new token is appended first (position pos), so the window is the
        # W positions before pos + 1.
        pos_next = pos + 1

        def gather_sdpa():
            kg, vg = torch.ops.swa.cache_gather(k_cache, v_cache, pos_next, w)
            return F.scaled_dot_product_attention(q, kg, vg, enable_gqa=gqa)
        methods["gather_sdpa"] = (gather_sdpa, "cache_gather (unroll) + SDPA, cache already holding the token")
    return methods


def read_bandwidth(nbytes, device, timer):
    """The memory-read yardstick: torch.sum over a float32 tensor of nbytes."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    t = timer.measure(lambda: x.sum())
    del x
    return nbytes / (t["ms"] * 1e-3) / 1e9


def run_decode_case(cfg, device, timer, copy_gbps):
    batch, hq, hkv, d, w, dtype = cfg
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = flops.decode_kv_bytes(batch, hkv, w, d, itemsize)
    entry = {"name": f"B{batch} H{hq}/{hkv} D{d} W{w} {str(dtype).replace('torch.', '')}", "batch": batch,
             "heads_q": hq, "heads_kv": hkv, "head_dim": d, "window": w, "dtype": str(dtype).replace("torch.", ""),
             "kv_bytes": nbytes, "methods": {}}
    log(f"  {entry['name']}: window K/V {nbytes / 2**20:.1f} MiB")
    sum_before = read_bandwidth(nbytes, device, timer)
    outs = {}
    methods = build_decode_methods(cfg, dtype, device)
    sum_after = None
    for name, (fn, note) in methods.items():
        if fn is None:
            rec = {"status": "unavailable", "reason": note}
        else:
            try:
                with torch.no_grad():
                    outs[name] = fn()
                    t = timer.measure(fn, first_call_done=True)
                rec = {"status": "ok", "note": note, "us": t["ms"] * 1e3, "min_us": t["min_ms"] * 1e3,
                       "reps": t["reps"],
                       "gbps": nbytes / (t["ms"] * 1e-3) / 1e9}
                if copy_gbps:
                    rec["pct_copy_bw"] = 100 * rec["gbps"] / copy_gbps
            except Exception as e:
                rec = common.error_record(e)
        entry["methods"][name] = rec
        if name == "ours":  # the yardstick again, right after ours
            sum_after = read_bandwidth(nbytes, device, timer)
        if common.is_fatal_cuda_error(rec):
            raise common.FatalCudaError(f"{name} on {entry['name']}: {rec['reason']}")
    sums = [x for x in (sum_before, sum_after) if x]
    entry["sum_gbps"] = sum(sums) / len(sums)
    entry["sum_gbps_before_after"] = [sum_before, sum_after]
    log(f"    torch.sum over {nbytes / 2**20:.0f} MiB (read yardstick): {entry['sum_gbps']:.1f} GB/s "
        f"(before {sum_before:.1f}, after {sum_after or float('nan'):.1f})")
    ours = entry["methods"]["ours"]
    for name, rec in entry["methods"].items():
        if rec.get("gbps"):
            rec["pct_sum_bw"] = 100 * rec["gbps"] / entry["sum_gbps"]
        if name != "ours" and ours.get("us") and rec.get("us"):
            rec["ours_speedup"] = rec["us"] / ours["us"]
        line = (f"{rec['us']:9.1f} us {rec['gbps']:8.1f} GB/s" + (f" ({rec['pct_sum_bw']:.0f}% of sum)"
                if rec.get("pct_sum_bw") else "") + (f" | ours speedup {rec['ours_speedup']:.2f}x"
                                                      if rec.get("ours_speedup") else "")
                if rec["status"] == "ok" else f"{rec['status']}: {rec.get('reason', '')[:150]}")
        log(f"    {name:14s} {line}")
    if "ours" in outs and "sdpa_unrolled" in outs:
        entry["ours_vs_sdpa_max_abs_diff"] = (outs["ours"].float() - outs["sdpa_unrolled"].float()).abs().max().item()
        log(f"    check: ours vs SDPA over the gathered window: max|diff| {entry['ours_vs_sdpa_max_abs_diff']:.3g}")
    del outs, methods
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


# -------------------------------------------------------- generation loop

def make_rolling_cache(num_layers, batch, heads_kv, head_dim, window, dtype, device):
    """(cache, step(q, k, v) -> out, description): one model step through
    swa_cuda.RollingKVCache, attend(layer, ...) for every layer then advance(1)."""
    try:
        from swa_cuda.cache import RollingKVCache
    except ImportError as e:
        raise RuntimeError(f"swa_cuda.cache.RollingKVCache not importable ({e})")
    cache = RollingKVCache(num_layers, batch, heads_kv, head_dim, window, dtype=dtype, device=device)

    def run(q, k, v):
        for layer in range(num_layers):
            out = cache.attend(layer, q, k, v)
        cache.advance(1)
        return out

    return cache, run, f"RollingKVCache({num_layers} layers, capacity W): attend per layer + advance"


def make_op_loop(num_layers, batch, heads_kv, head_dim, window, dtype, device):
    """The same loop on the ops (builds without RollingKVCache): attend to the
    ring + new token, then append it, per layer; then advance pos."""
    for op in ("cache_attention", "cache_append"):
        reason = common.op_status(op, device)
        if reason:
            raise RuntimeError(reason)
    rings = [(torch.zeros(batch, heads_kv, window, head_dim, dtype=dtype, device=device),
              torch.zeros(batch, heads_kv, window, head_dim, dtype=dtype, device=device)) for _ in range(num_layers)]
    pos = torch.zeros(batch, dtype=torch.int64, device=device)

    def run(q, k, v):
        for k_cache, v_cache in rings:
            out, _ = torch.ops.swa.cache_attention(q, k, v, k_cache, v_cache, pos, window)
            torch.ops.swa.cache_append(k_cache, v_cache, k, v, pos)
        pos.add_(1)
        return out

    return (rings, pos), run, f"ops: cache_attention + cache_append, {num_layers} rings of capacity W"


def run_generation(cfg, dtype, device, num_layers=2, tokens_per_window=10):
    """10 * W tokens, one model step (every layer) per token, the same q, k, v
    each step (their values are not the point); memory_allocated after each."""
    batch, hq, hkv, d, w = cfg
    steps = tokens_per_window * w
    itemsize = torch.empty((), dtype=dtype).element_size()
    rec = {"batch": batch, "heads_q": hq, "heads_kv": hkv, "head_dim": d, "window": w, "steps": steps,
           "num_layers": num_layers, "ring_bytes": num_layers * flops.decode_kv_bytes(batch, hkv, w, d, itemsize)}
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(batch, hq, 1, d, generator=g).to(device, dtype)
    k = torch.randn(batch, hkv, 1, d, generator=g).to(device, dtype)
    v = torch.randn(batch, hkv, 1, d, generator=g).to(device, dtype)
    errors = []
    for maker in (make_rolling_cache, make_op_loop):
        try:
            state, step, how = maker(num_layers, batch, hkv, d, w, dtype, device)  # state: keeps the cache alive
            with torch.no_grad():
                out = step(q, k, v)  # first step: also allocates what the loop keeps
            if tuple(out.shape) != tuple(q.shape):
                raise RuntimeError(f"step returned shape {tuple(out.shape)}, expected {tuple(q.shape)}")
            break
        except Exception as e:
            errors.append(f"{maker.__name__}: {type(e).__name__}: {e}")
    else:
        rec.update(status="unavailable", reason="; ".join(errors))
        log(f"  generation loop skipped: {rec['reason']}")
        return rec
    if errors:
        rec["fallback_reason"] = "; ".join(errors)
        log(f"  (RollingKVCache not used: {errors[0]})")
    rec["how"] = how
    log(f"  {steps} tokens through {how}")
    cuda = device.type == "cuda"
    mem = []
    try:
        with torch.no_grad():
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for i in range(steps):
                out = step(q, k, v)
                if cuda:
                    mem.append(torch.cuda.memory_allocated(device))
            if cuda:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
    except Exception as e:
        rec.update(common.error_record(e))
        log(f"  generation loop failed: {rec['reason']}")
        return rec
    del out
    rec.update(status="ok", step_us=elapsed / steps * 1e6)
    if cuda:
        stride = max(1, steps // 2000)  # keep the JSON small: every stride-th step
        rec["memory_allocated"] = [(i, m) for i, m in enumerate(mem) if i % stride == 0 or i == steps - 1]
        rec["memory_min"], rec["memory_max"] = min(mem), max(mem)
        rec["memory_growth_bytes"] = mem[-1] - mem[0]
        rec["flat"] = rec["memory_max"] == rec["memory_min"]
        log(f"  {rec['step_us']:.1f} us/step (incl. Python); memory_allocated min {rec['memory_min'] / 2**20:.2f} MiB, "
            f"max {rec['memory_max'] / 2**20:.2f} MiB, growth {rec['memory_growth_bytes']} B over {steps} steps "
            f"-> {'FLAT' if rec['flat'] else 'NOT FLAT'}")
    else:
        rec["memory_note"] = "torch.cuda.memory_allocated is CUDA-only: per-step memory not recorded on CPU"
        log(f"  {rec['step_us']:.1f} us/step (incl. Python); {rec['memory_note']}")
    return rec


# ------------------------------------------------------------------ main


def plot(path, payload, title):
    panels = []
    lines = {}
    pct = {}
    for i, c in enumerate(payload["cases"]):
        dt = f" {c['dtype']}" if c.get("dtype") else ""
        for name, rec in c["methods"].items():
            if rec.get("gbps"):
                lines.setdefault(name + dt, []).append((c["kv_bytes"] / 2**20, rec["gbps"]))
            if rec.get("pct_sum_bw"):
                pct.setdefault(name, []).append((i, rec["pct_sum_bw"]))
        if c.get("sum_gbps"):
            lines.setdefault("torch.sum (read yardstick)" + dt, []).append((c["kv_bytes"] / 2**20, c["sum_gbps"]))
    if lines:
        copy = payload.get("copy_bandwidth") or {}
        panels.append({"title": "decode step: K/V window bytes read / time", "xlabel": "window K/V (MiB)",
                       "ylabel": "GB/s", "series": lines,
                       "hlines": [(copy["gbps"], "device copy (read+write)")] if copy.get("gbps") else []})
    if pct:
        panels.append({"title": "% of the same case's torch.sum bandwidth", "xlabel": "case index (cases[i] in the JSON)",
                       "ylabel": "% of torch.sum GB/s", "xlog": False, "ylog": False, "y_from_zero": True,
                       "series": pct})
    gen = payload.get("generation") or {}
    if gen.get("memory_allocated"):
        steps, mem = zip(*gen["memory_allocated"])
        panels.append({"title": f"generation: {gen['steps']} tokens, W={gen['window']} ({gen.get('how', '')[:40]})",
                       "xlabel": "step", "ylabel": "torch.cuda.memory_allocated (MiB)", "xlog": False, "ylog": False,
                       "y_from_zero": True,
                       "series": {"memory_allocated": [(s, m / 2**20) for s, m in zip(steps, mem)]}})
    return common.plot_panels(path, panels, title)


def main(argv=None):
    ap = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    ap.add_argument("--no-generation", action="store_true", help="skip the 10*W-token generation loop")
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        log(f"(ignoring arguments meant for bench_attention.py: {' '.join(unknown)})")
    device = common.pick_device(args)
    cuda = device.type == "cuda"
    env = common.env_info(device)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    common.banner(f"swa_cuda rolling-cache decode benchmark: {device.type.upper()} mode ({mode})"
                  + ("  -- CPU-sized cases, not GPU numbers" if not cuda else ""))
    common.print_env(env)
    rep_ms = args.rep_ms or (50.0 if cuda else 200.0)
    timer = common.Timer(device, warmup_ms=10.0 if cuda else rep_ms / 4, rep_ms=rep_ms, min_reps=5,
                         max_reps=500 if cuda else 50)
    copy = common.copy_bandwidth(device, 2**30 if cuda else 2**28, timer)
    log(f"  device copy_ of {copy['bytes'] / 2**20:.0f} MiB: {copy['gbps']:.0f} GB/s (bytes read + written)")
    stem = common.result_stem("decode", env, args.out)
    payload = {"benchmark": "decode", "command": common.python_command(), "mode": mode, "env": env,
               "copy_bandwidth": copy,
               "bytes_rule": "2*B*Hkv*W*D*itemsize (bench/flops.py decode_kv_bytes)", "cases": []}
    deadline = common.Deadline(args.max_minutes)
    common.banner("Decode step, T = 1 (GB/s = window K/V bytes / time)")
    for cfg in decode_configs(device, args.quick, args.smoke):
        if deadline.passed():
            payload.setdefault("skipped_for_time", []).append(str(cfg))
            continue
        try:
            payload["cases"].append(run_decode_case(cfg, device, timer, copy["gbps"]))
        except common.FatalCudaError as e:
            payload["fatal_error"] = str(e)
            log(f"!! FATAL CUDA error, stopping (the context is unusable): {e}")
            break
        finally:
            common.save_json(stem.with_suffix(".json"), payload)
    if not args.no_generation and not deadline.passed() and "fatal_error" not in payload:
        cfg = generation_config(device, args.quick, args.smoke)
        common.banner(f"Generation loop: 10 x W = {10 * cfg[4]} tokens, B{cfg[0]} H{cfg[1]}/{cfg[2]} D{cfg[3]} "
                      f"W{cfg[4]}")
        payload["generation"] = run_generation(cfg, torch.bfloat16 if cuda else torch.float32, device)
    rows = []
    for c in payload["cases"]:
        for name, rec in c["methods"].items():
            rows.append(dict(rec, case=c["name"], mib=c["kv_bytes"] / 2**20, method=name, sum_gbps=c.get("sum_gbps"),
                             note=rec.get("reason", "")[:60] if rec["status"] != "ok" else ""))
    common.banner("Results")
    log(common.format_table(rows, [("case", "case", ""), ("K/V MiB", "mib", ".1f"), ("method", "method", ""),
                                   ("us", "us", ".1f"), ("GB/s", "gbps", ".1f"), ("sum GB/s", "sum_gbps", ".1f"),
                                   ("% sum", "pct_sum_bw", ".0f"), ("% copy", "pct_copy_bw", ".0f"),
                                   ("ours x", "ours_speedup", ".2f"), ("note", "note", "")]))
    common.save_json(stem.with_suffix(".json"), payload)
    png = plot(stem.with_suffix(".png"), payload, f"rolling-cache decode, {env['device_name']}, torch {env['torch']}")
    log(f"\nwrote {stem.with_suffix('.json')}" + (f" and {png}" if png else ""))
    return payload


if __name__ == "__main__":
    main()
