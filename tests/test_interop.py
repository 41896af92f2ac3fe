"""Issue 23: Hugging Face datasets, Label Studio and FiftyOne in and out, checked against the real `datasets`
library and against Label Studio's / FiftyOne's own formats (fiftyone cannot install offline here: its database
package downloads MongoDB at install time, so its export is checked against the rules of fiftyone's importer)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from deft.storage.data import DataError
from deft.storage.load import load_dataset
from deft.storage.run import Run
from deft.storage.store import ReviewStore

from .conftest import ROOT, extract_cifar

datasets = pytest.importorskip("datasets")


def deft(*args, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEFT_IMPORT_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "deft", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"deft {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def hf_dataset(folder: Path, images: Path, broken: bool = False):
    """A DatasetDict (train: 5 images per class, test: 1) with an Image column and a ClassLabel, saved to
    ``folder``; ``broken`` adds a row with undecodable bytes and a row without a label to train."""
    classes = sorted(p.name for p in images.iterdir())
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    by_class = {c: sorted((images / c).glob("*.jpg")) for c in classes}

    def rows(files):
        return {"img": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
                "label": [classes.index(f.parent.name) for f in files]}

    train = rows([f for c in classes for f in by_class[c][:5]])
    if broken:
        train["img"] += [{"bytes": b"not an image", "path": "bad.jpg"}, {"bytes": train["img"][0]["bytes"],
                                                                          "path": "x.jpg"}]
        train["label"] += [0, -1]
    test = rows([by_class[c][5] for c in classes])
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=feats),
                               "test": datasets.Dataset.from_dict(test, features=feats)})
    dd.save_to_disk(str(folder))
    return dd, classes


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_clip_dir):
    """A deft run detected (tiny CLIP, 1 epoch) on a saved Hugging Face DatasetDict, through the CLI."""
    tmp = tmp_path_factory.mktemp("hf_run")
    dd, classes = hf_dataset(tmp / "hf", extract_cifar(tmp / "images", 6), broken=True)
    cache = tmp / "cache"
    out = deft("detect", tmp / "hf", "--model", tiny_clip_dir, "--out", tmp / "run", "--epochs", "1",
               "--batch-size", "16", cache=cache).stdout
    assert "suspects of 50 samples" in out and "2 file(s) excluded" in out
    return tmp / "run", cache, classes


@pytest.fixture
def run_copy(hf_run, tmp_path):
    """A private copy of the detected run (each test records its own decisions)."""
    src, cache, classes = hf_run
    shutil.copytree(src, tmp_path / "run")
    return tmp_path / "run", cache, classes


def test_hf_import_lists_bad_rows_and_reuses_its_image_cache(tmp_path, monkeypatch, cifar_small):
    monkeypatch.setenv("DEFT_IMPORT_CACHE", str(tmp_path / "cache"))
    dd, classes = hf_dataset(tmp_path / "hf", cifar_small, broken=True)
    ds = load_dataset(tmp_path / "hf")
    assert ds.classes == classes and ds.N == 60  # 50 train + 10 test; the broken and unlabelled rows excluded
    assert ds.samples["split"].value_counts().to_dict() == {"train": 50, "test": 10}
    assert ds.heldout.sum() == 10 and Path(ds.root).is_relative_to(tmp_path / "cache")
    problems = dict(zip(ds.issues["path"], ds.issues["problem"], strict=True))
    assert problems["train/000051.jpg"] == "no label in this row (skipped)"
    assert any(p.startswith("train/000050") for p in problems)  # the undecodable bytes, listed as unreadable
    first = ds.samples.iloc[0]
    with Image.open(Path(ds.root) / first["id"]) as im:
        assert im.size == dd["train"][0]["img"].size and first["label"] == classes[dd["train"][0]["label"]]
    stamp = (Path(ds.root) / first["id"]).stat().st_mtime_ns
    again = load_dataset(tmp_path / "hf")  # unchanged source: the cached images are reused, not rewritten
    assert again.samples.equals(ds.samples) and (Path(ds.root) / first["id"]).stat().st_mtime_ns == stamp
    (Path(ds.root) / ".deft-import.json").write_text("{damaged")  # a damaged cache record: imported again
    assert load_dataset(tmp_path / "hf").samples.equals(ds.samples)
    shutil.rmtree(tmp_path / "hf")
    dd["train"].select(range(20)).save_to_disk(str(tmp_path / "hf"))  # the source changed: imported again
    changed = load_dataset(tmp_path / "hf")
    assert changed.N == 20 and changed.root == ds.root and set(changed.samples["split"]) == {"train"}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(ds.root).name]  # no half-written folder left


def test_hf_parquet_folder_with_string_labels_and_splits_from_file_names(tmp_path, monkeypatch, cifar_small):
    monkeypatch.setenv("DEFT_IMPORT_CACHE", str(tmp_path / "cache"))
    files = sorted(cifar_small.glob("*/*.jpg"))
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string"),
                               "coarse": datasets.Value("string")})
    vehicles = {"airplane", "automobile", "ship", "truck"}
    for split, part in (("train", files[:40]), ("validation", files[40:])):
        d = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": f.name} for f in part],
                                        "label": [f.parent.name for f in part],
                                        "coarse": ["vehicle" if f.parent.name in vehicles else "animal"
                                                   for f in part]}, features=feats)
        d.to_parquet(str(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet"))
    ds = load_dataset(tmp_path / "pq")
    assert ds.classes == sorted({f.parent.name for f in files}) and ds.N == 60
    assert ds.samples["split"].value_counts().to_dict() == {"train": 40, "validation": 20}
    assert ds.heldout.sum() == 20
    coarse = load_dataset(tmp_path / "pq", label_column="coarse")
    assert coarse.classes == ["animal", "vehicle"] and coarse.N == 60
    with pytest.raises(DataError, match="has no column 'fine'"):
        load_dataset(tmp_path / "pq", label_column="fine")


def test_hf_bad_inputs_are_one_sentence(tmp_path, cifar_small):
    cache = tmp_path / "cache"
    d = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    d.save_to_disk(str(tmp_path / "noimage"))
    p = deft("check", tmp_path / "noimage", cache=cache, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "has no Image column" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "state.json").write_text("{not json")
    p = deft("check", tmp_path / "damaged", cache=cache, check=False)
    assert p.returncode == 2 and "Could not read" in p.stderr and "Traceback" not in p.stderr
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    img = next(cifar_small.glob("*/*.jpg")).read_bytes()
    table = datasets.Dataset.from_dict({"image": [{"bytes": img, "path": "a.jpg"}] * 2, "label": [0, 1]},
                                       features=feats).data.table
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = table.set_column(1, "label", pa.array([0, 7], pa.int64()))  # a class index past the ClassLabel's names
    (tmp_path / "oob").mkdir()
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), tmp_path / "oob" / "train.parquet")
    p = deft("check", tmp_path / "oob", cache=cache, check=False)
    assert p.returncode == 2 and "label 7 is outside the ClassLabel's 2 names" in p.stderr


@pytest.mark.slow
def test_hf_round_trip_import_detect_review_export_load_from_disk(run_copy, tmp_path):
    run_dir, cache, classes = run_copy
    run = Run.open(run_dir)
    store = ReviewStore.for_run(run)
    ids = store.sample_ids()
    given = dict(zip(store.scores()["id"], store.scores()["label"], strict=True))
    other = next(c for c in classes if c != given[ids[0]])
    store.decide(ids[0], "relabel", other, by="alice")
    store.decide(ids[1], "exclude", by="bob")
    store.decide(ids[2], "keep", by="alice")
    deft("export", run_dir, "--format", "hf", "--out", tmp_path / "cleaned", cache=cache)
    dd = datasets.load_from_disk(str(tmp_path / "cleaned"))
    assert set(dd) == {"train", "test"} and len(dd["train"]) == 50 and len(dd["test"]) == 10
    feats = dd["train"].features
    assert feats["label"].names == classes and feats["original_label"].names == classes
    assert {"sim_pos", "sim_neg", "margin", "suggestion", "suggestion_conf"} <= set(feats)
    rows = {r["deft_id"]: r for r in dd["train"]}
    assert (classes[rows[ids[0]]["label"]], rows[ids[0]]["status"], rows[ids[0]]["reviewer"]) == (
        other, "relabelled", "alice")
    assert (rows[ids[1]]["label"], rows[ids[1]]["status"], rows[ids[1]]["reviewer"]) == (-1, "excluded", "bob")
    assert classes[rows[ids[2]]["label"]] == given[ids[2]] and rows[ids[2]]["status"] == "kept"
    assert all(classes[r["original_label"]] == given[i] for i, r in rows.items())
    assert rows[ids[0]]["image"].size == (32, 32)  # the image itself travels, decodable
    assert set(dd["test"]["status"]) == {"heldout"}


def ls_annotation(choice: str, who, cancelled: bool = False, at: str = "2026-01-01T10:00:00Z") -> dict:
    """One annotation as Label Studio's JSON export writes it."""
    return {"id": 1, "completed_by": who, "was_cancelled": cancelled, "created_at": at, "updated_at": at,
            "result": [{"id": "r1", "from_name": "label", "to_name": "image", "type": "choices", "origin": "manual",
                        "value": {"choices": [choice]}}]}


