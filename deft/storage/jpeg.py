"""The image store's bytes for one image (light module: PIL only, so worker processes start fast).

See :mod:`deft.storage.shards` for the store itself.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from deft.storage.imageio import PixelBudget, decode_image, regular_file_problem, too_large

JPEG_QUALITY = 90


def encode_image(
    path: str | Path | Image.Image, size: int, quality: int = JPEG_QUALITY, budget: PixelBudget | None = None
) -> bytes:
    """The store's bytes for one image: its ``size x size`` centre crop as a JPEG.

    A file that already is a baseline RGB JPEG of exactly ``size x size`` is kept as
    its original bytes (after a full decode, so a corrupt file is refused now, not at
    training time; the file is opened once). Unreadable files raise the same
    :class:`DataError` as :func:`deft.storage.images.decode_image`.
    """
    if not isinstance(path, Image.Image):
        kept = _original_bytes(path, size)
        if kept is not None:
            return kept
    return reencode(path, size, quality, budget)


def _original_bytes(path: str | Path, size: int) -> bytes | None:
    """The file's bytes if it is a regular file holding a baseline RGB ``size x size`` JPEG that decodes
    fully; None otherwise (the caller then decodes it the usual way, which names any problem)."""
    if regular_file_problem(path) is not None:
        return None
    try:
        with open(path, "rb") as f, Image.open(f) as im:
            if (
                im.format != "JPEG"
                or im.mode != "RGB"
                or im.size != (size, size)
                or too_large(im) is not None
                or im.info.get("progressive")
                or im.info.get("progression")
            ):
                return None
            im.load()
            f.seek(0)
            return f.read()
    except Exception:  # PIL raises many types for damaged data; decode_image reports it
        return None


def reencode(path: str | Path | Image.Image, size: int, quality: int = JPEG_QUALITY,
             budget: PixelBudget | None = None) -> bytes:
    """The ``size x size`` centre crop of ``path`` as a new JPEG (never the original bytes)."""
    arr = decode_image(path, size, budget)  # raises the one-sentence DataError for unreadable files
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def baseline_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` if ``data`` starts like a baseline 8-bit 3-component JPEG (markers read up to
    its frame header, nothing decoded), else None. Anything unusual gives None."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
            i += 2
            continue
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if m != 0xC0 or seg < 8 or i + 10 > n or data[i + 4] != 8 or data[i + 9] != 3:
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if m in (0xDA, 0xD9) or seg < 2:  # scan or end before any frame header
            return None
        i += 2 + seg
    return None


def encode_chunk(paths: list[str], size: int, quality: int) -> tuple[list[bytes], list[int]]:
    """The store's bytes of each path (a worker process's share of a store build) and the positions of
    those kept as their original bytes *without* a decode: regular files whose markers say baseline RGB
    ``size x size`` JPEG. The caller decodes those (libjpeg-turbo in batches, the store's own reader)
    and calls :func:`reencode` for any that fail, which names the problem as
    :func:`deft.storage.images.decode_image` does. Everything else is :func:`encode_image` here."""
    out: list[bytes] = []
    unverified: list[int] = []
    for j, p in enumerate(paths):
        data = _small_file(p, size)
        if data is not None and baseline_jpeg_size(data) == (size, size):
            out.append(data)
            unverified.append(j)
        else:
            out.append(encode_image(p, size, quality))
    return out, unverified


def _small_file(path: str, size: int) -> bytes | None:
    """The bytes of a regular file of at most ``size * size * 3 + 64 KiB`` bytes (room for a JPEG of that
    size and its metadata), else None."""
    if regular_file_problem(path) is not None:
        return None
    limit = size * size * 3 + 65536
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > limit:  # a larger photo: decoded and re-encoded anyway
                return None
            data = f.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None
