"""The audit pass: baselines beside DEFT, data issues, class report and the 2-D map, on one run.

All of it runs on the run's cached CLIP embeddings (:mod:`deft.embeddings`). Outputs in
the run folder:

    RUN/audit.parquet       id + one column per method score / flag and per data issue
    RUN/scores.parquet      the same columns merged in (so the scores table carries them)
    RUN/class_report.csv    per class: count, share, imbalance, suspect rate per method, issue counts
    RUN/metrics.json        "methods": precision / recall / F1 / AUROC per method (with ground truth)
    RUN/audit.json          issue counts, near-duplicate threshold, timings
    RUN/projection.parquet  id, x, y (t-SNE map)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from deft.core import baselines as bl
from deft.core import data_issues as di
from deft.core.errors import read_derived
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.core.schema import BASELINES, RunStatus, issue_column, pred_column, score_column
from deft.embeddings import Embeddings, run_embeddings
from deft.storage.atomic import write_csv, write_json, write_parquet
from deft.storage.imageio import file_hashes, image_sizes
from deft.storage.run import Run
from deft.storage.truth import ground_truth, ground_truth_metrics, true_labels  # noqa: F401  (true_labels re-exported)

if TYPE_CHECKING:
    from deft.core.config import Phase1Config
    from deft.core.models import ClipBundle
    from deft.storage.data import Dataset

AUDIT_FILE = "audit.parquet"


@dataclass
class AuditConfig:
    """What the audit pass runs.

    ``methods``: baselines to run beside DEFT (whose scores are taken from the run when it has them).
    """

    methods: tuple[str, ...] = BASELINES
    n_folds: int = 5
    seed: int = 0
    data_issues: bool = True
    projection: bool = True
    ranking: bool = True  # signals + combined order and suggestions (deft.learning), saved as RUN/signals.safetensors
    issues: di.DataIssueConfig = field(default_factory=di.DataIssueConfig)


@dataclass
class AuditResult:
    table: pd.DataFrame
    metrics: dict[str, dict[str, float]] | None
    class_report: pd.DataFrame
    summary: dict
    projection: pd.DataFrame | None


def _timed(timings: dict[str, float], name: str):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - self.t0

    return _T()


def method_frames(labels: np.ndarray, emb: Embeddings, methods: tuple[str, ...], n_classes: int,
                  n_folds: int = 5, seed: int = 0, timings: dict[str, float] | None = None,
                  probs: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The baselines' columns (``<method>_issue/_score/_pred``) for ``methods`` on the embeddings; each
    method's class probabilities go into ``probs`` when given (the ranking's sources)."""
    timings = timings if timings is not None else {}
    probs = probs if probs is not None else {}
    unknown = sorted(set(methods) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(bl.METHODS)}")
    parts = []
    if "zeroshot" in methods:
        with _timed(timings, "zeroshot"):
            probs["zeroshot"] = bl.zero_shot_pred_probs(emb.image, emb.text_zs, emb.logit_scale)
            parts.append(bl.find_zero_shot_issues(labels, probs["zeroshot"]))
    if "cleanlab" in methods:
        with _timed(timings, "cleanlab"):
            probs["cleanlab"] = bl.cross_val_pred_probs(emb.image, labels, n_classes, n_folds=n_folds, seed=seed)
            parts.append(bl.find_confident_learning_issues(labels, probs["cleanlab"]))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=range(len(labels)))


