"""Detection and classification metrics (METHOD.md, Metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (ties count one half)."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_metrics(selected_clean: np.ndarray, truly_clean: np.ndarray,
                      margin: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall and F1 of the selected clean set; AUROC of ``margin`` for cleanliness.

    precision = |selected ∩ truly clean| / |selected|,
    recall = |selected ∩ truly clean| / |truly clean|.
    """
    sel = np.asarray(selected_clean, dtype=bool)
    true = np.asarray(truly_clean, dtype=bool)
    tp = int((sel & true).sum())
    precision = tp / int(sel.sum()) if sel.any() else float("nan")
    recall = tp / int(true.sum()) if true.any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out = {"precision": precision, "recall": recall, "f1": f1, "n": int(len(sel)),
           "n_selected": int(sel.sum()), "n_truly_clean": int(true.sum()),
           "noise_rate": float(1 - true.mean()) if len(true) else float("nan")}
    if margin is not None:
        out["auroc"] = auroc(margin, true)
    return out


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if len(pred) else float("nan")


def confusion_matrix(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """``cm[true, pred]`` counts."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(target, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def planted_errors_caught(scores: pd.DataFrame, sample_ids: pd.Series, truly_clean: np.ndarray) -> dict:
    """How the detection compares with ground truth (``truly_clean`` per sample of ``sample_ids``).

    Returns the paper's clean-set ``precision``/``recall`` (:func:`detection_metrics`,
    over the scored rows), ``n_planted`` (truly wrong labels among them), ``caught`` (those flagged as
    suspects), ``n_suspects`` and ``suspect_precision`` (the share of suspects that are planted errors).
    """
    truth = pd.Series(np.asarray(truly_clean, dtype=bool), index=sample_ids.astype(str).to_numpy())
    clean = truth.reindex(scores["id"].astype(str).to_numpy()).fillna(True).to_numpy(dtype=bool)
    flagged = ~scores["is_clean"].to_numpy(dtype=bool)
    m = detection_metrics(~flagged, clean, scores["margin"].to_numpy())
    caught = int((flagged & ~clean).sum())
    n_sus = int(flagged.sum())
    return {**m, "n_planted": int((~clean).sum()), "caught": caught, "n_suspects": n_sus,
            "suspect_precision": caught / n_sus if n_sus else float("nan")}


def planted_line(m: dict) -> str:
    """One Markdown line for the Detect tab's summary."""
    def pct(x: float, digits: int = 1) -> str:
        return "n/a" if x != x else f"{x:.{digits}%}"  # NaN: nothing selected

    return (f"**Ground truth:** caught **{m['caught']} of {m['n_planted']}** planted errors "
            f"({pct(m['suspect_precision'], 0)} of the {m['n_suspects']} suspects are planted errors). "
            f"Clean set: precision {pct(m['precision'])}, recall {pct(m['recall'])} (as the paper's tables).")
