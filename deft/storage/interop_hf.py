"""Hugging Face ``datasets`` in and out.

Import: a dataset saved with ``save_to_disk`` (one ``Dataset`` or a ``DatasetDict`` of splits), or a folder of
Parquet/Arrow files (``data/train-00000-of-00001.parquet``...) whose schema carries an ``Image`` feature and a
``ClassLabel`` (or string) label column. The split of each row is its ``DatasetDict`` key or the split named by
its file (``train-*.parquet``, ``test/``...); test and validation splits are held out as for a table's ``split``
column. Image bytes are written once to :func:`deft.storage.interop.import_cache`, then every image is checked like
any other import (unreadable ones are listed, not dropped silently).

Export (``deft export RUN --format hf --out DIR``): a ``DatasetDict`` saved with ``save_to_disk``: ``image``,
``label`` (the cleaned label, ``ClassLabel``; -1 where there is none: excluded, or pending without
``--pseudo``), ``original_label`` (``ClassLabel``), ``status``, ``reviewer``, ``decided_at``, ``deft_id`` and
every score column of the CSV export. ``datasets.load_from_disk(DIR)`` reads it back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from deft.core.errors import DataError
from deft.core.schema import EXPORT_COLUMNS, SCORE_COLUMNS
from deft.storage.data import Dataset, _finish
from deft.storage.interop import HF_MARKERS, ensure_writable, fingerprint, image_suffix, import_cache, table_files

SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev")
CACHE_VERSION = "1"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("Reading or writing a Hugging Face dataset needs the `datasets` package: "
                        "pip install 'deft-audit[hf]' (or pip install datasets).") from None
    return datasets


def split_of(rel: Path) -> str:
    """The split a Parquet/Arrow file holds, from its folders or its name (``train-00000-of-00002``)."""
    for part in [*rel.parts[:-1][::-1], rel.stem]:
        head = re.split(r"[-_.]", part.lower(), maxsplit=1)[0]
        if head in SPLIT_NAMES:
            return head
    return "train"


def _read_arrow(path: Path):
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_stream(src).read_all()  # what save_to_disk writes
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_file(src).read_all()


def damaged_arrow(src: Path) -> Path | None:
    """The first ``.arrow`` file of a save_to_disk folder that cannot be read to its end (truncated, garbage)."""
    for f in sorted(src.rglob("*.arrow")):
        try:
            _read_arrow(f)
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            return f
    return None


def read_parts(src: Path) -> list[tuple[str, object, object]]:
    """``(split, pyarrow.Table, datasets.Features)`` per split (saved dataset) or file (Parquet/Arrow folder)."""
    datasets = _datasets()
    if any((src / m).is_file() for m in HF_MARKERS):
        try:
            obj = datasets.load_from_disk(str(src))
        except Exception as exc:  # noqa: BLE001 - any failure of the library is the user's damaged folder
            bad = damaged_arrow(src)
            if bad is not None:
                raise DataError(f"{bad} is truncated or damaged, so the Hugging Face dataset {src} cannot be read; "
                                "save the dataset again with save_to_disk (or copy the folder again).") from None
            raise DataError(f"Could not read {src} with datasets.load_from_disk: {exc}") from None
        items = obj.items() if isinstance(obj, datasets.DatasetDict) else [(str(obj.split or "train"), obj)]
        return [(name, d.data.table, d.features) for name, d in items]
    import pyarrow.parquet as pq

    parts = []
    for f in table_files(src):
        try:
            table = pq.read_table(f) if f.suffix.lower() == ".parquet" else _read_arrow(f)
            feats = datasets.Features.from_arrow_schema(table.schema)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"Could not read {f} as a Parquet/Arrow table: {exc}") from None
        parts.append((split_of(f.relative_to(src)), table, feats))
    if not parts:
        raise DataError(f"{src} holds no Parquet or Arrow file and no save_to_disk dataset.")
    return parts


def pick_columns(src: Path, feats, label_column: str | None) -> tuple[str, str]:
    """The image column (the first ``Image`` feature) and the label column (``label_column``, the first
    ``ClassLabel``, or ``label``)."""
    datasets = _datasets()
    images = [c for c, f in feats.items() if isinstance(f, datasets.Image)]
    if not images:
        raise DataError(f"{src} has no Image column (columns: {list(feats)}); deft needs one image per row, "
                        "stored as a datasets.Image feature.")
    if label_column is not None:
        if label_column not in feats:
            raise DataError(f"{src} has no column {label_column!r} (columns: {list(feats)}).")
        return images[0], label_column
    labels = [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)]
    if labels:
        return images[0], labels[0]
    if "label" in feats:
        return images[0], "label"
    raise DataError(f"{src} has no label column: no ClassLabel feature and no column named 'label' "
                    f"(columns: {list(feats)}).")


def class_list(src: Path, parts, label_column: str | None) -> tuple[list[str] | None, str, str]:
    """``(ClassLabel names or None for string labels, image column, label column)``, the same in every part."""
    datasets = _datasets()
    cols = {pick_columns(src, feats, label_column) for _, _, feats in parts}
    if len(cols) > 1:
        raise DataError(f"{src}: the files disagree on the image/label columns ({sorted(cols)}); keep one schema.")
    img, lab = cols.pop()
    names = {tuple(f[lab].names) if isinstance(f[lab], datasets.ClassLabel) else None for _, _, f in parts}
    if len(names) > 1:
        raise DataError(f"{src}: the splits' ClassLabel names of {lab!r} differ; use one class list for all.")
    found = names.pop()
    return (list(found) if found is not None else None), img, lab


def _image_bytes(src: Path, cell: dict | None) -> tuple[bytes | None, str | None, str | None]:
    """``(bytes, original name, problem)`` of one ``Image`` cell."""
    if cell is None or (cell.get("bytes") is None and not cell.get("path")):
        return None, None, "no image in this row (skipped)"
    name = cell.get("path")
    if cell.get("bytes") is not None:
        return cell["bytes"], name, None
    p = Path(name) if os.path.isabs(name) else src / name
    if not p.is_file():
        return None, name, f"the image file {name} is not found (skipped)"
    return p.read_bytes(), name, None


def _label_of(value, names: list[str] | None, where: str) -> str | None:
    if value is None or (names is not None and value == -1):
        return None
    if names is None:
        return str(value)
    if not 0 <= int(value) < len(names):
        raise DataError(f"{where}: label {value} is outside the ClassLabel's {len(names)} names; fix the label or "
                        "the ClassLabel feature.")
    return names[int(value)]


def materialize(src: Path, parts, img: str, lab: str, names: list[str] | None, cache: Path) -> pd.DataFrame:
    """Write every image to ``cache/<split>/<row>.<ext>``; the rows (``id, label, split``) and problems
    (``path, problem``) as one table with a ``problem`` column (None for usable rows)."""
    records = []
    counters: dict[str, int] = {}
    for split, table, _ in parts:
        folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", split) or "split"
        (cache / folder).mkdir(parents=True, exist_ok=True)
        for batch in table.select([img, lab]).to_batches(max_chunksize=512):
            cells, values = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            for cell, value in zip(cells, values, strict=True):
                i = counters[split] = counters.get(split, -1) + 1
                data, name, problem = _image_bytes(src, cell)
                label = _label_of(value, names, f"{src} split {split!r} row {i}")
                rid = f"{folder}/{i:06d}{image_suffix(data or b'', name)}"
                if problem is None and label is None:
                    problem = "no label in this row (skipped)"
                if problem is None:
                    (cache / rid).write_bytes(data)
                records.append({"id": rid, "label": label, "split": split, "problem": problem})
    return pd.DataFrame(records, columns=["id", "label", "split", "problem"])


def _cached(cache: Path, stamp: str) -> tuple[pd.DataFrame, list[str] | None] | None:
    """The rows and classes of an earlier import of the same source files; None when there is none (or it is
    damaged: the import is redone)."""
    try:
        done = json.loads((cache / ".deft-import.json").read_text())
        if done["stamp"] != stamp:
            return None
        return pd.read_parquet(cache / "rows.parquet"), done["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_cache(src: Path, parts, img: str, lab: str, names: list[str] | None, cache: Path,
                stamp: str) -> pd.DataFrame:
    """Write the images and the rows to a private folder beside ``cache``, then rename it into place: a second
    process importing the same source at once, or a crash, never leaves a half-written cache in use."""
    ensure_writable(cache.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{cache.name}.tmp-", dir=cache.parent))
    try:
        rows = materialize(src, parts, img, lab, names, tmp)
        rows.to_parquet(tmp / "rows.parquet", index=False)
        (tmp / ".deft-import.json").write_text(json.dumps({"stamp": stamp, "classes": names}))
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)  # an import of an older version of the source
        try:
            os.replace(tmp, cache)
        except OSError:
            if _cached(cache, stamp) is None:  # not another process's import of the same files: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def load_hf(source: str | os.PathLike, prompts: dict[str, str] | None = None, verify: bool = True,
            label_column: str | None = None) -> Dataset:
    """Import a ``save_to_disk`` folder or a folder of Parquet/Arrow files (see the module docstring)."""
    src = Path(source)
    if not src.is_dir():
        raise DataError(f"Hugging Face dataset folder not found: {src}.")
    cache = import_cache(src)
    stamp = json.dumps({"v": CACHE_VERSION, "files": fingerprint(src), "label_column": label_column})
    cached = _cached(cache, stamp)
    if cached is not None:
        rows, names = cached
    else:
        parts = read_parts(src)
        names, img, lab = class_list(src, parts, label_column)
        rows = build_cache(src, parts, img, lab, names, cache, stamp)
    bad = rows["problem"].notna()
    issues = [{"path": i, "problem": p} for i, p in zip(rows.loc[bad, "id"], rows.loc[bad, "problem"], strict=True)]
    good = rows.loc[~bad, ["id", "label", "split"]].reset_index(drop=True)
    classes = list(names) if names is not None else sorted(good["label"].unique())
    if prompts:
        unknown = sorted(set(prompts) - set(classes))
        if unknown:
            raise DataError(f"Class descriptions name classes that are not in the data: {unknown}.")
    return _finish(cache, good, classes, prompts, verify, str(src), issues)


# -- export -------------------------------------------------------------------------------------------------------
#: The export's review columns (the rest of :data:`deft.core.schema.EXPORT_COLUMNS` are scores, kept as they are).
BASE_COLUMNS = tuple(c for c in EXPORT_COLUMNS if c not in SCORE_COLUMNS)


def export_rows(run, frame: pd.DataFrame) -> pd.DataFrame:
    """The export frame plus the run's held-out rows (status ``heldout``, their label kept), with ``split``."""
    samples = run.dataset.samples
    split = samples.set_index("id")["split"].astype(str) if "split" in samples else None
    held = samples.loc[~samples["id"].isin(frame["path"]), ["id", "label"]]
    extra = pd.DataFrame({"path": held["id"].astype(str), "original_label": held["label"].astype(str),
                          "final_label": held["label"].astype(str), "status": "heldout", "decided_at": "",
                          "decided_by": ""})
    df = pd.concat([frame, extra], ignore_index=True) if len(extra) else frame.copy()
    df["split"] = df["path"].map(split).fillna("train") if split is not None else "train"
    return df


