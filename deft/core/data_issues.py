"""Data problems beside wrong labels: duplicates, outliers, image problems, class imbalance.

Everything here works on the run's cached CLIP embeddings and decoded images, with
memory linear in N: nearest neighbours are found exactly, one chunk of queries at a
time against all samples (``chunk x N`` similarities, never ``N x N``).

Image problems use a small NumPy/PyTorch implementation rather than CleanVision: the
statistics are a few lines each on the uint8 images the run has already decoded (no
second decode of every file, no extra dependency tree), they run chunked on the same
device code path as everything else, and each threshold is documented next to it.
The thresholds follow the ideas CleanVision popularised (percentile brightness,
Laplacian variance, histogram entropy), not its code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from deft.core.schema import IMAGE_PROBLEMS, ISSUE_FLAGS  # noqa: F401  (IMAGE_PROBLEMS re-exported)


@dataclass
class DataIssueConfig:
    """Thresholds of the data-issue detectors (see each detector for why)."""

    k: int = 10                       # neighbours for outlier scores
    near_dup_rel: float = 0.13        # near duplicate: NN distance < this x the dataset's median NN distance
    near_dup_cos: float = 0.99999     # ... or cosine >= this (numerically identical), whatever the spread
    outlier_iqr: float = 3.0          # outlier: score > Q3 + this x IQR (Tukey's "far out")
    class_outlier_ratio: float = 3.0  # class outlier: k-NN distance within its class > this x the class median
    dark_p99: float = 0.25            # dark: even the brightest 1% of pixels are below this
    bright_p01: float = 0.90          # bright: even the darkest 1% of pixels are above this
    low_info_bits: float = 2.4        # low information: grey-level entropy below this (of 8 bits)
    blur_mad: float = 4.0             # blurry: log sharpness this many robust SDs below the median
    grayscale_chroma: float = 0.01    # grayscale: mean max-min channel spread below this (JPEG chroma noise)
    odd_size_factor: float = 4.0      # odd size: side sqrt(w*h) this factor away from the median side
    odd_aspect_factor: float = 2.0    # odd aspect: w/h this factor away from the median aspect
    stats_size: int = 64              # images are average-pooled to about this side for the statistics
    chunk: int = 2048


# -- duplicates -------------------------------------------------------------

def _group_conflicts(group: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where a sample's group (``-1``: none) holds more than one distinct label."""
    df = pd.DataFrame({"g": group, "y": labels})
    n_labels = df[df["g"] >= 0].groupby("g")["y"].nunique()
    return (group >= 0) & (pd.Series(group).map(n_labels).fillna(1).to_numpy() > 1)


def find_exact_duplicates(hashes: list[str], labels: np.ndarray) -> pd.DataFrame:
    """Samples whose file bytes are identical to another sample's.

    Returns ``exact_dup_group`` (-1 when unique), ``exact_duplicate`` and
    ``exact_dup_label_conflict`` (the copies carry different labels: one of them is wrong).
    """
    codes, uniq = pd.factorize(pd.Series(hashes))
    sizes = np.bincount(codes, minlength=len(uniq))
    group = np.where(sizes[codes] > 1, codes, -1)
    return pd.DataFrame({"exact_dup_group": group, "exact_duplicate": group >= 0,
                         "exact_dup_label_conflict": _group_conflicts(group, np.asarray(labels))})


