"""Opening untrusted image files safely (light module: PIL only, no torch).

* only regular files are opened (a FIFO would block forever, a device could be endless);
* the pixel count is read from the header and checked before any decoding
  (a 0.5 MB PNG can decode to 13000 x 13000 pixels);
* decoders share a pixel budget, so parallel workers never hold more than
  ``budget`` decoded pixels at once;
* 16-bit and float images are scaled to 8 bits instead of clipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import pandas as pd

from deft.core.errors import DataError

MAX_PIXELS = 64_000_000  # per image; PIL's own bomb check only starts at 89 Mpx (warning) / 179 Mpx (error)
DECODE_BUDGET_PIXELS = 256_000_000  # decoded pixels held by all decoder threads together (~1 GiB as RGBA)


class ImageProblem(DataError):
    """An image file cannot be used; the message is the short reason listed in the import report."""


def regular_file_problem(
    path: str | os.PathLike, root: str | os.PathLike | None = None, real: RealPaths | None = None
) -> str | None:
    """Why ``path`` is not a plain image file we may open (None if it is). Never opens the file.

    With ``root``, a symlink that resolves outside ``root`` is refused (not followed). ``real``
    (a :class:`RealPaths` for that root) caches resolved folders across calls: a million files
    in a thousand folders cost a thousand ``realpath`` calls, not a million.
    """
    p = os.fspath(path)
    try:
        st = os.lstat(p)
        link = stat.S_ISLNK(st.st_mode)
        if link:
            st = os.stat(p)
    except FileNotFoundError:
        return "broken symlink (target missing)" if os.path.islink(p) else "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (skipped)"
        return f"cannot stat file ({exc.strerror})"
    if root is not None:
        real = real or RealPaths(root)
        if not real.inside(p, link):
            return "symlink to outside the dataset root (refused, not followed)"
    if stat.S_ISDIR(st.st_mode):
        return "folder where an image was expected"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device; not opened)"
    return None


class RealPaths:
    """Whether paths resolve inside ``root``, with the resolved folders cached (one instance per pass)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.realpath(os.fspath(root)))
        self._dirs: dict[str, bool] = {}

    def inside(self, path: str, link: bool) -> bool:
        """``path``'s real path is under the root; ``link``: ``path`` itself is a symlink (resolved in full)."""
        if link:
            return Path(os.path.realpath(path)).is_relative_to(self.root)
        return self.folder_inside(os.path.dirname(path))  # a plain file is inside exactly when its folder is

    def folder_inside(self, folder: str) -> bool:
        """``folder``'s real path is under the root (cached per folder)."""
        ok = self._dirs.get(folder)
        if ok is None:
            ok = self._dirs[folder] = Path(os.path.realpath(folder or ".")).is_relative_to(self.root)
        return ok


def read_regular(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file (inside ``root`` when given), else :class:`ImageProblem`.

    The type is checked on the open descriptor (opened non-blocking): a FIFO or device swapped in after
    :func:`regular_file_problem` looked is refused, never read (a FIFO would block the reader forever).
    """
    why = regular_file_problem(path, root)
    if why:
        raise ImageProblem(why)
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageProblem("not a regular file (FIFO, socket or device; not opened)")
        return f.read()


def too_large(im: Image.Image, max_pixels: int = MAX_PIXELS) -> str | None:
    """The import-report reason if ``im`` (header only, not decoded) has more than ``max_pixels`` pixels."""
    w, h = im.size
    if w * h > max_pixels:
        return (f"image too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit {max_pixels / 1e6:.0f} Mpx; "
                "downscale it)")
    return None


def open_image(path: str | os.PathLike, root: str | os.PathLike | None = None,
               max_pixels: int = MAX_PIXELS, real: RealPaths | None = None) -> Image.Image:
    """Open a regular image file lazily (header only) after the file-type and pixel-count checks.

    Raises :class:`ImageProblem` with the reason; the caller closes the image.
    """
    why = regular_file_problem(path, root, real)
    if why:
        raise ImageProblem(why)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageProblem(f"image too large (over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx, "
                           f"limit {max_pixels / 1e6:.0f} Mpx; downscale it)") from None
    why = too_large(im, max_pixels)
    if why:
        im.close()
        raise ImageProblem(why)
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert to 8-bit RGB, scaling 16-bit and float data to 0..255 (PIL's convert clips them)."""
    if im.mode in {"RGB"}:
        return im
    if im.mode.startswith("I;16") or im.mode in {"I", "F"}:
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            lo, hi = float(np.nanmin(a)) if a.size else 0.0, float(np.nanmax(a)) if a.size else 1.0
            if lo >= 0.0 and hi <= 1.0:  # the usual float convention
                lo, hi = 0.0, 1.0
        else:
            lo, hi = 0.0, 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        scaled = np.nan_to_num((a - lo) / max(hi - lo, 1e-12) * 255.0)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


class PixelBudget:
    """A weighted semaphore: decoders together hold at most ``limit`` decoded pixels."""

    def __init__(self, limit: int = DECODE_BUDGET_PIXELS) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(1, pixels), self.limit)  # one huge image may use the whole budget, alone
        with self._cond:
            self._cond.wait_for(lambda: self.used + need <= self.limit)
            self.used += need
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()


