"""Dataset import and validation.

A dataset is a table of samples with a stable id (the POSIX path relative to
the root), a given label, and the class list. Two sources are accepted:

* an ImageFolder tree ``root/<class>/<image>``;
* a CSV or Parquet table with ``path,label`` columns (optional ``split`` and
  ``true_label``), paths relative to ``root`` (default: the table's folder).

Nothing is dropped silently: unreadable images, hidden files, broken or
outside-pointing symlinks, FIFOs/devices, too-large images and non-UTF-8 names
are listed in :attr:`Dataset.issues` and excluded; structural problems (missing
root, one class, unknown label, null or duplicate paths, paths outside the root,
a corrupt table) raise :class:`DataError` with a sentence that says how to fix
them. Every file is treated as untrusted: only regular files are opened, and
pixel counts are checked from the header before decoding.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deft.storage.imageio import PixelBudget, RealPaths, check_image, check_image_chunk, regular_file_problem
from deft.storage.parallel import CHUNK, ordered_map, process_pool, process_workers, use_processes

CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # line breaks, tabs, NUL...: never part of a class name
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


from deft.core.errors import DataError  # noqa: E402  (re-exported)


@dataclass
class Dataset:
    """Validated samples.

    Attributes
    ----------
    root : Path
        Folder the sample ids are relative to.
    samples : pandas.DataFrame
        One row per usable sample: ``id`` (relative POSIX path), ``label``
        (class name), ``label_idx`` (int), ``split``, and ``true_label`` when the
        source carries ground truth (benchmarks).
    classes : list of str
        Class names, index = ``label_idx``.
    prompts : dict
        Class name -> text used in prompts (class descriptions file, or the
        class name with ``_`` replaced by a space).
    issues : pandas.DataFrame
        ``path, problem`` for every excluded file.
    warnings : list of str
        Things that were imported but look wrong (labels differing only by case or spaces).
    """

    root: Path
    samples: pd.DataFrame
    classes: list[str]
    prompts: dict[str, str]
    issues: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "problem"]))
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def N(self) -> int:  # noqa: N802 (cleanlab naming)
        return len(self.samples)

    @property
    def K(self) -> int:  # noqa: N802
        return len(self.classes)

    @property
    def labels(self) -> np.ndarray:
        return self.samples["label_idx"].to_numpy(dtype=np.int64, copy=True)

    @property
    def heldout(self) -> np.ndarray:
        """Boolean mask of held-out rows (``split`` test or val): never trained on, never reviewed."""
        return heldout_mask(self.samples)

    @property
    def train_rows(self) -> np.ndarray:
        """Row positions of the samples Phase 1 trains on, scores and offers for review."""
        return np.flatnonzero(~self.heldout)

    def paths(self) -> list[Path]:
        return [self.root / p for p in self.samples["id"]]

    def path_strings(self) -> list[str]:
        """:meth:`paths` as strings (``str(root / id)``), built without a ``Path`` per row."""
        return joined_paths(self.root, self.samples["id"])

    def class_counts(self) -> pd.Series:
        return self.samples["label"].value_counts().reindex(self.classes, fill_value=0)


HELDOUT_SPLITS = ("test", "val", "valid", "validation")


def joined_paths(root: Path, ids) -> list[str]:
    """``str(root / i)`` for each id (normalised relative POSIX paths), without a ``Path`` per row:
    a million ``Path`` objects take ~10 s to build."""
    base = str(root)
    prefix = "" if base == "." else base if base.endswith("/") else base + "/"
    return [prefix + i for i in ids]


def heldout_mask(samples: pd.DataFrame) -> np.ndarray:
    """Rows whose ``split`` (case-insensitive) names a test or validation split."""
    if "split" not in samples:
        return np.zeros(len(samples), dtype=bool)
    return samples["split"].astype(str).str.strip().str.lower().isin(HELDOUT_SPLITS).to_numpy()


def class_prompt(name: str) -> str:
    return name.replace("_", " ").strip()


def load_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """Read ``class -> prompt text`` lines (``maple_tree -> maple tree``) or a ``class,prompt`` CSV."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Class descriptions file {not_a_file(p)}.")
    out: dict[str, str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sep = "->" if "->" in line else ","
        if sep not in line:
            raise DataError(f"{p}:{n}: expected 'class -> prompt text', got {line!r}.")
        key, text = (s.strip() for s in line.split(sep, 1))
        if key.lower() == "class" and text.lower() in {"prompt", "description"}:
            continue
        if not key or not text:
            raise DataError(f"{p}:{n}: {'the class name' if not key else f'the prompt text for {key!r}'} is empty; "
                            "write 'class -> prompt text' or drop the line.")
        out[key] = text
    return out


def check_images(
    paths: list[Path] | list[str], workers: int = 8, root: Path | None = None, processes: bool | None = None
) -> list[str | None]:
    """Decode every file fully (regular files only, pixel cap, shared decode budget): None or the problem.

    Large imports (:data:`deft.storage.parallel.PROCESS_MIN_FILES` files and up, or ``processes=True``) check
    chunks of files in worker processes, one image at a time each; smaller ones use ``workers`` threads.
    """
    if use_processes(len(paths), processes):
        base = None if root is None else os.fspath(root)
        names = [os.fspath(p) for p in paths]
        with process_pool() as pool:
            tasks = ((names[i : i + CHUNK], base) for i in range(0, len(names), CHUNK))
            return [r for part in ordered_map(pool, check_image_chunk, tasks, 4 * process_workers()) for r in part]
    budget = PixelBudget()
    real = RealPaths(root) if root is not None else None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: check_image(p, root, budget, real), paths))


