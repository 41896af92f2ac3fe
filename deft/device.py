"""Pick the device once; mixed precision without hard-coded ``.cuda()``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """Return ``cuda`` > ``mps`` > ``cpu`` for ``"auto"``, else the named device."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA for ``auto``/``bf16``; None (plain fp32) otherwise."""
    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
