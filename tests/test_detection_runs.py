"""Phase 1 on real images: save/re-open gives identical scores, resume after interruption,
and the planted-noise sanity check."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deft.core.config import OptimConfig, Phase1Config
from deft.core.models import load_clip
from deft.core.progress import Cancelled, CancelToken
from deft.detection import detect, rescore
from deft.storage.load import load_dataset
from deft.storage.run import Run, RunError
from deft.testing import COLOURS, pretrain_colour_clip, save_tiny_clip


def _cfg(model, epochs=2):
    return Phase1Config(model=str(model), optim=OptimConfig(lr=0.03, epochs=epochs, batch_size=16))


def test_run_saved_and_reopened_gives_identical_scores(tmp_path, cifar_small, tiny_clip_dir):
    res = detect(load_dataset(cifar_small), tmp_path / "run", _cfg(tiny_clip_dir))
    cols = {"id", "label", "sim_pos", "sim_neg", "margin", "p_clean", "is_clean", "pred", "pred_conf",
            "zs1", "zs1_conf", "zs2", "zs3", "suggestion", "suggestion_conf"}
    assert cols <= set(res.scores.columns) and len(res.scores) == 60
    assert np.allclose(res.scores["margin"], res.scores["sim_pos"] - res.scores["sim_neg"])
    run = Run.open(tmp_path / "run")
    assert run.dataset.classes == load_dataset(cifar_small).classes
    pd.testing.assert_frame_equal(run.scores(), res.scores)
    pd.testing.assert_frame_equal(rescore(tmp_path / "run", save=False), res.scores)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, cifar_small, tiny_clip_dir):
    ds = load_dataset(cifar_small)
    full = detect(ds, tmp_path / "full", _cfg(tiny_clip_dir, epochs=3))
    token = CancelToken()

    def stop_in_second_epoch(ev):
        if ev.stage == "phase1" and ev.epoch == 1 and not ev.epoch_end:
            token.cancel()

    with pytest.raises(Cancelled):
        detect(ds, tmp_path / "cut", _cfg(tiny_clip_dir, epochs=3), progress=stop_in_second_epoch, cancel=token)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "scores.parquet").exists()
    with pytest.raises(RunError, match="no scores yet"):
        Run.open(tmp_path / "cut").scores()
    resumed = detect(ds, tmp_path / "cut", _cfg(tiny_clip_dir, epochs=3))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    pd.testing.assert_frame_equal(resumed.scores, full.scores, atol=1e-5)


def test_run_folder_refuses_different_data(tmp_path, cifar_small, tiny_clip_dir):
    detect(load_dataset(cifar_small), tmp_path / "run", _cfg(tiny_clip_dir, epochs=1))
    other = tmp_path / "other"
    for c in ("cat", "dog"):
        (other / c).mkdir(parents=True)
        for f in sorted((cifar_small / c).iterdir())[:2]:
            (other / c / f.name).write_bytes(f.read_bytes())
    with pytest.raises(RunError, match="different data"):
        detect(load_dataset(other), tmp_path / "run", _cfg(tiny_clip_dir, epochs=1))


@pytest.mark.slow
def test_planted_noise_is_separated_on_a_trivially_separable_set(tmp_path):
    """Why this is meaningful with random weights: every weight of this CLIP starts random and is
    trained here from scratch, contrastively, on colour images and colour-name captions; nothing
    was told which labels are flipped. The detector only sees the noisy labels, and must find the
    flipped 25% through DEFT's own mechanism: positive prompts fit the clean majority, negative
    prompts learn a per-class threshold between matching and non-matching images.

    The learning rate is scaled down (3e-4 instead of 0.03) for the 64-wide model: its token
    embeddings are ~3x smaller than ViT-B/16's and with tau = 100 the paper's rate saturates the
    pair sigmoid within a few steps.
    """
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    rows = []
    for c, rgb in COLOURS.items():
        for i in range(40):
            px = np.clip(np.array(rgb) + rng.integers(-25, 26, 3), 0, 255).astype(np.uint8)
            p = tmp_path / "img" / f"{c}_{i}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(np.broadcast_to(px, (32, 32, 3)).copy()).save(p)
            rows.append((p.name, names.index(c)))
    true = np.array([r[1] for r in rows])
    noisy = true.copy()
    flip = rng.choice(len(true), size=len(true) // 4, replace=False)
    noisy[flip] = (true[flip] + rng.integers(1, len(names), len(flip))) % len(names)
    table = tmp_path / "img" / "labels.csv"
    pd.DataFrame({"path": [r[0] for r in rows], "label": [names[i] for i in noisy],
                  "true_label": [names[i] for i in true]}).to_csv(table, index=False)
    clip_dir = save_tiny_clip(tmp_path / "clip")
    bundle = load_clip(clip_dir)
    pretrain_colour_clip(bundle)
    bundle.model.save_pretrained(clip_dir)  # the run's model folder holds what was trained
    cfg = Phase1Config(model=str(clip_dir), optim=OptimConfig(lr=3e-4, epochs=20, batch_size=32), augment=False)
    res = detect(load_dataset(table), tmp_path / "run", cfg, bundle=bundle)
    m = res.metrics
    print("planted-noise sanity:", {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()})
    assert m["noise_rate"] == pytest.approx(0.25)
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9, m
    assert m["auroc"] >= 0.9, m


class _Boom:
    """Unpickling this calls ``os.system``: what a crafted checkpoint in a shared run folder would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_never_executes_code(tmp_path, cifar_small, tiny_clip_dir):
    import torch

    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    torch.save({"module": _Boom(marker), "epoch": 0}, run_dir / "checkpoint.pt")
    with pytest.raises(RunError, match="checkpoint.pt: not a checkpoint"):
        detect(load_dataset(cifar_small), run_dir, _cfg(tiny_clip_dir, epochs=1))
    assert not marker.exists()


def test_rerun_with_other_settings_is_refused_not_silently_resumed(tmp_path, cifar_small):
    ds = load_dataset(cifar_small)
    cfg = Phase1Config(model="m", optim=OptimConfig(lr=0.03, epochs=2, batch_size=16))
    Run.create(tmp_path / "run", ds, cfg)
    assert Run.create(tmp_path / "run", ds, cfg).config == cfg  # same settings: resume
    more = Phase1Config(model="m", optim=OptimConfig(lr=0.03, epochs=5, batch_size=16))
    with pytest.raises(RunError, match=r"other settings \(optim.epochs: 2 -> 5\)"):
        Run.create(tmp_path / "run", ds, more)
