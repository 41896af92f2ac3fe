"""A run directory: config, manifest, learned weights, checkpoints, scores, logs.

Layout::

    RUN/run.json            config, dataset source/root, classes, prompts, status
    RUN/manifest.parquet    id, label, label_idx, split[, true_label]
    RUN/import_issues.csv   files excluded at import, with the reason
    RUN/checkpoint.pt       Phase 1 state after the last finished epoch (resume)
    RUN/prompts.safetensors learned ctx_pos, ctx_neg, vpt
    RUN/scores.parquet      the scoring pass (one row per sample)
    RUN/metrics.json        detection metrics when ground truth is known
    RUN/log.jsonl           one JSON line per epoch / event
    RUN/cache/              image store shards_<size>/ (JPEG crops, Arrow IPC) or the raw uint8 .npy cache
    RUN/phase2/             Phase 2 classifier
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from deft.core.config import Phase1Config
from deft.core.errors import RunError, read_derived, writing  # noqa: E402  (RunError re-exported)
from deft.core.schema import SCORE_COLUMNS  # noqa: E402
from deft.storage.atomic import write_csv, write_json, write_parquet
from deft.storage.data import Dataset, dataset_from_manifest


def with_resolved_model(config: Phase1Config) -> Phase1Config:
    """``config`` with a local model folder as an absolute path (a hub id, or a path that does not exist, is
    kept as given): a relative ``--model clip`` stored in run.json broke `score` run from another folder."""
    if config.model and Path(config.model).exists():
        return replace(config, model=str(Path(config.model).resolve()))
    return config


def config_changes(stored: dict, requested: dict) -> str:
    """``"optim.epochs: 2 -> 5, ..."`` for the settings that differ (compared as JSON stores them)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(stored), flat(json.loads(json.dumps(requested)))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


@dataclass
class Run:
    path: Path
    meta: dict[str, Any]
    dataset: Dataset
    notes: list[str] = field(default_factory=list)  # derived files found damaged and ignored (one sentence each)

    # -- creation / opening -------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, dataset: Dataset, config: Phase1Config) -> Run:
        """Create ``path`` for a new detection, or re-open it if it holds the same data (resume)."""
        path = Path(path)
        config = with_resolved_model(config)  # `score` from another folder still finds a --model given relative
        if (path / "run.json").is_file():
            run = cls.open(path)
            if run.meta["ids_hash"] != ids_hash(dataset.samples["id"]) or run.dataset.classes != dataset.classes:
                raise RunError(f"{path} already holds a run on different data; choose another --out.")
            stored = dict(run.meta.get("phase1", {}))
            if with_resolved_model(Phase1Config(model=str(stored.get("model", "")))).model == config.model:
                stored["model"] = config.model  # a run made before models were stored resolved: the same folder
            # a setting added since the run was made counts as its default, not as a change
            changed = config_changes(Phase1Config.from_dict(stored).to_dict(), config.to_dict())
            if changed:
                raise RunError(f"{path} already holds a run made with other settings ({changed}); re-run with "
                               "its settings to resume it, or choose another --out for a new run.")
            return run
        with writing(path):
            path.mkdir(parents=True, exist_ok=True)
        meta = {
            "version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "status": "created",
            "source": dataset.source,
            "root": str(Path(dataset.root).resolve()),
            "classes": dataset.classes,
            "prompts": dataset.prompts,
            "ids_hash": ids_hash(dataset.samples["id"]),
            "phase1": config.to_dict(),
            "run_id": uuid.uuid4().hex,  # stamps this run's checkpoints (a copied-in one is refused)
        }
        write_parquet(path / "manifest.parquet", dataset.samples)
        write_csv(path / "import_issues.csv", dataset.issues)
        write_json(path / "run.json", meta, default=str)
        return cls(path=path, meta=meta, dataset=dataset)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        path = Path(path)
        if not (path / "run.json").is_file():
            raise RunError(f"{path} is not a deft run folder (no run.json). Create one with `python -m deft detect`.")
        meta = read_meta(path)
        manifest = read_parquet(path / "manifest.parquet", MANIFEST_COLUMNS, "re-run `deft detect` into a new --out")
        stray = sorted(set(manifest["label"].astype(str).unique()) - set(meta["classes"]))  # not 1M Arrow strings
        if stray:
            raise RunError(f"{path / 'manifest.parquet'} holds labels {stray[:5]} that {path / 'run.json'} does not "
                           "list as classes (one of them is damaged or from another run); re-run `deft detect` into a "
                           "new --out.")
        ds = dataset_from_manifest(Path(meta["root"]), manifest, meta["classes"], meta["prompts"], meta["source"])
        notes: list[str] = []
        issues = read_derived(path / "import_issues.csv", _read_issues,
                              f"the files excluded at import are not listed; `python -m deft check {meta['source']}` "
                              "lists them again", notes)
        if issues is not None:
            ds.issues = issues
        return cls(path=path, meta=meta, dataset=ds, notes=notes)

    # -- accessors ----------------------------------------------------------
    @property
    def config(self) -> Phase1Config:
        return Phase1Config.from_dict(self.meta["phase1"])

    @property
    def owner(self) -> str:
        """The stamp of this run's Phase 1 checkpoints: its ``run_id`` (a run made before it existed: a hash of
        its creation time, data and settings)."""
        if self.meta.get("run_id"):
            return f"phase1:{self.meta['run_id']}"
        key = json.dumps([self.meta.get("created"), self.meta.get("ids_hash"), self.meta.get("phase1")],
                         sort_keys=True, default=str)
        return "phase1:" + hashlib.sha256(key.encode()).hexdigest()[:32]

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def weights_path(self) -> Path:
        return self.path / "prompts.safetensors"

    @property
    def scores_path(self) -> Path:
        return self.path / "scores.parquet"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def phase2_dir(self) -> Path:
        return self.path / "phase2"

    def cache_file(self, size: int) -> Path:
        return self.path / "cache" / f"images_{size}_{self.meta['ids_hash'][:12]}.npy"

    def scores(self) -> pd.DataFrame:
        """The saved scoring pass, checked against the manifest (columns, one row per sample, same ids)."""
        if not self.scores_path.is_file():
            raise RunError(f"{self.path} has no scores yet: detection did not finish. Re-run detect to resume.")
        fix = f"run `python -m deft score {self.path}` to rebuild it"
        df = read_parquet(self.scores_path, SCORE_COLUMNS, fix)
        ids = self.dataset.samples["id"].iloc[self.dataset.train_rows]  # held-out rows are never scored
        if len(df) != len(ids) or not df["id"].astype(str).reset_index(drop=True).equals(
                ids.astype(str).reset_index(drop=True)):
            raise RunError(f"{self.scores_path} has {len(df)} rows that do not match the run's {len(ids)} "
                           f"samples (damaged or from another run); {fix}.")
        return df

    def save_scores(self, scores: pd.DataFrame) -> None:
        write_parquet(self.scores_path, scores)

    def metrics(self) -> dict[str, Any]:
        """``RUN/metrics.json`` (detection metrics against ground truth), empty when there is none or it is
        damaged (then ignored with a warning: the next detect or audit writes it again)."""
        return read_derived(self.metrics_path, read_json_object,
                            f"`python -m deft audit {self.path}` writes it again", self.notes) or {}

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        """Replace ``RUN/metrics.json`` atomically."""
        write_json(self.metrics_path, metrics, default=str)

    def set(self, **kv: Any) -> None:
        self.meta.update(kv)
        write_json(self.path / "run.json", self.meta, default=str)

    def log(self, event: dict[str, Any]) -> None:
        with writing(self.path / "log.jsonl"), open(self.path / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"t": time.time(), **event}, default=float) + "\n")