def shown_name(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 are shown as ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as surrogate escapes
        return False
    return True


def near_collisions(labels: list[str]) -> list[list[str]]:
    """Groups of distinct labels that differ only by case or surrounding whitespace."""
    groups: dict[str, list[str]] = {}
    for lab in labels:
        groups.setdefault(lab.strip().casefold(), []).append(lab)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def label_warnings(labels: list[str]) -> list[str]:
    return [f"Labels {', '.join(repr(x) for x in g)} differ only by case or spaces and are separate classes; "
            "fix the labels if they mean the same class." for g in near_collisions(labels)]


def tiny_class_warnings(counts: dict[str, int]) -> list[str]:
    """Classes far smaller than the others, which often are label typos ('aeroplane' once among 'airplane'):
    fewer than 1% of the median class size, or 1-2 images where the median class has 10 or more.
    Each names the closest other class name when one is close (difflib)."""
    sizes = [n for n in counts.values() if n > 0]
    if len(sizes) < 3:
        return []
    median = float(np.median(sizes))
    out = []
    for name, n in counts.items():
        if n <= 0 or not (n < 0.01 * median or (n <= 2 and median >= 10)):
            continue
        others = [c for c, m in counts.items() if c != name and m > n]
        close = difflib.get_close_matches(name, others, n=1)
        out.append(f"{name!r} ({n} image{'s' if n != 1 else ''})"
                   + (f": a typo of {close[0]!r}?" if close else ": a class of its own?")
                   + f" It is a class far smaller than the others (median {median:g} images); "
                   "fix the label(s) if they are a mistake.")
    return out


def relative_ids(root: Path, raw: pd.Series) -> list[str]:
    """Normalise table paths to POSIX ids relative to ``root``; refuse paths that leave it.

    The check is lexical (``normpath``, no filesystem call per row), so a million rows take
    seconds; a symlink inside the root that points elsewhere is refused (and listed) when images are verified.
    """
    base = os.path.normpath(os.path.abspath(root))
    prefix = base.rstrip(os.sep) + os.sep
    ids = []
    for p in raw:
        full = os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
        if full == base:  # ".", "cat/..": inside, but the root folder is no image
            raise DataError(f"Path {p!r} names the dataset root {root} itself, not an image; each row needs "
                            "the path of one image file.")
        if not full.startswith(prefix):
            raise DataError(
                f"Path {p!r} points outside the dataset root {root}. "
                "Keep every image under the root, or pass a different --root."
            )
        ids.append(full[len(prefix):].replace(os.sep, "/"))
    return ids


def _finish(
    root: Path,
    rows: pd.DataFrame,
    classes: list[str],
    prompts: dict[str, str] | None,
    verify,
    source: str,
    pre_issues: list[dict[str, str]] | None = None,
) -> Dataset:
    bad = [c for c in classes if CONTROL.search(c)]
    if bad:  # a line break splits the class list in the review store and the exports: ['cat', 'dog', 'dog']
        raise DataError(f"{source}: class name(s) {bad[:5]} contain a line break or another control character; "
                        "a class name must be one line of text. Fix those labels (or folder names).")
    issues = list(pre_issues or [])
    if verify and len(rows):
        if verify is True:
            problems = check_images(joined_paths(root, rows["id"]), root=root)
        else:  # a deft.storage.verified.VerifiedFiles: files an earlier import decoded (unchanged since) are not again
            problems = verify.check(root, rows["id"].tolist(), lambda ids: check_images(joined_paths(root, ids),
                                                                                        root=root))
        bad = np.array([p is not None for p in problems], dtype=bool)
        issues += [{"path": i, "problem": p} for i, p in zip(rows["id"], problems, strict=True) if p]
        rows = rows.loc[~bad]
    if prompts:
        unknown = sorted(set(prompts) - set(classes))
        if unknown:
            raise DataError(f"Class descriptions name classes that are not in the data: {unknown}.")
    prompt_map = {c: (prompts or {}).get(c, class_prompt(c)) for c in classes}
    index = {c: i for i, c in enumerate(classes)}
    rows = rows.reset_index(drop=True).copy()
    rows["label_idx"] = rows["label"].map(index).astype("int64")
    if "split" not in rows:
        rows["split"] = "train"
    if len(rows) == 0:
        raise DataError(f"No usable images in {source}: every file was unreadable (see the issues list).")
    present = rows["label"].unique().tolist()
    if len(present) < 2:
        raise DataError(f"{source} has images of one class only ({present[0]!r}); label noise detection needs "
                        "at least two classes.")
    return Dataset(
        root=root,
        samples=rows,
        classes=classes,
        prompts=prompt_map,
        issues=pd.DataFrame(issues, columns=["path", "problem"]),
        source=source,
        warnings=label_warnings(classes) + tiny_class_warnings(
            rows["label"].value_counts().reindex(classes, fill_value=0).to_dict()),
    )


def load_image_folder(
    root: str | os.PathLike, prompts: dict[str, str] | None = None, verify: bool = True
) -> Dataset:
    """Import an ImageFolder tree ``root/<class>/<image>``."""
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"Dataset folder not found: {root}. Pass a folder laid out as <root>/<class>/<image> "
            "or a CSV/Parquet file with path,label columns."
        )
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; for a label table pass a .csv or .parquet file.")
    class_dirs, issues = [], []
    for d in sorted(root.iterdir()):
        why = _entry_problem(root, d)
        if d.is_dir() and why:
            issues.append({"path": shown_name(d.name) + "/", "problem": why})
        elif d.is_dir():
            class_dirs.append(d)
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders. Expected <root>/<class>/<image>, e.g. {root}/cat/001.jpg."
        )
    ids: list[str] = []
    labels: list[str] = []
    for d in class_dirs:
        images, problems = scan_class_folder(root, d)
        issues += problems
        if not images:
            raise DataError(
                f"Class folder '{d.name}' has no images. Add images to {d} or remove the folder."
            )
        ids += images
        labels += [d.name] * len(images)
    rows = pd.DataFrame({"id": ids, "label": labels})
    return _finish(root, rows, [d.name for d in class_dirs], prompts, verify, str(root), issues)


