"""Detection and classification metrics (METHOD.md, Metrics)."""

from __future__ import annotations

import numpy as np


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
