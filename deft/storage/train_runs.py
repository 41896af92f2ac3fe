"""Phase 2 training-run folders: one folder per training run, resumable, listed for the UI.

Layout under ``RUN/phase2/``::

    RUN/phase2/<NNN>/train.json       what the run trains on (fingerprint, config, tags), written at start
    RUN/phase2/<NNN>/checkpoint.pt    state after the last finished epoch (deleted when the run finishes)
    RUN/phase2/<NNN>/log.jsonl        one line per finished epoch (loss, held-out accuracy), kept across resumes
    RUN/phase2/<NNN>/summary.json     history, last/best held-out accuracy, what it is measured against
    RUN/phase2/<NNN>/best/            the model of the best epoch

``RUN/phase2`` itself is also a training-run folder when ``deft train`` wrote to it (its default).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from deft.core.errors import writing
from deft.core.schema import Stage
from deft.storage.train_log import epoch_history

TRAIN_META = "train.json"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
EPOCH_LOG = "log.jsonl"


def log_epoch(folder: Path, summary: dict) -> None:
    """Append a finished epoch's summary (``epoch``, ``loss``, ``val_acc`` ...) to the run folder's log: what an
    interrupted run has done, and the whole curve of a resumed one, are read back from it."""
    path = Path(folder) / EPOCH_LOG
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": Stage.PHASE2.value, **summary}, default=float) + "\n")


def epoch_log(folder: Path) -> list[dict]:
    """The finished epochs ``folder``'s log holds, one per epoch (a retrained epoch's last line wins), in order."""
    return epoch_history(Path(folder) / EPOCH_LOG, Stage.PHASE2.value)


def checkpoint_history(folder: Path) -> list[dict]:
    """The finished epochs an interrupted run's ``checkpoint.pt`` holds (its whole history, also the epochs of a
    run started before runs kept their own log); [] when there is none or it cannot be read. Tensors are
    memory-mapped, not read: only the history is looked at."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return []
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged, foreign or cut short: the listing shows the log's count instead
        return []
    history = state.get("history") if isinstance(state, dict) else None
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def fingerprint(config: dict, curated: pd.DataFrame) -> str:
    """A hash of the training config and the curated ``id, label`` table: resume only what it names."""
    h = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
    for i, lab in zip(curated["id"].astype(str), curated["label"].astype(str), strict=True):
        h.update(f"{i}\0{lab}\0".encode())
    return h.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class TrainingRun:
    """One past (or interrupted) Phase 2 training run, as read from its folder."""

    path: Path
    mode: str
    epochs_done: int
    epochs: int
    last_acc: float
    best_acc: float
    heldout: str
    status: str  # "finished" or "interrupted"
    history: list[dict] = field(default_factory=list)  # one summary per finished epoch (epoch, loss, val_acc)
    confusion: list | None = None  # of a finished run: rows label, columns predicted, in ``classes`` order
    classes: list[str] | None = None


def read_training_run(folder: Path) -> TrainingRun | None:
    """The training run in ``folder``, or None when it holds none (no train.json nor summary.json)."""
    meta, summary = _read_json(folder / TRAIN_META), _read_json(folder / SUMMARY)
    if meta is None and summary is None:
        return None
    meta, summary = meta or {}, summary or {}
    history = summary.get("history")
    if not history:  # interrupted: what its log or its checkpoint (the longer: the log began later) counts
        history = max(epoch_log(folder), checkpoint_history(folder), key=len)
    history = [h for h in history if isinstance(h, dict) and "epoch" in h]
    epochs = int(((meta.get("config") or summary.get("config") or {}).get("optim") or {}).get("epochs", 0))
    nan = float("nan")
    return TrainingRun(
        path=folder,
        mode=str((meta.get("tags") or summary.get("tags") or {}).get("mode", "")),
        epochs_done=len(history),
        epochs=epochs or len(history),
        last_acc=float(summary.get("last_val_acc", nan)) if summary else nan,
        best_acc=float(summary.get("best_val_acc", nan)) if summary else nan,
        heldout=str(summary.get("heldout") or meta.get("heldout") or ""),
        status="finished" if summary else "interrupted",
        history=history,
        confusion=summary.get("confusion") if isinstance(summary.get("confusion"), list) else None,
        classes=[str(c) for c in summary["classes"]] if isinstance(summary.get("classes"), list) else None,
    )


def list_training_runs(phase2_root: Path) -> list[TrainingRun]:
    """Every training run under ``RUN/phase2`` (the root itself and its sub-folders), oldest first."""
    phase2_root = Path(phase2_root)
    if not phase2_root.is_dir():
        return []
    folders = [phase2_root, *sorted(p for p in phase2_root.iterdir() if p.is_dir() and p.name != "best")]
    runs = [r for r in map(read_training_run, folders) if r is not None]
    return sorted(runs, key=lambda r: (r.path != phase2_root, r.path.name))


def runs_table(runs: list[TrainingRun]) -> pd.DataFrame:
    """The Train tab's list of past runs: folder, mode, epochs, last/best accuracy, held out on."""
    def pct(x: float) -> str:
        return "" if math.isnan(x) else f"{x:.2%}"

    return pd.DataFrame(
        [{"run": r.path.name, "mode": r.mode, "status": r.status, "epochs": f"{r.epochs_done}/{r.epochs}",
          "last acc": pct(r.last_acc), "best acc": pct(r.best_acc), "held out on": r.heldout} for r in runs],
        columns=["run", "mode", "status", "epochs", "last acc", "best acc", "held out on"])


def folder_for(phase2_root: Path, fp: str) -> Path:
    """Where a training run with fingerprint ``fp`` goes: the interrupted run with the same
    fingerprint (it resumes), else a new numbered folder ``RUN/phase2/NNN``."""
    phase2_root = Path(phase2_root)
    numbered = sorted(p for p in phase2_root.glob("[0-9][0-9][0-9]*") if p.is_dir()) if phase2_root.is_dir() else []
    for p in reversed(numbered):
        meta = _read_json(p / TRAIN_META)
        if meta and meta.get("fingerprint") == fp and not (p / SUMMARY).is_file():
            return p
    last = max((int(p.name) for p in numbered if p.name.isdigit()), default=0)
    return phase2_root / f"{last + 1:03d}"