def _name_problem(name: str) -> str | None:
    """Why an entry is skipped by its name alone (None: use it)."""
    if not is_utf8(name):
        return "name is not valid UTF-8 (skipped; rename it)"
    if name.startswith("."):
        return "hidden (skipped)"
    return None


def _entry_problem(root: Path, p: Path) -> str | None:
    """Why a folder entry is skipped by name or type (None: use it). Never opens the file."""
    why = _name_problem(p.name)
    if why:
        return why
    if p.is_symlink() and p.is_dir():
        return "symlinked folder (not followed)"
    return None


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether ``entry`` (a symlink) points at a folder; False for a broken or looping link."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def scan_class_folder(root: Path, folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Image ids under ``folder`` and a ``path, problem`` row for every other entry.

    Symlinked folders are not followed; symlinks to files are used only if they resolve
    inside ``root``; FIFOs, sockets and devices are never opened. Entries are typed from the
    folder listing itself (``os.scandir``): a plain file costs no ``stat`` (a 1M-image folder
    took ~20 s with two per file).
    """
    images: list[str] = []
    issues: list[dict[str, str]] = []
    real = RealPaths(root)  # one realpath per folder, not per file (a 100k-image folder cost ~15 s)
    base = os.fspath(root)

    def note(path: str, problem: str, tail: str = "") -> None:
        issues.append({"path": shown_name(os.path.relpath(path, base).replace(os.sep, "/")) + tail,
                       "problem": problem})

    def listing(here: str) -> list[os.DirEntry] | None:
        try:
            with os.scandir(here) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:  # never "no images" for a folder that cannot be listed: say so
            if here == os.fspath(folder):
                raise DataError(f"Class folder '{folder.name}' cannot be read ({exc.strerror or type(exc).__name__})"
                                f"; give this user read access to {folder} or remove the folder.") from exc
            note(here, f"folder cannot be read ({exc.strerror or type(exc).__name__}; skipped)", "/")
            return None

    todo = [os.fspath(folder)]
    while todo:
        here = todo.pop()
        entries = listing(here)
        if entries is None:
            continue
        rel = os.path.relpath(here, base).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        inside = real.folder_inside(here)  # the plain files here are inside the root exactly when here is
        subdirs = []
        for e in entries:
            why = _name_problem(e.name)
            if why is None and e.is_dir(follow_symlinks=False):
                subdirs.append(e.path)
                continue
            if why is None and e.is_symlink() and _is_dir(e):
                why = "symlinked folder (not followed)"
            if why is None:
                if e.is_file(follow_symlinks=False):
                    why = None if inside else "symlink to outside the dataset root (refused, not followed)"
                else:  # a symlink, FIFO, socket or device: the full check (never opened)
                    why = regular_file_problem(e.path, root, real)
            if why is None and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                why = "not an image file (skipped)"
            if why:
                note(e.path, why)
            else:
                images.append(prefix + e.name)
        todo.extend(reversed(subdirs))
    return sorted(images), issues


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file, for "Label table ...": not found, a folder, a FIFO or device."""
    if not os.path.lexists(path):
        return f"not found: {path}"
    if path.is_dir():
        return f"{path} is a folder, not a file; pass the file itself"
    return f"{path} is not a regular file (a FIFO, socket, device or broken symlink); pass a regular file"


