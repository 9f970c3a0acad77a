"""Shared pieces of the benchmark scripts: progress output, environment
record, timing, peak memory, tables, JSON and plots.

Timing (see `measure`):
  CUDA: torch.cuda.Event pairs around each call, L2 flushed before each call
        (a 256 MiB memset, which also keeps the GPU queue ahead of the CPU so
        launch overhead is not timed), a warm-up, then the median of the reps.
  CPU:  time.perf_counter around each call (CPU ops are synchronous), a
        warm-up, then the median.
"""

import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def log(*parts):
    print(*parts, flush=True)


def banner(text):
    log("")
    log("=" * len(text))
    log(text)
    log("=" * len(text))


# ---------------------------------------------------------------- swa_cuda


def import_swa_cuda():
    """(module, None) or (None, reason). Never raises."""
    try:
        import swa_cuda  # noqa: F401
        return swa_cuda, None
    except Exception as e:  # ImportError, a library load error, a version guard
        return None, f"{type(e).__name__}: {e}"


def op_status(name, device):
    """None when torch.ops.swa.<name> exists with a kernel for `device`
    ("cpu" / "cuda"), else the reason it cannot run there."""
    _, err = import_swa_cuda()
    if err:
        return f"swa_cuda not importable ({err})"
    if not hasattr(torch.ops.swa, name):
        return f"torch.ops.swa.{name} is not defined in this build"
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    try:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"swa::{name}", key):
            return f"torch.ops.swa.{name} has no {key} kernel in this build"
    except Exception:  # private API changed: assume it is there, a call will tell
        pass
    return None


# ------------------------------------------------------------- environment


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except Exception:
        return None


def device_name(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def env_info(device):
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_sms": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version(),
        })
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or None
        except Exception:
            info["nvidia_smi"] = None
    swa, err = import_swa_cuda()
    if swa is None:
        info["swa_cuda"] = f"unavailable: {err}"
    else:
        info["swa_cuda"] = getattr(swa, "__version__", "?")
        try:
            from swa_cuda import _build_info
            info["swa_cuda_build"] = {k: getattr(_build_info, k) for k in dir(_build_info) if k.isupper()}
        except Exception:
            pass
    return info


def sanitize(name):
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "unknown"


def result_stem(kind, env, out_dir):
    """out_dir/<kind>_<device name>_<date>-<time>, e.g.
    bench/results/attention_NVIDIA-H100-80GB-HBM3_2025-11-22_1530."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M")
    dev = sanitize(env["device_name"]) if env["device"].startswith("cuda") else "cpu-" + sanitize(
        env["device_name"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{kind}_{dev}_{stamp}"


def print_env(env):
    keys = ["device_name", "torch", "torch_cuda", "triton", "gpu_capability", "cpu_threads", "load_avg_1min",
            "git_commit", "swa_cuda"]
    log("  " + "  ".join(f"{k}={env[k]}" for k in keys if k in env))


# ------------------------------------------------------------------ timing


class Timer:
    """measure(fn) -> dict(ms=median, min_ms, reps). Budget per measurement:
    about `warmup_ms` of warm-up and `rep_ms` of timed calls, within
    [min_reps, max_reps] calls."""

    def __init__(self, device, warmup_ms=25.0, rep_ms=100.0, min_reps=3, max_reps=200, flush_l2=True):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        self.min_reps, self.max_reps = min_reps, max_reps
        self._flush = None
        if self.cuda and flush_l2:
            self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device=self.device)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _one(self, fn):
        """One timed call (ms)."""
        if self.cuda:
            if self._flush is not None:
                self._flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def measure(self, fn, first_call_done=False):
        if not first_call_done:
            fn()  # first call: lazy init, compilation, autotuning, allocator growth
        self.sync()
        estimate = self._one(fn)
        n_warm = max(0, min(self.max_reps, int(self.warmup_ms / max(estimate, 1e-3))) - 1)
        n_rep = max(self.min_reps, min(self.max_reps, int(self.rep_ms / max(estimate, 1e-3))))
        for _ in range(n_warm):
            fn()
        self.sync()
        if self.cuda:
            # All reps queued back to back, one sync at the end.
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
            for s, e in zip(starts, ends):
                if self._flush is not None:
                    self._flush.zero_()
                s.record()
                fn()
                e.record()
            self.sync()
            times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        else:
            times = [self._one(fn) for _ in range(n_rep)]
        return {"ms": statistics.median(times), "min_ms": min(times), "reps": n_rep}


def peak_memory_mb(fn, device):
    """Peak memory allocated while fn runs, beyond what was allocated before
    (the inputs), in MiB; what fn returns stays alive until the peak is read.
    None on CPU."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return peak / 2**20


def is_oom(exc):
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def error_record(exc):
    """A JSON-able record of a failed measurement; frees cached memory after
    an out-of-memory."""
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if is_oom(exc):
        reason = "out of memory: " + reason
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"status": "error", "reason": reason[:400], "trace": traceback.format_exc(limit=3)[-1500:]}


class FatalCudaError(RuntimeError):
    """The CUDA context is broken (sticky error): nothing after it can run."""