def data_issue_frames(run: Run, emb: Embeddings, cfg: di.DataIssueConfig, timings: dict[str, float],
                      progress: ProgressCallback = null_progress, cancel: CancelToken | None = None
                      ) -> tuple[pd.DataFrame, float]:
    """Duplicates, outliers and image problems of every sample; and the near-duplicate cosine distance."""
    from deft.storage.run_images import load_run_images

    labels = run.dataset.labels
    paths = run.dataset.paths()
    with _timed(timings, "exact_duplicates"):
        exact = di.find_exact_duplicates(file_hashes(paths), labels)
    with _timed(timings, "knn"):
        nn = di.knn(emb.image, cfg.k, cfg.chunk)
    with _timed(timings, "near_duplicates"):
        near, thr = di.find_near_duplicates(labels, *nn, cfg)
    with _timed(timings, "outliers"):
        out = di.find_outliers(emb.image, labels, cfg, global_knn=nn)
    images = load_run_images(run, emb.image_size, progress, cancel)  # the embedding pass's decode cache
    with _timed(timings, "image_problems"):
        stats = di.image_stats(images, cfg)
        sizes = image_sizes(paths)
        problems = di.find_image_problems(stats, sizes, cfg)
    return pd.concat([exact, near, out, problems, stats.round(5), sizes], axis=1), thr


def _names(idx: pd.Series, classes: list[str]) -> np.ndarray:
    arr = np.asarray(classes + [""], dtype=object)
    v = idx.to_numpy(dtype=np.int64)
    return arr[np.where(v >= 0, v, len(classes))]


def audit(run: Run | str | os.PathLike, config: AuditConfig | None = None, *, bundle: ClipBundle | None = None,
          device: str = "auto", progress: ProgressCallback = null_progress,
          cancel: CancelToken | None = None, save: bool = True) -> AuditResult:
    """Run the baselines and data-issue passes on a run and save their outputs in the run folder.

    Parameters
    ----------
    run : Run or path
        A run folder; its DEFT scores (``scores.parquet``) join the comparison when present.
    config : AuditConfig
    bundle : ClipBundle, optional
        CLIP already in memory (only needed when the embeddings are not cached yet).
    """
    cfg = config or AuditConfig()
    run = run if isinstance(run, Run) else Run.open(run)
    ds = run.dataset
    timings: dict[str, float] = {}
    with _timed(timings, "embeddings"):
        emb = run_embeddings(run, bundle=bundle, device=device, progress=progress, cancel=cancel)
    rows = ds.train_rows  # held-out (test/val) rows are never judged or reviewed, as in Phase 1
    labels = ds.labels[rows]
    table = pd.DataFrame({"id": ds.samples["id"].astype(str).to_numpy()[rows]})
    scores = run.scores() if run.scores_path.is_file() else None
    if scores is not None and "margin" in scores and scores["margin"].notna().any() \
            and run.meta.get("method", "deft") == "deft":
        deft = bl.deft_issues(scores, ds.classes).set_axis(scores["id"].astype(str).to_numpy())
        table = pd.concat([table, deft.reindex(table["id"]).reset_index(drop=True)], axis=1)  # join on id
    probs: dict[str, np.ndarray] = {}
    base = method_frames(labels, emb.subset(rows), tuple(m for m in cfg.methods if m != "deft"), ds.K,
                         cfg.n_folds, cfg.seed, timings, probs)
    table = pd.concat([table, base], axis=1)
    table = pd.concat([table, bl.agreement(table)], axis=1)
    summary: dict = {}
    if cfg.data_issues:  # found among all rows (a test image duplicated in training is worth knowing)
        issues, thr = data_issue_frames(run, emb, cfg.issues, timings, progress, cancel)
        table = pd.concat([table, issues.iloc[rows].reset_index(drop=True)], axis=1)
        summary["near_duplicate_cos"] = round(1.0 - thr, 6)
        summary["issues"] = di.summarize(table)
    if cfg.ranking and scores is not None:
        with _timed(timings, "ranking"):
            table, summary["ranking"] = _rank(run, scores, table, emb.subset(rows), labels, probs, save)
    truth = ground_truth(run)
    truth = truth[rows] if truth is not None else None
    metrics = bl.methods_metrics(table, truth) if truth is not None else None
    for m in bl.METHODS:  # class names instead of indices in the saved table
        if pred_column(m) in table:
            table[pred_column(m)] = _names(table[pred_column(m)], ds.classes)
    report = di.class_report(labels, ds.classes, table)
    proj = None
    if cfg.projection:
        from deft.projection import run_projection

        with _timed(timings, "projection"):
            proj = run_projection(run, emb.image, emb.key, cfg.seed) if save else None
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    summary["config"] = asdict(cfg)
    if save:
        _save(run, table, report, metrics, summary, scores)
    return AuditResult(table=table, metrics=metrics, class_report=report, summary=summary, projection=proj)


