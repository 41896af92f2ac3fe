"""Ground truth of a run's dataset, when it is known, and how a detection compares with it.

One implementation for every caller: ``deft detect`` (DEFT and the baselines), ``deft audit``, ``deft simulate``
and the app's planted-error summary (:meth:`deft.project.Project.planted_summary`). The truth is read from a
``true_label`` column (``deft noise``), else from a ``PLANTED.csv`` (``path,true_label,...``, the demo's list of
planted errors) in the data root.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from deft.core.metrics import detection_metrics

if TYPE_CHECKING:
    from deft.storage.run import Run

PLANTED_FILE = "PLANTED.csv"
"""The list of planted errors in a data root (``path,true_label,...``; the demo's)."""


def true_labels(run: Run) -> np.ndarray | None:
    """Every sample's true label (str), when known.

    Parameters
    ----------
    run : Run
        A run (anything with a ``dataset``).

    Returns
    -------
    numpy.ndarray or None
        The ``true_label`` column (``deft noise``), or the labels of a ``PLANTED.csv`` in the data root, whose
        unlisted samples keep their given label; None when the dataset has neither.
    """
    s = run.dataset.samples
    if "true_label" in s:
        return s["true_label"].astype(str).to_numpy()
    planted = Path(run.dataset.root) / PLANTED_FILE
    if planted.is_file():
        p = pd.read_csv(planted, dtype=str)
        if {"path", "true_label"} <= set(p.columns):
            truth = s["id"].map(dict(zip(p["path"], p["true_label"], strict=True)))
            return truth.fillna(s["label"].astype(str)).astype(str).to_numpy()
    return None


def ground_truth(run: Run) -> np.ndarray | None:
    """Which samples are truly clean (given label == true label), when known (see :func:`true_labels`)."""
    truth = true_labels(run)
    return None if truth is None else truth == run.dataset.samples["label"].astype(str).to_numpy()


def ground_truth_metrics(run: Run, scores: pd.DataFrame, save: bool = True) -> dict[str, float] | None:
    """Precision, recall, F1 and AUROC of a detection's scores against the ground truth, if known.

    Parameters
    ----------
    run : Run
        The detection run (its dataset carries the truth).
    scores : pandas.DataFrame
        The run's scores table (``is_clean``, ``margin``): one row per training sample, in order.
    save : bool
        Write the metrics to the run's ``metrics.json``.

    Returns
    -------
    dict or None
        :func:`deft.metrics.detection_metrics` over the training set (as the paper), None without ground truth.
    """
    truth = ground_truth(run)
    if truth is None:
        return None
    truly_clean = truth[run.dataset.train_rows]  # held-out rows have no clean/suspect decision
    m = detection_metrics(scores["is_clean"].to_numpy(), truly_clean, scores["margin"].to_numpy())
    if save:
        run.save_metrics(m)
    return m
