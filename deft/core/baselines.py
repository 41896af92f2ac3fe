"""Baseline label-error detectors on frozen CLIP embeddings, beside DEFT.

cleanlab-style API: each function takes ``labels`` (int class indices) and
``pred_probs`` or embeddings, and returns a DataFrame with one row per sample:

* ``<method>_issue``  bool, the sample is flagged as a likely label error;
* ``<method>_score``  label-quality score in [0, 1], higher = the given label looks right
  (the same orientation as DEFT's margin, so AUROC is comparable across methods);
* ``<method>_pred``   the method's predicted class index.

Methods
-------
``zeroshot``
    CLIP zero-shot label match: suspect when the zero-shot top-1 differs from the label.
``cleanlab``
    Confident learning: out-of-sample predicted probabilities from a cross-validated
    logistic-regression probe on the frozen embeddings, then
    :func:`cleanlab.filter.find_label_issues` (the ``cleanlab`` package, not a re-implementation).
``deft``
    The run's DEFT scores (``is_clean``, ``margin``) in the same three columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deft.core.metrics import detection_metrics
from deft.core.schema import METHODS, issue_column, pred_column, score_column


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot_pred_probs(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                         logit_scale: float = 100.0, chunk: int = 65536) -> np.ndarray:
    """Zero-shot class probabilities ``softmax(tau * cos(image, text_k))``, ``(N, K)`` float32."""
    out = np.empty((len(image_embeddings), len(text_embeddings)), dtype=np.float32)
    for s in range(0, len(image_embeddings), chunk):
        out[s : s + chunk] = _softmax(logit_scale * image_embeddings[s : s + chunk] @ text_embeddings.T)
    return out


def _issues_frame(method: str, labels: np.ndarray, issue: np.ndarray, score: np.ndarray,
                  pred: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({issue_column(method): np.asarray(issue, dtype=bool),
                         score_column(method): np.asarray(score, dtype=np.float64),
                         pred_column(method): np.asarray(pred, dtype=np.int64)})


def find_zero_shot_issues(labels: np.ndarray, pred_probs: np.ndarray) -> pd.DataFrame:
    """Zero-shot label match: flagged when the zero-shot top-1 is not the given label.

    Parameters
    ----------
    labels : (N,) int
        Given labels.
    pred_probs : (N, K) float
        Zero-shot probabilities (:func:`zero_shot_pred_probs`).

    Returns
    -------
    DataFrame with ``zeroshot_issue``, ``zeroshot_score`` (probability of the given label),
    ``zeroshot_pred``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pred = pred_probs.argmax(axis=1)
    return _issues_frame("zeroshot", labels, pred != labels, pred_probs[np.arange(len(labels)), labels], pred)


def cross_val_pred_probs(embeddings: np.ndarray, labels: np.ndarray, n_classes: int | None = None,
                         n_folds: int = 5, seed: int = 0, c: float = 1.0, max_iter: int = 200) -> np.ndarray:
    """Out-of-sample predicted probabilities of a logistic-regression probe on frozen embeddings.

    Every sample's probabilities come from a probe that did not see it (stratified
    ``n_folds``-fold cross-validation), as confident learning requires. Features are
    standardised inside each fold. Classes absent from a training fold get probability 0.
    Cost is bounded by ``max_iter`` L-BFGS steps per fold (``O(max_iter * N * D * K)``).

    Returns
    -------
    (N, K) float64 array, rows sum to 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    k = int(n_classes or y.max() + 1)
    counts = np.bincount(y, minlength=k)
    folds = int(min(n_folds, max(2, counts[counts > 0].min())))
    out = np.zeros((len(y), k), dtype=np.float64)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    import warnings

    from threadpoolctl import threadpool_limits

    # one thread (BLAS and OpenMP): after torch has run, its OpenMP workers, sklearn's and OpenBLAS's fight over the
    # cores (measured 15x slower on the 2-core dev box); the probe's matrices are small anyway
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # small classes vs folds, or max_iter reached: both expected
        for train, test in split.split(x, y):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
            probe.fit(x[train], y[train])
            out[np.ix_(test, probe.classes_)] = probe.predict_proba(x[test])
    return out


def find_confident_learning_issues(labels: np.ndarray, pred_probs: np.ndarray,
                                   filter_by: str = "prune_by_noise_rate") -> pd.DataFrame:
    """Confident learning with ``cleanlab``: issues from :func:`cleanlab.filter.find_label_issues`,
    scores from :func:`cleanlab.rank.get_label_quality_scores` (self-confidence).

    Parameters
    ----------
    labels : (N,) int
    pred_probs : (N, K) float
        Out-of-sample probabilities (:func:`cross_val_pred_probs`).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    issue = find_label_issues(labels, pred_probs, filter_by=filter_by, n_jobs=1)
    score = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    return _issues_frame("cleanlab", labels, issue, score, pred_probs.argmax(axis=1))


def deft_issues(scores: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """DEFT's verdict from a run's scores table, in the baselines' column layout.

    ``deft_score`` is the margin ``cos+ - cos-`` (higher = cleaner; not a probability).
    """
    index = {c: i for i, c in enumerate(classes)}
    pred = scores["pred"].map(index).fillna(-1).to_numpy(dtype=np.int64)
    return pd.DataFrame({issue_column("deft"): ~scores["is_clean"].to_numpy(dtype=bool),
                         score_column("deft"): scores["margin"].to_numpy(dtype=np.float64), pred_column("deft"): pred})


def agreement(table: pd.DataFrame, methods: tuple[str, ...] | list[str] = METHODS) -> pd.DataFrame:
    """``n_flagged`` (how many of ``methods`` flag each sample) and ``agreement`` (``"k/m"``)."""
    present = [m for m in methods if issue_column(m) in table]
    n = table[[issue_column(m) for m in present]].sum(axis=1).astype(np.int64) if present else 0
    return pd.DataFrame({"n_flagged": n, "agreement": [f"{int(k)}/{len(present)}" for k in np.atleast_1d(n)]},
                        index=table.index)


def methods_metrics(table: pd.DataFrame, truly_clean: np.ndarray,
                    methods: tuple[str, ...] | list[str] = METHODS) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 (of the clean set each method keeps, as in METHOD.md) and AUROC of its
    score for cleanliness, per method present in ``table``; plus ``agree_2plus`` (flagged by at least two)."""
    out: dict[str, dict[str, float]] = {}
    for m in methods:
        if issue_column(m) in table:
            out[m] = detection_metrics(~table[issue_column(m)].to_numpy(dtype=bool), truly_clean,
                                       table[score_column(m)].to_numpy(dtype=np.float64))
    if "n_flagged" in table and len(out) >= 2:
        n = table["n_flagged"].to_numpy()
        out["agree_2plus"] = detection_metrics(n < 2, truly_clean, -n.astype(np.float64))
    return out