def _rank(run: Run, scores: pd.DataFrame, table: pd.DataFrame, emb: Embeddings, labels: np.ndarray,
          probs: dict[str, np.ndarray], save: bool) -> tuple[pd.DataFrame, dict]:
    """The learning queue's signals (saved beside the run) and its columns added to the audit table."""
    from deft import learning

    s = scores.set_index(scores["id"].astype(str)).reindex(table["id"].astype(str)).reset_index(drop=True)
    sig = learning.build_signals(s.assign(id=table["id"].to_numpy()), labels, run.dataset.classes, emb.image,
                                 emb.text_zs, emb.logit_scale, probs, table)
    if save:
        sig.save(learning.signals_path(run.path))
    ranked, model = learning.initial_ranking(sig)
    table = pd.concat([table.drop(columns=[c for c in ranked.columns if c in table and c != "id"]),
                       ranked.drop(columns="id")], axis=1)
    return table, {"model": model.source, "expected_wrong": round(float(model.p_wrong.sum()), 1),
                   "weights": model.coef}


def _save(run: Run, table: pd.DataFrame, report: pd.DataFrame, metrics: dict | None, summary: dict,
          scores: pd.DataFrame | None) -> None:
    write_parquet(run.path / AUDIT_FILE, table)
    write_csv(run.path / "class_report.csv", report)
    write_json(run.path / "audit.json", summary, default=str)
    if metrics is not None:
        run.save_metrics({**run.metrics(), "methods": metrics})
    if scores is not None:
        run.save_scores(merge_audit_columns(scores, table, key="id"))


def read_audit_table(path: Path) -> pd.DataFrame:
    """``RUN/audit.parquet`` (a damaged one, or one without ``id``, raises)."""
    df = pd.read_parquet(path)
    if "id" not in df.columns:
        raise ValueError(f"{path} has no id column")
    return df


def audit_columns(run: Run, notes: list[str] | None = None) -> pd.DataFrame | None:
    """The run's saved audit table (``id`` + columns), or None before ``deft audit``; a damaged one is ignored
    with a warning (the export then lacks its columns) that says how to rebuild it."""
    return read_derived(run.path / AUDIT_FILE, read_audit_table,
                        f"the audit columns are left out until `python -m deft audit {run.path}` rebuilds it",
                        notes if notes is not None else run.notes)


def merge_audit_columns(frame: pd.DataFrame, table: pd.DataFrame, key: str) -> pd.DataFrame:
    """``frame`` with the audit columns appended (matched on ``frame[key] == table.id``); a column
    ``frame`` already has (e.g. from an earlier audit) is replaced."""
    cols = [c for c in table.columns if c != "id"]
    base = frame.drop(columns=[c for c in cols if c in frame.columns and c != key])
    extra = table.set_index("id")[cols]
    return pd.concat([base.reset_index(drop=True),
                      extra.reindex(base[key].astype(str).to_numpy()).reset_index(drop=True)], axis=1)


