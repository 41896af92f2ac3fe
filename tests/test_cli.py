"""CLI end to end on ~200 real CIFAR-10 images with the tiny model: noise -> detect -> train -> export."""

import subprocess
import sys
import time

import pandas as pd
import pytest

from deft.storage.export import EXPORT_COLUMNS

from .conftest import ROOT


def deft(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "deft", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"deft {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.mark.slow
def test_cli_noise_detect_train_export(tmp_path, cifar200, tiny_clip_dir):
    t0 = time.perf_counter()
    noisy = tmp_path / "noisy.csv"
    out = deft("noise", cifar200, "--kind", "sym", "--rate", "0.4", "--seed", "1", "--out", noisy).stdout
    assert "labels changed" in out
    table = pd.read_csv(noisy)
    assert len(table) == 200 and {"path", "label", "true_label"} <= set(table.columns)

    run = tmp_path / "run"
    out = deft("detect", noisy, "--root", cifar200, "--model", tiny_clip_dir, "--out", run, "--epochs", "2",
               "--batch-size", "32").stdout
    assert "suspects of 200 samples" in out and '"precision"' in out  # ground truth -> metrics printed
    assert (run / "scores.parquet").is_file() and (run / "metrics.json").is_file()

    cleaned = tmp_path / "cleaned.csv"
    deft("export", run, "--out", cleaned)
    exp = pd.read_csv(cleaned, keep_default_na=False)
    assert list(exp.columns) == EXPORT_COLUMNS and len(exp) == 200
    assert set(exp["status"]) <= {"clean", "pending"}

    pseudo = tmp_path / "pseudo.parquet"
    deft("export", run, "--out", pseudo, "--pseudo")
    assert set(pd.read_parquet(pseudo)["status"]) <= {"clean", "pseudo"}

    out = deft("train", run, "--labels", pseudo, "--epochs", "1", "--batch-size", "32").stdout
    assert "val accuracy" in out
    assert (run / "phase2" / "model.safetensors").is_file() and (run / "phase2" / "summary.json").is_file()
    print(f"CLI end-to-end wall time: {time.perf_counter() - t0:.1f}s")


def test_cli_errors_are_one_clear_line(tmp_path, tiny_clip_dir):
    p = deft("detect", tmp_path / "missing", "--model", tiny_clip_dir, "--out", tmp_path / "r", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: Dataset folder not found")
    p = deft("export", tmp_path, "--out", tmp_path / "x.csv", check=False)
    assert p.returncode == 2 and "not a deft run folder" in p.stderr


def test_cli_help_for_every_command():
    for cmd in ("check", "detect", "score", "train", "export", "noise"):
        assert "usage:" in deft(cmd, "--help").stdout
