"""swa_cuda.distributed: context parallelism with a (W-1)-token halo exchange.

The index math (layout) is tested in-process. The attention runs in spawned
processes (torch.multiprocessing, gloo on 127.0.0.1 only) for 2, 3 and 4
ranks, all cases of a world size in one spawn (starting processes is the
slow part). Every rank builds the whole sequence from a seed, runs the
distributed call on its shard and the single-process op on the whole
sequence, and compares its shard of out, lse and the q/k/v gradients
(through a loss that uses both out and lse). A bounded process-group timeout
plus a join deadline that kills the workers turn a hang into a failure.
"""

import datetime
import os
import pickle
import socket
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

import swa_cuda  # noqa: F401
from swa_cuda.distributed import layout

JOIN_TIMEOUT_S = 240
PG_TIMEOUT_S = 60
BATCH, HEAD_DIM = 2, 16


# ------------------------------------------------------------ index math


def test_halo_plan_several_owners():
    # W = 50: rank 3 (offset 32) needs 32 keys, held by ranks 0, 1, 2.
    lengths = [7, 20, 5, 30]
    plan = layout.halo_plan(lengths, 3, 49, 0)
    assert [(p.peer, p.begin, p.end) for p in plan.left] == [(0, 0, 7), (1, 7, 27), (2, 27, 32)]
    assert plan.right == () and plan.sends == ()
    # rank 1 (positions 7..27) feeds ranks 2 and 3 with all of its keys.
    sends = layout.halo_plan(lengths, 1, 49, 0).sends
    assert [(p.peer, p.begin, p.end) for p in sends] == [(2, 7, 27), (3, 7, 27)]


def test_halo_plan_two_sided_and_empty_shard():
    lengths = [10, 0, 4, 10]
    plan = layout.halo_plan(lengths, 2, 3, 6)  # positions 10..14, right halo 14..20
    assert [(p.peer, p.begin, p.end) for p in plan.left] == [(0, 7, 10)]
    assert [(p.peer, p.begin, p.end) for p in plan.right] == [(3, 14, 20)]
    empty = layout.halo_plan(lengths, 1, 3, 6)
    assert empty.left == () and empty.right == () and empty.sends == ()
    # what each rank sends is what the others receive
    plans = [layout.halo_plan(lengths, r, 3, 6) for r in range(4)]
    sent = sorted((r, p.peer, p.begin, p.end) for r, pl in enumerate(plans) for p in pl.sends)
    got = sorted((p.peer, r, p.begin, p.end) for r, pl in enumerate(plans) for p in pl.left + pl.right)
    assert sent == got


def test_row_blocks():
    plan = layout.halo_plan([100, 100], 1, 9, 0)
    left, interior, right = layout.row_split(plan, 9, 0)
    assert (left, interior, right) == ((0, 9), (9, 100), (100, 100))
    blk = layout.row_block(0, 9, plan.left_len, plan.length, plan.right_len, 9, 0)
    assert (blk.key_begin, blk.key_end, blk.shift) == (0, 18, 0)
    # two-sided: rows [0, 9) see 9 halo keys before and 3 own keys after
    blk = layout.row_block(0, 9, 9, 100, 0, 9, 3)
    assert (blk.key_begin, blk.key_end, blk.shift) == (0, 21, 3)


# ------------------------------------------------------------ the cases

# lengths per rank, window W, window_right, heads (q, kv), dtype, and what
# is expected to match bitwise (out/lse/dq when the shard offsets and the
# interior's first row fall on the kernels' 64-row tiles).
def cases(world):
    f32, bf16 = torch.float32, torch.bfloat16
    c = [
        dict(name="longer than W, tile aligned", lengths=[128] * world, window=65, heads=(4, 2), bitwise=True),
        dict(name="equal to W-1", lengths=[32] * world, window=33, heads=(2, 2)),
        dict(name="shorter than W-1", lengths=[7, 20, 5, 30][:world], window=50, heads=(4, 1)),
        dict(name="uneven", lengths=[100, 37, 64, 1][:world], window=40, heads=(3, 3), softcap=5.0, scale=0.3),
        dict(name="two-sided, short shards", lengths=[9, 30, 4, 17][:world], window=12, window_right=20,
             heads=(4, 2)),
        dict(name="two-sided, long shards", lengths=[70, 90, 80, 75][:world], window=16, window_right=8,
             heads=(2, 1)),
        dict(name="overlap off", lengths=[50, 21, 33, 40][:world], window=24, window_right=3, heads=(2, 1),
             overlap=False),
        dict(name="[B, S, H, D] views", lengths=[60, 61, 59, 62][:world], window=25, heads=(4, 2), layout="bshd"),
        dict(name="loss out.sum() (expanded gradients)", lengths=[30, 50, 20, 41][:world], window=20,
             heads=(2, 1), sum_loss=True),
        dict(name="empty shard", lengths=[40, 0, 25, 9][:world], window=30, heads=(2, 1)),
        dict(name="bf16", lengths=[64, 45, 20, 70][:world], window=48, window_right=2, heads=(4, 2), dtype=bf16),
        dict(name="bad head dim on rank 1", lengths=[16] * world, window=8, bad="head_dim"),
        dict(name="bad dtype on the last rank", lengths=[16] * world, window=8, bad="dtype"),
        dict(name="window differs on rank 0", lengths=[16] * world, window=8, bad="window"),
        dict(name="after the errors", lengths=[33, 31, 2, 64][:world], window=20, heads=(2, 2)),
    ]
    for x in c:
        x.setdefault("window_right", 0)
        x.setdefault("heads", (2, 1))
        x.setdefault("dtype", f32)
        x.setdefault("softcap", 0.0)
        x.setdefault("scale", None)
        x.setdefault("overlap", True)
        x.setdefault("bitwise", False)
    return c


