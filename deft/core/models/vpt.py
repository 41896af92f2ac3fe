"""Deep visual prompt tuning on the HF CLIP vision tower."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel


class DeepVPT(nn.Module):
    """``n_tokens`` learnable tokens inserted at each of the first ``n_layers`` layers.

    At every prompted layer the previous layer's prompt outputs are dropped and the
    layer's own tokens take their place (VPT-deep). Uniform init as in VPT:
    ``U(-v, v)``, ``v = sqrt(6 / (3 * patch**2 + width))``.
    """

    def __init__(self, clip: CLIPModel, n_tokens: int = 20, n_layers: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        vc = clip.config.vision_config
        depth = vc.num_hidden_layers if n_layers is None else min(n_layers, vc.num_hidden_layers)
        val = math.sqrt(6.0 / float(3 * vc.patch_size**2 + vc.hidden_size))
        prompts = torch.empty(depth, n_tokens, vc.hidden_size)
        nn.init.uniform_(prompts, -val, val, generator=generator)
        self.prompts = nn.Parameter(prompts.to(next(clip.parameters()).device))

    @property
    def depth(self) -> int:
        return self.prompts.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.prompts.shape[1]


def vision_tokens(vm: nn.Module, pixel_values: torch.Tensor, vpt: DeepVPT | None = None) -> torch.Tensor:
    """Final hidden states of a CLIP vision tower ``vm`` (CLS first), with VPT tokens if given."""
    h = vm.pre_layrnorm(vm.embeddings(pixel_values))
    n = h.shape[1]
    for i, layer in enumerate(vm.encoder.layers):
        if vpt is not None and i < vpt.depth:
            p = vpt.prompts[i].unsqueeze(0).expand(h.shape[0], -1, -1).to(h.dtype)
            h = torch.cat([h[:, :n], p], dim=1)
        h = layer(h, None)
    return h


def encode_image(clip: CLIPModel, pixel_values: torch.Tensor, vpt: DeepVPT | None = None) -> torch.Tensor:
    """L2-normalised CLIP image embedding, with deep VPT when ``vpt`` is given."""
    cls = clip.vision_model.post_layernorm(vision_tokens(clip.vision_model, pixel_values, vpt)[:, 0])
    return F.normalize(clip.visual_projection(cls).float(), dim=-1)
