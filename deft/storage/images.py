"""Decode-once image pipeline: every image decoded once into a uint8 cache at model resolution.

The batches the training and scoring passes make of that cache (augmentation on device,
normalisation) are :mod:`deft.core.batches`."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from deft.core.errors import writing
from deft.core.progress import CancelToken, ProgressCallback, ProgressEvent, null_progress
from deft.core.schema import Stage
from deft.storage.imageio import PixelBudget, decode_image  # noqa: F401  (decode_image: re-exported)


def content_key(paths: Sequence[str | Path | Image.Image]) -> str:
    """Hash of every file's path, size and mtime: a cache built from other bytes is not re-used."""
    h = hashlib.sha1()
    for p in paths:
        if isinstance(p, Image.Image):
            h.update(p.tobytes())
            continue
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cached(cache_file: Path, shape: tuple[int, ...], key: str) -> np.ndarray | None:
    """The cache if it is complete and was built from the same files, else None (it is then rebuilt)."""
    key_file = cache_file.with_name(cache_file.name + ".key")
    if not cache_file.is_file() or not key_file.is_file() or key_file.read_text().strip() != key:
        return None
    try:
        arr = np.load(cache_file, mmap_mode="r")
    except (ValueError, OSError, EOFError):  # truncated or damaged: rebuild from the images
        return None
    return arr if arr.shape == shape else None


def decode_images(
    paths: Sequence[str | Path | Image.Image],
    size: int,
    cache_file: Path | None = None,
    workers: int = 8,
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    chunk: int = 512,
) -> np.ndarray:
    """Decode every image once into uint8 ``(N, 3, size, size)``.

    With ``cache_file`` the array is streamed to a ``.npy`` file and memory-mapped,
    so a large dataset never sits in RAM as PIL images, and a second call (resume,
    re-score, Phase 2) reads the cache instead of decoding again. The cache is keyed
    on the files' content (path, size, mtime: replaced images are re-read) and a
    truncated or damaged cache is rebuilt. Decoder threads share a pixel budget.
    """
    n = len(paths)
    shape = (n, 3, size, size)
    key = content_key(paths) if cache_file is not None else ""
    if cache_file is not None:
        arr = _cached(cache_file, shape, key)
        if arr is not None:
            return arr
        tmp = cache_file.with_name(cache_file.name + ".part")
        try:
            with writing(cache_file):  # a read-only folder, a full disk: a sentence, no .part left behind
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    else:
        out = np.empty(shape, dtype=np.uint8)
    budget = PixelBudget()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, chunk):
            if cancel is not None:
                cancel.check()
            part = paths[start : start + chunk]
            for j, arr in enumerate(pool.map(lambda p: decode_image(p, size, budget), part)):
                out[start + j] = arr.transpose(2, 0, 1)
            progress(ProgressEvent(Stage.DECODE, min(start + chunk, n), n))
    if cache_file is None:
        return out
    out.flush()
    del out
    with writing(cache_file):
        tmp.replace(cache_file)
        cache_file.with_name(cache_file.name + ".key").write_text(key)
    return np.load(cache_file, mmap_mode="r")
