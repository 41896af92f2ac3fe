"""Which image files an earlier import already decoded, so that re-importing a large dataset decodes only the
files that are new or changed (a 1M-image folder took minutes to verify on every app start).

A file counts as verified when it is a regular file (``lstat``: a symlink is always checked again) whose size,
modification time and inode are the ones recorded when it was decoded (``RUNS/<dataset>/verified.parquet``,
the problem found, if any, kept with it), or when a finished detection of the same root listed it in its
manifest (that import decoded it) and it was not modified since that manifest was written.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from deft.storage.atomic import write_parquet

FILE = "verified.parquet"
KEY = ["id", "size", "mtime_ns", "ino"]


def file_keys(root: Path, ids: list[str]) -> pd.DataFrame:
    """``id, size, mtime_ns, ino`` per id from ``lstat``; -1 for anything but a regular file (checked again)."""
    base = str(root)
    prefix = base if base.endswith("/") else base + "/"
    size, mtime, ino = (np.full(len(ids), -1, np.int64) for _ in range(3))
    for i, name in enumerate(ids):
        try:
            st = os.lstat(prefix + name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            size[i], mtime[i], ino[i] = st.st_size, st.st_mtime_ns, st.st_ino
    return pd.DataFrame({"id": ids, "size": size, "mtime_ns": mtime, "ino": ino})


class VerifiedFiles:
    """The record of decoded files of one dataset (``cache``), and optionally a finished detection's manifest
    (``trusted``: ``(ids, manifest mtime_ns)`` for the same root)."""

    def __init__(self, cache: str | os.PathLike, trusted: tuple[list[str], int] | None = None) -> None:
        self.cache, self.trusted = Path(cache), trusted
        self.decoded = 0  # files decoded by the last check (the rest were known)

    def _recorded(self, root: Path) -> pd.DataFrame | None:
        try:
            df = pd.read_parquet(self.cache)
        except Exception:  # noqa: BLE001 - missing or damaged: every file is decoded again
            return None
        if not {*KEY, "problem", "root"} <= set(df.columns):
            return None
        df = df[df["root"] == str(root)]
        return df[[*KEY, "problem"]]

    def check(self, root: Path, ids: list[str], decode: Callable[[list[str]], list[str | None]]) -> list[str | None]:
        """The problem of each of ``ids`` under ``root`` (None: a good image): recorded or trusted files are not
        decoded again; ``decode(ids)`` checks the others, and the record is updated when anything was decoded."""
        root = Path(root)
        ids = list(ids)
        cur = file_keys(root, ids)
        n = len(cur)
        known = np.zeros(n, dtype=bool)
        problems = np.full(n, None, dtype=object)
        size = cur["size"].to_numpy()
        regular = size >= 0
        old = self._recorded(root)
        if old is not None and len(old):  # plain dicts and tuples: Arrow-backed merges and isin took ~10 s at 1M
            rec = dict(zip(old["id"].astype(object), zip(old["size"].tolist(), old["mtime_ns"].tolist(),
                                                         old["ino"].tolist(), old["problem"].astype(object),
                                                         strict=True), strict=True))
            stats = zip(size.tolist(), cur["mtime_ns"].tolist(), cur["ino"].tolist(), strict=True)
            for i, (name, key) in enumerate(zip(ids, stats, strict=True)):
                got = rec.get(name)
                if got is not None and got[:3] == key and regular[i]:
                    known[i], problems[i] = True, got[3]
        if self.trusted is not None:
            tids, stamp = self.trusted
            listed = set(tids)
            mtime = cur["mtime_ns"].to_numpy()
            ok = ~known & regular & (mtime < stamp) & np.fromiter((i in listed for i in ids), bool, n)
            known |= ok
        todo = np.flatnonzero(~known)
        self.decoded = len(todo)
        if len(todo):
            found = decode([ids[i] for i in todo])
            problems[todo] = np.asarray(found, dtype=object)
        if len(todo) or old is None:
            rec = cur.assign(problem=problems, root=str(root))
            rec = rec[rec["size"].to_numpy() >= 0]
            try:
                write_parquet(self.cache, rec)
            except OSError:  # a read-only runs folder: the next start decodes again
                pass
        return [None if p is None or (isinstance(p, float) and p != p) else str(p) for p in problems]


def for_dataset(home: str | os.PathLike, root: str | os.PathLike) -> VerifiedFiles:
    """The record of ``home`` (``RUNS/<dataset key>``), trusting the latest finished detection on ``root``."""
    import json

    home, trusted = Path(home), None
    runs = sorted((p for p in home.glob("detect-*") if (p / "scores.parquet").is_file()
                   and (p / "manifest.parquet").is_file()), key=lambda p: (p / "scores.parquet").stat().st_mtime)
    for run in reversed(runs):
        try:
            meta = json.loads((run / "run.json").read_text())
            if Path(meta["root"]).resolve() != Path(root).resolve():
                continue
            ids = pd.read_parquet(run / "manifest.parquet", columns=["id"])["id"].astype(str).tolist()
            trusted = (ids, (run / "manifest.parquet").stat().st_mtime_ns)
        except (OSError, ValueError, KeyError):
            continue
        break
    return VerifiedFiles(home / FILE, trusted)


LISTING = "listing.json"  # with listing.parquet (the samples) and listing_issues.parquet


def folder_stamps(root: Path) -> dict[str, list[int]]:
    """``{folder relative to root: [mtime_ns, inode]}`` of every folder under ``root`` (symlinks not followed).

    Adding, removing or renaming an entry changes its folder's mtime, so equal stamps mean the same names."""
    out: dict[str, list[int]] = {}
    for dirpath, _, _ in os.walk(root, followlinks=False):
        try:
            st = os.lstat(dirpath)
        except OSError:
            continue
        out[os.path.relpath(dirpath, root)] = [st.st_mtime_ns, st.st_ino]
    return out