MANIFEST_COLUMNS = ("id", "label", "label_idx")
ISSUE_COLUMNS = ("path", "problem")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (a damaged one raises ``ValueError``)."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no JSON object")
    return obj


def _read_issues(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not set(ISSUE_COLUMNS) <= set(df.columns):
        raise ValueError(f"{path} lacks the columns {list(ISSUE_COLUMNS)}")
    return df
META_KEYS = ("root", "classes", "prompts", "source", "ids_hash", "phase1")


def read_meta(path: Path) -> dict[str, Any]:
    """``RUN/run.json``, or a :class:`RunError` naming the file if it is damaged."""
    f = path / "run.json"
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RunError(f"{f} is damaged ({type(exc).__name__}); the run cannot be reopened: "
                       "re-run `deft detect` into a new --out folder.") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise RunError(f"{f} lacks {missing}; the run cannot be reopened: re-run `deft detect` into a new --out.")
    wrong = meta_problem(meta)
    if wrong:
        raise RunError(f"{f} is damaged ({wrong}); the run cannot be reopened: re-run `deft detect` into a new "
                       "--out folder.")
    return meta


def meta_problem(meta: dict[str, Any]) -> str:
    """What is wrong with the values of a ``run.json`` (a key of the wrong type), '' when nothing is: a
    ``"classes": "cat"`` was read as the classes c, a, t and failed later with a KeyError."""
    for key in ("root", "source", "ids_hash"):
        if not isinstance(meta[key], str):
            return f"{key!r} is not text"
    classes, prompts = meta["classes"], meta["prompts"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of class names"
    if len(set(classes)) != len(classes):
        return "'classes' names a class twice"
    if not isinstance(prompts, dict) or not all(isinstance(prompts.get(c), str) for c in classes):
        return "'prompts' lacks the text of a class"
    if not isinstance(meta["phase1"], dict):
        return "'phase1' is not a table of settings"
    try:
        Phase1Config.from_dict(meta["phase1"])
    except (TypeError, ValueError):
        return "'phase1' holds unknown settings"
    return ""


def read_parquet(path: Path, columns: tuple[str, ...], fix: str) -> pd.DataFrame:
    """A run's Parquet file, or a :class:`RunError` that names it and says ``fix``."""
    if not path.is_file():
        raise RunError(f"{path} is missing; {fix}.")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise RunError(f"{path} is damaged and cannot be read ({type(exc).__name__}); {fix}.") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RunError(f"{path} lacks column(s) {missing}; {fix}.")
    return df


@contextlib.contextmanager
def run_folder_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``RUN/.lock`` (an exclusive ``flock``) while a process writes the run folder.

    A second process gets a :class:`RunError` "run folder in use by PID n" instead of
    training and logging the same epochs twice. The lock dies with the process (kill -9 too).
    """
    path = Path(path)
    lock = path / ".lock"
    if lock.is_dir():
        raise RunError(f"{lock} is a folder, not the run's lock file; delete it and run again.")
    with writing(lock):  # a read-only folder: a sentence before any work
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise RunError(f"run folder {path} in use by PID {pid}; wait for it to finish or stop it.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def ids_hash(ids: pd.Series) -> str:
    h = hashlib.sha1()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()
