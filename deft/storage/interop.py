"""Where the data lives: which importer reads a source, and the image cache imported images are written to.

Sources other than an ImageFolder or a CSV/Parquet table (:mod:`deft.storage.data`):

* a Hugging Face ``datasets`` dataset saved with ``save_to_disk``, or a folder of Parquet/Arrow files
  with an ``Image`` feature (:mod:`deft.storage.interop_hf`);
* a Label Studio JSON export of an image-classification project (:mod:`deft.storage.interop_ls`);
* a FiftyOne ``FiftyOneImageClassificationDataset`` folder (``data/`` + ``labels.json``), or
  ``fiftyone:NAME`` for a dataset in FiftyOne's database when ``fiftyone`` is installed
  (:mod:`deft.storage.interop_fo`).

Images stored inside a dataset (Hugging Face ``Image`` bytes) are written once to a cache folder
(:func:`import_cache`), so the rest of deft reads files as it does for an ImageFolder; the folder is reused
while the source is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from deft.core.errors import DataError

HF_MARKERS = ("dataset_dict.json", "state.json")
TABLE_FILES = (".parquet", ".arrow")
FIFTYONE_PREFIX = "fiftyone:"


def source_kind(source: str | os.PathLike) -> str:
    """``hf``, ``label-studio``, ``fiftyone``, ``fiftyone-db``, ``table`` or ``folder`` (an ImageFolder)."""
    raw = os.fspath(source)
    if raw.startswith(FIFTYONE_PREFIX):
        return "fiftyone-db"
    p = Path(raw)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return "label-studio"
    if suffix in {".csv", ".parquet", ".pq", ".tsv"}:
        return "table"
    if p.is_dir():
        if any((p / m).is_file() for m in HF_MARKERS):
            return "hf"
        if (p / "labels.json").is_file() and (p / "data").is_dir():
            return "fiftyone"
        if table_files(p):
            return "hf"
    return "folder"


def table_files(folder: Path) -> list[Path]:
    """Parquet/Arrow files in ``folder`` or one or two folders below (``data/train-00000-of-00001.parquet``).

    Typed from the listings (``os.scandir``): an image folder of 1M files is read as names only (the glob
    that stat'ed each took seconds at every import)."""
    found: list[Path] = []
    todo = [(os.fspath(folder), 0)]
    while todo:
        here, depth = todo.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                if e.name.startswith("."):
                    continue
                if e.name.lower().endswith(TABLE_FILES) and e.is_file():
                    found.append(Path(e.path))
                elif depth < 2 and e.is_dir():
                    todo.append((e.path, depth + 1))
            except OSError:  # a looping symlink
                continue
    return sorted(found)


def fingerprint(folder: Path) -> str:
    """A hash of every file's relative path, size and modification time under ``folder``."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def cache_home() -> Path:
    """``$DEFT_IMPORT_CACHE``, or ``~/.cache/deft/imports``: where images stored inside datasets are written."""
    env = os.environ.get("DEFT_IMPORT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "deft" / "imports"


def import_cache(source: Path) -> Path:
    """The cache folder of one source (named after it, unique per absolute path)."""
    real = os.path.realpath(source)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(real).name)[:40] or "dataset"
    return cache_home() / f"{slug}-{hashlib.sha1(real.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"Cannot write the image cache {folder} ({exc.strerror or exc}); set DEFT_IMPORT_CACHE to "
                        "a writable folder.") from None


MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
         (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def image_suffix(data: bytes, name: str | None = None) -> str:
    """The file extension of encoded image ``data`` (by its magic bytes; else the original name's, else .img)."""
    for magic, ext in MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    ext = os.path.splitext(name or "")[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".img"
