"""Load any Hugging Face CLIP checkpoint (hub id or local folder)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPModel

from deft.core.batches import Normalizer

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


from deft.core.errors import ModelLoadError  # noqa: E402  (re-exported)


@dataclass
class ClipBundle:
    """A frozen CLIP model with what is needed to feed it."""

    model: CLIPModel
    tokenizer: object
    normalizer: Normalizer
    image_size: int
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        max_len = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)


def offline_message(name: str) -> str:
    return (
        f"Could not load the CLIP checkpoint '{name}' (not a local folder, and it cannot be downloaded "
        f"without internet): download it where you have internet (`hf download {name} --local-dir ./clip`) "
        f"and pass that folder with --model ./clip."
    )


def _normalizer(name: str) -> Normalizer:
    """Read mean/std from the checkpoint's preprocessor config (no image-processor class needed)."""
    cfg_path = Path(name) / "preprocessor_config.json"
    mean, std = OPENAI_MEAN, OPENAI_STD
    cfg: dict = {}
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
    else:
        try:
            from huggingface_hub import hf_hub_download

            cfg = json.loads(Path(hf_hub_download(name, "preprocessor_config.json")).read_text())
        except Exception:
            cfg = {}
    mean = tuple(cfg.get("image_mean", mean))  # type: ignore[assignment]
    std = tuple(cfg.get("image_std", std))  # type: ignore[assignment]
    return Normalizer(mean=mean, std=std)  # type: ignore[arg-type]


def load_clip(
    name_or_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
) -> ClipBundle:
    """Load a CLIP checkpoint through ``from_pretrained`` and freeze it.

    Parameters
    ----------
    name_or_path : str
        Hub id (``openai/clip-vit-base-patch16``) or a local folder saved with
        ``save_pretrained`` (config, weights, tokenizer files, preprocessor config).
    device : torch.device
        Where the model lives; weights stay fp32 (autocast handles bf16).
    """
    name = str(name_or_path)
    local = Path(name)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path and not local.exists():
        raise ModelLoadError(f"Model folder not found: {name}. Pass a folder saved with save_pretrained, or a hub id.")
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(f"{name} is not a CLIP checkpoint folder (no config.json in it).")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        model = CLIPModel.from_pretrained(name, attn_implementation=attn_implementation, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except OSError as exc:
        if local.exists():
            raise ModelLoadError(f"Could not load the CLIP checkpoint in {name}: {exc}") from None
        raise ModelLoadError(offline_message(name)) from None
    except ValueError as exc:
        raise ModelLoadError(f"'{name}' is not a CLIP checkpoint: {exc}") from None
    model.requires_grad_(False).eval().to(device)
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        normalizer=_normalizer(name),
        image_size=int(model.config.vision_config.image_size),
        source=name,
    )