def knn(embeddings: np.ndarray, k: int, chunk: int = 2048, candidates: np.ndarray | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k nearest neighbours of every row (itself excluded), chunked.

    Memory is ``chunk x N`` per step. With ``candidates`` (indices), neighbours are
    searched among those rows only, and the queries are those rows too.

    Returns
    -------
    dist : (n, k) float32 cosine distances ``1 - cos``, ascending;
    idx : (n, k) int64 indices into ``embeddings`` (``-1`` where fewer than k others exist).
    """
    rows = np.arange(len(embeddings)) if candidates is None else np.asarray(candidates)
    x = torch.from_numpy(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    n = len(rows)
    kk = min(k, max(n - 1, 0))
    dist = np.full((n, k), np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    if kk == 0:
        return dist, idx
    for s in range(0, n, chunk):
        sim = x[s : s + chunk] @ x.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -np.inf  # not its own neighbour
        top = sim.topk(kk, dim=1)
        dist[s : s + chunk, :kk] = (1.0 - top.values).clamp_min(0).numpy()
        idx[s : s + chunk, :kk] = rows[top.indices.numpy()]
    return dist, idx


def near_duplicate_threshold(nn_dist: np.ndarray, cfg: DataIssueConfig) -> float:
    """Cosine-distance threshold for near duplicates.

    Why relative: how close two *different* images sit in embedding space depends on the
    model (pretrained ViT-B/16 puts distinct same-class photos at cosine ~0.8-0.9; a small
    or random CLIP squeezes everything towards 1), so a fixed cosine cannot fit both. A pair is
    a near duplicate when its distance is below ``near_dup_rel`` (0.13, the factor cleanlab's
    Datalab uses) times the median nearest-neighbour distance of the dataset, i.e. an order of
    magnitude closer than typical neighbours. For pretrained ViT-B/16 on CIFAR-like data (median
    NN distance ~0.1) that is cosine >= ~0.985: resized, re-encoded or slightly cropped copies,
    not two photos of the same kind of object. Cosine >= ``near_dup_cos`` (0.99999, numerically
    identical embeddings) always counts. The effective cosine is reported in ``RUN/audit.json``.
    """
    finite = nn_dist[np.isfinite(nn_dist)]
    median = float(np.median(finite)) if len(finite) else 0.0
    return max(cfg.near_dup_rel * median, 1.0 - cfg.near_dup_cos)


def _union_find_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


def find_near_duplicates(labels: np.ndarray, nn_dist: np.ndarray, nn_idx: np.ndarray,
                         cfg: DataIssueConfig | None = None) -> tuple[pd.DataFrame, float]:
    """Near duplicates from the global k-NN: pairs closer than :func:`near_duplicate_threshold`.

    Returns ``near_dup_group`` (-1: none), ``near_duplicate``, ``near_dup_of`` (index of the
    closest copy, -1: none), ``near_dup_cos`` (its cosine), ``near_dup_label_conflict``; and the
    cosine-distance threshold used.
    """
    cfg = cfg or DataIssueConfig()
    labels = np.asarray(labels)
    n = len(labels)
    thr = near_duplicate_threshold(nn_dist[:, 0], cfg)
    hit = (nn_dist <= thr) & (nn_idx >= 0)
    rows, cols = np.nonzero(hit)
    pairs = np.stack([rows, nn_idx[rows, cols]], axis=1)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[pairs.ravel()] = True
    roots = _union_find_groups(n, pairs) if len(pairs) else np.arange(n)
    group = np.where(in_pair, roots, -1)
    first = hit[:, 0]
    return pd.DataFrame({
        "near_dup_group": group, "near_duplicate": in_pair,
        "near_dup_of": np.where(first, nn_idx[:, 0], -1),
        "near_dup_cos": np.where(first, 1.0 - nn_dist[:, 0], np.nan),
        "near_dup_label_conflict": _group_conflicts(group, labels),
    }), thr


# -- outliers ---------------------------------------------------------------

def _far_out(score: np.ndarray, factor: float) -> np.ndarray:
    """Tukey's far-out rule: ``score > Q3 + factor x IQR`` (robust to the outliers themselves)."""
    finite = np.isfinite(score)
    if finite.sum() < 4:
        return np.zeros(len(score), dtype=bool)
    q1, q3 = np.percentile(score[finite], [25, 75])
    return finite & (score > q3 + factor * (q3 - q1))


def find_outliers(embeddings: np.ndarray, labels: np.ndarray, cfg: DataIssueConfig | None = None,
                  global_knn: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """Outliers by k-NN distance in embedding space, globally and within the labelled class.

    ``outlier_score`` is the mean cosine distance to the k nearest samples of the whole set;
    ``class_outlier_score`` the same among samples of the same label (an image far from its
    own class, e.g. out of any class, or a mislabel far from the rest). The global flag uses
    Tukey's far-out rule (``Q3 + 3 IQR``); the class flag a ratio to the class's median score
    (``> 3x``), because quartiles of a class with a handful of members are too noisy to trust.
    """
    cfg = cfg or DataIssueConfig()
    labels = np.asarray(labels)
    dist, _ = global_knn if global_knn is not None else knn(embeddings, cfg.k, cfg.chunk)
    score = np.where(np.isfinite(dist), dist, np.nan).mean(axis=1)
    cls_score = np.full(len(labels), np.nan)
    cls_flag = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 3:
            continue
        # at most half the class as neighbours, so in a small class one outlier is not everyone's neighbour
        d, _ = knn(embeddings, min(cfg.k, max(1, (len(members) - 1) // 2)), cfg.chunk, candidates=members)
        cls_score[members] = d.mean(axis=1)
        med = np.median(cls_score[members])
        cls_flag[members] = cls_score[members] > cfg.class_outlier_ratio * med if med > 0 else False
    return pd.DataFrame({"outlier_score": score, "outlier": _far_out(score, cfg.outlier_iqr),
                         "class_outlier_score": cls_score, "class_outlier": cls_flag})


# -- image problems ---------------------------------------------------------

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
_GREY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def image_stats(images: np.ndarray, cfg: DataIssueConfig | None = None) -> pd.DataFrame:
    """Per-image statistics on uint8 ``(N, 3, H, W)`` images, average-pooled to about ``stats_size``.

    ``brightness_p01``/``brightness_p99`` (grey-level percentiles in [0, 1]), ``entropy``
    (bits, 256-bin grey histogram), ``sharpness`` (variance of the Laplacian over the grey
    variance: high-frequency energy independent of contrast), ``chroma`` (mean of
    max - min channel).
    """
    cfg = cfg or DataIssueConfig()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("brightness_p01", "brightness_p99", "entropy",
                                                         "sharpness", "chroma")}
    for s in range(0, len(images), 256):
        x = torch.from_numpy(np.array(images[s : s + 256], dtype=np.float32)) / 255.0
        f = max(1, x.shape[-1] // cfg.stats_size)
        if f > 1:
            x = F.avg_pool2d(x, f)
        grey = (x * _GREY).sum(1, keepdim=True)
        flat = grey.flatten(1)
        q = torch.quantile(flat, torch.tensor([0.01, 0.99]), dim=1)
        lap = F.conv2d(grey, _LAPLACE)
        levels = (flat * 255).round().long().clamp(0, 255) + 256 * torch.arange(len(flat)).view(-1, 1)
        hist = torch.bincount(levels.flatten(), minlength=256 * len(flat)).view(len(flat), 256)
        p = hist.float() / flat.shape[1]
        ent = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)
        out["brightness_p01"].append(q[0].numpy())
        out["brightness_p99"].append(q[1].numpy())
        out["entropy"].append(ent.numpy())
        out["sharpness"].append((lap.flatten(1).var(1) / (flat.var(1) + 1e-6)).numpy())
        out["chroma"].append((x.amax(1) - x.amin(1)).flatten(1).mean(1).numpy())
    return pd.DataFrame({k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()})


def find_image_problems(stats: pd.DataFrame, sizes: pd.DataFrame | None = None,
                        cfg: DataIssueConfig | None = None) -> pd.DataFrame:
    """Flag dark, bright, low-information, blurry, grayscale-in-a-colour-set, odd size and aspect.

    * dark / bright: absolute, on percentiles (a dark photo can have a few highlights, a black
      frame has none);
    * low information: grey entropy < 2.4 bits (a constant image has 0, natural photos 5-7.5);
    * blurry: relative to the dataset, since resolution and upscaling set the typical sharpness:
      log sharpness more than ``blur_mad`` robust SDs below the median; not for low-information
      images (a flat image has no edges but is not "blurry");
    * grayscale: chroma < 0.01, flagged only when most of the set is in colour;
    * odd size / aspect: relative to the dataset's median side and aspect (original files).
    """
    cfg = cfg or DataIssueConfig()
    low_info = stats["entropy"].to_numpy() < cfg.low_info_bits
    logsharp = np.log(stats["sharpness"].to_numpy() + 1e-6)
    ref = logsharp[~low_info] if (~low_info).any() else logsharp
    med = np.median(ref) if len(ref) else 0.0
    mad = 1.4826 * np.median(np.abs(ref - med)) if len(ref) else 0.0
    blurry = ~low_info & (logsharp < med - cfg.blur_mad * max(mad, 1e-3))
    grey = stats["chroma"].to_numpy() < cfg.grayscale_chroma
    out = pd.DataFrame({
        "dark": stats["brightness_p99"].to_numpy() < cfg.dark_p99,
        "bright": stats["brightness_p01"].to_numpy() > cfg.bright_p01,
        "low_information": low_info,
        "blurry": blurry,
        "grayscale": grey & (grey.mean() < 0.5 if len(grey) else False),
    })
    if sizes is not None and len(sizes):
        side = np.sqrt(sizes["width"].to_numpy() * sizes["height"].to_numpy())
        aspect = sizes["width"].to_numpy() / np.maximum(sizes["height"].to_numpy(), 1)
        out["odd_size"] = np.abs(np.log(side / np.median(side))) > np.log(cfg.odd_size_factor)
        out["odd_aspect"] = np.abs(np.log(aspect / np.median(aspect))) > np.log(cfg.odd_aspect_factor)
    return out




# -- classes ----------------------------------------------------------------

def class_report(labels: np.ndarray, classes: list[str], table: pd.DataFrame) -> pd.DataFrame:
    """One row per class: count, share, imbalance (count / largest class), suspect rate of each
    method (``<method>_issue`` columns) and the number of samples with each data issue."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(classes))
    rep = pd.DataFrame({"class": classes, "count": counts,
                        "share": counts / max(1, counts.sum()),
                        "imbalance": counts / max(1, counts.max())})
    for col in table.columns:
        if col.endswith("_issue") or col in ISSUE_FLAGS:
            flags = table[col].to_numpy(dtype=bool)
            per = np.bincount(labels, weights=flags, minlength=len(classes))
            name = col.replace("_issue", "_suspect_rate") if col.endswith("_issue") else col
            rep[name] = per / np.maximum(counts, 1) if col.endswith("_issue") else per.astype(np.int64)
    return rep


def summarize(table: pd.DataFrame) -> dict[str, int]:
    """Count of samples with each data issue present in ``table``."""
    return {c: int(table[c].sum()) for c in ISSUE_FLAGS if c in table}