_STICKY = ("illegal memory access", "illegal instruction", "misaligned address", "unspecified launch failure",
           "device-side assert", "an illegal", "CUDA error: launch failure")


def is_fatal_cuda_error(rec):
    """Whether a record's failure is a sticky CUDA error (not an OOM)."""
    text = " ".join(str(rec.get(k, "")) for k in ("reason", "fwd_bwd_error", "bwd_error"))
    return any(s in text for s in _STICKY)


def matmul_peak(device, dtype, n, timer):
    """Practical peak TFLOP/s of this device: a dense n x n x n matmul, best
    of the timed calls (a peak, so the fastest call, not the median)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timer.measure(lambda: torch.mm(a, b))
    tflops = 2 * n**3 / (t["min_ms"] * 1e-3) / 1e12
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "ms": t["min_ms"], "median_ms": t["ms"],
            "tflops": tflops}


def copy_bandwidth(device, nbytes, timer):
    """Device-to-device copy: GB/s counted as bytes read + bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    t = timer.measure(lambda: dst.copy_(src))
    return {"bytes": nbytes, "ms": t["ms"], "gbps": 2 * nbytes / (t["ms"] * 1e-3) / 1e9}


class Deadline:
    """Stops starting new cases once `minutes` have passed (None: never)."""

    def __init__(self, minutes):
        self.end = None if minutes is None else time.monotonic() + 60 * minutes

    def passed(self):
        return self.end is not None and time.monotonic() > self.end


# ---------------------------------------------------------- output formats


def fmt(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def format_table(rows, columns, drop_empty=True):
    """rows: list of dicts; columns: list of (header, key, format spec).
    Columns without a value in any row are left out (drop_empty)."""
    if drop_empty:
        columns = [c for c in columns if any(r.get(c[1]) not in (None, "") for r in rows)]
    cells = [[h for h, _, _ in columns]]
    for r in rows:
        cells.append([fmt(r.get(k), spec) for _, k, spec in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save_json(path, payload):
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)  # a run killed mid-write keeps the previous file


def plot_panels(path, panels, title):
    """Side-by-side line plots. Each panel is a dict: title, xlabel, ylabel,
    series {label: [(x, y), ...]}, and optionally xlog/ylog (bools, default
    log-log), y_from_zero (linear y axis starting at 0), ref_slopes [(slope, text)] drawn as dashed guides from the first
    point of the "ours" line, hlines [(y, text)]. Returns the path, or None
    (with a message) without matplotlib or without data."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        log(f"plot skipped: matplotlib unavailable ({e}); `pip install matplotlib` to get it")
        return None
    panels = [p for p in panels if any(len(pts) for pts in p["series"].values())]
    if not panels:
        log("plot skipped: no measured series")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        anchor = None
        for label, pts in panel["series"].items():
            pts = sorted(p for p in pts if p[1] is not None)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 50 else None, label=label)
            if anchor is None or "ours" in label:
                anchor = (xs[0], ys[0], xs[-1])
        for slope, text in panel.get("ref_slopes", []):
            if anchor:
                x0, y0, x1 = anchor
                y1 = y0 * (x1 / x0) ** slope
                ax.plot([x0, x1], [y0, y1], linestyle="--", color="gray", alpha=0.6, linewidth=1)
                ax.annotate(text, (x1, y1), fontsize=8, color="gray", ha="right", va="bottom")
        if panel.get("xlog", True):
            ax.set_xscale("log", base=2)
        if panel.get("ylog", True):
            ax.set_yscale("log")
        for y, text in panel.get("hlines", []):
            ax.axhline(y, linestyle=":", color="black", alpha=0.6, linewidth=1)
            # x in axes coordinates (left edge), y in data coordinates
            ax.text(0.01, y, text, transform=ax.get_yaxis_transform(), fontsize=8, va="bottom")
        if panel.get("y_from_zero"):
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.2)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.set_title(panel["title"], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_common_args(parser):
    parser.add_argument("--quick", action="store_true", help="headline cases only (fits a 10-minute GPU command)")
    parser.add_argument("--cpu", action="store_true", help="CPU-sized cases on the CPU even if a GPU is present")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the chosen device: checks the harness end to end in seconds")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON / PNG (default bench/results)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new case after this many minutes (results so far are kept)")
    parser.add_argument("--rep-ms", type=float, default=None, help="timed milliseconds per measurement")
    return parser


def pick_device(args):
    if args.cpu or not torch.cuda.is_available():
        if not args.cpu:
            log("No CUDA GPU found: running the CPU-sized cases on the CPU.")
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def set_compile_limits():
    """Each benchmark shape is its own torch.compile graph: allow many."""
    import torch._dynamo.config as dc
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name):
            setattr(dc, name, max(getattr(dc, name), 256))
    if hasattr(dc, "accumulated_recompile_limit"):
        dc.accumulated_recompile_limit = max(dc.accumulated_recompile_limit, 4096)
    elif hasattr(dc, "accumulated_cache_size_limit"):
        dc.accumulated_cache_size_limit = max(dc.accumulated_cache_size_limit, 4096)


def python_command():
    return " ".join([os.path.basename(sys.executable)] + sys.argv)
