"""Before a detection starts: is the checkpoint too big for full DEFT on this machine, and how long
would full DEFT take (one training step measured at the run's batch size x the steps the run takes)."""

from __future__ import annotations

import json
import math
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


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """The training steps of one epoch, as the run counts them: ``ceil(n_images / batch_size)``."""
    return max(1, math.ceil(n_images / max(1, batch_size)))


def projected_seconds(step_s: float, n_images: int, batch_size: int, epochs: int) -> float:
    """Full DEFT's training time: ``epochs x ceil(n_images / batch_size)`` steps of ``step_s`` seconds each
    (inf for an unmeasured step)."""
    if not step_s > 0 or not math.isfinite(step_s):
        return float("inf")
    return max(1, epochs) * steps_per_epoch(n_images, batch_size) * step_s


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


def projection_line(step_s: float, n_images: int, batch_size: int, epochs: int, device: str) -> str:
    """One sentence for the Detect tab."""
    t = format_duration(projected_seconds(step_s, n_images, batch_size, epochs))
    steps = steps_per_epoch(n_images, batch_size)
    return (f"Full DEFT on this machine ({device}): about **{t}** ({n_images} images in {steps} steps of "
            f"{batch_size} x {max(1, epochs)} epochs, {step_s:.2f} s per step measured at that batch size; "
            f"training only).")


def measure_full_deft_step(dataset, config, device: str = "auto", steps: int = 2) -> tuple[float, int]:
    """Seconds per step of full DEFT's training (image encoder with VPT, both losses, backward, optimiser step,
    at ``config``'s precision) at ``config.optim.batch_size``, capped by the training rows (what the run's
    batches hold); one warm-up step is not timed. Returns ``(seconds per step, batch size measured)``."""
    from deft import train_loop
    from deft.core.detector import DeftModel, class_texts, phase1_step
    from deft.core.device import pick_device
    from deft.core.distributed import Dist
    from deft.core.models import load_clip
    from deft.core.schema import Stage
    from deft.storage.images import decode_images

    dev = pick_device(device)
    bundle = load_clip(config.model, dev, config.attn_implementation)
    rows = np.asarray(dataset.train_rows)[: max(1, min(int(config.optim.batch_size), len(dataset.train_rows)))]
    images = decode_images([dataset.paths()[i] for i in rows], bundle.image_size)
    net = DeftModel(bundle, class_texts(dataset), config)
    step = phase1_step(net, images, torch.as_tensor(dataset.labels[rows], dtype=torch.long), config,
                       bundle.normalizer)
    params = net.trainable_parameters()
    opt, _ = train_loop.make_optimizer(params, config.optim, 1)
    idx, gen, ddp = torch.arange(len(rows)), torch.Generator().manual_seed(0), Dist()
    elapsed = 0.0
    for k in range(steps + 1):
        _sync(dev)
        t0 = time.perf_counter()
        train_loop.optimizer_step(step, idx, 0, k, gen, opt, params, stage=Stage.PHASE1, device=dev,
                                  precision=config.precision, ddp=ddp, loss_parts=2)
        _sync(dev)
        if k:  # the first step (allocations, kernel choice) is a warm-up
            elapsed += time.perf_counter() - t0
    return elapsed / max(1, steps), len(rows)


def _sync(dev: torch.device) -> None:
    """Wait for the accelerator's queued work: a step is timed to its end, not to its launch."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
