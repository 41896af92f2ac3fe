"""Label Studio in and out (image classification with ``Choices``), in Label Studio's own JSON task format.

The format follows label-studio-sdk's converter (``label_studio_sdk/converter``, read from the 2.1.2 wheel):
a JSON export is a list of tasks ``{"id", "data": {"image": URL, ...}, "annotations": [{"result": [{"type":
"choices", "value": {"choices": [...]}}], "completed_by", "was_cancelled", "created_at"}], "predictions": [...]}``;
the converter takes a task's latest annotation that is neither skipped nor cancelled, and the annotator is
``completed_by`` (an email in a dict, or a user id). Image URLs are ``/data/local-files/?d=PATH`` (PATH relative to
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) or ``/data/upload/PROJECT/FILE`` (under Label Studio's ``media`` folder).

* Import as a dataset: each annotated task's image (resolved under ``root``: the document root for local files,
  the ``media`` folder for uploads) with its annotation's choice as the label.
* ``deft export --format label-studio``: one task per suspect (``--all``: per sample) with deft's suggestion as a
  prediction (``score`` = its confidence, ``model_version`` = the run), the sample's id, label and review-store
  version in ``data``; a labeling config (``OUT.label_config.xml``) beside it.
* ``deft import-review RUN EXPORT.json``: the annotations of those tasks as decisions (``decided_by`` = the
  annotator), through the review store's version check: a task whose sample was decided (or undone) since the
  export, or whose label changed, is refused and reported, and nothing is recorded for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import quoteattr

import pandas as pd

from deft.core.errors import DataError
from deft.storage.atomic import write_json, write_text
from deft.storage.data import Dataset, _finish, not_a_file, relative_ids

IMAGE_KEYS = ("image", "img", "image_url", "url")
EXCLUDE = "__deft_exclude__"  # the choice (alias) that excludes a sample
EXCLUDE_TEXT = "Exclude (not a usable image)"  # its shown value (what an export holds if the alias is dropped)
FROM_NAME, TO_NAME = "label", "image"


def read_tasks(path: str | os.PathLike) -> list[dict]:
    """A Label Studio JSON export: a list of task dicts (one task dict is accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Label Studio export {not_a_file(path)}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"Could not read {path} as JSON ({exc}); export the project from Label Studio as JSON.") \
            from None
    tasks = [data] if isinstance(data, dict) else data
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict)
                                              for t in tasks):
        raise DataError(f"{path} is not a Label Studio JSON export: expected a list of tasks, each with a 'data' "
                        "object (export the project as JSON, not JSON-MIN or CSV).")
    return tasks


def image_ref(task: dict) -> str | None:
    data = task["data"]
    for k in IMAGE_KEYS:
        if isinstance(data.get(k), str):
            return data[k]
    strings = [v for k, v in data.items() if isinstance(v, str) and not k.startswith("deft_")]
    return strings[0] if len(strings) == 1 else None


def local_path(ref: str) -> tuple[str | None, str | None]:
    """``(path relative to the root (or absolute), problem)`` of an image URL of a task."""
    parts = urlsplit(ref)
    if parts.path.rstrip("/").endswith("/data/local-files"):
        d = parse_qs(parts.query).get("d")
        return (d[0], None) if d else (None, f"local-files URL without ?d= ({ref})")
    if parts.path.startswith("/data/upload/"):
        return unquote(parts.path[len("/data/"):]), None
    if parts.scheme in ("", "file") and not parts.netloc:
        return unquote(parts.path), None
    return None, (f"image URL {ref} cannot be read offline; download the images, then point the tasks at them "
                  "(/data/local-files/?d=PATH or a path under --root) (skipped)")


def latest_annotation(task: dict) -> dict | None:
    """The latest annotation that is neither skipped nor cancelled (as label-studio-sdk's converter picks)."""
    anns = [a for a in task.get("annotations") or task.get("completions") or []
            if isinstance(a, dict) and not (a.get("skipped") or a.get("was_cancelled"))]
    return max(anns, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""), default=None)


