"""Import validation: each bad input gives its clear error; nothing is dropped silently."""

import shutil

import pandas as pd
import pytest

from deft.storage.data import DataError, load_class_descriptions
from deft.storage.load import load_dataset


def test_image_folder_ids_and_classes(cifar_small):
    ds = load_dataset(cifar_small)
    assert ds.N == 60 and ds.K == 10 and len(ds.issues) == 0
    assert ds.samples["id"].iloc[0] == "airplane/0000.jpg"
    assert ds.class_counts().tolist() == [6] * 10


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="Dataset folder not found"):
        load_dataset(tmp_path / "nope")


def test_empty_class_folder(tmp_path, cifar_small):
    root = tmp_path / "d"
    shutil.copytree(cifar_small, root)
    (root / "zebra").mkdir()
    with pytest.raises(DataError, match="Class folder 'zebra' has no images"):
        load_dataset(root)


def test_corrupt_and_truncated_images_are_listed_and_excluded(tmp_path, cifar_small):
    root = tmp_path / "d"
    shutil.copytree(cifar_small, root)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    data = (root / "dog" / "0000.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "dog" / "notes.txt").write_text("hello")
    ds = load_dataset(root)
    assert ds.N == 60
    problems = dict(zip(ds.issues["path"], ds.issues["problem"], strict=True))
    assert "unreadable image" in problems["cat/broken.jpg"]
    assert "unreadable image" in problems["dog/truncated.jpg"]
    assert "not an image" in problems["dog/notes.txt"]


def _csv(tmp_path, rows, name="labels.csv"):
    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def test_csv_table_with_root(tmp_path, cifar_small):
    p = _csv(tmp_path, {"path": ["cat/0000.jpg", "dog/0001.jpg"], "label": ["cat", "dog"]})
    ds = load_dataset(p, root=cifar_small)
    assert ds.classes == ["cat", "dog"] and ds.samples["id"].tolist() == ["cat/0000.jpg", "dog/0001.jpg"]


def test_csv_unknown_label(tmp_path, cifar_small):
    desc = tmp_path / "classes.txt"
    desc.write_text("cat -> a cat\ndog -> a dog\n")
    p = _csv(tmp_path, {"path": ["cat/0000.jpg", "dog/0001.jpg"], "label": ["cat", "wolf"]})
    with pytest.raises(DataError, match=r"unknown class label\(s\) \['wolf'\]"):
        load_dataset(p, root=cifar_small, descriptions=desc)


def test_csv_duplicate_paths(tmp_path, cifar_small):
    p = _csv(tmp_path, {"path": ["cat/0000.jpg", "./cat/0000.jpg"], "label": ["cat", "cat"]})
    with pytest.raises(DataError, match="duplicate path"):
        load_dataset(p, root=cifar_small)


def test_csv_path_escaping_root(tmp_path, cifar_small):
    p = _csv(tmp_path, {"path": ["../../etc/passwd"], "label": ["cat"]})
    with pytest.raises(DataError, match="outside the dataset root"):
        load_dataset(p, root=cifar_small)


def test_csv_missing_columns_and_corrupt(tmp_path, cifar_small):
    p = _csv(tmp_path, {"file": ["a.jpg"], "label": ["cat"]})
    with pytest.raises(DataError, match=r"missing column\(s\) \['path'\]"):
        load_dataset(p, root=cifar_small)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="Could not read"):
        load_dataset(bad, root=cifar_small)


def test_csv_missing_file_is_reported(tmp_path, cifar_small):
    p = _csv(tmp_path, {"path": ["cat/0000.jpg", "cat/9999.jpg", "dog/0000.jpg"], "label": ["cat", "cat", "dog"]})
    ds = load_dataset(p, root=cifar_small)
    assert ds.N == 2 and ds.issues["problem"].tolist() == ["file not found"]


def test_class_descriptions(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text("# comment\nmaple_tree -> maple tree\nfish, a fish\n")
    assert load_class_descriptions(f) == {"maple_tree": "maple tree", "fish": "a fish"}
    f.write_text("no separator here\n")
    with pytest.raises(DataError, match="expected 'class -> prompt text'"):
        load_class_descriptions(f)


def test_data_roots_refuse_outside_paths_and_symlinks_without_echoing(tmp_path):
    from deft.storage.roots import DataRoots, OutsideRootsError

    inside, outside = tmp_path / "data", tmp_path / "secret"
    (inside / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "labels.csv").write_text("SECRET_HEADER,x\n")
    (inside / "escape").symlink_to(outside)
    roots = DataRoots.of([inside])
    assert roots.check(inside / "a") == (inside / "a").resolve()
    for bad in (outside / "labels.csv", inside / "escape" / "labels.csv", inside / ".." / "secret", "/etc"):
        with pytest.raises(OutsideRootsError) as e:
            roots.check(bad)
        assert "SECRET" not in str(e.value) and "secret" not in str(e.value) and str(e.value).count(".") == 1


def test_workspace_refuses_paths_outside_roots_and_creates_no_run_folder(tmp_path, cifar_small):
    from deft.ui.workspace import AppSettings, Workspace

    runs = tmp_path / "runs"
    ws = Workspace(AppSettings(runs=runs, data_roots=(str(tmp_path / "allowed"),)))
    (tmp_path / "allowed").mkdir()
    with pytest.raises(DataError, match="outside the data folders"):
        ws.load(str(cifar_small))
    assert not runs.exists() and ws.dataset is None


def test_worker_processes_report_the_same_problems_as_threads(tmp_path, cifar_small):
    """Large imports check files in worker processes (``deft.storage.parallel``); every problem reads the same."""
    import os

    from deft.storage.data import check_images

    root = tmp_path / "d"
    shutil.copytree(cifar_small, root)
    data = (root / "dog" / "0000.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "dog" / "0001.jpg", outside / "x.jpg")
    (root / "cat" / "escape.jpg").symlink_to(outside / "x.jpg")
    (root / "cat" / "inside.jpg").symlink_to(root / "dog" / "0002.jpg")
    (root / "cat" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (root / "cat" / "loop.jpg").symlink_to(root / "cat" / "loop.jpg")
    (root / "linked").symlink_to(outside)  # a folder inside the root that leads out of it
    os.mkfifo(root / "cat" / "pipe.jpg")
    names = ["dog/0000.jpg", "dog/truncated.jpg", "cat/broken.jpg", "cat/escape.jpg", "cat/inside.jpg",
             "cat/gone.jpg", "cat/loop.jpg", "linked/x.jpg", "cat/pipe.jpg", "cat/missing.jpg", "dog"]
    paths = [root / n for n in names]
    threads = check_images(paths, root=root, processes=False)
    procs = check_images(paths, root=root, processes=True)
    assert procs == threads
    got = dict(zip(names, procs, strict=True))
    assert got["dog/0000.jpg"] is None and got["cat/inside.jpg"] is None
    assert "unreadable image" in got["dog/truncated.jpg"] and "unreadable image" in got["cat/broken.jpg"]
    assert "outside the dataset root" in got["cat/escape.jpg"] and "outside the dataset root" in got["linked/x.jpg"]
    assert "broken symlink" in got["cat/gone.jpg"] and "symlink loop" in got["cat/loop.jpg"]
    assert "not a regular file" in got["cat/pipe.jpg"] and got["cat/missing.jpg"] == "file not found"
    assert "folder" in got["dog"]