def open_quote(path: Path) -> tuple[int, int | None] | None:
    """``(line, closing line or None at the end of the file)`` of the first quoted CSV field that spans lines."""
    inside, start = False, 0
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        for n, line in enumerate(f, 1):
            if line.count('"') % 2:
                inside = not inside
                if inside:
                    start = n
                elif n > start:
                    return start, n
    return (start, None) if inside else None


def quote_problem(path: Path) -> str | None:
    """A sentence about an unclosed quote in a CSV file, None when there is none."""
    found = open_quote(path)
    if found is None:
        return None
    start, end = found
    if end is None:
        return (f'{path} has an unclosed quote (") on line {start}: the rest of the file was read as one field; '
                "close the quote or remove it.")
    return (f'{path} has an unclosed quote (") on line {start}: lines {start}-{end} were read as one row; '
            "close the quote on that line or remove it.")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet label table; raise :class:`DataError` on corrupt input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Label table {not_a_file(path)}.")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
            with open(path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])  # the names as written: pandas renames a repeated one
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a text CSV file (not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); save the table as a UTF-8 CSV with path and label columns.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: it needs a header with path and label columns and one row per "
                        "image.") from None
    except Exception as exc:
        kind = "Parquet" if path.suffix.lower() in {".parquet", ".pq"} else "CSV"
        quote = quote_problem(path) if kind == "CSV" else None
        raise DataError(quote or f"Could not read {path} as a {kind} table: {exc}") from None
    names = header if path.suffix.lower() not in {".parquet", ".pq"} else [str(c) for c in df.columns]
    dup = sorted({n.strip() for n in names if [m.strip() for m in names].count(n.strip()) > 1})
    if dup:  # pandas renames the second 'label' to 'label.1' and the first one would silently win
        raise DataError(f"{path}: column(s) {dup} appear more than once in the header; keep one of each.")
    return df