def choices_of(annotation: dict) -> list[str]:
    out: list[str] = []
    for r in annotation.get("result") or []:
        if isinstance(r, dict) and r.get("type", "choices") == "choices":
            out += [str(c) for c in (r.get("value") or {}).get("choices") or []]
    return out


def annotator(annotation: dict) -> str:
    """Who annotated: the email of ``completed_by`` (full export), else ``label-studio user N``."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id") or "label-studio")
    if isinstance(who, int):
        return f"label-studio user {who}"
    return str(who) if who else "label-studio"


def load_label_studio(source: str | os.PathLike, root: str | os.PathLike | None = None,
                      prompts: dict[str, str] | None = None, verify: bool = True) -> Dataset:
    """Import an image-classification JSON export: one sample per annotated task (see the module docstring)."""
    src = Path(source)
    tasks = read_tasks(src)
    base = Path(root) if root is not None else src.parent
    if not base.is_dir():
        raise DataError(f"Image root not found: {base}. Pass --root <Label Studio's local-files document root or "
                        "media folder>.")
    rows, issues = [], []
    for n, task in enumerate(tasks):
        name = f"task {task.get('id', n + 1)}"
        ref = image_ref(task)
        if ref is None:
            issues.append({"path": name, "problem": "no image URL in the task's data (skipped)"})
            continue
        rel, problem = local_path(ref)
        ann = latest_annotation(task)
        labels = choices_of(ann) if ann else []
        if problem is None and len(labels) == 1 and labels[0] in (EXCLUDE, EXCLUDE_TEXT):
            problem = "annotated Exclude (not a usable image) (excluded)"
        if problem is None and len(labels) != 1:
            problem = ("no annotation (skipped)" if not labels else
                       f"{len(labels)} choices {labels[:5]} in one annotation; deft needs one label per image")
        if problem:
            issues.append({"path": name if rel is None else rel, "problem": problem})
            continue
        rows.append({"path": rel, "label": labels[0]})
    if not rows:
        urls = [i for i in issues if "offline" in i["problem"]]
        raise DataError(f"{src}: no task has a local image and one label" + (
            f"; {len(urls)} task(s) point at URLs deft cannot read offline: download the images and give their "
            "paths (/data/local-files/?d=PATH)." if urls else " (see `deft check` for the list)."))
    df = pd.DataFrame(rows)
    df["id"] = relative_ids(base, df["path"].astype(str))
    dup = df["id"][df["id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{src}: {len(dup)} image(s) appear in several tasks, e.g. {dup[:5]}; keep one task each.")
    return _finish(base, df[["id", "label"]], sorted(df["label"].unique()), prompts, verify, str(src), issues)


# -- export -------------------------------------------------------------------------------------------------------
def label_config(classes: list[str]) -> str:
    """The labeling config: the image, its given label, one choice per class and an exclude choice."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n  <Header value="Given label: $deft_label"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n{choices}\n'
            f'    <Choice value="{EXCLUDE_TEXT}" alias="{EXCLUDE}"/>\n  </Choices>\n</View>\n')


def image_url(path: Path, document_root: Path) -> str:
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(document_root))
    if rel.startswith(".."):
        raise DataError(f"{path} is outside --document-root {document_root}; pass a document root that holds "
                        "the dataset's images.")
    return "/data/local-files/?d=" + quote(Path(rel).as_posix(), safe="/")


