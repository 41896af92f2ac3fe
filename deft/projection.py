"""2-D map of the image embeddings (``RUN/projection.parquet``: ``id, x, y``).

Library: openTSNE (pinned in requirements.txt). Why: it is maintained, its FFT-accelerated
t-SNE with approximate (Annoy) neighbours is linear in N and embeds 100k-1M points on a CPU;
it needs only NumPy/SciPy/scikit-learn, which cleanlab already brings, whereas umap-learn
pulls numba/llvmlite and pays a JIT compile on first use (tens of seconds on a small CPU).
t-SNE keeps local neighbourhoods, which is what the map is for: duplicates, outliers and
mislabelled points sitting inside another class's cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.errors import read_derived
from deft.storage.atomic import write_parquet
from deft.storage.run import Run

PROJECTION_FILE = "projection.parquet"


def project_2d(embeddings: np.ndarray, seed: int = 0, n_jobs: int = 1, perplexity: float = 30.0,
               n_iter: int = 500) -> np.ndarray:
    """t-SNE (openTSNE, cosine metric) of ``(N, D)`` embeddings to ``(N, 2)`` float32.

    Sets too small for t-SNE (fewer than 8 points) get their first two principal components.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float64)
    n = len(x)
    if n < 8:
        centred = x - x.mean(axis=0, keepdims=True)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        out = np.zeros((n, 2))
        m = min(2, u.shape[1])
        out[:, :m] = u[:, :m] * s[:m]
        return out.astype(np.float32)
    from openTSNE import TSNE

    tsne = TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3), metric="cosine", n_jobs=n_jobs,
                random_state=seed, n_iter=n_iter, neighbors="auto", negative_gradient_method="auto",
                verbose=False)
    return np.asarray(tsne.fit(x), dtype=np.float32)


def save_projection(run: Run, xy: np.ndarray, key: str = "") -> pd.DataFrame:
    """Write ``RUN/projection.parquet`` (``id, x, y``) tagged with the embeddings ``key``."""
    df = pd.DataFrame({"id": run.dataset.samples["id"].astype(str).to_numpy(), "x": xy[:, 0], "y": xy[:, 1]})
    df.attrs["embeddings_key"] = key
    write_parquet(run.path / PROJECTION_FILE, df)
    return df


def read_projection(path: Path) -> pd.DataFrame:
    """A saved map (``id, x, y``; a damaged one raises)."""
    df = pd.read_parquet(path)
    missing = {"id", "x", "y"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}")
    return df


def load_projection(run: Run) -> pd.DataFrame | None:
    """The run's saved map, or None (also when it is damaged: ignored with a warning, then recomputed)."""
    return read_derived(run.path / PROJECTION_FILE, read_projection, "`deft audit` computes the map again", run.notes)


def run_projection(run: Run, embeddings: np.ndarray, key: str = "", seed: int = 0) -> pd.DataFrame:
    """The run's map: re-used when it was made from the same embeddings (``key``), else recomputed."""
    old = load_projection(run)
    if old is not None and key and old.attrs.get("embeddings_key") == key and len(old) == len(embeddings):
        return old
    return save_projection(run, project_2d(embeddings, seed=seed), key)
