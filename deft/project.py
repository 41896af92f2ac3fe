"""The project layer: one dataset's runs under a runs folder, and what both front ends do with them.

:class:`Project` owns the layout and the operations that the app (:mod:`deft.ui.workspace`, which wraps them in
background jobs and keeps per-session state) and the CLI (:mod:`deft.cli`) share: run discovery, the review
store, detection, audit, training, export with the audit columns, and the ground-truth summary. Layout::

    RUNS/<dataset-key>/review.sqlite            decisions (survive re-detection; shared by its detections)
    RUNS/<dataset-key>/verified.parquet         files an import decoded (size, mtime, inode, problem)
    RUNS/<dataset-key>/listing.*                an image folder's import, reused while its folders are unchanged
    RUNS/<dataset-key>/detect-<config-hash>/    one deft run per detection setting (``-<method>``: a baseline)
    RUNS/<dataset-key>/exports/                 the app's cleaned_labels.csv / .parquet
    RUNS/.thumbs/                               content-addressed thumbnails (never rewritten)

A run folder given by path (``deft export RUN``) needs no project: the per-run operations are static methods.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from deft.audit import audit_columns, merge_audit_columns
from deft.audit_view import issue_rows, order_rows
from deft.core.config import Phase1Config, Phase2Config
from deft.core.metrics import planted_errors_caught
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.core.schema import ALL_METHODS, BASELINES, DETECT_METHODS, METHODS
from deft.review import dataset_key
from deft.storage.data import Dataset
from deft.storage.export import export_table, write_export
from deft.storage.load import load_dataset
from deft.storage.run import Run, run_folder_lock
from deft.storage.store import ReviewStore
from deft.storage.train_runs import TrainingRun, fingerprint, folder_for, list_training_runs, runs_table
from deft.storage.truth import ground_truth
from deft.storage.verified import folder_stamps, load_listing, recheck_in_background, save_listing
from deft.storage.verified import for_dataset as verified_files

if TYPE_CHECKING:
    from deft.audit import AuditConfig, AuditResult
    from deft.training import Phase2Result

DETECT_PREFIX = "detect-"
"""Run folders of a dataset's home start with this (``detect-<config hash>[-<baseline>]``)."""
EXPORTS_DIR = "exports"
THUMBS_DIR = ".thumbs"
EXPORT_NAME = "cleaned_labels"


@dataclass(frozen=True)
class Detection:
    """A finished detection: its run (re-opened: an audit may have rewritten the scores), scores and metrics."""

    run: Run
    scores: pd.DataFrame
    metrics: dict | None


def config_digest(config: Phase1Config) -> str:
    """The short hash of a detection config that names its run folder."""
    return hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def thumbs_dir(runs_root: str | os.PathLike) -> Path:
    """``RUNS/.thumbs``: thumbnails, shared by every dataset of a runs folder (content-addressed)."""
    return Path(runs_root).resolve() / THUMBS_DIR


def check_method(method: str) -> None:
    """Refuse a detection method that is not one of :data:`deft.schema.DETECT_METHODS` (a ``ValueError``)."""
    if method not in DETECT_METHODS:
        raise ValueError(f"unknown method {method!r}; choose {', '.join(METHODS)} or {ALL_METHODS}")


