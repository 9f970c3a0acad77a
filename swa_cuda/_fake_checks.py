"""Checks the fake kernels share with the C++ ones where tracing reaches them
first: a call that mixes devices (a meta tensor among CPU ones) dispatches to
the fake kernel, which must refuse it as the real kernels do instead of
returning uninitialised tensors."""

from typing import Optional

import torch
from torch import Tensor


def check_same_device(op: str, ref_name: str, ref: Tensor, **tensors: Optional[Tensor]) -> None:
    """Every tensor in `tensors` (None skipped) is on `ref`'s device."""
    for name, t in tensors.items():
        if t is None:
            continue
        torch._check(
            t.device == ref.device,
            lambda name=name, t=t: f"{op}: {name} must be on {ref_name}'s device {ref.device}, got {t.device}",
        )
