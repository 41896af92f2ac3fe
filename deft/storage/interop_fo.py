"""FiftyOne in and out, in the formats of fiftyone's own importers (read from the fiftyone 1.22.1 wheel:
``fiftyone/utils/data/importers.py``, ``parsers.py``), without needing ``fiftyone`` installed.

Import, ``FiftyOneImageClassificationDataset`` layout (``FiftyOneImageClassificationDatasetImporter``):
``DIR/data/<images>`` and ``DIR/labels.json`` = ``{"classes": [...] or null, "labels": {uuid: target}}``, where
``uuid`` is an image's path under ``data/`` without its extension, and ``target`` a class index (into
``classes``), a label string, ``{"label": ..., "confidence": ...}``, a list (multi-label: refused here) or null
(no label). Or ``fiftyone:NAME``: a dataset in FiftyOne's database, with ``fiftyone`` installed (its
``ground_truth`` field, else its first ``Classification`` field).

Export (``deft export RUN --format fiftyone --out DIR``): a ``FiftyOneDataset`` folder in the layout
``FiftyOneDatasetImporter`` reads as its legacy (pre-0.8, still supported) format, chosen because its samples
are plain JSON: ``metadata.json`` (no ``version`` key: that is how the importer picks the legacy reader),
``samples.json`` = ``{"samples": [{"filepath": "data/...", "tags": [], FIELD: VALUE...}]}`` and ``data/``
(hard links of the images, or copies). Fields: ``ground_truth`` (the given label), ``cleaned`` (the final
label; absent where none), ``deft_suggestion`` (``Classification`` with ``confidence``), ``deft_margin``,
``review_status``, ``reviewer``; labels are ``{"_cls": "Classification", "label": ..., "confidence": ...}``,
the dicts ``Sample.from_dict`` turns into ``fo.Classification``. Load it with
``fo.Dataset.from_dir(DIR, dataset_type=fo.types.FiftyOneDataset)`` and sort by ``deft_margin`` in the App.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from deft.core.errors import DataError
from deft.storage.atomic import write_json
from deft.storage.data import IMAGE_EXTENSIONS, Dataset, _finish, shown_name
from deft.storage.interop import FIFTYONE_PREFIX

LEGACY_NOTE = "written by deft-audit in FiftyOne's legacy FiftyOneDataset layout (no 'version' key)"


def read_labels(path: Path) -> tuple[list[str] | None, dict]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"Could not read {path} as JSON ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels", {}), dict):
        raise DataError(f"{path} is not a FiftyOneImageClassificationDataset labels file: expected "
                        '{"classes": [...], "labels": {"<image name without extension>": <label>}}.')
    classes = doc.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise DataError(f"{path}: 'classes' must be a list of class names or null.")
    return classes, doc.get("labels", {})


def target_label(target, classes: list[str] | None) -> tuple[str | None, str | None]:
    """``(label, problem)`` of one ``labels.json`` target, parsed as FiftyOne's sample parser does."""
    if target is None:
        return None, "no label in labels.json (skipped)"
    if isinstance(target, list):
        return None, "several labels (multi-label); deft needs one label per image (skipped)"
    if isinstance(target, dict):
        target = target.get("label")
        if target is None:
            return None, "no label in labels.json (skipped)"
    if isinstance(target, int) and not isinstance(target, bool) and classes is not None:
        if not 0 <= target < len(classes):
            raise DataError(f"labels.json: class index {target} is outside 'classes' ({len(classes)} names).")
        return classes[target], None
    return str(target), None


