"""Evidence beside a review decision: the nearest clean examples of a class for one sample.

A reviewer who sees "labelled cat, looks like dog" compares the image with clean cats and
clean dogs instead of guessing. The neighbours come from the run's frozen CLIP image
embeddings (``RUN/embeddings.safetensors``, written by the audit or ``deft audit``): cosine
similarity between L2-normalised rows, exact, among the samples trusted with the class asked
for: a reviewer's keep / accept / relabel, else DEFT's clean selection (``is_clean``). No model is loaded here: when the
run has no embeddings (or they are stale) there is no evidence, and the caller says how to
get it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from deft.core.schema import WRONG_STATUSES, Status
from deft.embeddings import _cached, _cached_meta, content_key, embeddings_path
from deft.storage.run import Run, RunError


@dataclass(frozen=True)
class Neighbour:
    """One clean example: its sample id and cosine similarity to the sample under review."""

    sample_id: str
    similarity: float


def nearest_rows(image: np.ndarray, query: int, candidates: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``candidates`` most similar to row ``query`` (itself excluded), best first.

    Parameters
    ----------
    image : np.ndarray
        ``(N, D)`` L2-normalised embeddings.
    query : int
        Row of the sample under review.
    candidates : np.ndarray
        Row indices to search.
    k : int
        How many neighbours.

    Returns
    -------
    rows, similarities : np.ndarray, np.ndarray
        At most ``k`` rows and their cosine similarities, in decreasing similarity (ties: lower row first).
    """
    cand = np.asarray(candidates, dtype=np.int64)
    cand = cand[cand != query]
    if cand.size == 0 or k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    sims = image[cand] @ image[query]
    order = np.lexsort((cand, -sims))[:k]
    return cand[order], sims[order].astype(np.float32)


def trusted_labels(ids: pd.Series, labels: pd.Series, scores: pd.DataFrame,
                   decisions: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The label each sample can be trusted with, and whether it can be trusted at all.

    A reviewer's decision wins over DEFT: kept -> the given label, accepted / relabelled -> the
    final label, excluded -> not trusted. Undecided samples are trusted with their given label
    when DEFT selected them as clean (``scores.is_clean``); rows without a verdict are not.

    Returns
    -------
    labels, trusted : np.ndarray, np.ndarray
        One entry per row of ``ids`` (str labels, bool mask).
    """
    out, trusted = clean_verdicts(ids, labels, scores)
    if decisions is None or not len(decisions):
        return out, trusted
    return apply_decisions(out, trusted, {sid: i for i, sid in enumerate(ids.astype(str))}, decisions)


def clean_verdicts(ids: pd.Series, labels: pd.Series, scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """DEFT's part of :func:`trusted_labels`: the given labels, trusted where ``scores.is_clean``."""
    ids = ids.astype(str)
    verdict = scores.set_index(scores["id"].astype(str))["is_clean"].astype(bool)
    trusted = np.array(ids.map(verdict).fillna(False), dtype=bool)  # a writable copy
    return np.array(labels.astype(str), dtype=object), trusted


def apply_decisions(labels: np.ndarray, trusted: np.ndarray, row: dict[str, int],
                    decisions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The reviewers' part of :func:`trusted_labels`, on copies of ``labels`` / ``trusted`` (``row``: sample id
    -> row). Costs the decisions, not the samples: a 1M-sample review re-reads no table after each decision."""
    out, trusted = labels.copy(), trusted.copy()
    if not len(decisions):
        return out, trusted
    at = np.fromiter((row.get(str(s), -1) for s in decisions["id"]), np.int64, len(decisions))
    d = decisions.loc[at >= 0]
    at = at[at >= 0]
    status = d["status"].to_numpy(dtype=object)
    trusted[at] = status != Status.EXCLUDED
    moved = d["status"].isin(WRONG_STATUSES).to_numpy() & d["final_label"].notna().to_numpy()
    out[at[moved]] = d["final_label"].to_numpy(dtype=object)[moved].astype(str)
    return out, trusted


class EvidenceIndex:
    """Nearest trusted examples per class, for any sample of one run (embeddings loaded once).

    Parameters
    ----------
    ids : pd.Series
        Sample ids in embedding row order (the dataset's manifest order).
    image : np.ndarray
        ``(N, D)`` L2-normalised embeddings.
    """

    def __init__(self, ids: pd.Series, image: np.ndarray) -> None:
        if len(ids) != image.shape[0]:
            raise ValueError("ids and image must have one row per sample")
        self.image = image
        self.ids = ids.astype(str).to_numpy()
        self.row = {sid: i for i, sid in enumerate(self.ids)}
        self.by_class: dict[str, np.ndarray] = {}

    def trust(self, labels: np.ndarray, trusted: np.ndarray) -> EvidenceIndex:
        """Search, per class, only the rows trusted with that label (see :func:`trusted_labels`)."""
        if not (len(labels) == len(trusted) == len(self.ids)):
            raise ValueError("labels and trusted must have one row per sample")
        labels, trusted = np.asarray(labels).astype(str), np.asarray(trusted, dtype=bool)
        self.by_class = {c: np.flatnonzero(trusted & (labels == c)) for c in np.unique(labels[trusted])}
        return self

    @classmethod
    def for_run(cls, run: Run) -> EvidenceIndex | None:
        """The run's embeddings as an index (call :meth:`trust` next), or None when the run has no
        embeddings file or it no longer matches the images (run the audit again). A damaged file is a
        :class:`RunError` that names it and says the audit rebuilds it."""
        path = embeddings_path(run)
        damaged: list[str] = []
        meta = _cached_meta(path, damaged)
        size = meta.get("image_size", "")
        if not damaged and (not size.isdigit() or meta.get("key") != content_key(run, int(size))):
            return None
        emb = None if damaged else _cached(path, damaged)
        if emb is None or emb.image.shape[0] != run.dataset.N:
            raise RunError(f"{path} is damaged; run Audit (Detect tab, or `python -m deft audit {run.path}`) to "
                           "compute it again.")
        return cls(run.dataset.samples["id"], emb.image)

    def nearest(self, sample_id: str, label: str, k: int = 4) -> list[Neighbour]:
        """The ``k`` trusted samples of ``label`` nearest to ``sample_id`` (empty if none or unknown)."""
        q = self.row.get(str(sample_id))
        cand = self.by_class.get(str(label))
        if q is None or cand is None:
            return []
        rows, sims = nearest_rows(self.image, q, cand, k)
        return [Neighbour(str(self.ids[r]), float(s)) for r, s in zip(rows, sims, strict=True)]
