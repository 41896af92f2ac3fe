"""What the app shows of an audit (``deft audit``): metrics table, issue counts, issue filters, map points.

Pure functions over the audit outputs (:mod:`deft.audit`), so the UI only lays them out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.errors import RunError, read_derived
from deft.core.schema import IMAGE_PROBLEMS, ISSUES, METHODS, Order, issue_column, score_column  # noqa: F401  (IMAGE_PROBLEMS re-exported)
from deft.core.schema import REVIEW_ORDERS as ORDERS

__all__ = ["AuditView", "load_audit", "issue_rows", "order_rows", "ORDERS", "ISSUES", "issue_mask", "issue_counts",
           "conflict_line", "methods_table", "map_points", "MAP_MAX_POINTS"]

MAP_MAX_POINTS = 5000  # points drawn on the map; larger sets are downsampled (suspects and issues kept first)


def issue_mask(table: pd.DataFrame, issue: str) -> np.ndarray:
    """Boolean mask of the rows of an audit table that have ``issue`` (a key of :data:`ISSUES`)."""
    if issue not in ISSUES:
        raise ValueError(f"unknown data issue {issue!r}; choose one of {list(ISSUES)}")
    cols = [c for c in ISSUES[issue] if c in table]
    if not cols:
        return np.zeros(len(table), dtype=bool)
    return table[cols].fillna(False).astype(bool).any(axis=1).to_numpy()


def issue_rows(table: pd.DataFrame) -> list[tuple[str, str]]:
    """``(issue, sample id)`` for every data issue of every sample (what the Review filter matches on)."""
    ids = table["id"].astype(str).to_numpy()
    return [(name, sid) for name in ISSUES for sid in ids[issue_mask(table, name)]]





def order_rows(table: pd.DataFrame) -> list[tuple[str, str, float]]:
    """``(order, sample id, rank)`` for every review order the audit table supports (see
    :func:`deft.audit.review_order`); DEFT margin needs none (the store sorts by it)."""
    from deft.audit import review_order  # loads torch: only once a run was audited

    out: list[tuple[str, str, float]] = []
    if "p_wrong" in table:
        from deft.learning import order_rows as combined_rows

        out += combined_rows(table)
    for by in ORDERS.values():
        if by in (Order.MARGIN, Order.COMBINED) or (by != Order.AGREEMENT and score_column(by) not in table):
            continue
        try:
            ids = review_order(table, by)["id"].astype(str)
        except ValueError:  # no method columns to agree on
            continue
        out += [(by, sid, float(r)) for r, sid in enumerate(ids)]
    return out


def issue_counts(table: pd.DataFrame) -> pd.DataFrame:
    """``issue, samples``: how many samples have each data issue (issues the audit did not run are left out)."""
    rows = [(name, int(issue_mask(table, name).sum())) for name, cols in ISSUES.items()
            if any(c in table for c in cols)]
    return pd.DataFrame(rows, columns=["issue", "samples"])


def conflict_line(counts: pd.DataFrame) -> str:
    """A loud Markdown line when duplicates carry different labels (one of the copies is wrong), else ''."""
    hit = counts.loc[counts["issue"] == "duplicate with a different label", "samples"]
    n = int(hit.iloc[0]) if len(hit) else 0
    if not n:
        return ""
    return (f"**⚠ {n} samples are duplicates (exact or near) whose copies carry different labels: one label "
            f"of each pair is wrong.** Filter Review on *duplicate with a different label*.")


def methods_table(metrics: dict[str, dict[str, float]] | None) -> pd.DataFrame | None:
    """``method, precision, recall, F1, AUROC`` (rounded) from ``metrics.json["methods"]``; None without truth."""
    if not metrics:
        return None
    rows = [{"method": m, "precision": v.get("precision"), "recall": v.get("recall"), "F1": v.get("f1"),
             "AUROC": v.get("auroc")} for m, v in metrics.items()]
    return pd.DataFrame(rows).round(4)


def map_points(proj: pd.DataFrame, table: pd.DataFrame | None, labels: pd.Series,
               max_points: int = MAP_MAX_POINTS, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """Points of the embeddings map: ``id, x, y, label, kind`` and the total before downsampling.

    ``kind`` is ``suspect`` (flagged by any method), the first data issue, or ``ok``. Only
    reviewable rows (those in ``table``, when given) are drawn. Past ``max_points`` the map keeps
    every suspect/issue point it can (up to ``max_points``) and a random sample of the rest, so a
    100k-point set stays responsive in the browser.
    """
    df = proj[["id", "x", "y"]].copy()
    df["id"] = df["id"].astype(str)
    df["label"] = df["id"].map(labels.astype(str)).fillna("")
    kind = np.full(len(df), "ok", dtype=object)
    if table is not None:
        t = table.set_index(table["id"].astype(str)).reindex(df["id"])
        keep = t.index.isin(table["id"].astype(str))
        for name in reversed(list(ISSUES)):  # first issue in ISSUES order wins
            kind[issue_mask(t, name)] = name
        flagged = np.zeros(len(df), dtype=bool)
        for m in METHODS:
            if issue_column(m) in t:
                flagged |= t[issue_column(m)].fillna(False).astype(bool).to_numpy()
        kind[flagged] = "suspect"
        df, kind = df[keep], kind[keep]
    df = df.assign(kind=kind).reset_index(drop=True)
    total = len(df)
    if total > max_points:
        rng = np.random.default_rng(seed)
        pri = (df["kind"] != "ok").to_numpy()
        order = np.concatenate([rng.permutation(np.flatnonzero(pri)), rng.permutation(np.flatnonzero(~pri))])
        df = df.iloc[np.sort(order[:max_points])].reset_index(drop=True)
    return df, total


@dataclass
class AuditView:
    """The saved outputs of ``deft audit`` in a run folder (any may be missing); ``notes``: one sentence per
    output found damaged and left out."""

    table: pd.DataFrame
    metrics: dict | None
    class_report: pd.DataFrame | None
    summary: dict
    projection: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)


def _json_object(path: Path) -> dict:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _table(*columns: str):
    def read(path: Path) -> pd.DataFrame:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        if not set(columns) <= set(df.columns):
            raise ValueError(f"lacks the columns {sorted(set(columns) - set(df.columns))}")
        return df
    return read


def load_audit(run_path: str | Path) -> AuditView | None:
    """Read a run folder's audit outputs; None before the run was audited.

    Each is derived from the run (``deft audit`` or the app's Audit writes it again): a damaged
    ``audit.parquet`` is a :class:`~deft.core.errors.RunError` saying so; any other damaged output is left out,
    with a sentence in :attr:`AuditView.notes`.
    """
    p = Path(run_path)
    if not os.path.lexists(p / "audit.parquet"):
        return None
    redo = f"run Audit again (Detect tab, or `python -m deft audit {p}`) to rebuild it"
    notes: list[str] = []
    table = read_derived(p / "audit.parquet", _table("id"), redo, notes)
    if table is None:
        raise RunError(notes[0])
    metrics = read_derived(p / "metrics.json", _json_object, redo, notes)
    return AuditView(
        table=table,
        metrics=(metrics or {}).get("methods") or None,
        class_report=read_derived(p / "class_report.csv", _table("class"), redo, notes),
        summary=read_derived(p / "audit.json", _json_object, redo, notes) or {},
        projection=read_derived(p / "projection.parquet", _table("id", "x", "y"), redo, notes),
        notes=notes)
