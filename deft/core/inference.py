"""The one batched inference loop: fixed-size chunks of rows, autocast, cancel checks and progress.

Phase 1's feature and scoring passes and Phase 2's predictions all run through
:func:`run_batches`; their batch sizes come from :class:`deft.core.config.InferenceConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from deft.core.device import autocast
from deft.core.progress import CancelToken, ProgressCallback, ProgressEvent, null_progress

T = TypeVar("T")
R = TypeVar("R")


def _same(idx: torch.Tensor, out: T) -> T:
    return out


def run_batches(
    index: np.ndarray | torch.Tensor,
    batch_size: int,
    encode: Callable[[torch.Tensor], T],
    finish: Callable[[torch.Tensor, T], R] = _same,
    *,
    device: torch.device,
    precision: str = "auto",
    stage: str | None = None,
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    prefetch: Callable[[torch.Tensor], None] | None = None,
) -> list[R]:
    """Apply ``encode`` to ``index`` in chunks of ``batch_size`` under autocast; ``finish`` each outside it.

    Parameters
    ----------
    index : array of int
        The rows to process, in order.
    batch_size : int
        Rows per chunk (the last chunk may be shorter).
    encode : callable
        ``encode(idx)`` for a ``LongTensor`` chunk of ``index``; runs under ``autocast(device, precision)``.
    finish : callable, optional
        ``finish(idx, encoded)``, run in full precision (e.g. scores that must stay fp32); default: identity.
    device, precision
        Where and how autocast runs (see :func:`deft.core.device.autocast`).
    stage : str, optional
        Progress stage name; with it, ``progress`` gets ``ProgressEvent(stage, done, total)`` after each chunk.
    progress, cancel
        Progress callback and cancel token (checked before each chunk).
    prefetch : callable, optional
        ``prefetch(idx)`` is called with the first chunk, then before each chunk is encoded with the one
        after it, so its input is prepared in the background (images decoded while the model runs).

    Returns
    -------
    list
        ``finish``'s result for each chunk, in order.
    """
    n = len(index)
    out: list[R] = []
    if prefetch is not None and n:
        prefetch(torch.as_tensor(index[:batch_size], dtype=torch.long))
    for start in range(0, n, batch_size):
        if cancel is not None:
            cancel.check()
        idx = torch.as_tensor(index[start : start + batch_size], dtype=torch.long)
        if prefetch is not None and start + batch_size < n:
            prefetch(torch.as_tensor(index[start + batch_size : start + 2 * batch_size], dtype=torch.long))
        with autocast(device, precision):
            encoded = encode(idx)
        out.append(finish(idx, encoded))
        if stage is not None:
            progress(ProgressEvent(stage, min(n, start + batch_size), n))
    return out
