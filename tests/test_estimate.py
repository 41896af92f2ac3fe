"""Before detection: preview preselected for big checkpoints without a GPU, projected time of full DEFT."""

import json

from deft.data import load_dataset
from deft.estimate import (
    format_duration,
    measure_full_deft_rate,
    preselect_preview,
    projected_seconds,
    projection_line,
    vision_width,
)


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


def test_projected_time_is_images_times_epochs_over_the_measured_rate():
    assert projected_seconds(10.0, 400, 10) == 400.0
    assert projected_seconds(0.0, 400, 10) == float("inf")
    assert [format_duration(s) for s in (42, 400, 4 * 3600, 5 * 86400)] == ["42 s", "7 min", "4.0 h", "5.0 days"]
    line = projection_line(2.0, 50_000, 10, "cpu")
    assert "2.9 days" in line and "2.0 img/s" in line and "50000 images x 10 epochs" in line


def test_the_rate_is_measured_on_a_few_images(cifar_small, tiny_clip_dir):
    rate = measure_full_deft_rate(load_dataset(cifar_small), str(tiny_clip_dir), n=4, device="cpu", steps=1)
    assert 0 < rate < float("inf")
