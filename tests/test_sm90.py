"""The Hopper forward (sm_90a TMA + wgmma kernel) against the float64
reference and against the portable tensor-core kernel, on an sm_90 GPU
(everything here skips elsewhere).

The kernel is chosen per process: SWA_DISABLE_SM90=1 (read once) forces the
portable path, and SWA_DEBUG_FORWARD_PATH=1 makes every forward print its path
("swa_cuda: forward path sm90") to stderr. So each path runs in its own child
process (this file run as a script), which computes every case once and saves
out/lse; the parent checks them with the FlashAttention accuracy rule of
test_attention.py and compares the two paths.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from conftest import case_id, make_qkv, random_cases

HERE = os.path.dirname(os.path.abspath(__file__))


def _is_sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0) == (9, 0)


pytestmark = pytest.mark.skipif(not _is_sm90(), reason="needs an sm_90 GPU (H100/H200)")


def _case(b, hq, hkv, sq, sk, d, wl, wr, softcap=0.0, layout="bhsd", misalign=False, sink_tokens=0, sinks=None):
    return dict(batch=b, heads_q=hq, heads_kv=hkv, seqlen_q=sq, seqlen_k=sk, head_dim=d, window_left=wl,
                window_right=wr, softcap=softcap, layout=layout, misalign=misalign, sink_tokens=sink_tokens,
                sinks=sinks)


# Shapes aimed at the Hopper kernel's edges: partial tiles (Sq, Sk not
# multiples of 128), Sq != Sk, windows shorter / longer than a tile, window_right
# > 0, full attention, rows that see nothing (Sq > Sk causal), GQA without
# PackGQA (Sq >= 256), softcap, the transposed HF layout (non-monotonic
# strides), several batches and heads.
SM90_CASES = [
    _case(1, 1, 1, 128, 128, 128, -1, 0),
    _case(1, 2, 2, 1000, 1000, 128, 255, 0),
    _case(2, 2, 1, 300, 300, 64, 31, 0),
    _case(1, 4, 2, 513, 513, 128, 100, 40),
    _case(1, 2, 2, 257, 700, 64, 127, 0),
    _case(1, 2, 2, 700, 257, 128, -1, 0),      # rows that see nothing
    _case(1, 3, 3, 389, 389, 64, -1, -1),      # full
    _case(1, 2, 2, 640, 640, 128, 0, 0),       # window of one
    _case(1, 6, 2, 333, 333, 128, 200, 0, softcap=5.0),
    _case(2, 4, 4, 1024, 1024, 64, 500, 0, layout="bshd"),
    _case(1, 8, 2, 384, 384, 128, 129, 3, layout="bshd"),
    _case(1, 2, 1, 2100, 2100, 128, 1023, 0),
    _case(1, 1, 1, 129, 129, 64, 64, 64),
    # Unaligned rows (row stride D + 1): TMA cannot take it, the portable kernel must.
    _case(1, 2, 2, 200, 200, 64, 31, 0, misalign=True),
]
# Attention sinks (attention.sinks): sink tokens in one / two key tiles past
# the band's, logits mild, extreme and NaN, both kinds; Sq < Sk with a gap
# between the sink run and the band goes to the portable kernel.
SM90_CASES += [
    _case(1, 2, 2, 700, 700, 128, 127, 0, sink_tokens=4, sinks="randn"),
    _case(1, 4, 2, 600, 600, 64, 100, 0, sink_tokens=200),
    _case(1, 2, 2, 300, 300, 128, 63, 0, sinks=-1e4),
    _case(1, 2, 1, 400, 400, 64, 31, 0, softcap=5.0, sinks=30.0),
    _case(1, 3, 3, 300, 300, 128, 50, 0, sink_tokens=1, sinks="nan0"),
    _case(1, 2, 2, 700, 257, 128, -1, 0, sinks="randn"),       # rows that see nothing: lse = sink
    _case(1, 2, 2, 257, 900, 64, 127, 0, sink_tokens=16, sinks="randn"),  # gap: portable
]
# Packed sequences (attention.varlen): boxes that cross into the next
# sequence, empty sequences, Sq != Sk per sequence, a key-only sequence whose
# values are NaN between two others (the V guard must keep them out of its
# neighbours' P V), sinks of both kinds.
def _packed_case(seqs, hq, hkv, d, wl, wr, softcap=0.0, sink_tokens=0, sinks=None, poison=None):
    return dict(_case(len(seqs), hq, hkv, max(sq for sq, _ in seqs), max(sk for _, sk in seqs), d, wl, wr,
                      softcap, layout="packed", sink_tokens=sink_tokens, sinks=sinks), seqs=seqs, poison=poison)


SM90_CASES += [
    _packed_case([[300, 300], [1, 1], [129, 129], [0, 0], [700, 700]], 2, 2, 128, 127, 0),
    _packed_case([[300, 300], [0, 200], [257, 257]], 4, 2, 64, 63, 0, poison=1),
    _packed_case([[200, 333], [130, 260], [500, 500]], 2, 2, 128, 100, 0, softcap=5.0),
    _packed_case([[400, 400], [70, 70], [260, 260]], 2, 2, 64, 63, 0, sink_tokens=4, sinks="randn"),
]
# The random shapes of test_attention.py with a Hopper head dim.
SM90_CASES += [dict(c, layout="bhsd", misalign=False, sink_tokens=0, sinks=None)
               for c in random_cases(48, seed=1) if c["head_dim"] in (64, 128)][:16]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _cu(lengths, device):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def _inputs(c, dtype, device, seed=0):
    if c.get("seqs"):  # packed [T, H, D]; sequence `poison`'s keys and values: NaN
        g = torch.Generator().manual_seed(seed)
        tq, tk = sum(sq for sq, _ in c["seqs"]), sum(sk for _, sk in c["seqs"])
        q, k, v = (torch.randn(t, h, c["head_dim"], generator=g).to(dtype)
                   for t, h in ((tq, c["heads_q"]), (tk, c["heads_kv"]), (tk, c["heads_kv"])))
        if c["poison"] is not None:
            cu_k = _cu([sk for _, sk in c["seqs"]], "cpu")
            k[cu_k[c["poison"]]:cu_k[c["poison"] + 1]] = float("nan")
            v[cu_k[c["poison"]]:cu_k[c["poison"] + 1]] = float("nan")
        return q.to(device), k.to(device), v.to(device)
    q, k, v = make_qkv(c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"], c["head_dim"],
                       dtype, device, layout=c["layout"], seed=seed)
    if c["misalign"]:
        def pad(t):
            wide = torch.zeros(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype, device=t.device)
            wide[..., :-1] = t
            return wide[..., :-1]
        q, k, v = pad(q), pad(k), pad(v)
    return q, k, v


def _sinks(c, device):
    """The case's sink logits [Hq] (float32) or None."""
    kind, hq = c["sinks"], c["heads_q"]
    if kind is None:
        return None
    if kind in ("randn", "nan0"):
        logits = 2 * torch.randn(hq, generator=torch.Generator().manual_seed(7))
        if kind == "nan0":
            logits[0] = float("nan")
        return logits.to(device)
    return torch.full((hq,), float(kind), device=device)


