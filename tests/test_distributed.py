"""Two CPU processes (gloo) launched by torchrun, as a user would: scores equal the single-process ones."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from deft.run import Run

from .conftest import ROOT


def deft(*args, nproc=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    p = subprocess.run([*launcher, "-m", "deft", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_two_process_scores_equal_single_process(tmp_path, cifar_small, tiny_clip_dir):
    single = tmp_path / "single"
    deft("detect", cifar_small, "--model", tiny_clip_dir, "--out", single, "--epochs", "2", "--batch-size", "16",
         "--device", "cpu")
    ref = Run.open(single).scores()

    # the scoring pass under 2 processes (each scores a shard, gathered in order, rank 0 writes)
    shutil.copytree(single, tmp_path / "rescored")
    out = deft("score", tmp_path / "rescored", "--device", "cpu", nproc=2)
    assert out.stdout.count("re-scored") == 1  # one process reports
    pd.testing.assert_frame_equal(Run.open(tmp_path / "rescored").scores(), ref, atol=1e-6)

    # Phase 1 training under 2 processes: one writer, every sample scored exactly once
    dist = tmp_path / "dist"
    out = deft("detect", cifar_small, "--model", tiny_clip_dir, "--out", dist, "--epochs", "2", "--batch-size",
               "16", "--device", "cpu", nproc=2)
    assert out.stdout.count("suspects of 60 samples") == 1
    scores = Run.open(dist).scores()
    assert list(scores["id"]) == list(ref["id"]) and np.isfinite(scores["margin"]).all()
    assert len(Run.open(dist).meta["history"]) == 2

    # Phase 2 under 2 processes
    out = deft("train", dist, "--mode", "pseudo", "--epochs", "1", "--batch-size", "16", "--device", "cpu", nproc=2)
    assert out.stdout.count("val accuracy") == 1 and (dist / "phase2" / "model.safetensors").is_file()
