"""CoOp prompt learner: ``[V]_1..[V]_M classname.`` through the frozen CLIP text tower."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel


def causal_mask(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask ``(1, 1, L, L)`` accepted by the eager and SDPA attention paths."""
    m = torch.full((length, length), torch.finfo(dtype).min, device=device, dtype=dtype)
    return torch.triu(m, diagonal=1).view(1, 1, length, length)


def encode_text_embeddings(clip: CLIPModel, embeds: torch.Tensor, eos_pos: torch.Tensor) -> torch.Tensor:
    """Run token embeddings ``(P, L, D)`` through the text tower; return projected EOS features.

    Attention is causal, so tokens after the EOS cannot change its feature: callers
    may cut ``L`` to ``max(eos_pos) + 1`` without changing the result.
    """
    tm = clip.text_model
    h = tm.embeddings(inputs_embeds=embeds)
    mask = causal_mask(h.shape[1], h.device, h.dtype)
    for layer in tm.encoder.layers:
        h = layer(h, mask)
    h = tm.final_layer_norm(h)
    pooled = h[torch.arange(h.shape[0], device=h.device), eos_pos]
    return clip.text_projection(pooled)


class PromptLearner(nn.Module):
    """``n_sets`` sets of ``n_ctx`` learnable context vectors shared across classes.

    Set 0 is the positive prompt, set 1 the negative one. The class tokens come last
    (``[V]x16 classname.``), the EOS feature is the text feature, as in CoOp/DEFT.
    ``truncate=False`` keeps the full context length (the reference recipe's cost).
    """

    def __init__(
        self,
        clip: CLIPModel,
        tokenize,
        class_texts: list[str],
        eos_token_id: int,
        n_ctx: int = 16,
        n_sets: int = 2,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        truncate: bool = True,
    ) -> None:
        super().__init__()
        width = clip.config.text_config.hidden_size
        placeholder = " ".join(["X"] * n_ctx)
        enc = tokenize([f"{placeholder} {t}." for t in class_texts])
        ids = enc["input_ids"]
        eos = (ids == eos_token_id).int().argmax(dim=1)
        if truncate:  # exact: causal attention means nothing after the EOS reaches its feature
            ids = ids[:, : int(eos.max()) + 1]
        with torch.no_grad():
            tok = clip.text_model.embeddings.token_embedding(ids)
        self.register_buffer("prefix", tok[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("suffix", tok[:, 1 + n_ctx :].clone(), persistent=False)  # class . EOS
        self.register_buffer("eos_pos", eos.clone(), persistent=False)
        ctx = torch.empty(n_sets, n_ctx, width)
        nn.init.normal_(ctx, std=init_std, generator=generator)
        self.ctx = nn.Parameter(ctx.to(tok.device))
        self.n_sets, self.n_cls = n_sets, len(class_texts)

    def embeddings(self) -> torch.Tensor:
        """Token embeddings of all ``n_sets * K`` prompts, shape ``(n_sets*K, L, D)``."""
        k = self.n_cls
        ctx = self.ctx.unsqueeze(1).expand(-1, k, -1, -1)  # (S, K, M, D)
        pre = self.prefix.unsqueeze(0).expand(self.n_sets, -1, -1, -1)
        suf = self.suffix.unsqueeze(0).expand(self.n_sets, -1, -1, -1)
        return torch.cat([pre, ctx.to(pre.dtype), suf], dim=2).flatten(0, 1)

    def forward(self, clip: CLIPModel) -> torch.Tensor:
        """L2-normalised text features ``(n_sets, K, proj_dim)``: all prompts in one batched call."""
        feats = encode_text_embeddings(clip, self.embeddings(), self.eos_pos.repeat(self.n_sets))
        return F.normalize(feats.float(), dim=-1).view(self.n_sets, self.n_cls, -1)
