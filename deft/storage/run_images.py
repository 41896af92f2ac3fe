"""The run's images as the training and scoring passes read them (one decode per run).

Phase 1, Phase 2, the embedding pass and the audit all read images through
:func:`load_run_images`; none of them imports another phase for it.

Two caches, chosen with ``cache`` (or ``DEFT_IMAGE_CACHE``; the CLI's ``--image-cache``):

* ``shards`` (default): the compact JPEG store of :mod:`deft.storage.shards` in ``RUN/cache/shards_<size>/``
  (~10-30 KB per image at 224 px; decoded on access);
* ``raw``: the uint8 ``.npy`` cache of :func:`deft.storage.images.decode_images` (150 KB per image at 224 px,
  no decode on access).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from deft.core.batches import Normalizer, make_batch
from deft.core.config import OFFICIAL_PIXEL_STATS
from deft.core.distributed import Dist
from deft.core.errors import RunError
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.storage.images import decode_images
from deft.storage.run import Run
from deft.storage.shards import ShardImages, build_shards

IMAGE_CACHES = ("shards", "raw")


def image_cache_kind(cache: str | None = None) -> str:
    """``cache``, else ``$DEFT_IMAGE_CACHE``, else ``shards``; refused if unknown."""
    kind = cache or os.environ.get("DEFT_IMAGE_CACHE") or "shards"
    if kind not in IMAGE_CACHES:
        raise ValueError(f"unknown image cache {kind!r}; choose one of {list(IMAGE_CACHES)}")
    return kind


def load_run_images(
    run: Run,
    size: int,
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    ddp: Dist | None = None,
    cache: str | None = None,
) -> np.ndarray | ShardImages:
    """The run's decode-once images, uint8 ``(N, 3, size, size)`` array-like.

    Under ``ddp`` rank 0 builds the cache and the others open the same files after a barrier.
    """
    ddp = ddp or Dist()
    kind = image_cache_kind(cache)

    def load(build: bool) -> np.ndarray | ShardImages:
        prog = progress if ddp.is_main else null_progress
        if kind == "shards":
            return build_shards(
                run.dataset.path_strings(),
                size,
                run.path / "cache" / f"shards_{size}",
                progress=prog,
                cancel=cancel,
                build=build,
            )
        return decode_images(
            run.dataset.path_strings(), size, cache_file=run.cache_file(size), progress=prog, cancel=cancel
        )

    images = load(True) if ddp.is_main else None
    ddp.barrier()
    return images if images is not None else load(False)


#: At most this many training images (evenly spaced) estimate ``pixel_stats="dataset"``: the channel means and
#: standard deviations are settled to ~1e-3 long before, and a full pass over a 1M-image set would cost minutes.
PIXEL_STATS_SAMPLE = 10_000


def dataset_pixel_stats(images: np.ndarray | ShardImages, rows: np.ndarray, max_rows: int = PIXEL_STATS_SAMPLE,
                        chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixel values in [0, 1] over ``rows`` (evenly subsampled)."""
    rows = np.asarray(rows)
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.int64)]
    unit = Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    total, sq, n = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for start in range(0, len(rows), chunk):
        x = make_batch(images, torch.as_tensor(rows[start : start + chunk]), torch.device("cpu"), unit).double()
        total += x.sum(dim=(0, 2, 3))
        sq += x.pow(2).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(n, 1)
    std = (sq / max(n, 1) - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant image: no division by 0
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def run_normalizer(run: Run, clip: Normalizer, images: np.ndarray | ShardImages | None = None,
                   save: bool = True) -> Normalizer:
    """The pixel normalisation of ``run`` (its ``pixel_stats`` setting), for Phase 1, its scoring pass and Phase 2.

    ``clip``: the checkpoint's own normaliser, passed in. A named official constant: that. ``dataset``: the
    mean/std of the run's training images, computed from ``images`` on first use and kept in ``run.json``
    (written when ``save``: rank 0), so a re-score and Phase 2 use the same numbers.
    """
    kind = run.config.pixel_stats
    if kind == "clip":
        return clip
    if kind in OFFICIAL_PIXEL_STATS:
        return Normalizer(*OFFICIAL_PIXEL_STATS[kind])
    stored = run.meta.get("pixel_stats")
    if stored:
        return Normalizer(tuple(stored["mean"]), tuple(stored["std"]))
    if images is None:
        raise RunError(f"{run.path} has no pixel statistics yet; run `deft detect` on it first")
    mean, std = dataset_pixel_stats(images, run.dataset.train_rows)
    if save:
        run.set(pixel_stats={"mean": list(mean), "std": list(std)})
    return Normalizer(mean, std)
