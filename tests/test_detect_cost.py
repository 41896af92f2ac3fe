"""Before detection: preview preselected for big checkpoints without a GPU, projected time of full DEFT."""

import json

import pytest

from deft.core.config import OptimConfig, Phase1Config
from deft.detect_cost import (
    format_duration,
    measure_full_deft_step,
    preselect_preview,
    projected_seconds,
    projection_line,
    steps_per_epoch,
    vision_width,
)
from deft.storage.load import load_dataset


def test_checkpoint_width_from_a_local_config_or_a_hub_name(tmp_path, tiny_clip_dir):
    assert vision_width(str(tiny_clip_dir)) == json.loads((tiny_clip_dir / "config.json").read_text())[
        "vision_config"]["hidden_size"]
    assert vision_width("openai/clip-vit-base-patch16") == 768
    assert vision_width("openai/clip-vit-base-patch32") == 768
    assert vision_width("openai/clip-vit-large-patch14-336") == 1024
    assert vision_width("laion/CLIP-ViT-H-14-laion2B-s32B-b79K") == 1280
    assert vision_width("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k") == 1664
    assert vision_width("some/unknown-model") is None
    (tmp_path / "config.json").write_text("{not json")
    assert vision_width(str(tmp_path)) is None


def test_preview_is_preselected_only_without_a_gpu_for_vit_b_and_larger():
    assert preselect_preview(False, 768) and preselect_preview(False, 1024)
    assert not preselect_preview(True, 1024)  # a GPU runs full DEFT
    assert not preselect_preview(False, 64)  # a tiny checkpoint trains fine on a CPU
    assert not preselect_preview(False, None)


def test_projected_time_counts_the_steps_the_run_takes():
    """Issue 19, item 23: the projection is epochs x ceil(N / batch) steps of the measured step time (a step timed on
    8 images and scaled per image said 7 min for a 58 s run)."""
    assert steps_per_epoch(400, 64) == 7 and steps_per_epoch(64, 64) == 1 and steps_per_epoch(5, 64) == 1
    assert projected_seconds(2.0, 400, 64, 10) == 10 * 7 * 2.0
    assert projected_seconds(2.0, 400, 64, 0) == 7 * 2.0  # at least one epoch
    assert projected_seconds(0.0, 400, 64, 10) == float("inf")
    assert [format_duration(s) for s in (42, 400, 4 * 3600, 5 * 86400)] == ["42 s", "7 min", "4.0 h", "5.0 days"]
    line = projection_line(1.5, 50_000, 64, 10, "cpu")
    assert "3.3 h" in line and "50000 images in 782 steps of 64 x 10 epochs" in line and "1.50 s per step" in line


@pytest.mark.parametrize("batch, expected", [(16, 16), (64, 60)])
def test_the_step_is_measured_at_the_configured_batch_size(cifar_small, tiny_clip_dir, monkeypatch, batch, expected):
    """The step timed is the run's own (optimizer step included) on a batch of the configured size, capped by the
    60 training rows, after one untimed warm-up step."""
    from deft import train_loop

    sizes, real = [], train_loop.optimizer_step

    def recording(step_fn, idx, *a, **kw):
        sizes.append(len(idx))
        return real(step_fn, idx, *a, **kw)

    monkeypatch.setattr(train_loop, "optimizer_step", recording)
    cfg = Phase1Config(model=str(tiny_clip_dir), optim=OptimConfig(lr=0.03, epochs=3, batch_size=batch))
    step_s, measured = measure_full_deft_step(load_dataset(cifar_small), cfg, device="cpu", steps=1)
    assert measured == expected and sizes == [expected, expected]  # warm-up + one timed step
    assert 0 < step_s < float("inf")