def _touched(run: TrainingRun) -> float:
    """When a training run last wrote its start, an epoch or its result (a resumed run counts as recent)."""
    times = []
    for name in ("train.json", "log.jsonl", "summary.json"):
        try:
            times.append((run.path / name).stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


@dataclass(frozen=True)
class Project:
    """One dataset's home under a runs folder, and the operations of both front ends on its runs.

    Parameters
    ----------
    runs_root : Path
        The runs folder (the app's ``--runs``, ``runs`` by default).
    dataset : str
        The dataset's source as given (folder, table, ... or ``fiftyone:NAME``); its :func:`~deft.review.dataset_key`
        names the home folder.
    """

    runs_root: Path
    dataset: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs_root", Path(self.runs_root))
        object.__setattr__(self, "dataset", str(self.dataset))

    # -- layout ---------------------------------------------------------------
    @property
    def key(self) -> str:
        """The home folder's name: ``<name>-<path hash>``."""
        return dataset_key(self.dataset)

    @property
    def home(self) -> Path:
        """``RUNS/<dataset-key>``: the dataset's runs, review store, import records and exports."""
        return self.runs_root / self.key

    @property
    def store_path(self) -> Path:
        """The review store shared by every detection of the dataset."""
        return self.home / ReviewStore.FILE

    @property
    def exports_dir(self) -> Path:
        """Where the app writes the cleaned labels."""
        return self.home / EXPORTS_DIR

    @property
    def thumbs(self) -> Path:
        """``RUNS/.thumbs``: thumbnails, shared by every dataset (content-addressed)."""
        return thumbs_dir(self.runs_root)

    def detect_dir(self, config: Phase1Config, method: str = "deft") -> Path:
        """The run folder of a detection with ``config`` and ``method`` (a baseline gets its own)."""
        digest = config_digest(config)
        return self.home / (f"{DETECT_PREFIX}{digest}-{method}" if method in BASELINES else f"{DETECT_PREFIX}{digest}")

    def run_dirs(self) -> list[Path]:
        """The finished detections (a scores table), oldest scores first."""
        runs = (p for p in self.home.glob(f"{DETECT_PREFIX}*") if (p / "scores.parquet").is_file())
        return sorted(runs, key=lambda p: (p / "scores.parquet").stat().st_mtime)

    def latest_run_dir(self) -> Path | None:
        """The detection whose scores were written last (what the app re-opens), None before any."""
        runs = self.run_dirs()
        return runs[-1] if runs else None

    @staticmethod
    def store_path_for(run: Run) -> Path:
        """Where ``run``'s decisions live: the dataset home's ``review.sqlite`` (shared by all detections of one
        dataset, the app's layout) when the run is in one and has no store of its own, else ``RUN/review.sqlite``."""
        shared = run.path.parent / ReviewStore.FILE
        own = run.path / ReviewStore.FILE
        return shared if shared.is_file() and not own.is_file() else own

    @classmethod
    def run_store(cls, run: Run) -> ReviewStore:
        """``run``'s review store (see :meth:`store_path_for`), loaded with its scores where they changed."""
        return ReviewStore.for_run(run, cls.store_path_for(run))

    # -- dataset and store ----------------------------------------------------
    def import_dataset(self, root: str | None = None) -> Dataset:
        """Import the dataset, decoding only the images no earlier import (recorded in the home folder, or a
        finished detection's manifest) decoded: a 1M-image folder took minutes per app start."""
        p = Path(self.dataset)
        if not p.exists():
            return load_dataset(self.dataset, root)  # its own sentence
        home, folder = self.home, p.is_dir()
        if folder:  # an image folder whose folders' entries did not change: its recorded import (a restart)
            ds = load_listing(home, self.dataset)
            if ds is not None:
                recheck_in_background(home, ds.root)
                return ds
            stamps = folder_stamps(p)  # before listing: a file added meanwhile makes the next start list again
        img_root = Path(root) if root else (p.parent if p.is_file() else p)
        ds = load_dataset(self.dataset, root, verify=verified_files(home, img_root))
        if folder:
            home.mkdir(parents=True, exist_ok=True)
            save_listing(home, ds, stamps)
        return ds

    def open_store(self, run: Run, path: Path | None = None) -> ReviewStore:
        """``run``'s scores and data issues in the review store (default :attr:`store_path`), loaded where they
        changed. Two callers on one store at once must be serialised by the caller (the app's ``Once`` lock)."""
        store = ReviewStore.for_run(run, path if path is not None else self.store_path)  # raises when damaged
        audit_file = run.path / "audit.parquet"  # data issues from `deft audit`, for the Review filter
        stamp = f"{run.path.name}:{audit_file.stat().st_mtime_ns}" if audit_file.is_file() else ""
        if store.get_meta("issues_stamp", "") != stamp:
            table = audit_columns(run) if stamp else None  # damaged: ignored, with a note (run.notes)
            stamp = stamp if table is not None else ""
            store.load_issues(issue_rows(table) if stamp else [], stamp, order_rows(table) if stamp else [])
            store.set_meta("rank_report", "")  # a fresh combined order: the last re-rank's report is void,
            store.set_meta("rank_at", "0")  # and the decisions so far are learned from at the next one
        return store

    # -- detection, audit, training -------------------------------------------
    def detect(self, dataset: Dataset, config: Phase1Config, method: str = "deft", *,
               out: str | os.PathLike | None = None, device: str = "auto", progress: ProgressCallback = null_progress,
               cancel: CancelToken | None = None, audit_config: AuditConfig | None = None,
               main_rank: bool = True) -> Detection:
        """Detect label errors: DEFT, a baseline (no prompt training, then the audit pass) or all (DEFT, then
        the audit pass with every baseline), holding the run folder's lock (a second detect there is refused).

        Parameters
        ----------
        dataset, config, method
            What to detect on, the detection config, and one of :data:`deft.schema.DETECT_METHODS`.
        out : path, optional
            The run folder; default :meth:`detect_dir` (the app's layout).
        device, progress, cancel
            Where to run, the progress callback and the cancel token (a baseline is not cancellable).
        audit_config : AuditConfig, optional
            The audit pass's config (baselines and ``all``); default :class:`~deft.audit.AuditConfig`.
        main_rank : bool
            False on the other ranks of a distributed run: no lock, no audit pass.
        """
        from deft.audit import audit, detect_with_baseline
        from deft.detection import detect

        check_method(method)
        out = Path(out) if out is not None else self.detect_dir(config, method)
        with run_folder_lock(out) if main_rank else nullcontext():
            if method in BASELINES:
                run, scores, res = detect_with_baseline(dataset, out, config, method, device=device,
                                                        progress=progress, audit_config=audit_config)
                return Detection(run, scores, res.metrics)
            det = detect(dataset, out, config, device=device, progress=progress, cancel=cancel)
            if method != ALL_METHODS or not main_rank:
                return Detection(det.run, det.scores, det.metrics)
            metrics = audit(det.run, audit_config, device=device, progress=progress, cancel=cancel).metrics
        run = Run.open(det.run.path)  # re-read: the audit rewrote the scores
        return Detection(run, run.scores(), metrics)

    @staticmethod
    def audit(run: Run | str | os.PathLike, config: AuditConfig | None = None, *, device: str = "auto",
              progress: ProgressCallback = null_progress, cancel: CancelToken | None = None,
              lock: bool = True) -> AuditResult:
        """``deft audit`` on a run: baselines, data issues, class report and map (see :func:`deft.audit.audit`),
        holding the run folder's lock when ``lock``."""
        from deft.audit import audit

        path = run.path if isinstance(run, Run) else Path(run)
        with run_folder_lock(path) if lock else nullcontext():
            return audit(Run.open(path), config, device=device, progress=progress, cancel=cancel)

    @staticmethod
    def train_dir(run: Run, curated: pd.DataFrame, config: Phase2Config) -> Path:
        """The app's folder for a training run: one per labels and config (an interrupted one resumes there)."""
        return folder_for(run.phase2_dir, fingerprint(config.to_dict(), curated[["id", "label"]]))

    @staticmethod
    def train(run: Run, curated: pd.DataFrame, config: Phase2Config, *, out: str | os.PathLike | None = None,
              device: str = "auto", progress: ProgressCallback = null_progress, cancel: CancelToken | None = None,
              tags: dict | None = None, lock: bool = True) -> Phase2Result:
        """Phase 2 on the curated labels (see :func:`deft.training.train_classifier`; ``out`` default
        ``RUN/phase2``), holding that folder's lock when ``lock`` (a second training into it is refused)."""
        from deft.training import train_classifier

        with run_folder_lock(out if out is not None else run.phase2_dir) if lock else nullcontext():
            return train_classifier(run, curated, config, out=out, device=device, progress=progress, cancel=cancel,
                                    tags=tags)

    @staticmethod
    def training_runs(run: Run | None) -> pd.DataFrame:
        """``run``'s past training runs (mode, epochs, last/best accuracy, held out on)."""
        return runs_table(list_training_runs(run.phase2_dir) if run is not None else [])

    @staticmethod
    def latest_training_run(run: Run | None) -> TrainingRun | None:
        """``run``'s most recent training run (a resumed one counts as recent)."""
        runs = list_training_runs(run.phase2_dir) if run is not None else []
        return max(runs, key=_touched, default=None)

    # -- export and ground truth ----------------------------------------------
    @classmethod
    def export_frame(cls, run: Run, store: ReviewStore | None = None, pseudo: bool = False) -> pd.DataFrame:
        """The cleaned-labels table of ``run``, with the audit columns (baselines, data issues) when audited.

        Parameters
        ----------
        run : Run
            The detection run.
        store : ReviewStore, optional
            Its review store; default the one :meth:`store_path_for` finds, if it exists (else the scores alone:
            no decisions yet).
        pseudo : bool
            Give unreviewed suspects their suggested label.
        """
        if store is None:
            path = cls.store_path_for(run)
            store = ReviewStore.for_run(run, path) if path.is_file() else None
        df = store.export(pseudo=pseudo) if store is not None else export_table(run.scores(), None, pseudo=pseudo)
        extra = audit_columns(run)  # baselines and data issues, after `deft audit` / `detect --method`
        return df if extra is None else merge_audit_columns(df, extra, key="path")

    def export(self, run: Run, store: ReviewStore, pseudo: bool = False) -> tuple[Path, Path, pd.DataFrame]:
        """Write :meth:`export_frame` to :attr:`exports_dir` as CSV and Parquet: ``(csv, parquet, table)``."""
        df = self.export_frame(run, store, pseudo)
        csv = write_export(df, self.exports_dir / f"{EXPORT_NAME}.csv")
        pq = write_export(df, self.exports_dir / f"{EXPORT_NAME}.parquet")
        return csv, pq, df

    @staticmethod
    def ground_truth(run: Run):
        """Which samples are truly clean, when known (:func:`deft.storage.truth.ground_truth`: ``true_label`` or
        ``PLANTED.csv``)."""
        return ground_truth(run)

    @staticmethod
    def planted_summary(run: Run | None, store: ReviewStore | None) -> dict | None:
        """Precision, recall and planted errors caught by the scores in ``store``, when there is ground truth."""
        if run is None or store is None:
            return None
        truth = ground_truth(run)
        if truth is None:
            return None
        return planted_errors_caught(store.scores(["id", "is_clean", "margin"]), run.dataset.samples["id"], truth)