def load_table(
    table: str | os.PathLike,
    root: str | os.PathLike | None = None,
    prompts: dict[str, str] | None = None,
    classes: list[str] | None = None,
    verify: bool = True,
) -> Dataset:
    """Import a ``path,label`` CSV/Parquet table; paths are relative to ``root``.

    ``classes`` (or the keys of ``prompts``) fixes the class list; a label outside
    it is an error. Otherwise the classes are the sorted distinct labels.
    """
    table = Path(table)
    df = read_table(table)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise DataError(
            f"{table} is missing column(s) {sorted(missing)}; a label table needs 'path' and 'label' "
            f"(found: {list(df.columns)})."
        )
    if len(df) == 0:  # not "every file was unreadable": there was no file to read
        raise DataError(f"{table} lists no images (a header and no rows); add one 'path,label' row per image.")
    root = Path(root) if root is not None else table.parent
    if not root.is_dir():
        raise DataError(f"Dataset root not found: {root}. Pass --root <folder the paths are relative to>.")
    null = df["path"].isna() | df["label"].isna()
    if null.any():
        rows = (np.flatnonzero(null.to_numpy()) + 1).tolist()[:10]
        raise DataError(f"{table}: missing (null) path or label in row(s) {rows}; fill them in or drop those rows.")
    df = df.astype({"path": str, "label": str})
    empty = df["path"].str.strip().eq("") | df["label"].str.strip().eq("")
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 2).tolist()[:10]
        quote = quote_problem(table) if table.suffix.lower() not in {".parquet", ".pq"} else None
        raise DataError(quote or f"{table}: empty path or label on line(s) {rows}.")
    ids = relative_ids(root, df["path"])
    df = df.assign(id=ids)
    dup = df["id"][df["id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{table}: {len(dup)} duplicate path(s), e.g. {dup[:5]}. Each image may appear once.")
    known = classes if classes is not None else (list(prompts) if prompts else None)
    if known is not None:
        unknown = sorted(set(df["label"]) - set(known))
        if unknown:
            raise DataError(
                f"{table}: unknown class label(s) {unknown[:10]}; known classes are {known[:20]}."
            )
        cls_list = list(known)
    else:
        cls_list = sorted(df["label"].unique())
    keep = ["id", "label"] + [c for c in ("split", "true_label") if c in df.columns]
    return _finish(root, df[keep], cls_list, prompts, verify, str(table))


def dataset_from_manifest(
    root: Path, manifest: pd.DataFrame, classes: list[str], prompts: dict[str, str], source: str = ""
) -> Dataset:
    """Rebuild a :class:`Dataset` from a run's saved manifest (no re-validation)."""
    return Dataset(root=Path(root), samples=manifest.reset_index(drop=True), classes=classes, prompts=prompts,
                   source=source)
