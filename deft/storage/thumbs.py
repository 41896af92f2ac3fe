"""Thumbnails as immutable, content-addressed files (safe to serve while another request asks for them).

A thumbnail's file name is a hash of the source image's bytes and the size, so a
name is never rewritten: a changed image gets a new name, the same image the same
one. Files are written to a temporary name and renamed into place (atomic).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from deft.storage.imageio import ImageProblem, read_regular, to_rgb, too_large


def thumbnail(path: str | os.PathLike | bytes, size: int = 256) -> Image.Image:
    """The image at ``path`` (or in these bytes) scaled so its longer side is ``size`` (nearest-neighbour for
    tiny images). A path must be a regular file (:func:`deft.storage.imageio.read_regular`); the pixel cap of the
    import applies (:func:`deft.storage.imageio.too_large`)."""
    data = path if isinstance(path, bytes) else read_regular(path)
    with Image.open(io.BytesIO(data)) as im:
        why = too_large(im)
        if why:
            raise ImageProblem(why)
        im = to_rgb(im)  # 16-bit / float images scaled, not clipped to white / black
        scale = size / max(im.size)
        resample = Image.Resampling.NEAREST if max(im.size) < 96 else Image.Resampling.BICUBIC
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)


def thumbnail_name(path: str | os.PathLike | bytes, size: int) -> str:
    """``<sha1 of the image bytes and size>-<size>.png``: the same content always gives the same name."""
    h = hashlib.sha1(path if isinstance(path, bytes) else read_regular(path))
    h.update(f":{size}".encode())
    return f"{h.hexdigest()}-{size}.png"


def thumbnail_file(path: str | os.PathLike, size: int, cache_dir: str | os.PathLike) -> Path:
    """A content-addressed thumbnail of ``path`` under ``cache_dir`` (created once, never rewritten).

    The file is read once, through a descriptor checked to be a regular file (a FIFO never blocks).
    """
    cache_dir = Path(cache_dir)
    data = read_regular(path)
    name = thumbnail_name(data, size)
    out = cache_dir / name[:2] / name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            thumbnail(data, size).save(f, format="PNG", compress_level=1)  # lossless; 5x faster than the default level
        os.replace(tmp, out)  # atomic; a concurrent writer of the same name writes the same bytes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