@pytest.mark.slow
def test_label_studio_tasks_out_annotations_back_as_decisions_stale_refused(run_copy, tmp_path):
    run_dir, cache, classes = run_copy
    tasks_file = tmp_path / "tasks.json"
    out = deft("export", run_dir, "--format", "label-studio", "--all", "--out", tasks_file, cache=cache).stdout
    assert "50 Label Studio tasks" in out and "import-review" in out
    tasks = json.loads(tasks_file.read_text())
    run = Run.open(run_dir)
    scores = run.scores().set_index("id")
    for t in tasks:  # Label Studio's import format: data + predictions (model_version, score, choices result)
        assert t["data"]["image"].startswith("/data/local-files/?d=")
        assert (Path(run.dataset.root) / t["data"]["image"].split("?d=")[1]).is_file()
        pred = t["predictions"][0]
        assert pred["model_version"] == f"deft {run_dir.name}"
        assert pred["score"] == pytest.approx(scores.at[t["data"]["deft_id"], "suggestion_conf"])
        assert pred["result"][0]["value"]["choices"] == [scores.at[t["data"]["deft_id"], "suggestion"]]
        assert (pred["result"][0]["from_name"], pred["result"][0]["to_name"]) == ("label", "image")
    view = ET.parse(tasks_file.with_name("tasks.label_config.xml")).getroot()
    choices = view.find("Choices")
    assert (choices.get("name"), choices.get("toName"), view.find("Image").get("value")) == ("label", "image",
                                                                                            "$image")
    assert [c.get("value") for c in choices.findall("Choice")][:-1] == classes

    t = {x["data"]["deft_id"]: x for x in tasks}
    ids = list(t)
    given = {i: t[i]["data"]["deft_label"] for i in ids}
    other = {i: next(c for c in classes if c not in (given[i], t[i]["data"]["deft_suggestion"])) for i in ids}
    annotated = []
    for k, (choice, who) in enumerate([(given[ids[0]], {"email": "ann@lab.org", "id": 3}),
                                       (other[ids[1]], 7), ("__deft_exclude__", {"email": "ann@lab.org"}),
                                       (other[ids[3]], {"email": "ann@lab.org"}), ("zebra", 7)]):
        annotated.append({**t[ids[k]], "id": 100 + k, "annotations": [ls_annotation(choice, who)]})
    annotated.append({**t[ids[5]], "id": 105, "annotations": [ls_annotation(given[ids[5]], 7, cancelled=True)]})
    export = tmp_path / "ls-export.json"
    export.write_text(json.dumps(annotated))
    store = ReviewStore.for_run(run)
    store.decide(ids[3], "keep", by="carol")  # decided in deft after the export: the task is stale
    p = deft("import-review", run_dir, export, cache=cache, check=False)
    assert p.returncode == 1, p.stderr
    assert "recorded 3 decision(s)" in p.stdout and "2 by ann@lab.org, 1 by label-studio user 7" in p.stdout
    assert "1 task(s) without an annotation" in p.stdout
    assert f"refused {ids[3]}: it was reviewed (or undone) since the tasks were exported" in p.stdout
    assert f"refused {ids[4]}: unknown class 'zebra'" in p.stdout
    cur = store.current().set_index("id")
    assert (cur.at[ids[0], "status"], cur.at[ids[0], "decided_by"]) == ("kept", "ann@lab.org")
    assert (cur.at[ids[1], "status"], cur.at[ids[1], "final_label"]) == ("relabelled", other[ids[1]])
    assert cur.at[ids[1], "decided_by"] == "label-studio user 7"
    assert cur.at[ids[2], "status"] == "excluded"
    assert (cur.at[ids[3], "decided_by"], ids[4] in cur.index, ids[5] in cur.index) == ("carol", False, False)
    p = deft("import-review", run_dir, export, cache=cache, check=False)  # the same file again: all stale now
    assert "recorded 0 decision(s)" in p.stdout and p.stdout.count("since the tasks were exported") == 4
    assert len(store.log()) == 4
    (tmp_path / "min.json").write_text(json.dumps([{"image": "x.jpg", "label": "cat"}]))  # a JSON-MIN export
    p = deft("import-review", run_dir, tmp_path / "min.json", cache=cache, check=False)
    assert p.returncode == 2 and "not a Label Studio JSON export" in p.stderr and len(p.stderr.splitlines()) == 1
    p = deft("export", run_dir, "--format", "label-studio", "--out", tmp_path / "t.json", "--document-root",
             tmp_path, cache=cache, check=False)
    assert p.returncode == 2 and "is outside --document-root" in p.stderr


