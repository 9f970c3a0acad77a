"""Point-to-point transfer of halo pieces (torch.distributed.batch_isend_irecv,
any backend: gloo on CPU, NCCL on GPU), and the byte counter the benchmark
reads.

A transfer is started, the caller computes, then waits: `start` posts every
send and receive of one pass at once and returns a `Transfer` whose `wait()`
hands back the received buffers. K and V of a piece travel packed in one
message, [2, B, Hkv, n, D] (and so do their gradients in the backward).
Messages carry a tag made from a per-group call counter and the direction,
so that two calls (or forward and backward) can never match each other's
messages on backends that honour tags (gloo); NCCL matches them in order,
which every rank does identically because the calls are collective.
"""

import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


_KINDS = ("metadata", "forward", "backward")


@dataclass
class Traffic:
    """What this process's exchange did, by pass: "metadata" (the all_gather
    of the input check, counted as this rank's contribution), "forward" (K/V
    halos), "backward" (their gradients). `sent`: bytes handed to isend;
    `messages`: their number; `wait_s`: seconds spent blocked in wait() (the
    communication the computation did not hide)."""
    sent: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KINDS, 0))
    messages: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KINDS, 0))
    wait_s: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(_KINDS, 0.0))

    def add(self, kind: str, nbytes: int) -> None:
        self.sent[kind] += nbytes
        self.messages[kind] += 1

    def reset(self) -> None:
        for d in (self.sent, self.messages, self.wait_s):
            for key in d:
                d[key] = 0


TRAFFIC = Traffic()

_calls: Dict[object, int] = {}


def next_call_id(group) -> int:
    """A counter per group, identical on every rank (calls are collective)."""
    key = group if group is not None else "default"
    n = _calls.get(key, 0)
    _calls[key] = n + 1
    return n


def tag(call_id: int, backward: bool) -> int:
    return (call_id % (1 << 24)) * 2 + int(backward)


def global_rank(group, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


@dataclass
class Transfer:
    works: list
    keep: List[Tensor]  # send buffers, alive until the sends complete
    received: List[Tensor]
    kind: str

    def wait(self) -> List[Tensor]:
        t0 = time.perf_counter()
        for w in self.works:
            w.wait()
        TRAFFIC.wait_s[self.kind] += time.perf_counter() - t0
        self.works, self.keep = [], []
        return self.received


def pack(k: Tensor, v: Tensor) -> Tensor:
    """[2, B, H, n, D] contiguous: one message for a piece's K and V."""
    return torch.stack((k, v))


def start(sends: Sequence[Tuple[int, Tensor]], recvs: Sequence[Tuple[int, Tuple[int, ...]]],
          like: Tensor, group, msg_tag: int, kind: str) -> Transfer:
    """Post sends (group rank, contiguous tensor) and receives (group rank,
    shape; buffers like `like`) at once; returns without waiting."""
    ops, received = [], []
    for peer, shape in recvs:
        buf = like.new_empty(shape)
        received.append(buf)
        ops.append(dist.P2POp(dist.irecv, buf, global_rank(group, peer), group, msg_tag))
    for peer, t in sends:
        TRAFFIC.add(kind, t.numel() * t.element_size())
        ops.append(dist.P2POp(dist.isend, t, global_rank(group, peer), group, msg_tag))
    works = dist.batch_isend_irecv(ops) if ops else []
    return Transfer(works, [t for _, t in sends], received, kind)


def metadata_device(group, like: Tensor) -> torch.device:
    """Where the group's backend takes tensors: the CPU for gloo, else the
    inputs' device (NCCL takes CUDA tensors only)."""
    backend = str(dist.get_backend(group)).lower()
    return torch.device("cpu") if backend == "gloo" else like.device


def all_gather_rows(row: Tensor, group) -> Tensor:
    """[P, n] int64 on the CPU: every rank's `row` (int64 [n]). Reading the
    result is the one host synchronisation of a call (the shard lengths size
    the halo buffers)."""
    world = dist.get_world_size(group)
    TRAFFIC.add("metadata", row.numel() * row.element_size())
    out = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(out, row, group=group)
    return torch.stack(out).cpu()


