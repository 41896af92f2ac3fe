"""Worker processes for per-file work on large datasets (light module: no torch).

Checking and encoding a million small images is Python work per file (open, header, decode
call), which threads cannot spread over cores (the GIL). Large imports and store builds
therefore hand chunks of paths to a pool of worker processes.

The workers are forked (Linux's default start method): ``spawn`` and ``forkserver`` would run
the caller's main script again in each worker, which a script without an
``if __name__ == "__main__"`` guard does not survive. A forked worker runs only
:mod:`deft.storage.imageio` / :mod:`deft.storage.jpeg` code (``os`` calls and PIL), never PyTorch or the
caller's threads, so the locks those threads may hold at fork time are never taken in it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")

#: Below this many files the per-file work runs on threads in the calling process (a few seconds
#: of work at most, and no process start).
PROCESS_MIN_FILES = 8192
#: Paths per task sent to a worker.
CHUNK = 1024


def process_workers() -> int:
    """Workers for per-image work, processes here and the store reader's decoder threads alike: one per
    core, at most 8. A worker process decodes one image at a time, so together they hold at most 8 images
    of at most ``MAX_PIXELS`` each."""
    return max(1, min(8, os.cpu_count() or 1))


def use_processes(n: int, processes: bool | None = None) -> bool:
    """Whether ``n`` files are worth worker processes (``processes`` forces the choice)."""
    if processes is not None:
        return processes
    return n >= PROCESS_MIN_FILES and process_workers() > 1


def process_pool(workers: int | None = None) -> ProcessPoolExecutor:
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers or process_workers(), mp_context=multiprocessing.get_context(method))


def ordered_map(
    pool: ProcessPoolExecutor,
    fn: Callable[..., R],
    tasks: Iterable[tuple[Any, ...]],
    window: int,
    before_submit: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``fn(*task)`` for each task on ``pool``, yielded in order, at most ``window`` tasks in flight
    (so finished results never pile up while the caller is busy). ``before_submit`` runs before each
    submission (a cancel check); if it raises, queued tasks are cancelled."""
    pending: deque[Future[R]] = deque()
    it = iter(tasks)
    try:
        while True:
            while len(pending) < window:
                task = next(it, None)
                if task is None:
                    break
                if before_submit is not None:
                    before_submit()
                pending.append(pool.submit(fn, *task))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