def _attention(c, q, k, v):
    args = (c["window_left"], c["window_right"], None, c["softcap"])
    if c.get("seqs"):
        cu_q, cu_k = (_cu([s[i] for s in c["seqs"]], q.device) for i in (0, 1))
        return torch.ops.swa.attention.varlen(q, k, v, cu_q, cu_k, c["seqlen_q"], c["seqlen_k"], *args,
                                              sinks=_sinks(c, q.device), sink_tokens=c["sink_tokens"])
    if c["sink_tokens"] or c["sinks"] is not None:
        return torch.ops.swa.attention.sinks(q, k, v, *args, sinks=_sinks(c, q.device), sink_tokens=c["sink_tokens"])
    return torch.ops.swa.attention(q, k, v, *args)


def _sees_every_key(c):
    """forward_dispatch.cu's condition for TMA: the keys the queries see
    between them (the band, and the sink run before it) cover [0, Sk)."""
    sq, sk, wl, wr, S = c["seqlen_q"], c["seqlen_k"], c["window_left"], c["window_right"], c["sink_tokens"]
    band_begin = 0 if wl < 0 else max(0, sk - sq - wl)  # the first row's
    last = sk - 1  # the last row's key position
    key_begin = 0 if wl < 0 else max(0, last - wl)
    key_end = sk if wr < 0 else min(sk, last + wr + 1)
    sink_end = max(0, min(S, key_end, key_begin))
    return band_begin <= sink_end


