"""Tiny random CLIP checkpoints for tests, the offline demo and CI.

No pretrained weights can be fetched here, so tests build a small CLIP with a
character-level BPE tokenizer, save it with ``save_pretrained`` and load it back
through :func:`deft.models.load_clip`, the path users take.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is every byte-level character (no merges)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip_config(image_size: int = 32, patch_size: int = 8, width: int = 64, layers: int = 2,
                     vocab_size: int | None = None) -> CLIPConfig:
    vocab_size = vocab_size or len(tiny_tokenizer())
    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size, "hidden_size": width, "intermediate_size": 2 * width,
            "num_hidden_layers": layers, "num_attention_heads": 4, "max_position_embeddings": 77,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers,
            "num_attention_heads": 4, "image_size": image_size, "patch_size": patch_size,
        },
        projection_dim=width,
    )


def save_tiny_clip(out: str | os.PathLike, seed: int = 0, **config_kwargs) -> Path:
    """Build a random tiny CLIP + tokenizer + preprocessor config and save them to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab_size=len(tok), **config_kwargs))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out)
    return out