def _inputs(case, seed):
    g = torch.Generator().manual_seed(seed)
    n, (hq, hkv), d, b = sum(case["lengths"]), case["heads"], HEAD_DIM, BATCH
    if case.get("layout") == "bshd":  # transposed views of [B, S, H, D] storage, as HF models pass them
        q, k, v = (torch.randn(b, n, h, d, generator=g).transpose(1, 2) for h in (hq, hkv, hkv))
    else:
        q, k, v = (torch.randn(b, h, n, d, generator=g) for h in (hq, hkv, hkv))
    go = torch.randn(b, hq, n, d, generator=g)
    gl = torch.randn(b, hq, n, generator=g)
    return q, k, v, go, gl


def _attend(case, q, k, v, go, gl, fn):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v)
    if case.get("sum_loss"):  # autograd hands in stride-0 gradients
        (out.sum() + lse.sum()).backward()
    else:
        ((out.float() * go).sum() + (lse * gl).sum()).backward()
    return {"out": out, "lse": lse, "dq": q.grad, "dk": k.grad, "dv": v.grad}


def _run_case(case, rank, world):
    import swa_cuda.distributed as cp

    lengths = case["lengths"]
    begin = sum(lengths[:rank])
    shard = slice(begin, begin + lengths[rank])
    dtype = case["dtype"]
    q, k, v, go, gl = _inputs(case, seed=len(case["name"]))
    kw = dict(window_right=case["window_right"], scale=case["scale"], softcap=case["softcap"])

    if "bad" in case:
        window = case["window"]
        qs, ks, vs = (t[:, :, shard] for t in (q, k, v))
        if case["bad"] == "head_dim" and rank == 1:
            ks, vs = ks[..., :8], vs[..., :8]
        if case["bad"] == "dtype" and rank == world - 1:
            qs, ks, vs = (t.to(torch.bfloat16) for t in (qs, ks, vs))
        if case["bad"] == "window" and rank == 0:
            window += 1
        try:
            cp.sliding_window_attention(qs, ks, vs, window, **kw)
        except ValueError as e:
            return {"error": str(e)}
        return {"error": None}

    def single(q_, k_, v_):
        return torch.ops.swa.attention(q_, k_, v_, case["window"] - 1, case["window_right"], case["scale"],
                                       case["softcap"])

    def distributed(q_, k_, v_):
        if case["overlap"]:
            return cp.sliding_window_attention(q_, k_, v_, case["window"], return_lse=True, **kw)
        lens = cp.checks.check_and_exchange_lengths(q_, k_, v_, case["window"], case["window_right"],
                                                    case["scale"], case["softcap"], True, None)
        return cp._attention(q_, k_, v_, lens, case["window"] - 1, case["window_right"], case["scale"],
                             case["softcap"], None, overlap=False)

    ref = _attend(case, *(t.to(dtype) for t in (q, k, v)), go, gl, single)
    cp.TRAFFIC.reset()
    got = _attend(case, *(t[:, :, shard].to(dtype) for t in (q, k, v)), go[:, :, shard], gl[:, :, shard],
                  distributed)
    res = {"sent": dict(cp.TRAFFIC.sent)}
    if dtype == torch.bfloat16:  # errors vs float64: ours, the single-process op's, the largest value
        exact = _attend(case, *(t.double() for t in (q, k, v)), go.double(), gl.double(), single)
        for key in got:
            e = exact[key][:, :, shard]
            res[key] = ((got[key].double() - e).abs().max().item(),
                        (ref[key][:, :, shard].double() - e).abs().max().item(), e.abs().max().item())
    else:
        for key in got:
            r = ref[key][:, :, shard]
            res[key] = ((got[key] - r).abs().max().item() if r.numel() else 0.0, torch.equal(got[key], r),
                        r.abs().max().item() if r.numel() else 0.0)
    return res


