"""Background jobs: run a long library call off the request thread, with progress and cancel."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deft.core.progress import Cancelled, CancelToken, ProgressEvent

JobFn = Callable[[Callable[[ProgressEvent], None], CancelToken], Any]


@dataclass
class Job:
    """One background run of ``fn(progress, cancel)``.

    ``status`` is ``running``, ``done``, ``error`` or ``cancelled``; ``last`` holds
    the latest event per stage, ``curve`` one point per logged step and ``epochs``
    one summary per finished epoch, for live plots.
    """

    name: str
    fn: JobFn
    status: str = "pending"
    error: str = ""
    result: Any = None
    started: float = 0.0
    finished: float = 0.0
    last: dict[str, ProgressEvent] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    cancel_token: CancelToken = field(default_factory=CancelToken)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Job:
        self.status, self.started = "running", time.time()
        self._thread = threading.Thread(target=self._run, name=f"job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _progress(self, ev: ProgressEvent) -> None:
        with self._lock:
            self.last[ev.stage] = ev
            if ev.epoch_end:
                self.epochs.append({"epoch": ev.epoch + 1, **ev.metrics})
            elif "loss" in ev.metrics:
                self.curve.append({"step": ev.step, **ev.metrics})

    def _run(self) -> None:
        try:
            self.result = self.fn(self._progress, self.cancel_token)
            self.status = "done"
        except Cancelled:
            self.status = "cancelled"
        except Exception as exc:  # reported to the user, with the trace kept for the log
            self.error = str(exc) or type(exc).__name__
            self.trace = traceback.format_exc()
            self.status = "error"
        finally:
            self.finished = time.time()

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def snapshot(self) -> tuple[dict[str, ProgressEvent], list[dict[str, float]], list[dict[str, float]]]:
        with self._lock:
            return dict(self.last), list(self.curve), list(self.epochs)
