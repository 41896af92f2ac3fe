"""The Train tab's list of past training runs is built from the run folders (no browser needed)."""

import json

import pandas as pd

from deft.storage.train_runs import fingerprint, folder_for, list_training_runs, runs_table


def _write(folder, name, obj):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj))


def test_run_list_is_built_from_the_folders(tmp_path):
    root = tmp_path / "phase2"
    cfg = {"optim": {"epochs": 5}}
    _write(root / "001", "train.json", {"fingerprint": "a", "config": cfg, "tags": {"mode": "clean"}})
    _write(root / "001", "summary.json", {"history": [{"epoch": e} for e in range(1, 6)], "last_val_acc": 0.5,
                                          "best_val_acc": 0.625, "heldout": "the 20 split=test rows"})
    _write(root / "002", "train.json", {"fingerprint": "b", "config": cfg, "tags": {"mode": "pseudo"},
                                        "heldout": "12 curated rows held out at random"})
    (root / "002" / "checkpoint.pt").write_bytes(b"x")
    (root / "notes").mkdir()  # a folder without a run is not listed
    runs = list_training_runs(root)
    assert [r.path.name for r in runs] == ["001", "002"]
    table = runs_table(runs)
    assert list(table["mode"]) == ["clean", "pseudo"]
    assert list(table["status"]) == ["finished", "interrupted"]
    assert list(table["epochs"]) == ["5/5", "0/5"]
    assert table.loc[0, "last acc"] == "50.00%" and table.loc[0, "best acc"] == "62.50%"
    assert table.loc[1, "last acc"] == "" and "held out at random" in table.loc[1, "held out on"]
    assert "split=test" in table.loc[0, "held out on"]


def test_the_cli_default_folder_is_listed_and_a_missing_root_gives_no_runs(tmp_path):
    assert list_training_runs(tmp_path / "nope") == []
    _write(tmp_path / "phase2", "summary.json", {"history": [{"epoch": 1}], "last_val_acc": 1.0,
                                                 "best_val_acc": 1.0, "heldout": "x"})
    assert [r.status for r in list_training_runs(tmp_path / "phase2")] == ["finished"]


def test_an_interrupted_run_with_the_same_fingerprint_is_resumed_else_a_new_folder(tmp_path):
    root = tmp_path / "phase2"
    cur = pd.DataFrame({"id": ["a.jpg", "b.jpg"], "label": ["cat", "dog"]})
    fp = fingerprint({"seed": 0}, cur)
    assert fp != fingerprint({"seed": 1}, cur) and fp != fingerprint({"seed": 0}, cur.assign(label=["cat", "cat"]))
    assert folder_for(root, fp) == root / "001"
    _write(root / "001", "train.json", {"fingerprint": fp})
    assert folder_for(root, fp) == root / "001"  # interrupted, same run: resume there
    assert folder_for(root, "other") == root / "002"
    _write(root / "001", "summary.json", {})
    assert folder_for(root, fp) == root / "002"  # finished: a new run


def test_an_interrupted_run_counts_the_epochs_its_log_finished(tmp_path):
    """Issue 19, item 24: a run interrupted after 2 of 6 epochs was listed as 0/6 (only summary.json, written at
    the end, was read). Its own log counts them; an epoch retrained after a resume counts once, a torn line none."""
    from deft.storage.train_runs import log_epoch

    folder = tmp_path / "phase2" / "001"
    _write(folder, "train.json", {"fingerprint": "a", "config": {"optim": {"epochs": 6}}, "tags": {"mode": "clean"}})
    for e in (1, 2, 2):
        log_epoch(folder, {"epoch": e, "loss": 1.0 / e, "val_acc": 0.1 * e})
    with open(folder / "log.jsonl", "a") as f:
        f.write('{"stage": "phase2", "epo')  # cut by a kill
    (run,) = list_training_runs(tmp_path / "phase2")
    assert run.status == "interrupted" and run.epochs_done == 2
    assert [h["epoch"] for h in run.history] == [1, 2] and run.confusion is None
    assert list(runs_table([run])["epochs"]) == ["2/6"]


def test_an_interrupted_run_without_its_own_log_counts_its_checkpoints_epochs(tmp_path):
    """Issue 19, item 24 (rest): a run interrupted before runs kept their own log.jsonl (or whose log began at a
    resume) was listed as 0/6; the checkpoint holds the history of every finished epoch, and is counted."""
    import torch

    from deft.storage.atomic import save_torch
    from deft.storage.train_runs import log_epoch

    folder = tmp_path / "phase2" / "001"
    _write(folder, "train.json", {"fingerprint": "a", "config": {"optim": {"epochs": 6}}, "tags": {"mode": "clean"}})
    history = [{"epoch": e, "loss": 1.0 / e, "val_acc": 0.1 * e} for e in (1, 2, 3)]
    save_torch(folder / "checkpoint.pt", {"module": {"w": torch.zeros(4)}, "history": history, "epoch": 2,
                                          "owner": "a"})
    (run,) = list_training_runs(tmp_path / "phase2")
    assert run.status == "interrupted" and run.epochs_done == 3 and list(runs_table([run])["epochs"]) == ["3/6"]
    assert [h["epoch"] for h in run.history] == [1, 2, 3]
    log_epoch(folder, history[2])  # a log begun at a resume holds the last epoch only: the checkpoint has all
    (run,) = list_training_runs(tmp_path / "phase2")
    assert run.epochs_done == 3
