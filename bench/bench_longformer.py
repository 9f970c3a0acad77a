"""What Longformer's patterns cost: swa_cuda.longformer_attention with
dilation d and g global tokens against the plain band of the same window,
FlexAttention compiled with the equivalent mask_mod, and (d = 1, the only
dilation transformers implements) transformers' own LongformerSelfAttention
against the drop-in (swa_hf.enable_longformer), side by side in one run.

The yardsticks of the issue: dilation must cost <= 1.1x the undilated band
of the same window (the same FLOPs: each query still sees W keys), and
global tokens <= 1.1x (band + the dense cost of the g rows), the dense cost
measured here as SDPA of the g global queries over all n keys plus SDPA of
all n queries over the g global keys.

  python bench/bench_longformer.py            # n = 16K, W = 512 (CPU) or 64K, 4096 (GPU)
  python bench/bench_longformer.py --smoke    # tiny shapes: checks the harness
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

HEADS, HEAD_DIM = 8, 64


def setup(args, device):
    if args.smoke:
        return dict(n=512, window=64, dilations=[1, 2], globals=[0, 4], dtype=torch.float32)
    if device.type == "cuda":
        return dict(n=65536, window=4096, dilations=[1, 2, 4], globals=[0, 16], dtype=torch.bfloat16)
    return dict(n=16384, window=512, dilations=[1, 2, 4], globals=[0, 16], dtype=torch.float32)


def global_mask(n, g, device, prefix=False):
    """g global positions: the first token and g - 1 spread over the
    sequence, or (prefix) the first g tokens ([CLS] and a question: the band
    kernel's sink tokens, see swa_cuda/longformer.py)."""
    mask = torch.zeros(1, n, dtype=torch.bool, device=device)
    if g:
        mask[0, torch.arange(g) if prefix else torch.linspace(0, n - 1, g).long()] = True
    return mask


def flex_callable(q, k, v, left, right, dilation, mask):
    flex, _ = peers.flex_functions()
    build = peers._flex["compiled_create_block_mask"]
    gm = mask

    def mask_mod(b, h, q_idx, kv_idx):
        delta = q_idx - kv_idx
        band = (delta % dilation == 0) & (delta <= left * dilation) & (delta >= -right * dilation)
        return band | gm[b, kv_idx] | gm[b, q_idx]

    n = q.shape[2]
    block_mask = build(mask_mod, 1, None, n, n, device=q.device)
    return lambda: flex(q, k, v, block_mask=block_mask)


def dense_rows_callable(q, k, v, mask):
    """The dense cost of the global rows: g queries over n keys, n queries over g keys."""
    idx = mask[0].nonzero().squeeze(1)
    qg, kg, vg = q[:, :, idx], k[:, :, idx], v[:, :, idx]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return lambda: (sdpa(qg, k, v), sdpa(q, kg, vg))


def hf_module(n, window, dtype, device):
    """transformers' LongformerSelfAttention for hidden = HEADS * HEAD_DIM, and the drop-in's copy."""
    import copy

    import transformers
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    from swa_cuda.integrations import transformers as swa_hf

    config = transformers.LongformerConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS,
                                           attention_window=[window], num_hidden_layers=1,
                                           attention_probs_dropout_prob=0.0)
    theirs = LongformerSelfAttention(config, 0).to(device=device, dtype=dtype).eval()
    wrapper = torch.nn.Module()
    wrapper.attn = copy.deepcopy(theirs)
    swa_hf.enable_longformer(wrapper)
    return theirs, wrapper.attn