def image_map(data: Path) -> dict[str, str]:
    """uuid (path under ``data/`` without extension) -> path relative to the dataset folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(data):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), data)
            out[os.path.normpath(os.path.splitext(rel)[0])] = Path("data", rel).as_posix()
    return out


def load_fiftyone(source: str | os.PathLike, prompts: dict[str, str] | None = None, verify: bool = True) -> Dataset:
    """Import a FiftyOneImageClassificationDataset folder or ``fiftyone:NAME`` (see the module docstring)."""
    raw = os.fspath(source)
    if raw.startswith(FIFTYONE_PREFIX):
        return load_fiftyone_db(raw[len(FIFTYONE_PREFIX):], prompts, verify)
    src = Path(source)
    classes, labels = read_labels(src / "labels.json")
    files = image_map(src / "data")
    rows, issues = [], []
    for uuid, target in labels.items():
        key = os.path.normpath(str(uuid))
        rel = files.pop(key, None)
        if rel is None:
            issues.append({"path": shown_name(str(uuid)), "problem": "listed in labels.json, but no image of that "
                                                                      "name in data/ (skipped)"})
            continue
        label, problem = target_label(target, classes)
        if problem:
            issues.append({"path": rel, "problem": problem})
        else:
            rows.append({"id": rel, "label": label})
    issues += [{"path": rel, "problem": "not in labels.json (skipped)"} for rel in files.values()]
    if not rows:
        raise DataError(f"{src}: no image of data/ has a label in labels.json.")
    df = pd.DataFrame(rows).sort_values("id", kind="stable").reset_index(drop=True)
    found = sorted(df["label"].unique())
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{src / 'labels.json'}: unknown class label(s) {unknown[:10]}; known classes are "
                            f"{classes[:20]}.")
    return _finish(src, df, list(classes) if classes is not None else found, prompts, verify, str(src), issues)


def load_fiftyone_db(name: str, prompts: dict[str, str] | None, verify: bool) -> Dataset:
    """A dataset of FiftyOne's database, by name (needs ``fiftyone``)."""
    try:
        import fiftyone as fo
    except ImportError:
        raise DataError(f"Reading FiftyOne dataset {name!r} from its database needs the fiftyone package "
                        "(pip install fiftyone); without it, export the dataset as "
                        "FiftyOneImageClassificationDataset and pass that folder.") from None
    if name not in fo.list_datasets():
        raise DataError(f"FiftyOne has no dataset named {name!r} (it has: {fo.list_datasets()[:20]}).")
    ds = fo.load_dataset(name)
    schema = ds.get_field_schema(embedded_doc_type=fo.Classification)
    field = "ground_truth" if "ground_truth" in schema else next(iter(schema), None)
    if field is None:
        raise DataError(f"FiftyOne dataset {name!r} has no Classification field to take labels from.")
    paths, labels = ds.values("filepath"), ds.values(f"{field}.label")
    root = Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    rows = [{"id": Path(os.path.relpath(p, root)).as_posix(), "label": lab}
            for p, lab in zip(paths, labels, strict=True) if lab is not None]
    issues = [{"path": p, "problem": f"no {field} label (skipped)"}
              for p, lab in zip(paths, labels, strict=True) if lab is None]
    df = pd.DataFrame(rows)
    return _finish(root, df, sorted(df["label"].unique()), prompts, verify, FIFTYONE_PREFIX + name, issues)


# -- export -------------------------------------------------------------------------------------------------------
def classification(label: str, confidence: float | None = None) -> dict:
    d = {"_cls": "Classification", "tags": [], "label": label}
    if confidence is not None and pd.notna(confidence):
        d["confidence"] = float(confidence)
    return d


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sample_dict(r, filepath: str) -> dict:
    d = {"filepath": filepath, "tags": [], "ground_truth": classification(str(r.original_label)),
         "review_status": str(r.status), "reviewer": str(r.decided_by or "")}
    if isinstance(r.final_label, str) and r.final_label:
        d["cleaned"] = classification(r.final_label)
    if isinstance(r.suggestion, str) and r.suggestion:
        d["deft_suggestion"] = classification(r.suggestion, r.suggestion_conf)
    if pd.notna(r.margin):
        d["deft_margin"] = float(r.margin)
    return d


def write_fiftyone(run, frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write the export as a FiftyOneDataset folder (see the module docstring); held-out rows come with status
    ``heldout`` and no suggestion."""
    from deft.storage.interop_hf import export_rows

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "samples.json").is_file())):
        raise DataError(f"--out {out} exists and is not an earlier FiftyOne export; choose a new folder.")
    df = export_rows(run, frame)
    for c in ("suggestion", "suggestion_conf", "margin"):
        if c not in df:
            df[c] = None
    root = Path(run.dataset.root)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    samples = []
    for r in df.itertuples(index=False):
        rel = Path("data", r.path).as_posix()
        _link(root / r.path, tmp / rel)
        samples.append(sample_dict(r, rel))
    write_json(tmp / "metadata.json", {"name": f"deft-{run.path.name}", "media_type": "image",
                                       "info": {"classes": list(run.dataset.classes), "deft_run": str(run.path),
                                                "note": LEGACY_NOTE}})
    write_json(tmp / "samples.json", {"samples": samples})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
