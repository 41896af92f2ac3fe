"""Batches for the training and scoring passes: gather uint8 rows, augment on the device, normalise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class ImageRows(Protocol):
    """A uint8 image store that decodes a batch straight onto a device (:class:`deft.storage.shards.ShardImages`)."""

    def decode_to(self, idx: np.ndarray, device: torch.device) -> torch.Tensor: ...


def make_batch(
    images: np.ndarray | ImageRows,
    idx: torch.Tensor,
    device: torch.device,
    normalizer: Normalizer,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gather a uint8 batch, move it to ``device``, augment there (if ``generator``), normalise.

    ``images`` is the raw uint8 cache or a :class:`deft.storage.shards.ShardImages` store, whose
    ``decode_to`` decodes the batch on the GPU (nvJPEG) when ``device`` is CUDA.
    """
    if hasattr(images, "decode_to"):  # not `to_device`: numpy 2 arrays have one
        x = images.decode_to(idx.numpy(), device)
    else:
        x = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).to(device, non_blocking=True)
    if generator is not None:
        x = augment(x, generator)
    return normalizer(x)


@dataclass(frozen=True)
class Normalizer:
    """CLIP pixel normalisation, kept with the model bundle."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = x_uint8.to(dtype) / 255.0
        mean = torch.tensor(self.mean, device=x.device, dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 1/8 zero padding (CIFAR's crop 32 pad 4, scaled) and horizontal flip.

    Works on a uint8 or float batch on any device; randomness comes from a CPU
    ``generator`` so runs are reproducible and resumable.
    """
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)
    cols = torch.where(flip.to(x.device).view(b, 1), cols.flip(1), cols)
    bidx = torch.arange(b, device=x.device).view(b, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bidx, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()