def hf_callable(module, hidden, mask):
    # LongformerModel's conventions for the module: 0 local, +10000 global, -10000 padding.
    attention_mask = mask.to(hidden.dtype) * 10000.0
    is_index_masked = attention_mask < 0
    is_index_global_attn = attention_mask > 0
    is_global = bool(is_index_global_attn.any())

    def run():
        with torch.no_grad():
            return module(hidden, attention_mask=attention_mask, is_index_masked=is_index_masked,
                          is_index_global_attn=is_index_global_attn, is_global_attn=is_global)[0]
    return run


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (each keeps its best median)")
    args = parser.parse_args()
    device = common.pick_device(args)
    env = common.env_info(device)
    common.banner("Longformer patterns: dilation and global tokens")
    common.print_env(env)
    s = setup(args, device)
    n, W, dtype = s["n"], s["window"], s["dtype"]
    left = right = W // 2  # Longformer: W/2 keys on each side
    timer = common.Timer(device, rep_ms=args.rep_ms or (40.0 if args.smoke else 300.0))
    import swa_cuda

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    fns = {}
    # (g, placement): spread over the sequence with every dilation, and as a
    # prefix (d = 1, where the band kernel takes them; "spread" rows keep the
    # plain g label in the table, prefix ones "g p").
    placements = [(gcount, False) for gcount in s["globals"]] + [(gcount, True) for gcount in s["globals"] if gcount]
    for gcount, prefix in placements:
        mask = global_mask(n, gcount, device, prefix)
        label = f"{gcount}p" if prefix else gcount
        if gcount:
            fns[("dense rows", "forward", 1, label)] = dense_rows_callable(q, k, v, mask)
        for d in (s["dilations"][:1] if prefix else s["dilations"]):
            def fwd(d=d, mask=mask if gcount else None):
                with torch.no_grad():
                    return swa_cuda.longformer_attention(q, k, v, (left, right), dilation=d, global_mask=mask)

            qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

            def fwd_bwd(d=d, mask=mask if gcount else None, qg=qg, kg=kg, vg=vg):
                out = swa_cuda.longformer_attention(qg, kg, vg, (left, right), dilation=d, global_mask=mask)
                return torch.autograd.grad(out.float().square().sum(), (qg, kg, vg))

            fns[("ours", "forward", d, label)] = fwd
            fns[("ours", "forward+backward", d, label)] = fwd_bwd
            try:
                flex_fn = flex_callable(q, k, v, left, right, d, mask)
                diff = (flex_fn().float() - fwd().float()).abs().max().item()
                common.log(f"  flex d={d} g={gcount}: max |flex - ours| = {diff:.2e}")
                fns[("flex", "forward", d, label)] = flex_fn
            except Exception as e:
                common.log(f"  flex d={d} g={gcount}: unavailable ({type(e).__name__}: {str(e)[:300]})")
        if prefix:
            continue
        try:
            theirs, drop_in = hf_module(n, W, dtype, device)
            hidden = torch.randn(1, n, HEADS * HEAD_DIM, generator=g).to(device=device, dtype=dtype)
            a, b = hf_callable(theirs, hidden, mask)(), hf_callable(drop_in, hidden, mask)()
            common.log(f"  transformers g={gcount}: max |theirs - drop-in| = {(a - b).abs().max().item():.2e}")
            fns[("transformers", "module forward", 1, gcount)] = hf_callable(theirs, hidden, mask)
            fns[("drop-in", "module forward", 1, gcount)] = hf_callable(drop_in, hidden, mask)
        except Exception as e:
            common.log(f"  transformers g={gcount}: unavailable ({type(e).__name__}: {str(e)[:300]})")

    best = {}
    for r in range(args.rounds):
        for key, fn in fns.items():
            try:
                ms = timer.measure(fn, first_call_done=r > 0)["ms"]
            except Exception as e:
                common.log(f"  {key}: failed ({type(e).__name__}: {e})")
                continue
            best[key] = min(best.get(key, math.inf), ms)
            common.log(f"  round {r}: {key[0]:12s} {key[1]:16s} d={key[2]} g={key[3]!s:>3} {ms:9.2f} ms")

    rows = []
    for (impl, direction, d, gcount), ms in best.items():
        band = best.get((impl, direction, 1, 0))
        same_d_band = best.get((impl, direction, d, 0))
        dense = best.get(("dense rows", "forward", 1, gcount)) if direction == "forward" else None
        row = dict(impl=impl, direction=direction, n=n, window=W, dilation=d, globals=int(str(gcount).rstrip("p")),
                   global_placement="prefix" if str(gcount).endswith("p") else "spread",
                   dtype=str(dtype).replace("torch.", ""), ms=ms,
                   vs_band=ms / band if band and impl in ("ours", "flex") else None,
                   vs_band_plus_dense=(ms / (same_d_band + dense) if gcount and dense and same_d_band
                                       and impl in ("ours", "flex") else None))
        if impl == "drop-in":
            theirs = best.get(("transformers", direction, d, gcount))
            row["speedup_vs_transformers"] = theirs / ms if theirs else None
        if impl == "flex":
            ours = best.get(("ours", direction, d, gcount))
            row["flex_over_ours"] = ms / ours if ours else None
        rows.append(row)
    columns = [("impl", "impl", "s"), ("pass", "direction", "s"), ("d", "dilation", "d"), ("g", "globals", "d"),
               ("placed", "global_placement", "s"),
               ("ms", "ms", ".2f"), ("x band d=1", "vs_band", ".3f"), ("x (band d + dense g)", "vs_band_plus_dense",
                                                                        ".3f"),
               ("flex / ours", "flex_over_ours", ".2f"), ("x transformers", "speedup_vs_transformers", ".2f")]
    table = common.format_table(rows, columns)
    common.log("\n" + table)
    stem = common.result_stem("longformer", env, args.out)
    common.save_json(stem.with_suffix(".json"), dict(env=env, command=common.python_command(), rows=rows))
    stem.with_suffix(".md").write_text(
        f"# Longformer patterns: dilation and global tokens\n\n`{common.python_command()}`, {env['device_name']}, "
        f"torch {env['torch']}, {env['cpu_threads']} threads, load {env['load_avg_1min']}, commit "
        f"{env['git_commit']}. B = 1, H = {HEADS}, D = {HEAD_DIM}, {str(dtype).replace('torch.', '')}, n = {n}, "
        f"window (W/2, W/2) with W = {W}, dilation d, g global tokens (the first token and g - 1 spread out; "
        f"placed 'prefix': the first g tokens, which the band kernel takes as sink tokens). "
        f"Best of {args.rounds} round-robin medians. 'x band d=1': time / the undilated band without global "
        f"tokens (same impl, same pass); 'x (band d + dense g)': time / (the same d without global tokens + "
        f"'dense rows', SDPA of the g global queries over n keys and of n queries over the g keys); "
        f"transformers rows: LongformerSelfAttention.forward (projections included) by transformers' code and "
        f"by the drop-in.\n\n```\n{table}\n```\n")
    panels = [dict(title=f"forward, n = {n}, W = {W}", xlabel="dilation d", ylabel="ms", xlog=False, ylog=True,
                   series={f"{impl} g={gcount}": [(r["dilation"], r["ms"]) for r in rows
                                                  if r["impl"] == impl and r["globals"] == gcount
                                                  and r["global_placement"] == "spread"
                                                  and r["direction"] == "forward"]
                           for impl in ("ours", "flex") for gcount in s["globals"]}),
              dict(title="ours vs its yardsticks", xlabel="dilation d", ylabel="ratio", xlog=False, ylog=False,
                   y_from_zero=True, hlines=[(1.1, "1.1x target")],
                   series={**{f"{direction} g=0: x band d=1": [(r["dilation"], r["vs_band"]) for r in rows
                                                                if r["impl"] == "ours" and r["globals"] == 0
                                                                and r["direction"] == direction]
                              for direction in ("forward", "forward+backward")},
                           **{f"forward g={gcount}: x (band + dense)": [(r["dilation"], r["vs_band_plus_dense"])
                                                                        for r in rows if r["impl"] == "ours"
                                                                        and r["globals"] == gcount
                                                                        and r["global_placement"] == "spread"
                                                                        and r["direction"] == "forward"]
                              for gcount in s["globals"] if gcount}})]
    common.plot_panels(stem.with_suffix(".png"), panels, "Longformer patterns")
    common.log(f"wrote {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
