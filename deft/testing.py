"""Test and benchmark helpers: tiny random CLIP checkpoints and real CIFAR-10 images.

Not part of the method. It lives in the package (not under ``tests/``) because the offline
demo, ``bench/`` and ``make tiny-clip`` use it too, without pytest.

No pretrained weights can be fetched here, so tests build a small CLIP with a
character-level BPE tokenizer, save it with ``save_pretrained`` and load it back
through :func:`deft.core.models.load_clip`, the path users take.

``python -m deft.testing OUT`` saves the tiny CLIP to ``OUT`` (what ``scripts/make_tiny_clip.py`` does).
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections import defaultdict
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
        logit_scale_init_value=4.6052,  # tau = 100, as in pretrained CLIP (HF's random init is ~14)
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


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 30), "purple": (140, 30, 160), "cyan": (30, 210, 210)}


def pretrain_colour_clip(bundle, colours: dict[str, tuple[int, int, int]] = COLOURS, steps: int = 300,
                         seed: int = 0) -> None:
    """Train a tiny CLIP from scratch, contrastively, on solid-colour images and colour-name captions.

    DEFT presupposes image-text alignment; a random text tower has none (the class
    token carries no signal and learned contexts make all classes look alike). This
    supplies the alignment a pretrained CLIP has. Captions carry random-length word
    prefixes so the class word is read at any position, as after 16 context tokens.
    """
    import torch.nn.functional as F

    m = bundle.model
    m.requires_grad_(True).train()
    m.logit_scale.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    names = list(colours)
    base = torch.tensor([colours[c] for c in names], dtype=torch.float32)
    words = ["a", "photo", "of", "the", "x", "big", "small", "picture", "an", "image"]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(steps):
        y = torch.randint(0, len(names), (64,), generator=g)
        rgb = (base[y] + torch.randint(-40, 41, (64, 3), generator=g)).clamp(0, 255).to(torch.uint8)
        size = m.config.vision_config.image_size
        x = bundle.normalizer(rgb.view(64, 3, 1, 1).expand(64, 3, size, size))
        n_pre = int(torch.randint(0, 18, (1,), generator=g))
        prefix = " ".join(words[int(i)] for i in torch.randint(0, len(words), (n_pre,), generator=g))
        enc = bundle.tokenize([f"{prefix} {c}." for c in names])
        v = F.normalize(m.get_image_features(pixel_values=x).pooler_output, dim=-1)
        t = F.normalize(m.get_text_features(**enc).pooler_output, dim=-1)
        loss = F.cross_entropy(m.logit_scale.exp() * v @ t.t(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.requires_grad_(False).eval()


def extract_cifar(zip_path: str | os.PathLike, out: Path, per_class: int, split: str = "train",
                  offset: int = 0) -> Path:
    """Extract ``per_class`` real CIFAR-10 JPEGs per class from ``zip_path`` into ``out/<class>/``.

    Parameters
    ----------
    zip_path : path
        ``cifar10-jpeg.zip`` with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``.
    out : Path
        Destination folder (an ImageFolder afterwards).
    per_class, split, offset
        Images ``offset .. offset + per_class`` (sorted by name) of each class of ``split``.
    """
    if not Path(zip_path).is_file():
        raise FileNotFoundError(f"{zip_path} is missing (a CIFAR-10 JPEG zip: train/<class>/*.jpg)")
    with zipfile.ZipFile(zip_path) as z:
        by_class: dict[str, list[str]] = defaultdict(list)
        for n in sorted(z.namelist()):
            if n.startswith(f"{split}/") and n.endswith(".jpg"):
                by_class[n.split("/")[1]].append(n)
        for c, names in by_class.items():
            (out / c).mkdir(parents=True, exist_ok=True)
            for n in names[offset : offset + per_class]:
                (out / c / Path(n).name).write_bytes(z.read(n))
    return out


def main(argv: list[str]) -> None:
    """``python -m deft.testing [OUT]``: save the tiny random CLIP to ``OUT`` (default ``runs/tiny-clip``) once."""
    out = Path(argv[0] if argv else "runs/tiny-clip")
    if not (out / "config.json").is_file():
        save_tiny_clip(out)
    print(f"tiny random CLIP in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
