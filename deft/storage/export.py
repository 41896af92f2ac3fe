"""From scores + human decisions to the cleaned label table (export) and the curated training set.

The export is the one table format both ways: ``deft export`` writes it and
``deft train --labels`` reads it back.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.errors import WriteError
from deft.core.schema import EXPORT_COLUMNS, STATUSES, TRAIN_MODES, Status
from deft.storage.atomic import write_csv, write_parquet
from deft.storage.data import DataError, read_table


def export_table(scores: pd.DataFrame, decisions: pd.DataFrame | None = None, pseudo: bool = False) -> pd.DataFrame:
    """One row per sample in :data:`EXPORT_COLUMNS` order.

    Parameters
    ----------
    scores : DataFrame
        Phase 1 scores (``id, label, is_clean, sim_pos, sim_neg, margin, suggestion, suggestion_conf``).
    decisions : DataFrame, optional
        Current human decision per sample: ``id, status, final_label, decided_at`` and optionally
        ``decided_by`` (status in accepted/relabelled/kept/excluded).
    pseudo : bool
        Give unreviewed suspects their suggestion as final label (status ``pseudo``).
    """
    df = pd.DataFrame({
        "path": scores["id"].astype(str),
        "original_label": scores["label"].astype(str),
        "final_label": np.where(scores["is_clean"], scores["label"].astype(str), ""),
        "status": np.where(scores["is_clean"], Status.CLEAN.value, Status.PENDING.value),
        "sim_pos": scores["sim_pos"].astype(float),
        "sim_neg": scores["sim_neg"].astype(float),
        "margin": scores["margin"].astype(float),
        "suggestion": scores["suggestion"].astype(str),
        "suggestion_conf": scores["suggestion_conf"].astype(float),
        "decided_at": "",
        "decided_by": "",
    })
    if decisions is not None and len(decisions):
        d = decisions.set_index("id")
        hit = df["path"].isin(d.index)
        ids = df.loc[hit, "path"]
        df.loc[hit, "status"] = d.loc[ids, "status"].to_numpy()
        df.loc[hit, "final_label"] = d.loc[ids, "final_label"].fillna("").to_numpy()
        df.loc[hit, "decided_at"] = d.loc[ids, "decided_at"].fillna("").to_numpy()
        if "decided_by" in d.columns:
            df.loc[hit, "decided_by"] = d.loc[ids, "decided_by"].fillna("").to_numpy()
    if pseudo:
        pend = df["status"].eq(Status.PENDING)
        df.loc[pend, "status"] = Status.PSEUDO.value
        df.loc[pend, "final_label"] = df.loc[pend, "suggestion"]
    return df[EXPORT_COLUMNS]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = ("path", "original_label", "final_label", "suggestion")


def escape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Prefix ``'`` to text cells a spreadsheet would run as a formula (``= + - @``); ``'`` itself is doubled,
    so :func:`unescape_formulas` restores every value exactly."""
    out = df.copy()
    for c in (c for c in TEXT_COLUMNS if c in out.columns):
        v = out[c].astype(str)
        risky = v.str.startswith(FORMULA_START) | v.str.startswith("'")
        out[c] = v.where(~risky, "'" + v)
    return out


def unescape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in (c for c in TEXT_COLUMNS if c in out.columns):
        v = out[c].astype(str)
        out[c] = v.where(~v.str.startswith("'"), v.str[1:])
    return out


def check_output_file(out: str | os.PathLike) -> Path:
    """``out`` if a file can be written there, else a :class:`DataError` sentence saying why."""
    raw, out = os.fspath(out), Path(out)
    if out.is_dir() or raw.endswith(os.sep):
        raise DataError(f"--out {out} is a folder; give a file name such as {out / 'cleaned_labels.csv'}.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"Cannot write {out}: {parent} is a file, not a folder.")
            break
    return out


def write_export(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write CSV (formula cells escaped) or Parquet for a ``.parquet`` name, atomically, leaving no stray file."""
    out = check_output_file(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() in {".parquet", ".pq"}:
            write_parquet(out, df)
        else:
            write_csv(out, escape_formulas(df))
    except WriteError as exc:  # a read-only folder, a full disk: said as such
        raise DataError(f"Cannot write {out}: {exc.reason}; choose another --out.") from None
    except OSError as exc:
        raise DataError(f"Cannot write {out}: {exc.strerror or exc}; choose another --out.") from None
    return out


def curated_labels(export: pd.DataFrame, mode: str = "relabels") -> pd.DataFrame:
    """``id, label`` rows to train on, chosen from an export table by ``mode``.

    ``clean``: the Phase 1 clean set only; ``relabels``: + human-accepted, relabelled
    and kept samples; ``pseudo``: + unreviewed suspects with their suggestion.
    Excluded samples never train.
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {sorted(TRAIN_MODES)}")
    df = export
    if mode == "pseudo" and df["status"].eq(Status.PENDING).any():
        df = df.copy()
        pend = df["status"].eq(Status.PENDING)
        df.loc[pend, "status"] = Status.PSEUDO.value
        df.loc[pend, "final_label"] = df.loc[pend, "suggestion"]
    keep = df["status"].isin(TRAIN_MODES[mode]) & df["final_label"].astype(str).ne("")
    return pd.DataFrame({"id": df.loc[keep, "path"].to_numpy(), "label": df.loc[keep, "final_label"].to_numpy()})


def read_curated(path: str | os.PathLike) -> pd.DataFrame:
    """Read a curated label file: an export table, or a plain ``path,label`` table.

    Export tables keep rows whose status is not excluded/pending and whose
    ``final_label`` is set; a plain table keeps every row.
    """
    df = read_table(path)
    if {"path", "final_label", "status"} <= set(df.columns):
        df = unescape_formulas(df) if Path(path).suffix.lower() not in {".parquet", ".pq"} else df
        bad = sorted(set(df["status"]) - set(STATUSES))
        if bad:
            raise DataError(f"{path}: unknown status value(s) {bad}; expected one of {list(STATUSES)}.")
        out = df["status"].isin([Status.EXCLUDED.value, Status.PENDING.value])
        keep = ~out & df["final_label"].astype(str).ne("")
        return pd.DataFrame({"id": df.loc[keep, "path"].astype(str).to_numpy(),
                             "label": df.loc[keep, "final_label"].astype(str).to_numpy()})
    if {"path", "label"} <= set(df.columns):
        return pd.DataFrame({"id": df["path"].astype(str), "label": df["label"].astype(str)})
    raise DataError(f"{path}: a curated label file needs path,final_label,status (an export) or path,label columns.")