def _expected_paths(c, sm90):
    """The path forward_dispatch.cu takes for case c with split-KV off
    (SWA_DISABLE_SPLIT_KV=1 in the children; the portable block_m is 128 for
    d = 64 / 128, so PackGQA packs GQA groups when Sq <= 64)."""
    if c["misalign"]:
        return {"exact"}  # rows not 16-byte aligned: neither tensor-core kernel
    if c.get("seqs"):  # packed: the V guard stands in for the seen-keys condition
        return {"sm90"} if sm90 and (c["heads_q"] == c["heads_kv"] or 2 * c["seqlen_q"] > 128) else {"sm80"}
    packed = c["heads_q"] != c["heads_kv"] and 2 * c["seqlen_q"] <= 128
    # Keys before the first row's window (Sq < Sk): TMA cannot zero them, so
    # the portable kernel runs (a key no query sees must not reach P V).
    return {"sm90"} if sm90 and not packed and _sees_every_key(c) else {"sm80"}


# ---- the child: every case on one path ------------------------------------------

def _child(spec_path, out_path):
    import swa_cuda  # noqa: F401

    spec = json.load(open(spec_path))
    results = {}
    for name, dtype_name, c in spec:
        q, k, v = _inputs(c, DTYPES[dtype_name], "cuda")
        sys.stderr.write(f"case {name}\n")
        sys.stderr.flush()
        out, lse = _attention(c, q, k, v)
        torch.cuda.synchronize()
        results[name] = (out.cpu(), lse.cpu())
    torch.save(results, out_path)


def _run_path(disable_sm90, persistent=True):
    spec = [(f"{dt}-{case_id(c)}-{c['layout']}{'-mis' if c['misalign'] else ''}"
             f"{'-S%dL%s' % (c['sink_tokens'], c['sinks']) if c['sink_tokens'] or c['sinks'] is not None else ''}",
             dt, c)
            for dt in DTYPES for c in SM90_CASES]
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.pt")
        json.dump(spec, open(spec_path, "w"))
        # Split-KV off: small test shapes would otherwise go to the portable
        # split kernel on a 132-SM GPU (forward_dispatch.cu).
        env = dict(os.environ, SWA_DEBUG_FORWARD_PATH="1", SWA_DISABLE_SM90="1" if disable_sm90 else "0",
                   SWA_SM90_PERSISTENT="1" if persistent else "0", SWA_DISABLE_SPLIT_KV="1")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", spec_path, out_path],
                              cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        results = torch.load(out_path)
    # stderr: "case NAME" then the path line(s) of that case's forward.
    paths, current = {}, None
    for line in proc.stderr.splitlines():
        if line.startswith("case "):
            current = line[5:]
        elif line.startswith("swa_cuda: forward path ") and current is not None:
            paths[current] = line.split()[-1]
    return {name: (results[name], paths.get(name), dt, c) for name, dt, c in spec}


@pytest.fixture(scope="module")
def sm90_results():
    return _run_path(disable_sm90=False)


@pytest.fixture(scope="module")
def sm90_tile_grid_results():
    """The Hopper kernel with one block per query tile (SWA_SM90_PERSISTENT=0)."""
    return _run_path(disable_sm90=False, persistent=False)


@pytest.fixture(scope="module")
def sm80_results():
    return _run_path(disable_sm90=True)


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


_REFERENCES = {}


