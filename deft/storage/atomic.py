"""One atomic writer for run files: write a temporary sibling, then rename it into place.

A reader (the app, a second process, a resumed run) sees either the old file or the new
one, never a half-written one; a crash mid-write leaves at most a stray ``*.tmp`` file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deft.core.errors import write_error, writing

if TYPE_CHECKING:
    import pandas as pd
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the suffix (``scores.tmp.parquet``) so writers that infer the
    format from it still work. On an exception the temporary file is removed and ``path``
    is left as it was. A write that fails because the folder is read-only, the disk is full or the
    process may not write files that large raises :func:`deft.core.errors.write_error`'s sentence.

    Parameters
    ----------
    path : str or os.PathLike
        The file to (re)place.

    Yields
    ------
    Path
        Where to write the new content.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        with writing(path):  # a read-only folder, a full disk: one sentence naming the file
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, default: Any = float) -> None:
    """Atomically write ``obj`` as indented JSON; ``default`` converts what JSON cannot hold."""
    write_text(path, json.dumps(obj, indent=2, default=default))


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Atomically write ``df`` (without its index) as Parquet."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Atomically write ``df`` (without its index) as CSV."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``tensors`` (contiguous, CPU) as a safetensors file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` (a checkpoint)."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch hides a failed write's errno ("unexpected pos 1664 vs 1558")
            err = write_error(path, exc, io=True)
            if err is None:
                raise
            raise err from None
