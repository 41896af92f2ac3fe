"""Data roots: the only folders a server may read datasets from.

The app is started with one or more data roots (``--data-root DIR``, default: the
folder of ``--data`` and the bundled demo). Any dataset path a client types is
resolved (symlinks included) and refused unless it lies inside one of them; the
refusal never echoes the path's contents, nor whether it exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deft.core.errors import DataError


class OutsideRootsError(DataError):
    """A dataset path lies outside every data root the server was started with."""


def resolve(path: str | os.PathLike) -> Path:
    """Absolute path with every symlink resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True if ``path`` (resolved) is ``root`` (resolved) or below it."""
    return resolve(path).is_relative_to(resolve(root))


def default_roots(data: str | os.PathLike, demo: str | os.PathLike) -> list[Path]:
    """The folder of ``--data`` (the folder itself for an ImageFolder) plus the demo folder; only the demo folder
    for ``fiftyone:NAME`` (a database name, not a path: the working folder is not opened to clients)."""
    if os.fspath(data).startswith("fiftyone:"):
        return [resolve(demo)]
    p = resolve(data)
    return [p if p.is_dir() else p.parent, resolve(demo)]


@dataclass(frozen=True)
class DataRoots:
    """The folders datasets may be read from (resolved once, at start)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike]) -> DataRoots:
        return cls(tuple(dict.fromkeys(resolve(p) for p in paths)))

    def contains(self, path: str | os.PathLike) -> bool:
        real = resolve(path)
        return any(real.is_relative_to(r) for r in self.roots)

    def check(self, path: str | os.PathLike) -> Path:
        """Return ``path`` resolved, or raise :class:`OutsideRootsError` if it is outside every root.

        The message is one sentence that says neither what the path holds nor whether it exists.
        """
        if not str(path).strip():
            raise OutsideRootsError("Enter a dataset folder or CSV/Parquet file inside the server's data roots.")
        if not self.contains(path):
            raise OutsideRootsError(
                "That path is outside the data folders this server may read; restart the app with "
                "--data-root <folder> to allow another folder."
            )
        return resolve(path)