def write_tasks(run, frame: pd.DataFrame, out: str | os.PathLike, every: bool = False,
                document_root: str | os.PathLike | None = None, store=None) -> tuple[int, Path]:
    """Write the task list to ``out`` and the labeling config beside it; ``(tasks, config path)``. ``store``: the
    run's review store (default ``RUN/review.sqlite``; the CLI passes :meth:`deft.project.Project.run_store`)."""
    from deft.storage.export import check_output_file
    from deft.storage.store import ReviewStore

    out = check_output_file(out)
    store = store if store is not None else ReviewStore.for_run(run)
    versions = store.versions()
    root = Path(run.dataset.root)
    doc = Path(document_root) if document_root is not None else root
    rows = frame if every else frame[frame["status"].ne("clean")]
    tasks = []
    for r in rows.itertuples(index=False):
        conf = float(r.suggestion_conf) if pd.notna(r.suggestion_conf) else None
        tasks.append({
            "data": {"image": image_url(root / r.path, doc), "deft_id": r.path, "deft_label": r.original_label,
                     "deft_version": int(versions.get(r.path, 0)), "deft_suggestion": r.suggestion,
                     "deft_margin": float(r.margin), "deft_status": r.status},
            "predictions": [{"model_version": f"deft {run.path.name}", "score": conf, "result": [{
                "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                "value": {"choices": [r.suggestion]}, **({"score": conf} if conf is not None else {})}]}],
        })
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, tasks, default=str)
    config = out.with_name(out.stem + ".label_config.xml")
    write_text(config, label_config(list(run.dataset.classes)))
    return len(tasks), config


# -- annotations back as decisions ----------------------------------------------------------------------------------
@dataclass
class ReviewImport:
    recorded: int = 0
    unannotated: int = 0
    by_annotator: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (sample id or task, why)


def _action(choice: str, given: str, suggestion: str | None) -> tuple[str, str | None]:
    if choice == EXCLUDE:
        return "exclude", None
    if choice == given:
        return "keep", None
    if suggestion and choice == suggestion and suggestion != given:
        return "accept", choice
    return "relabel", choice


def plan(tasks: list[dict], scores: pd.DataFrame, res: ReviewImport) -> dict[str, list[tuple]]:
    """The decisions per annotator: ``(sample id, version at export, action, label)``; refusals into ``res``."""
    current = scores.set_index("id")
    todo: dict[str, list[tuple]] = {}
    for n, task in enumerate(tasks):
        data, name = task["data"], f"task {task.get('id', n + 1)}"
        sid = data.get("deft_id")
        if not isinstance(sid, str) or not isinstance(data.get("deft_version"), int):
            res.refused.append((name, "the task was not made by `deft export --format label-studio` (no deft_id "
                                      "and deft_version in its data)"))
            continue
        ann = latest_annotation(task)
        if ann is None:
            res.unannotated += 1
            continue
        picked = choices_of(ann)
        if sid not in current.index:
            res.refused.append((sid, "this sample is not in the run (another dataset or run?)"))
        elif len(picked) != 1:
            res.refused.append((sid, f"the annotation has {len(picked)} choices; one is needed"))
        elif str(current.at[sid, "label"]) != str(data.get("deft_label")):
            res.refused.append((sid, f"its label is now {current.at[sid, 'label']!r}, not {data.get('deft_label')!r} "
                                     "as when the tasks were exported; export the tasks again"))
        else:
            act, label = _action(picked[0], str(current.at[sid, "label"]), current.at[sid, "suggestion"])
            todo.setdefault(annotator(ann), []).append((sid, data["deft_version"], act, label))
    return todo


def import_review(run, tasks_path: str | os.PathLike, store=None) -> ReviewImport:
    """Record the annotations of a Label Studio export as decisions (see the module docstring) in ``store``
    (default ``RUN/review.sqlite``; the CLI passes :meth:`deft.project.Project.run_store`)."""
    from deft.storage.store import ReviewStore

    tasks = read_tasks(tasks_path)
    store = store if store is not None else ReviewStore.for_run(run)
    res = ReviewImport()
    for who, items in plan(tasks, store.scores(), res).items():
        batch = store.decide_many(items, "keep", client="label-studio", by=who)
        res.recorded += len(batch.applied)
        if batch.applied:
            res.by_annotator[who] = len(batch.applied)
        res.refused += [(sid, "it was reviewed (or undone) since the tasks were exported; nothing was recorded, "
                              "export the tasks again") for sid in batch.stale]
        res.refused += batch.refused
    return res

