"""What the Detect tab plots and reports, as pure functions: training curves in epochs, and how
well the suspects match the planted errors when the table carries ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from deft.core.schema import Stage


def epoch_history(log: Path, stage: str = Stage.PHASE1.value) -> list[dict]:
    """The per-epoch summaries ``RUN/log.jsonl`` holds for ``stage``, one per epoch (the last logged
    wins: an epoch retrained after an interruption replaces the earlier one), in epoch order."""
    by_epoch: dict[int, dict] = {}
    try:
        lines = Path(log).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: the epochs before it are still good
        if isinstance(ev, dict) and ev.get("stage") == stage and "epoch" in ev:
            by_epoch[int(ev["epoch"])] = ev
    return [by_epoch[e] for e in sorted(by_epoch)]


def training_curves(steps: list[dict], steps_per_epoch: int, epochs: list[dict]) -> tuple[pd.DataFrame,
                                                                                            pd.DataFrame]:
    """The loss and clean-fraction curves, x in epochs.

    ``steps``: this job's per-step points (``step`` = global step, so a resumed run continues where
    it stopped); ``epochs``: every finished epoch's summary (from the run's log, so epochs trained
    before a resume are on the same curve). Returns ``(loss, clean)``: ``loss`` has ``epoch, value,
    series`` ("loss per step", "loss (epoch mean)"), ``clean`` has ``epoch, clean fraction``.
    """
    spe = max(1, int(steps_per_epoch))
    rows = [{"epoch": s["step"] / spe, "value": float(s["loss"]), "series": "loss per step"}
            for s in steps if "loss" in s]
    rows += [{"epoch": float(e["epoch"]), "value": float(e["loss"]), "series": "loss (epoch mean)"}
             for e in epochs if "loss" in e]
    loss = pd.DataFrame(rows, columns=["epoch", "value", "series"])
    clean = pd.DataFrame([{"epoch": float(e["epoch"]), "clean fraction": float(e["clean_frac"])}
                          for e in epochs if "clean_frac" in e], columns=["epoch", "clean fraction"])
    return loss, clean
