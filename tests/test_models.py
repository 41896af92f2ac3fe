import pytest

from deft.core.models import ModelLoadError, load_clip


def test_local_folder_loads_through_from_pretrained(tiny_clip_dir):
    b = load_clip(tiny_clip_dir)
    assert b.image_size == 32 and b.source == str(tiny_clip_dir)
    assert not any(p.requires_grad for p in b.model.parameters())


def test_offline_hub_id_fails_with_one_clear_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        load_clip("openai/clip-vit-base-patch16")
    msg = str(e.value)
    assert "openai/clip-vit-base-patch16" in msg and "--model ./clip" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="Model folder not found"):
        load_clip(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_clip(str(tmp_path / "empty"))
