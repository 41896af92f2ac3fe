"""Pick the device once; mixed precision without hard-coded ``.cuda()``."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

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


# CPU feature flags (as /proc/cpuinfo spells them) that mean bf16 matrix maths runs natively,
# not emulated in fp32: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake+) and AMX (Sapphire Rapids+).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU listed in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 natively (checked once per process; False where it can't tell)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return bool(cpu_flags(text) & NATIVE_BF16_FLAGS)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``auto`` | ``bf16`` | ``fp32``) on ``device``.

    ``auto`` means bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 elsewhere
    (emulated bf16 on an AVX2 CPU is slower than fp32). Scores and losses are computed in fp32 either way.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
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
