"""Issue 22: :class:`deft.project.Project`, the layout and operations both front ends share, used directly."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from deft.cli import build_parser, main, phase1_config
from deft.core.config import phase1_preset
from deft.core.metrics import detection_metrics
from deft.project import Project
from deft.review import dataset_key
from deft.storage.load import load_dataset
from deft.storage.run import Run
from deft.storage.store import ReviewStore
from deft.storage.truth import PLANTED_FILE, ground_truth


@pytest.fixture
def planted(tmp_path, cifar_small):
    """A copy of the 60 CIFAR images with a PLANTED.csv of three wrong labels (the demo's ground truth file)."""
    data = shutil.copytree(cifar_small, tmp_path / "data")
    ds = load_dataset(data)
    rows = ds.samples.iloc[[0, 7, 20]]
    wrong = [next(c for c in ds.classes if c != lab) for lab in rows["label"]]
    pd.DataFrame({"path": rows["id"], "true_label": wrong, "given_label": rows["label"]}).to_csv(
        data / PLANTED_FILE, index=False)
    return data


def _config(model, epochs: int = 1):
    return phase1_preset(model=str(model), optim={"epochs": epochs, "batch_size": 32})


def _same(a: dict, b: dict) -> bool:
    """Equal metrics (NaN equal to NaN: a 1-epoch detection may select no clean sample)."""
    return a.keys() == b.keys() and all(np.isclose(a[k], b[k], equal_nan=True) for k in a)


def test_layout_and_latest_finished_detection(tmp_path):
    project = Project(tmp_path / "runs", "/data/pets")
    assert project.home == tmp_path / "runs" / dataset_key("/data/pets") and project.key.startswith("pets-")
    assert project.store_path == project.home / "review.sqlite"
    assert project.exports_dir == project.home / "exports"
    assert project.thumbs == (tmp_path / "runs").resolve() / ".thumbs"
    cfg = _config("m")
    assert project.detect_dir(cfg).name.startswith("detect-") and project.detect_dir(cfg) == project.detect_dir(cfg)
    assert project.detect_dir(cfg, "zeroshot").name == project.detect_dir(cfg).name + "-zeroshot"
    assert project.detect_dir(_config("m", 2)) != project.detect_dir(cfg)  # one folder per setting
    assert project.latest_run_dir() is None
    for i, name in enumerate(["detect-b", "detect-a", "detect-unfinished", "other"]):
        (project.home / name).mkdir(parents=True)
        if name != "detect-unfinished":
            (project.home / name / "scores.parquet").write_bytes(b"")
            os.utime(project.home / name / "scores.parquet", (1000 + i, 1000 + i))
    assert [p.name for p in project.run_dirs()] == ["detect-b", "detect-a"]  # by scores time, finished only
    assert project.latest_run_dir() == project.home / "detect-a"


def test_store_path_of_a_run_folder(tmp_path):
    class FakeRun:
        path = tmp_path / "home" / "detect-1"

    FakeRun.path.mkdir(parents=True)
    assert Project.store_path_for(FakeRun) == FakeRun.path / "review.sqlite"  # a CLI run: its own store
    (FakeRun.path.parent / "review.sqlite").write_bytes(b"")
    assert Project.store_path_for(FakeRun) == FakeRun.path.parent / "review.sqlite"  # the app's shared store
    (FakeRun.path / "review.sqlite").write_bytes(b"")
    assert Project.store_path_for(FakeRun) == FakeRun.path / "review.sqlite"  # its own one wins


def test_ground_truth_reads_planted_csv_in_detect_and_audit(tmp_path, planted, tiny_clip_dir):
    project = Project(tmp_path / "runs", str(planted))
    ds = project.import_dataset()
    res = project.detect(ds, _config(tiny_clip_dir), device="cpu")
    assert res.run.path.parent == project.home and res.run.path == project.latest_run_dir()
    truth = Project.ground_truth(res.run)
    assert truth is not None and (~truth).sum() == 3  # PLANTED.csv, though the table has no true_label
    expected = detection_metrics(res.scores["is_clean"].to_numpy(), truth[ds.train_rows],
                                 res.scores["margin"].to_numpy())
    assert _same(res.metrics, expected) and _same(Run.open(res.run.path).metrics(), expected)  # saved as detect's
    store = project.open_store(res.run)
    m = Project.planted_summary(res.run, store)
    assert m["n_planted"] == 3 and np.isclose(m["precision"], expected["precision"], equal_nan=True)
    audited = Project.audit(res.run.path, device="cpu")
    assert audited.metrics is not None  # the audit reads the same ground truth
    np.testing.assert_array_equal(ground_truth(Run.open(res.run.path)), truth)


def test_export_is_the_same_from_cli_and_app(tmp_path, planted, tiny_clip_dir):
    from deft.ui.workspace import AppSettings, Workspace

    ws = Workspace(AppSettings(data=str(planted), model=str(tiny_clip_dir), runs=tmp_path / "runs", device="cpu",
                               batch_size=32))
    ws.load(str(planted))
    job = ws.start_detect(str(tiny_clip_dir), False, 1, method="all")  # DEFT + audit: the audit columns too
    job.join(300)
    assert job.status == "done", job.error
    item = ws.queue("t").current()
    to = next(c for c in ws.store.classes if c != item["label"])
    ws.queue("t").act(item["id"], item["version"], "relabel", to)
    app_csv, _, app_df = ws.export()
    assert app_csv.parent == ws.project.exports_dir and any(c.endswith("_issue") for c in app_df.columns)
    lib = Project.export_frame(ws.run)  # no store given: the app's shared one, found from the run folder
    pd.testing.assert_frame_equal(lib, app_df)
    out = tmp_path / "cli.csv"
    assert main(["export", str(ws.run.path), "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(app_csv))
    assert pd.read_csv(out).set_index("path").loc[item["id"], "final_label"] == to


def test_detect_out_defaults_to_the_project_layout(tmp_path, planted, tiny_clip_dir):
    runs = tmp_path / "runs"
    argv = ["detect", str(planted), "--model", str(tiny_clip_dir), "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--runs", str(runs)]
    assert main(argv) == 0
    project = Project(runs, str(planted))
    expected = project.detect_dir(phase1_config(build_parser().parse_args(argv)))
    assert (expected / "scores.parquet").is_file() and project.latest_run_dir() == expected
    from deft.ui.workspace import AppSettings, Workspace

    ws = Workspace(AppSettings(data=str(planted), runs=runs, device="cpu"))
    ws.load(str(planted))
    assert ws.run is not None and ws.run.path == expected  # the app opens the CLI's detection
    assert ReviewStore(project.store_path).count()["total"] == len(Run.open(expected).scores())
    explicit = tmp_path / "explicit"
    assert main([*argv, "--out", str(explicit)]) == 0 and (explicit / "scores.parquet").is_file()
    assert project.latest_run_dir() == expected  # an explicit --out is not in the project's home