def check_image(path: str | os.PathLike, root: str | os.PathLike | None = None,
                budget: PixelBudget | None = None, real: RealPaths | None = None) -> str | None:
    """None if ``path`` is a regular image file that decodes fully, else the reason it is excluded."""
    try:
        with open_image(path, root, real=real) as im:
            with budget.hold(im.width * im.height) if budget else _nothing():
                im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except ImageProblem as exc:
        return str(exc)
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # PIL raises many types for corrupt data
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def decode_image(path: str | Path | Image.Image, size: int, budget: PixelBudget | None = None) -> np.ndarray:
    """Open an image, resize its short side to ``size``, centre-crop: uint8 (size, size, 3).

    Files go through :func:`deft.storage.imageio.open_image` (regular files only, pixel cap checked from
    the header); 16-bit and float images are scaled to 8 bits; with ``budget`` the decoded pixels
    count against a budget shared by all decoder threads.
    """
    if isinstance(path, Image.Image):
        return _resize_crop(to_rgb(path), size)
    try:
        im = open_image(path)
    except ImageProblem as exc:
        raise DataError(f"{path}: {exc}; re-import the dataset (`deft check`) to list and skip such files.") from None
    with im, budget.hold(im.width * im.height) if budget else contextlib.nullcontext():
        return _resize_crop(to_rgb(im), size)


def _resize_crop(im: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop, resampling only the crop's box of the source: the
    work is bounded by the ``size x size`` produced, not by the resized whole (a 109-byte 1x30000 PNG resized
    whole at 224 px would be 224 x 6.7 million pixels: 5.8 GB). Same pixels as resize-then-crop (±1)."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    sx, sy = nw / w, nh / h  # per axis: the rounding of nw, nh is what resize-then-crop used
    left, top = (nw - size) // 2, (nh - size) // 2
    box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)


def check_image_chunk(paths: list[str], root: str | None) -> list[str | None]:
    """:func:`check_image` of each path, one after the other (a worker process's share of an import).

    One image is decoded at a time, so a worker holds at most one image's pixels (``MAX_PIXELS``).
    """
    real = RealPaths(root) if root is not None else None
    return [check_image(p, root, None, real) for p in paths]


# -- facts about whole files, for the audit's data issues ----------------------------------------------

def file_hashes(paths: list[Path], workers: int = 8) -> list[str]:
    """BLAKE2b digest of every file's bytes (exact duplicates regardless of name)."""
    def one(p: Path) -> str:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def image_sizes(paths: list[Path], workers: int = 8) -> pd.DataFrame:
    """Original ``width, height`` of every file (header only, no decode)."""
    import pandas as pd  # light module: worker processes import this one without pandas

    def one(p: Path) -> tuple[int, int]:
        with Image.open(p) as im:
            return im.size

    with ThreadPoolExecutor(max_workers=workers) as pool:
        wh = np.array(list(pool.map(one, paths)), dtype=np.int64).reshape(-1, 2)
    return pd.DataFrame({"width": wh[:, 0], "height": wh[:, 1]})
