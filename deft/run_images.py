"""The run's images as the training and scoring passes read them (one decode per run).

Phase 1, Phase 2, the embedding pass and the audit all read images through
:func:`load_run_images`; none of them imports another phase for it.

Two caches, chosen with ``cache`` (or ``DEFT_IMAGE_CACHE``; the CLI's ``--image-cache``):

* ``shards`` (default): the compact JPEG store of :mod:`deft.shards` in ``RUN/cache/shards_<size>/``
  (~10-30 KB per image at 224 px; decoded on access);
* ``raw``: the uint8 ``.npy`` cache of :func:`deft.images.decode_images` (150 KB per image at 224 px,
  no decode on access).
"""

from __future__ import annotations

import os

import numpy as np

from .distributed import Dist
from .images import decode_images
from .progress import CancelToken, ProgressCallback, null_progress
from .run import Run
from .shards import ShardImages, build_shards

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
