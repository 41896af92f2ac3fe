"""Decode-once image pipeline: uint8 cache at model resolution, augmentation on device."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import writing
from .imageio import PixelBudget, decode_image  # noqa: F401  (decode_image: re-exported)
from .progress import CancelToken, ProgressCallback, ProgressEvent, null_progress
from .stages import Stage

if TYPE_CHECKING:
    from .shards import ShardImages


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


def make_batch(
    images: np.ndarray | ShardImages,
    idx: torch.Tensor,
    device: torch.device,
    normalizer: Normalizer,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gather a uint8 batch, move it to ``device``, augment there (if ``generator``), normalise.

    ``images`` is the raw uint8 cache or a :class:`deft.shards.ShardImages` store, whose
    ``decode_to`` decodes the batch on the GPU (nvJPEG) when ``device`` is CUDA.
    """
    if hasattr(images, "decode_to"):  # not `to_device`: numpy 2 arrays have one
        x = images.decode_to(idx.numpy(), device)
    else:
        x = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).to(device, non_blocking=True)
    if generator is not None:
        x = augment(x, generator)
    return normalizer(x)


@dataclass(frozen=True)
class Normalizer:
    """CLIP pixel normalisation, kept with the model bundle."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = x_uint8.to(dtype) / 255.0
        mean = torch.tensor(self.mean, device=x.device, dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 1/8 zero padding (CIFAR's crop 32 pad 4, scaled) and horizontal flip.

    Works on a uint8 or float batch on any device; randomness comes from a CPU
    ``generator`` so runs are reproducible and resumable.
    """
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)
    cols = torch.where(flip.to(x.device).view(b, 1), cols.flip(1), cols)
    bidx = torch.arange(b, device=x.device).view(b, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bidx, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()