def baseline_scores(dataset: Dataset, emb: Embeddings, method: str, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """A scores table (the layout DEFT writes) from one baseline, so review and export work unchanged.

    ``margin`` and ``p_clean`` hold the method's label-quality score, ``is_clean`` its verdict,
    ``pred``/``suggestion`` its predicted class; ``sim_pos``/``sim_neg`` are empty (no prompts).
    """
    rows = dataset.train_rows  # the scores table holds the reviewable rows only, as DEFT's does
    labels = dataset.labels[rows]
    emb = emb.subset(rows)
    zs = bl.zero_shot_pred_probs(emb.image, emb.text_zs, emb.logit_scale)
    if method == "zeroshot":
        probs, frame = zs, bl.find_zero_shot_issues(labels, zs)
    elif method == "cleanlab":
        probs = bl.cross_val_pred_probs(emb.image, labels, dataset.K, n_folds=n_folds, seed=seed)
        frame = bl.find_confident_learning_issues(labels, probs)
    else:
        raise ValueError(f"unknown baseline {method!r}; choose one of {list(BASELINES)}")
    names = np.asarray(dataset.classes, dtype=object)
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    top = np.argsort(-zs, axis=1)[:, :3]
    samples = dataset.samples.iloc[rows]
    cols = {"id": samples["id"].astype(str).to_numpy(), "label": samples["label"].to_numpy(),
            "sim_pos": np.nan, "sim_neg": np.nan, "margin": frame[score_column(method)].to_numpy(),
            "p_clean": frame[score_column(method)].to_numpy(), "is_clean": ~frame[issue_column(method)].to_numpy(),
            "pred": names[pred], "pred_conf": conf}
    for j in range(top.shape[1]):
        cols[f"zs{j + 1}"] = names[top[:, j]]
        cols[f"zs{j + 1}_conf"] = np.take_along_axis(zs, top[:, j : j + 1], axis=1)[:, 0]
    cols["suggestion"] = names[pred]
    cols["suggestion_conf"] = conf
    return pd.DataFrame(cols)


def detect_with_baseline(dataset: Dataset, out: str | os.PathLike, config: Phase1Config, method: str, *,
                         device: str = "auto", progress: ProgressCallback = null_progress,
                         audit_config: AuditConfig | None = None) -> tuple[Run, pd.DataFrame, AuditResult]:
    """``deft detect --method zeroshot|cleanlab``: score a dataset with one baseline instead of DEFT
    (no prompt training), save it as the run's scores table, then run the audit pass."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose one of {list(BASELINES)}")
    run = Run.create(out, dataset, config)
    run.set(method=method, status=RunStatus.TRAINING)
    emb = run_embeddings(run, device=device, progress=progress)
    acfg = audit_config or AuditConfig()
    scores = baseline_scores(run.dataset, emb, method, acfg.n_folds, acfg.seed)
    run.save_scores(scores)
    ground_truth_metrics(run, scores)
    res = audit(run, AuditConfig(**{**asdict(acfg), "issues": acfg.issues, "methods": (method,)}),
                device=device, progress=progress)
    run.set(status=RunStatus.SCORED)
    return run, run.scores(), res


def review_order(table: pd.DataFrame, by: str = "agreement") -> pd.DataFrame:
    """Rows of an audit table in review order: ``by="agreement"`` puts samples flagged by the most
    methods first (ties: lowest mean label-quality rank), ``by="<method>"`` that method's flagged
    samples first, lowest score first."""
    if by == "agreement":
        ranks = [table[score_column(m)].rank(pct=True) for m in bl.METHODS if score_column(m) in table]
        if "n_flagged" not in table or not ranks:
            raise ValueError("the table has no method columns to agree on; run `deft audit` first")
        key = pd.DataFrame({"n": -table["n_flagged"], "r": pd.concat(ranks, axis=1).mean(axis=1)})
        return table.loc[key.sort_values(["n", "r"], kind="mergesort").index]
    if score_column(by) not in table:
        raise ValueError(f"no {by!r} columns in the audit table; choose one of "
                         f"{[m for m in bl.METHODS if score_column(m) in table] + ['agreement']}")
    key = pd.DataFrame({"f": ~table[issue_column(by)], "s": table[score_column(by)]})
    return table.loc[key.sort_values(["f", "s"], kind="mergesort").index]
