"""Options for the official code's behaviour where ours differs on purpose (issue 20 item 4)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from deft.core.config import OFFICIAL_PIXEL_STATS, OptimConfig, Phase1Config, Phase2Config
from deft.detection import detect, rescore
from deft.storage.load import load_dataset
from deft.training import train_classifier


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 random images, 3 classes, brighter in red than in blue (so their statistics are not CLIP's)."""
    root = tmp_path_factory.mktemp("stats_folder")
    rng = np.random.default_rng(7)
    for c in ("cat", "dog", "bird"):
        (root / c).mkdir()
        for i in range(4):
            px = rng.integers(0, 256, (32, 32, 3)) * np.array([1.0, 0.6, 0.3])
            Image.fromarray(px.astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def _p1(model, **kw) -> Phase1Config:
    return Phase1Config(model=str(model), augment=False, precision="fp32",
                        optim=OptimConfig(lr=0.03, epochs=1, batch_size=12), **kw)


def test_pixel_stats_setting_and_flag():
    from deft.cli import build_parser, phase1_config

    assert Phase1Config().pixel_stats == "clip"
    with pytest.raises(ValueError, match="unknown pixel stats"):
        Phase1Config(pixel_stats="mnist")
    a = build_parser().parse_args(["detect", "data", "--out", "o", "--pixel-stats", "dataset"])
    assert phase1_config(a).pixel_stats == "dataset"
    assert OFFICIAL_PIXEL_STATS["cifar10"][1] == (0.2023, 0.1994, 0.2010)  # the official CIFAR-10 std


def test_dataset_pixel_stats_normalise_both_phases(folder, tiny_clip_dir, tmp_path, monkeypatch):
    from deft.core.models import load_clip
    from deft.storage.run import Run
    from deft.storage.run_images import dataset_pixel_stats, load_run_images, run_normalizer

    monkeypatch.setenv("DEFT_IMAGE_CACHE", "raw")
    ds = load_dataset(folder)
    res = detect(ds, tmp_path / "run", _p1(tiny_clip_dir, pixel_stats="dataset"))
    x = np.asarray(load_run_images(res.run, 32))[res.run.dataset.train_rows].astype(np.float64) / 255
    stats = json.loads((tmp_path / "run" / "run.json").read_text())["pixel_stats"]
    np.testing.assert_allclose(stats["mean"], x.mean(axis=(0, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(stats["std"], x.std(axis=(0, 2, 3)), atol=1e-5)
    assert stats["mean"][0] > stats["mean"][2] + 0.2  # the images' own statistics, not CLIP's
    shards = load_run_images(res.run, 32, cache="shards")  # the default store (JPEG): its own decoded pixels
    rows = res.run.dataset.train_rows
    xs = shards.decode_to(rows, torch.device("cpu")).double().numpy() / 255
    np.testing.assert_allclose(np.array(dataset_pixel_stats(shards, rows)),
                               np.array([xs.mean(axis=(0, 2, 3)), xs.std(axis=(0, 2, 3))]), atol=1e-5)
    # the scoring pass used them: a re-score reads the stored numbers and agrees; CLIP's stats score otherwise
    pd.testing.assert_frame_equal(rescore(tmp_path / "run", save=False), res.scores)
    clip_run = detect(ds, tmp_path / "clip_run", _p1(tiny_clip_dir))
    assert not np.allclose(clip_run.scores["sim_pos"], res.scores["sim_pos"])
    assert "pixel_stats" not in json.loads((tmp_path / "clip_run" / "run.json").read_text())
    # Phase 2 normalises as Phase 1 did, and its saved model keeps the numbers for prediction
    p2 = train_classifier(res.run, ds.samples[["id", "label"]], Phase2Config(
        model=str(tiny_clip_dir), optim=OptimConfig(lr=5e-4, epochs=1, batch_size=12)), out=tmp_path / "p2")
    saved = json.loads((tmp_path / "p2" / "classifier.json").read_text())
    assert (saved["mean"], saved["std"]) == (stats["mean"], stats["std"]) and p2.classifier.normalizer.std[0] > 0
    # named official constants
    named = Run.create(tmp_path / "c10", ds, _p1(tiny_clip_dir, pixel_stats="cifar10"))
    norm = run_normalizer(named, load_clip(tiny_clip_dir).normalizer)
    assert (norm.mean, norm.std) == OFFICIAL_PIXEL_STATS["cifar10"]


def test_a_run_made_before_a_setting_existed_resumes(folder, tiny_clip_dir, tmp_path):
    # a setting added since (here pixel_stats) counts as its default when an older run.json lacks it
    from deft.storage.run import Run

    ds = load_dataset(folder)
    Run.create(tmp_path / "run", ds, _p1(tiny_clip_dir))
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    del meta["phase1"]["pixel_stats"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    assert Run.create(tmp_path / "run", ds, _p1(tiny_clip_dir)).config.pixel_stats == "clip"


def test_val_fraction_zero_trains_on_every_curated_row(folder, tiny_clip_dir, tmp_path):
    # official Phase 2 trains on all clean rows; without a split column ours holds 10% out unless val_fraction 0
    ds = load_dataset(folder)
    run = detect(ds, tmp_path / "run", _p1(tiny_clip_dir)).run
    curated = ds.samples[["id", "label"]]
    cfg = Phase2Config(model=str(tiny_clip_dir), val_fraction=0, optim=OptimConfig(lr=5e-4, epochs=1, batch_size=12))
    res = train_classifier(run, curated, cfg, out=tmp_path / "p2")
    assert res.classifier.meta["n_train"] == len(curated) and res.classifier.meta["n_val"] == 0
    assert np.isnan(res.best_val_acc) and np.isnan(res.last_val_acc)
    assert res.heldout.startswith("nothing") and "official" in res.heldout
    assert np.isfinite(res.history[-1]["loss"])
