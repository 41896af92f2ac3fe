"""Before a detection starts: is the checkpoint too big for full DEFT on this machine, and how long
would full DEFT take (measured images per second x images x epochs)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch

LARGE_WIDTH = 768  # ViT-B's width; B/32, B/16, L/14, H/14 ... are all at least this wide
_NAMED_WIDTHS = ((r"vit-?(b|base)\b", 768), (r"vit-?(l|large)\b", 1024), (r"vit-?(h|huge)\b", 1280),
                 (r"vit-?(g|giant)\b", 1408), (r"vit-?bigg\b", 1664))


def vision_width(model: str) -> int | None:
    """The image encoder's width of a checkpoint: from a local folder's ``config.json``, else from a
    hub id's name (``openai/clip-vit-base-patch16`` -> 768); None when it cannot tell (no download)."""
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        try:
            meta = json.loads(cfg.read_text(encoding="utf-8"))
            return int((meta.get("vision_config") or meta)["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    name = model.lower()
    for pattern, width in _NAMED_WIDTHS:
        if re.search(pattern, name):
            return width
    return None


def preselect_preview(has_accelerator: bool, width: int | None) -> bool:
    """Whether the Detect tab starts with the quick preview (feature cache) ticked: on a machine
    without a GPU, for checkpoints of ViT-B size and larger."""
    return not has_accelerator and width is not None and width >= LARGE_WIDTH


def projected_seconds(images_per_s: float, n_images: int, epochs: int) -> float:
    """Full DEFT's training time: ``n_images * epochs / images_per_s`` (inf for a zero rate)."""
    if images_per_s <= 0:
        return float("inf")
    return n_images * max(1, epochs) / images_per_s


def format_duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3.2 h``, ``2.1 days``."""
    if not np.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def projection_line(images_per_s: float, n_images: int, epochs: int, device: str) -> str:
    """One sentence for the Detect tab."""
    t = format_duration(projected_seconds(images_per_s, n_images, epochs))
    return (f"Full DEFT on this machine ({device}): about **{t}** ({images_per_s:.1f} img/s measured on a few "
            f"images x {n_images} images x {epochs} epochs, training only).")


def measure_full_deft_rate(dataset, model: str, n: int = 8, device: str = "auto", steps: int = 2) -> float:
    """Images per second of full DEFT's training step (image encoder with VPT, both losses,
    backward) on ``n`` of ``dataset``'s images; one warm-up step is not timed."""
    from .config import Phase1Config
    from .detector import DeftModel, class_texts, phase1_step
    from .device import pick_device
    from .images import decode_images
    from .models import load_clip

    dev = pick_device(device)
    cfg = Phase1Config(model=model)
    bundle = load_clip(model, dev, cfg.attn_implementation)
    rows = np.arange(min(n, dataset.N))
    images = decode_images([dataset.paths()[i] for i in rows], bundle.image_size)
    net = DeftModel(bundle, class_texts(dataset), cfg)
    step = phase1_step(net, images, torch.as_tensor(dataset.labels[rows], dtype=torch.long), cfg, bundle.normalizer)
    idx, gen = torch.arange(len(rows)), torch.Generator().manual_seed(0)
    elapsed = 0.0
    for k in range(steps + 1):
        t0 = time.perf_counter()
        step(idx, 0, gen)["loss"].backward()
        if k:
            elapsed += time.perf_counter() - t0
    return len(rows) * steps / elapsed if elapsed > 0 else 0.0
