"""User-facing errors (light module: the CLI catches these without importing torch).

Every error whose message tells the user what to do derives from :class:`DeftError`, so a
front end catches one class. Each also keeps its built-in base (``ValueError``,
``RuntimeError``) so code that caught those before still does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class DeftError(Exception):
    """Base of every user-facing deft error: the message says what went wrong and how to fix it."""


class DataError(DeftError, ValueError):
    """A dataset cannot be imported as given; the message says how to fix it."""


class ModelLoadError(DeftError, RuntimeError):
    """A CLIP checkpoint could not be loaded; the message says how to fix it."""


class RunError(DeftError, ValueError):
    """A run directory is missing or incomplete; the message says what to do."""


class ReviewError(DeftError, ValueError):
    """A review action cannot be applied (unknown sample or class, bad action)."""


#: What a front end reports as a one-line message (exit code 2 in the CLI) instead of a traceback:
#: every :class:`DeftError`, plus the built-ins the library raises for bad arguments and missing files.
USER_ERRORS: tuple[type[Exception], ...] = (DeftError, FileNotFoundError, ValueError)
#: What the app reports as a message: :data:`USER_ERRORS`, plus ``RuntimeError`` (a job already running, no
#: dataset loaded yet, a device failure), which the CLI leaves as a traceback.
APP_ERRORS: tuple[type[Exception], ...] = (*USER_ERRORS, RuntimeError)


class DamagedFileWarning(UserWarning):
    """A file of a run folder that is derived from the others (and rebuilt by a command the message names)
    could not be read and was ignored. The CLI prints it as one ``warning: ...`` line."""


def read_derived(path: str | os.PathLike, read: Callable[[Path], T], redo: str,
                 notes: list[str] | None = None) -> T | None:
    """``read(path)`` for a run file derived from the others, None when it does not exist.

    A damaged one (garbage, truncated, a folder in its place, unreadable) is ignored: None, and a
    :class:`DamagedFileWarning` naming it and ``redo`` (how it is rebuilt), also appended to ``notes``.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder in place of the file", str(path))
        return read(path)
    except Exception as exc:  # noqa: BLE001 - json, codecs, pandas and pyarrow raise many types for damaged files
        what = ("is a folder instead of a file" if isinstance(exc, IsADirectoryError) else
                f"cannot be read ({type(exc).__name__})" if isinstance(exc, OSError) else
                f"is damaged ({type(exc).__name__})")
        msg = f"{path} {what} and was ignored; {redo}."
        warnings.warn(msg, DamagedFileWarning, stacklevel=2)
        if notes is not None and msg not in notes:
            notes.append(msg)
        return None


READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def file_size_limit() -> int | None:
    """The soft file-size limit of this process in bytes (``ulimit -f``), None if unlimited."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def disk_full(folder: str | os.PathLike) -> bool:
    """Whether the file system holding ``folder`` has no block left for this user (False if it cannot tell)."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


class WriteError(RunError):
    """A file could not be written: a read-only folder, a full disk or a file-size limit. ``reason`` is what is
    wrong, without the advice (a caller with better advice, e.g. "choose another --out", words its own)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def write_error(path: str | os.PathLike, exc: BaseException, io: bool = False) -> WriteError | None:
    """One sentence for a failed write of ``path`` whose cause is a read-only folder or file system, a full
    disk or a file-size limit (``ulimit -f``); None when the failure is something else.

    ``exc`` is the ``OSError`` (its errno says which), or what a writer that hides the errno raised
    (safetensors' "(os error 27)" names it; torch's "file write failed" does not: then the folder and the
    disk are looked at). ``io``: ``exc`` is known to come from the write (torch.save's "unexpected pos").
    """
    if isinstance(exc, DeftError):  # already a sentence
        return None
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:  # safetensors: "I/O error: File too large (os error 27)"; torch: "file write failed"
        found = re.search(r"\(os error (\d+)\)", str(exc))
        code = int(found.group(1)) if found else None
        if code is None and not (io or isinstance(exc, OSError) or "writ" in str(exc).lower()):
            return None
    limit, full = file_size_limit(), disk_full(folder)
    again = "and run again (the files already written are unchanged)"
    if code == errno.EFBIG or (code is None and limit is not None and not full):
        why, fix = ((f"this process may not write files over {limit} bytes (ulimit -f)", "raise the limit")
                    if limit is not None else ("the file is too large for the file system", "write it elsewhere"))
    elif code in FULL_ERRNOS or (code is None and full):
        why, fix = f"the disk holding {folder} is full", "free some space"
    elif code in READ_ONLY_ERRNOS or (code is None and not os.access(folder, os.W_OK)):
        why = f"{folder} is read-only (no write permission for this user, or a read-only file system)"
        fix = "give write permission or copy the run folder somewhere writable,"
    else:
        return None
    return WriteError(f"cannot write {path}: {why}; {fix} {again}.", why)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write of ``path`` into :func:`write_error`'s sentence (a :class:`RunError`); any other
    error passes unchanged."""
    try:
        yield
    except Exception as exc:
        err = write_error(path, exc)
        if err is None:
            raise
        raise err from None
