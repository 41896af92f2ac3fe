"""Method fidelity (issue 8): an independent reference of DEFT's training steps, schedule and noise.

The reference below is written from ``../shared/docs/METHOD.md`` and the official code's
semantics (HotanLee/DeFT); it does not import the project's loss or step code.
"""

from __future__ import annotations

import math

import pytest
import torch

from deft.config import OptimConfig
from deft.train_loop import train_epochs


def official_lr(base: float, epochs: int, epoch: int) -> float:
    """``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch: lr used during 0-based ``epoch``."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _lrs_per_step(cfg: OptimConfig, n: int) -> list[tuple[int, float]]:
    """Run the project's loop on a 1-parameter model and record (epoch, lr) at every step."""
    w = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.w = w
    seen: list[tuple[int, float]] = []

    def progress(ev) -> None:
        if not ev.epoch_end:
            seen.append((ev.epoch, ev.metrics["lr"]))

    train_epochs(stage="t", n=n, step_fn=lambda idx, e, g: {"loss": (w - 1).pow(2).sum()}, module=module,
                 params=[w], cfg=cfg, seed=0, device=torch.device("cpu"), precision="fp32", progress=progress)
    return seen


def test_default_schedule_is_official_cosine_per_epoch():
    cfg = OptimConfig(lr=0.03, epochs=4, batch_size=2)
    assert cfg.lr_schedule == "epoch"
    seen = _lrs_per_step(cfg, n=6)  # 3 steps per epoch
    assert len(seen) == 12
    for epoch, lr in seen:  # progress reports the lr after the step; constant inside an epoch
        assert lr == pytest.approx(official_lr(0.03, 4, epoch), rel=1e-9, abs=1e-12)


def test_per_step_schedule_is_an_option():
    seen = _lrs_per_step(OptimConfig(lr=0.03, epochs=2, batch_size=2, lr_schedule="step"), n=4)
    total = 4
    assert [lr for _, lr in seen] == pytest.approx(
        [0.03 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(1, total + 1)], abs=1e-12)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        OptimConfig(lr=0.1, lr_schedule="linear")


def test_pseudo_label_source_zeroshot_by_default_prompts_as_option(tmp_path):
    # issue 8 item 9: the seed labels suspects with frozen zero-shot CLIP; the learned prompts are the option
    import numpy as np
    import pandas as pd

    from deft.config import Phase1Config
    from deft.data import Dataset
    from deft.phase1 import build_scores_table

    samples = pd.DataFrame({"id": ["a.jpg", "b.jpg", "t.jpg"], "label": ["cat", "dog", "cat"],
                            "label_idx": [0, 1, 0], "split": ["train", "train", "test"]})
    ds = Dataset(tmp_path, samples, ["cat", "dog"], {"cat": "cat", "dog": "dog"})
    raw = pd.DataFrame({"pred": ["dog", "dog"], "pred_conf": [0.9, 0.8], "zs1": ["cat", "cat"],
                        "zs1_conf": [0.6, 0.7]})
    assert Phase1Config().pseudo_source == "zeroshot"
    zs = build_scores_table(ds, raw, Phase1Config().pseudo_source)
    assert zs["id"].tolist() == ["a.jpg", "b.jpg"]  # the test row has no score row
    assert zs["suggestion"].tolist() == ["cat", "cat"] and np.allclose(zs["suggestion_conf"], [0.6, 0.7])
    pr = build_scores_table(ds, raw, "prompts")
    assert pr["suggestion"].tolist() == ["dog", "dog"] and np.allclose(pr["suggestion_conf"], [0.9, 0.8])
    with pytest.raises(ValueError, match="unknown pseudo-label source"):
        Phase1Config(pseudo_source="oracle")
