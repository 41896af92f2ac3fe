"""Detect tab computations: curves in epochs (a resumed run continues), planted errors caught."""

import json

import numpy as np
import pandas as pd
import pytest

from deft.core.metrics import planted_errors_caught, planted_line
from deft.storage.train_log import epoch_history, training_curves


def test_a_resumed_run_continues_the_same_curve_in_epochs(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"stage": "phase1", "epoch": 1, "loss": 2.0, "clean_frac": 0.5},
             {"stage": "phase1", "epoch": 2, "loss": 1.5, "clean_frac": 0.6},  # logged, then killed
             {"stage": "phase2", "epoch": 1, "loss": 9.0},
             {"stage": "phase1", "epoch": 2, "loss": 1.4, "clean_frac": 0.65},  # retrained after resume
             {"stage": "phase1", "epoch": 3, "loss": 1.0, "clean_frac": 0.7}]
    log.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"stage": "pha')
    hist = epoch_history(log)
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[1]["loss"] == 1.4
    assert epoch_history(tmp_path / "none.jsonl") == []
    # the resumed job only saw steps 11..15 of 5 steps per epoch (epoch 3)
    loss, clean = training_curves([{"step": s, "loss": 1.0} for s in range(11, 16)], 5, hist)
    per_step = loss[loss["series"] == "loss per step"]
    assert list(per_step["epoch"]) == [2.2, 2.4, 2.6, 2.8, 3.0]  # x in epochs, after the earlier epochs
    assert list(loss.loc[loss["series"] == "loss (epoch mean)", "epoch"]) == [1.0, 2.0, 3.0]
    assert list(clean["clean fraction"]) == [0.5, 0.65, 0.7] and "value" not in clean  # its own axis
    empty_loss, empty_clean = training_curves([], 0, [])
    assert empty_loss.empty and empty_clean.empty


def test_planted_errors_caught_precision_and_recall():
    ids = pd.Series(["a", "b", "c", "d", "e", "held"])
    truly_clean = np.array([True, True, False, False, True, False])  # "held" is not scored
    scores = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "is_clean": [True, False, False, True, True],
                           "margin": [0.5, -0.1, -0.4, 0.2, 0.3]})
    m = planted_errors_caught(scores, ids, truly_clean)
    assert m["n_planted"] == 2 and m["caught"] == 1 and m["n_suspects"] == 2
    assert m["suspect_precision"] == 0.5
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)  # clean set a, d, e
    line = planted_line(m)
    assert "caught **1 of 2**" in line and "precision 66.7%" in line
    none_clean = planted_errors_caught(scores.assign(is_clean=False), ids, truly_clean)
    assert "precision n/a" in planted_line(none_clean) and "nan" not in planted_line(none_clean)