@pytest.mark.slow
def test_label_studio_sdk_accepts_the_tasks_and_reads_the_annotations_as_we_do(run_copy, tmp_path):
    """label-studio-sdk's own LabelInterface and Converter on our tasks, config and an annotated export."""
    pytest.importorskip("label_studio_sdk.label_interface")
    from label_studio_sdk.converter import Converter
    from label_studio_sdk.label_interface import LabelInterface

    from deft.storage.interop_ls import annotator, choices_of, latest_annotation

    run_dir, cache, classes = run_copy
    deft("export", run_dir, "--format", "label-studio", "--all", "--out", tmp_path / "tasks.json", cache=cache)
    config = (tmp_path / "tasks.label_config.xml").read_text()
    li = LabelInterface(config)
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    for t in tasks:
        assert all(t["data"].get(o.value_name) is not None for o in li.objects if o.value_is_variable)
        assert li.validate_prediction(t["predictions"][0], return_errors=True) == []
    annotated = [{**t, "id": k, "annotations": [ls_annotation(c, {"email": f"a{k}@lab.org", "id": k},
                                                              at=f"2026-01-0{1 + k % 5}T10:00:00Z")]}
                 for k, (t, c) in enumerate(zip(tasks, [*classes, *classes], strict=False))]
    annotated[0]["annotations"].append(ls_annotation(classes[1], {"email": "late@lab.org"}, at="2026-02-01T00:00:00Z"))
    annotated[1]["annotations"].append(ls_annotation(classes[2], {"email": "x@lab.org"}, cancelled=True,
                                                     at="2026-03-01T00:00:00Z"))
    assert all(li.validate_annotation(a) for t in annotated for a in t["annotations"])
    assert li.validate_annotation(ls_annotation("__deft_exclude__", 1)) and not li.validate_annotation(
        ls_annotation("zebra", 1))  # the Exclude choice's alias is the value Label Studio stores
    (tmp_path / "export.json").write_text(json.dumps(annotated))
    theirs = {}
    for item in Converter(config, str(tmp_path)).iter_from_json_file(str(tmp_path / "export.json")):
        theirs.setdefault(item["id"], (item["output"]["label"][0]["choices"], item["completed_by"]["email"]))
    ours = {t["id"]: (choices_of(latest_annotation(t)), annotator(latest_annotation(t))) for t in annotated}
    assert theirs == ours and ours[0] == ([classes[1]], "late@lab.org") and ours[1][1] == "a1@lab.org"