def _encode(labels: pd.Series, classes: list[str]) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(str(v), -1) for v in labels.fillna("")]


def write_hf(run, frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Save the export as a ``DatasetDict`` (one dataset per split) at ``out`` (see the module docstring)."""
    datasets = _datasets()
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "dataset_dict.json").is_file())):
        raise DataError(f"--out {out} exists and is not an earlier Hugging Face export; choose a new folder.")
    classes = list(run.dataset.classes)
    df = export_rows(run, frame)
    scores = [c for c in df.columns if c not in (*BASE_COLUMNS, "split")]
    feats = {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes),
             "original_label": datasets.ClassLabel(names=classes), "status": datasets.Value("string"),
             "reviewer": datasets.Value("string"), "decided_at": datasets.Value("string"),
             "deft_id": datasets.Value("string")}
    for c in scores:
        kind = "float64" if pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]) else "string"
        feats[c] = datasets.Value(kind)
    features = datasets.Features(feats)
    root = Path(run.dataset.root)
    parts = {}
    for split, part in df.groupby("split", sort=False):
        cols = {"image": [{"bytes": (root / p).read_bytes(), "path": Path(p).name} for p in part["path"]],
                "label": _encode(part["final_label"], classes), "original_label": _encode(part["original_label"],
                                                                                           classes),
                "status": part["status"].astype(str).tolist(), "reviewer": part["decided_by"].fillna("").astype(str)
                .tolist(), "decided_at": part["decided_at"].fillna("").astype(str).tolist(),
                "deft_id": part["path"].astype(str).tolist()}
        for c in scores:
            v = part[c]
            cols[c] = (v.astype(float).tolist() if feats[c].dtype == "float64"
                       else v.where(v.notna(), None).map(lambda x: None if x is None else str(x)).tolist())
        parts[str(split)] = datasets.Dataset.from_dict(cols, features=features)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    datasets.DatasetDict(parts).save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out