def stamps_hold(root: Path, stamps: dict[str, list[int]]) -> bool:
    """Whether every recorded folder still has its recorded mtime and inode (one ``lstat`` per folder)."""
    for rel, (mtime, ino) in stamps.items():
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:
            return False
        if st.st_mtime_ns != mtime or st.st_ino != ino:
            return False
    return True


def save_listing(home: Path, dataset, stamps: dict[str, list[int]]) -> None:
    """Record an image folder's import (samples, classes, files excluded) under the folder stamps it was made at."""
    from deft.storage.atomic import write_json

    try:
        write_parquet(home / "listing.parquet", dataset.samples)
        write_parquet(home / "listing_issues.parquet", dataset.issues.astype(str))
        write_json(home / LISTING, {"root": str(Path(dataset.root)), "source": dataset.source,
                                    "classes": dataset.classes, "n": len(dataset.samples), "stamps": stamps})
    except (OSError, ValueError, TypeError):
        pass  # a read-only runs folder: the next start lists the folder again


def load_listing(home: Path, source: str):
    """The recorded import of the image folder ``source`` when no folder in it changed since, else None."""
    import json

    from deft.storage.data import Dataset, class_prompt, label_warnings

    try:
        meta = json.loads((home / LISTING).read_text())
        root = Path(meta["root"])
        if meta["source"] != str(source) or not stamps_hold(root, meta["stamps"]):
            return None
        samples = pd.read_parquet(home / "listing.parquet")
        issues = pd.read_parquet(home / "listing_issues.parquet")
        if len(samples) != meta["n"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    classes = list(meta["classes"])
    return Dataset(root=root, samples=samples, classes=classes, prompts={c: class_prompt(c) for c in classes},
                   issues=issues, source=str(source), warnings=label_warnings(classes))


def recheck_in_background(home: Path, root: Path) -> None:
    """After a start from the recorded listing: ``lstat`` every file in a worker process (off the server's GIL)
    and decode those changed since their record; when any no longer decodes, the listing is dropped, so the
    next load imports the folder again and excludes it."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    try:
        ctx.Process(target=_recheck, args=(str(home), str(root)), daemon=True, name="deft-recheck").start()
    except (RuntimeError, OSError):  # e.g. a caller's script without a __main__ guard: no re-check this time
        with contextlib.suppress(OSError):
            (Path(home) / LISTING).unlink()  # so the next load lists and checks the folder itself


def _recheck(home: str, root: str) -> None:
    from deft.storage.data import check_images, joined_paths

    ids = pd.read_parquet(Path(home) / "listing.parquet", columns=["id"])["id"].astype(str).tolist()
    v = for_dataset(home, root)
    problems = v.check(Path(root), ids, lambda todo: check_images(joined_paths(Path(root), todo), root=Path(root)))
    if any(p is not None for p in problems):
        with contextlib.suppress(OSError):
            (Path(home) / LISTING).unlink()
