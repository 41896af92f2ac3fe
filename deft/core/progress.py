"""One progress/cancel interface for every long loop (CLI: tqdm; UI: its own)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol


class Cancelled(RuntimeError):
    """Raised inside a loop when its :class:`CancelToken` was set."""


class CancelToken:
    """Thread-safe cancel flag a UI or a test sets from outside the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by user")


@dataclass
class ProgressEvent:
    """A snapshot of a long loop. ``stage`` is e.g. ``decode``, ``phase1``, ``score``."""

    stage: str
    step: int
    steps: int
    epoch: int = 0
    epochs: int = 0
    images_per_s: float = 0.0
    eta_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_end: bool = False

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


def null_progress(event: ProgressEvent) -> None:
    """Progress callback that ignores every event."""


class TqdmProgress:
    """Progress callback for the CLI: one tqdm bar per stage."""

    def __init__(self) -> None:
        self._bars: dict[str, object] = {}

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        bar = self._bars.get(event.stage)
        if bar is None or bar.total != event.steps:  # type: ignore[attr-defined]
            if bar is not None:
                bar.close()  # type: ignore[attr-defined]
            bar = tqdm(total=event.steps, desc=event.stage, unit="step", leave=True)
            self._bars[event.stage] = bar
        bar.n = event.step  # type: ignore[attr-defined]
        post = {k: f"{v:.4g}" for k, v in event.metrics.items()}
        if event.epochs:
            post["epoch"] = f"{event.epoch + 1}/{event.epochs}"
        if event.images_per_s:
            post["img/s"] = f"{event.images_per_s:.1f}"
        bar.set_postfix(post, refresh=False)  # type: ignore[attr-defined]
        bar.refresh()  # type: ignore[attr-defined]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()  # type: ignore[attr-defined]
        self._bars.clear()