def test_label_studio_export_imports_as_a_dataset(tmp_path, cifar_small):
    files = sorted(cifar_small.glob("*/*.jpg"))
    media = tmp_path / "media"
    tasks = []
    for k, f in enumerate(files[:30]):
        rel = f.relative_to(cifar_small).as_posix()
        if k % 2:
            url = f"/data/local-files/?d=docs/{rel}"
            dst = media / "docs" / rel
        else:
            url = f"/data/upload/4/{k:03d}-{f.name}"
            dst = media / "upload" / "4" / f"{k:03d}-{f.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
        tasks.append({"id": k, "data": {"image": url}, "annotations": [ls_annotation(f.parent.name, 1)]})
    tasks.append({"id": 90, "data": {"image": "https://example.com/a.jpg"},
                  "annotations": [ls_annotation("cat", 1)]})
    tasks.append({"id": 91, "data": {"image": f"/data/upload/4/000-{files[0].name}"}, "annotations": []})
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    ds = load_dataset(tmp_path / "export.json", root=media)
    assert ds.N == 30 and set(ds.classes) == {f.parent.name for f in files[:30]}
    problems = dict(zip(ds.issues["path"], ds.issues["problem"], strict=True))
    assert "cannot be read offline" in problems["task 90"] and problems["upload/4/000-" + files[0].name] == (
        "no annotation (skipped)")
    (tmp_path / "urls.json").write_text(json.dumps(tasks[-2:-1]))
    p = deft("check", tmp_path / "urls.json", cache=tmp_path / "c", check=False)
    assert p.returncode == 2 and "URLs deft cannot read offline" in p.stderr
    (tmp_path / "corrupt.json").write_text("[{")
    p = deft("check", tmp_path / "corrupt.json", cache=tmp_path / "c", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: Could not read") and "Traceback" not in p.stderr


def test_fiftyone_image_classification_folder_imports(tmp_path, cifar_small):
    files = sorted(cifar_small.glob("*/*.jpg"))
    classes = sorted({f.parent.name for f in files})
    data = tmp_path / "fo" / "data"
    data.mkdir(parents=True)
    labels = {}
    for k, f in enumerate(files):
        shutil.copy(f, data / f"{k:04d}.jpg")
        c = f.parent.name
        labels[f"{k:04d}"] = [classes.index(c), c, {"label": c, "confidence": 0.9}][k % 3]
    labels["0000"], labels["0001"], labels["9999"] = None, [{"label": "cat"}, {"label": "dog"}], 0
    (tmp_path / "fo" / "labels.json").write_text(json.dumps({"classes": classes, "labels": labels}))
    ds = load_dataset(tmp_path / "fo")
    assert ds.N == 58 and ds.classes == classes
    assert dict(zip(ds.samples["id"], ds.samples["label"], strict=True))["data/0004.jpg"] == files[4].parent.name
    problems = dict(zip(ds.issues["path"], ds.issues["problem"], strict=True))
    assert problems["data/0000.jpg"].startswith("no label") and "multi-label" in problems["data/0001.jpg"]
    assert problems["9999"].startswith("listed in labels.json, but no image")
    labels["0002"] = "zebra"
    (tmp_path / "fo" / "labels.json").write_text(json.dumps({"classes": classes, "labels": labels}))
    with pytest.raises(DataError, match=r"unknown class label\(s\) \['zebra'\]"):
        load_dataset(tmp_path / "fo")


def check_against_fiftyone_importer(folder: Path) -> list[dict]:
    """What fiftyone 1.22.1's FiftyOneDatasetImporter does with ``folder``, as its code reads: no ``version`` in
    metadata.json -> LegacyFiftyOneDatasetImporter; samples.json's ``samples``; a relative ``filepath`` is joined
    to the folder; label dicts are documents by their ``_cls``."""
    meta = json.loads((folder / "metadata.json").read_text())
    assert "version" not in meta and meta["media_type"] == "image"
    samples = json.loads((folder / "samples.json").read_text())["samples"]
    for s in samples:
        assert not os.path.isabs(s["filepath"]) and (folder / s["filepath"]).is_file()
        for v in s.values():
            if isinstance(v, dict):
                assert v["_cls"] == "Classification" and isinstance(v["label"], str)
    return samples


@pytest.mark.slow
def test_fiftyone_export_has_the_review_fields_in_fiftyones_dataset_layout(run_copy, tmp_path):
    run_dir, cache, classes = run_copy
    store = ReviewStore.for_run(Run.open(run_dir))
    sid = store.sample_ids()[0]
    label = next(c for c in classes if c != store.scores().set_index("id").at[sid, "label"])
    store.decide(sid, "relabel", label, by="dana")
    deft("export", run_dir, "--format", "fiftyone", "--out", tmp_path / "fo", cache=cache)
    samples = check_against_fiftyone_importer(tmp_path / "fo")
    assert len(samples) == 60
    by_id = {s["filepath"].removeprefix("data/"): s for s in samples}
    s = by_id[sid]
    assert (s["cleaned"]["label"], s["review_status"], s["reviewer"]) == (label, "relabelled", "dana")
    assert isinstance(s["deft_margin"], float) and 0 <= s["deft_suggestion"]["confidence"] <= 1
    assert {x["review_status"] for x in samples} >= {"heldout", "relabelled"}


@pytest.mark.slow
def test_fiftyones_own_importers_read_the_export_and_the_import_layout(run_copy, tmp_path, cifar_small):
    """fiftyone's importer classes, run without its database (setup + iteration build Samples and labels)."""
    foud = pytest.importorskip("fiftyone.utils.data.importers")
    fol = pytest.importorskip("fiftyone.core.labels")
    run_dir, cache, classes = run_copy
    deft("export", run_dir, "--format", "fiftyone", "--out", tmp_path / "fo", cache=cache)
    importer = foud.FiftyOneDatasetImporter(str(tmp_path / "fo"))
    assert importer._is_legacy_format_data()  # how FiftyOneDatasetImporter picks the reader of this layout
    legacy = importer._to_legacy_importer()
    legacy.setup()
    samples = list(legacy)
    assert len(samples) == 60 and legacy.get_dataset_info()["classes"] == classes
    suspects = [s for s in samples if s["review_status"] != "heldout"]
    assert all(isinstance(s["ground_truth"], fol.Classification) and isinstance(s["deft_margin"], float)
               and isinstance(s["deft_suggestion"], fol.Classification)
               and 0 <= s["deft_suggestion"].confidence <= 1 and os.path.isfile(s.filepath) for s in suspects)

    files = sorted(cifar_small.glob("*/*.jpg"))[:12]
    (tmp_path / "cls" / "data").mkdir(parents=True)
    for k, f in enumerate(files):
        shutil.copy(f, tmp_path / "cls" / "data" / f"{k:02d}.jpg")
    names = sorted({f.parent.name for f in files})
    labels = {f"{k:02d}": [names.index(f.parent.name), f.parent.name, {"label": f.parent.name, "confidence": 0.5}][
        k % 3] for k, f in enumerate(files)}
    (tmp_path / "cls" / "labels.json").write_text(json.dumps({"classes": names, "labels": labels}))
    theirs = foud.FiftyOneImageClassificationDatasetImporter(str(tmp_path / "cls"))
    theirs.setup()
    fo_labels = {Path(path).name: label.label for path, _, label in theirs}
    ours = load_dataset(tmp_path / "cls")
    assert dict(zip(ours.samples["id"].str.removeprefix("data/"), ours.samples["label"], strict=True)) == fo_labels


@pytest.mark.slow
def test_fiftyone_loads_the_export_when_installed(run_copy, tmp_path):
    fo = pytest.importorskip("fiftyone")  # not installable offline here (fiftyone-db downloads MongoDB at install)
    run_dir, cache, _ = run_copy
    deft("export", run_dir, "--format", "fiftyone", "--out", tmp_path / "fo", cache=cache)
    from fiftyone.core.config import FiftyOneConfigError

    try:
        ds = fo.Dataset.from_dir(str(tmp_path / "fo"), dataset_type=fo.types.FiftyOneDataset)
    except FiftyOneConfigError as exc:  # installed without fiftyone-db and no database_uri: no database to load into
        pytest.skip(f"fiftyone is installed but its database cannot start: {exc}")
    assert len(ds) == 60 and {"ground_truth", "deft_suggestion", "deft_margin", "review_status"} <= set(
        ds.get_field_schema())
    assert ds.sort_by("deft_margin").first()["deft_margin"] <= ds.sort_by("deft_margin", reverse=True).first()[
        "deft_margin"]


def test_serve_hands_the_source_to_the_app(monkeypatch):
    import types

    from deft import cli

    seen = []
    monkeypatch.setitem(sys.modules, "deft.ui.serve", types.SimpleNamespace(main=lambda argv, prog: seen.append(argv)))
    assert cli.main(["serve", "some/hf_dataset", "--port", "7999"]) == 0
    assert cli.main(["serve", "--data", "x.json", "--root", "media"]) == 0
    assert seen == [["--data", "some/hf_dataset", "--port", "7999"], ["--data", "x.json", "--root", "media"]]
    p = subprocess.run([sys.executable, "-m", "deft", "serve", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "--data" in p.stdout and "--auth-file" in p.stdout


def test_the_app_loads_a_hugging_face_source_inside_its_data_roots(tmp_path, monkeypatch, cifar_small):
    from deft.storage.roots import default_roots
    from deft.ui.workspace import AppSettings, Workspace

    monkeypatch.setenv("DEFT_IMPORT_CACHE", str(tmp_path / "cache"))
    hf_dataset(tmp_path / "data" / "hf", cifar_small)
    source = str(tmp_path / "data" / "hf")
    roots = tuple(str(p) for p in default_roots(source, tmp_path / "demo"))  # what `deft serve SOURCE` allows
    ws = Workspace(AppSettings(data=source, runs=tmp_path / "runs", data_roots=roots))
    ds = ws.load(source)
    assert ds.N == 60 and ws.sample_path(ds.samples["id"].iloc[0]).is_file()


def test_the_app_opens_only_the_fiftyone_dataset_it_was_started_on(tmp_path):
    from deft.storage.roots import OutsideRootsError, default_roots
    from deft.ui.workspace import AppSettings, Workspace

    roots = default_roots("fiftyone:birds", tmp_path / "demo")
    assert roots == [tmp_path / "demo"]  # the working folder is not opened by a database name
    ws = Workspace(AppSettings(data="fiftyone:birds", runs=tmp_path / "runs", data_roots=tuple(map(str, roots))))
    with pytest.raises(OutsideRootsError):
        ws.load("fiftyone:other")
    if importlib.util.find_spec("fiftyone") is None:
        with pytest.raises(DataError, match="needs the fiftyone package"):
            ws.load("fiftyone:birds")
