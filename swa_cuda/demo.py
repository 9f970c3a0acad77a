"""Constant-memory generation: a growing full KV cache versus swa_cuda's rolling cache.

    python -m swa_cuda.demo [--tokens N] [--out demo.png] [--device cuda|cpu]

Builds a tiny random-weight Mistral-style model (every layer a sliding window
of --window tokens; nothing is downloaded), runs it with
attn_implementation="swa_cuda", and generates --tokens tokens greedily twice
from the same prompt:

  full     transformers' DynamicCache without a config: every layer keeps
           every token (memory grows linearly with the tokens generated);
  rolling  swa_cuda's SWARollingCache: each sliding layer keeps a ring of W
           tokens written in place (memory fixed from the first token).

For each token it records the KV-cache bytes (and, on a GPU, the allocated
device memory) and the time of that decoding step, then plots both against
tokens generated (PNG, needs matplotlib) and prints a summary. Both runs must
generate the same tokens (the window makes older tokens invisible anyway).
Needs transformers (`pip install transformers`); tqdm gives a nicer progress bar.
"""

import argparse
import csv
import sys
import time
from typing import Dict, List, Optional


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        sys.exit("swa_cuda.demo needs Hugging Face transformers: pip install transformers")
    from .integrations import transformers as swa_hf
    return swa_hf


class _Progress:
    """tqdm when installed, else a line printed every 10%."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="tok")
        except ImportError:
            self.bar = None
            self.next_report = 0

    def update(self, postfix: str = "") -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
        elif self.n >= self.next_report or self.n == self.total:
            print(f"{self.desc}: {self.n}/{self.total} tokens {postfix}", flush=True)
            self.next_report = self.n + max(1, self.total // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_model(window: int, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
                dtype, device, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.MistralConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, sliding_window=window,
        max_position_embeddings=1 << 20, initializer_range=0.1, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        attn_implementation="eager")
    model = transformers.MistralForCausalLM(config).to(device=device, dtype=dtype).eval()
    model.set_attn_implementation("swa_cuda")
    return model


def generate_timed(model, prompt, cache, num_tokens: int, label: str) -> Dict[str, List[float]]:
    """Greedy decoding, one model call per token, timing each step."""
    import torch

    device = prompt.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    record: Dict[str, List[float]] = {"tokens": [], "step_ms": [], "cache_bytes": [], "device_bytes": [], "ids": []}
    mask = torch.ones_like(prompt)
    progress = _Progress(num_tokens, label)
    with torch.inference_mode():
        out = model(prompt, attention_mask=mask, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        for step in range(num_tokens):
            mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
            sync()
            start = time.perf_counter()
            out = model(token, attention_mask=mask, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            sync()
            ms = 1e3 * (time.perf_counter() - start)
            nbytes = cache_bytes(cache)
            record["tokens"].append(step + 1)
            record["step_ms"].append(ms)
            record["cache_bytes"].append(nbytes)
            record["device_bytes"].append(torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)
            record["ids"].append(int(token[0, 0]))
            progress.update(f"{ms:.2f} ms, cache {nbytes / 2**20:.2f} MiB")
    progress.close()
    return record


def cache_bytes(cache) -> int:
    nbytes = getattr(cache, "nbytes", None)
    if nbytes is not None:
        return nbytes
    total = 0
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def _median(xs: List[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def plot(runs: Dict[str, Dict[str, List[float]]], path: str, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot, see the CSV instead")
        return False
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rec in runs.items():
        ax_mem.plot(rec["tokens"], [b / 2**20 for b in rec["cache_bytes"]], label=f"{name}: KV cache")
        if any(rec["device_bytes"]):
            ax_mem.plot(rec["tokens"], [b / 2**20 for b in rec["device_bytes"]], "--",
                        label=f"{name}: GPU memory allocated")
        ax_time.plot(rec["tokens"], rec["step_ms"], label=name, alpha=0.8, linewidth=0.8)
    ax_mem.set_xlabel("tokens generated")
    ax_mem.set_ylabel("MiB")
    ax_mem.set_title("memory")
    ax_mem.legend()
    ax_time.set_xlabel("tokens generated")
    ax_time.set_ylabel("ms per token")
    ax_time.set_title("time per token")
    ax_time.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_csv(runs: Dict[str, Dict[str, List[float]]], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cache", "tokens", "step_ms", "cache_bytes", "device_bytes"])
        for name, rec in runs.items():
            for row in zip(rec["tokens"], rec["step_ms"], rec["cache_bytes"], rec["device_bytes"]):
                w.writerow([name, *row])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swa_cuda.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=None, help="tokens to generate (default 2000 on GPU, 600 on CPU)")
    ap.add_argument("--out", default="swa_demo.png", help="PNG to write (a CSV is written beside it)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                    help="default bf16 on GPU, fp32 on CPU")
    ap.add_argument("--window", type=int, default=128, help="sliding window W (default 128)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    ap.add_argument("--head-dim", type=int, default=64, help="head dim (GPU kernels: 32/64/96/128/256)")
    args = ap.parse_args(argv)

    swa_hf = _require_transformers()
    import torch
    from transformers import DynamicCache

    swa_hf.register()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    tokens = args.tokens or (2000 if device.type == "cuda" else 600)
    heads, kv_heads = 8, 2
    model = build_model(args.window, args.layers, heads * args.head_dim // 2, heads, kv_heads, args.head_dim, 512,
                        dtype, device)
    prompt = torch.randint(3, 512, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1)).to(device)
    print(f"tiny Mistral-style model: {args.layers} layers, window {args.window}, {heads}/{kv_heads} heads x "
          f"{args.head_dim}, {dtype_name} on {device}; prompt {args.prompt}, generating {tokens} tokens, "
          f"batch {args.batch}")

    runs = {}
    runs["full cache"] = generate_timed(model, prompt, DynamicCache(), tokens, "full cache   ")
    runs["rolling cache"] = generate_timed(model, prompt, swa_hf.SWARollingCache(model.config), tokens,
                                           "rolling cache")

    title = (f"swa_cuda: {args.layers} layers, W = {args.window}, {dtype_name}, {device.type}, batch {args.batch}")
    csv_path = args.out.rsplit(".", 1)[0] + ".csv"
    write_csv(runs, csv_path)
    plotted = plot(runs, args.out, title)

    same = runs["full cache"]["ids"] == runs["rolling cache"]["ids"]
    print("\nsummary")
    for name, rec in runs.items():
        warm = rec["step_ms"][len(rec["step_ms"]) // 10:]  # skip warm-up
        print(f"  {name:13s}: cache {rec['cache_bytes'][0] / 2**20:8.2f} MiB after token 1, "
              f"{rec['cache_bytes'][-1] / 2**20:8.2f} MiB after token {rec['tokens'][-1]}; "
              f"median {_median(warm):.3f} ms/token, last 10% {_median(warm[-max(1, len(warm) // 9):]):.3f} ms/token")
    print(f"  same tokens generated by both: {'yes' if same else 'NO'}")
    print(f"  wrote {csv_path}" + (f" and {args.out}" if plotted else ""))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