def _reference(name, dt, c):
    """(out64, lse64, error of the low-precision reference), computed once per case."""
    if name not in _REFERENCES:
        from reference import attention_ref

        q, k, v = _inputs(c, DTYPES[dt], "cpu")
        args = (c["window_left"], c["window_right"], None, c["softcap"])
        sinks = dict(sinks=_sinks(c, "cpu"), sink_tokens=c["sink_tokens"])
        if c.get("seqs"):  # sequence by sequence, as [1, H, S, D] problems
            cu_q, cu_k = (_cu([s[i] for s in c["seqs"]], "cpu") for i in (0, 1))
            parts = []
            for b in range(len(c["seqs"])):
                qb, kb, vb = (t[cu[b]:cu[b + 1]].transpose(0, 1)[None] for t, cu in ((q, cu_q), (k, cu_k), (v, cu_k)))
                o, l = attention_ref(qb, kb, vb, *args, **sinks)
                o_lp, _ = attention_ref(qb, kb, vb, *args, upcast=False, **sinks)
                parts.append((o[0].transpose(0, 1), l[0], o_lp[0].transpose(0, 1)))
            ref, ref_lse, ref_lowp = torch.cat([x[0] for x in parts]), torch.cat([x[1] for x in parts], 1), \
                torch.cat([x[2] for x in parts])
        else:
            ref, ref_lse = attention_ref(q, k, v, *args, **sinks)
            ref_lowp, _ = attention_ref(q, k, v, *args, upcast=False, **sinks)
        ok = ~torch.isnan(ref)
        _REFERENCES[name] = (ref, ref_lse, _max_err(ref_lowp[ok], ref[ok]))
    return _REFERENCES[name]


def _check_reference(name, res):
    (out, lse), _, dt, c = res
    ref, ref_lse, err_pt = _reference(name, dt, c)
    # A NaN sink logit makes its head's rows NaN (out and lse), the others not.
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse)), f"{name}: NaN rows differ"
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{name}: NaN in out differs"
    finite_out = ~torch.isnan(ref)
    err = _max_err(out[finite_out], ref[finite_out])
    assert err <= 2 * err_pt + 1e-5, f"{name}: out error {err:.3g} > 2 x {err_pt:.3g}"
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), f"{name}: -inf rows differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=1e-3, atol=1e-3)
    return ref, err_pt


def test_sm90_path_taken(sm90_results, sm80_results):
    for name, (_, path, _, c) in sm90_results.items():
        assert path in _expected_paths(c, sm90=True), f"{name}: ran {path}"
    assert sum(path == "sm90" for _, path, _, _ in sm90_results.values()) >= len(sm90_results) // 2
    for name, (_, path, _, c) in sm80_results.items():
        assert path in _expected_paths(c, sm90=False), f"{name}: SWA_DISABLE_SM90=1 ran {path}"


@pytest.mark.parametrize("which", ["sm90", "sm90_tile_grid", "sm80"])
def test_paths_match_reference(which, request):
    results = request.getfixturevalue(f"{which}_results")
    for name, res in results.items():
        _check_reference(name, res)


def test_paths_agree(sm90_results, sm80_results):
    """Both kernels round the same fp32 math to 16 bit: they agree within the
    rounding of the low-precision reference."""
    for name, res in sm90_results.items():
        (out90, lse90), _, dt, c = res
        (out80, lse80), _, _, _ = sm80_results[name]
        ref, err_pt = _check_reference(name, res)
        ok = ~torch.isnan(out80)
        assert torch.equal(ok, ~torch.isnan(out90)), f"{name}: NaN in out differs between the paths"
        err = _max_err(out90[ok], out80[ok])
        assert err <= 2 * err_pt + 1e-5, f"{name}: paths differ by {err:.3g}"
        assert torch.equal(torch.isneginf(lse90), torch.isneginf(lse80)), name
        finite = torch.isfinite(lse80)
        torch.testing.assert_close(lse90[finite], lse80[finite], rtol=1e-4, atol=1e-4)


def test_persistent_grid_is_bitwise_equal(sm90_results, sm90_tile_grid_results):
    """Each query tile is computed the same way whichever block takes it."""
    for name, ((out, lse), _, _, _) in sm90_results.items():
        (out1, lse1), _, _, _ = sm90_tile_grid_results[name]
        assert torch.equal(out, out1) and torch.equal(lse, lse1), name


def test_sm90_deterministic():
    """Same inputs, same bits (no atomics, fixed order): a race shows up here."""
    import swa_cuda  # noqa: F401

    c = _case(1, 4, 2, 1500, 1500, 128, 300, 0)
    q, k, v = _inputs(c, torch.bfloat16, "cuda", seed=3)
    first = torch.ops.swa.attention(q, k, v, 300, 0, None, 0.0)
    for _ in range(5):
        again = torch.ops.swa.attention(q, k, v, 300, 0, None, 0.0)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    sys.path.insert(0, HERE)
    _child(sys.argv[2], sys.argv[3])