def _worker(rank, world, port, out_dir):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    import torch.distributed as dist

    results = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
        for case in cases(world):
            results[case["name"]] = _run_case(case, rank, world)
        dist.destroy_process_group()
    except Exception:
        results["__crash__"] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, tmp_path, worker=None):
    ctx = mp.start_processes(worker or _worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=False,
                             start_method="spawn")
    t0 = time.monotonic()
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() - t0 > JOIN_TIMEOUT_S:
                pytest.fail(f"{world} ranks did not finish within {JOIN_TIMEOUT_S} s (a hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    out = []
    for r in range(world):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            out.append(pickle.load(f))
    return out


def _expected_forward_bytes(case, rank, itemsize):
    """Independent of layout.py: 2 (K and V) * B * Hkv * D * itemsize per key
    this rank's shard gives to the others' halos."""
    lengths, wl, wr = case["lengths"], case["window"] - 1, case["window_right"]
    starts = [sum(lengths[:r]) for r in range(len(lengths))]
    mine = set(range(starts[rank], starts[rank] + lengths[rank]))
    keys = 0
    for dst, (s, n) in enumerate(zip(starts, lengths)):
        if dst == rank or n == 0:
            continue
        need = set(range(max(0, s - wl), s)) | set(range(s + n, min(sum(lengths), s + n + wr)))
        keys += len(need & mine)
    return 2 * BATCH * case["heads"][1] * HEAD_DIM * itemsize * keys


@pytest.mark.parametrize("world", [2, 3, 4])
def test_matches_single_process(world, tmp_path):
    per_rank = _spawn(world, tmp_path)
    failures = []
    for rank, results in enumerate(per_rank):
        assert "__crash__" not in results, f"rank {rank} crashed:\n{results['__crash__']}"
        for case in cases(world):
            res = results[case["name"]]
            where = f"{world} ranks, rank {rank}, {case['name']}"
            if "bad" in case:
                msg = res["error"]
                if msg is None:
                    failures.append(f"{where}: no error raised")
                    continue
                bad_rank = {"head_dim": 1, "dtype": world - 1, "window": 0}[case["bad"]]
                want = {"head_dim": f"rank {bad_rank}", "dtype": "dtype", "window": "window"}[case["bad"]]
                if want not in msg or (case["bad"] == "head_dim" and "k's batch and head dim" not in msg):
                    failures.append(f"{where}: unclear error: {msg}")
                continue
            itemsize = torch.tensor([], dtype=case["dtype"]).element_size()
            if res["sent"]["forward"] != _expected_forward_bytes(case, rank, itemsize):
                failures.append(f"{where}: sent {res['sent']['forward']} forward bytes, expected "
                                f"{_expected_forward_bytes(case, rank, itemsize)}")
            if res["sent"]["backward"] != res_recv_bytes(case, rank, itemsize):
                failures.append(f"{where}: sent {res['sent']['backward']} backward bytes")
            for key in ("out", "lse", "dq", "dk", "dv"):
                if case["dtype"] == torch.bfloat16:
                    # The op rounds each row block's dK/dV to bf16, and a key's gradient sums
                    # up to three blocks (edge, interior, a neighbour's): two roundings more than
                    # the single-process op, 2 * 2^-8 of the largest value.
                    err, ref_err, size = res[key]
                    if not err <= ref_err + 2 ** -7 * size:
                        failures.append(f"{where}: {key} error {err:.3g} vs single-process {ref_err:.3g} "
                                        f"(largest value {size:.3g})")
                else:
                    err, equal, size = res[key]
                    if not err <= 1e-6 * max(1.0, size):  # relative to the largest value
                        failures.append(f"{where}: {key} differs by {err:.3g} (largest value {size:.3g})")
                    if case["bitwise"] and key in ("out", "lse", "dq") and not equal:
                        failures.append(f"{where}: {key} not bitwise equal (max diff {err:.3g})")
    assert not failures, "\n".join(failures)


def res_recv_bytes(case, rank, itemsize):
    """Backward bytes: the gradients of the halo this rank received."""
    lengths, wl, wr = case["lengths"], case["window"] - 1, case["window_right"]
    s, n = sum(lengths[:rank]), lengths[rank]
    halo = 0 if n == 0 else (s - max(0, s - wl)) + (min(sum(lengths), s + n + wr) - (s + n))
    return 2 * BATCH * case["heads"][1] * HEAD_DIM * itemsize * halo


def _nccl_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    import swa_cuda.distributed as cp

    result = {}
    try:
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 4, 300, 64, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
        out = cp.sliding_window_attention(q, k, v, 64)
        ref, _ = torch.ops.swa.attention(q, k, v, 63, 0, None, 0.0)
        result["equal"] = torch.equal(out, ref)
        dist.destroy_process_group()
    except Exception:
        result["__crash__"] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.distributed.is_nccl_available(),
                    reason="needs a CUDA GPU and NCCL (one GPU: one rank)")
def test_nccl_one_rank(tmp_path):
    (res,) = _spawn(1, tmp_path, worker=_nccl_worker)
    assert "__crash__" not in res, res["__crash__"]
    assert res["equal"]
