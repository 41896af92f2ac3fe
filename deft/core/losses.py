"""DEFT scores, clean rule and losses as pure functions (METHOD.md, Phase 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DeftScores:
    """``s_pos = tau*cos(v, t+)``, ``s_neg = tau*cos(sg(v), t-)``, shape ``(B, K)``."""

    s_pos: torch.Tensor
    s_neg: torch.Tensor

    @property
    def p(self) -> torch.Tensor:
        """``p_k = sigmoid(sg(s+_k) - s-_k)``: probability that the label k fits the image."""
        return torch.sigmoid(self.s_pos.detach().float() - self.s_neg.float())


def deft_scores(v: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor, tau: float | torch.Tensor) -> DeftScores:
    """Scores from image features ``v (B, D)`` and text features ``(K, D)``, always in fp32.

    The features are cast to float32 and L2-normalised again outside any autocast
    region: under bf16 autocast the matmul would otherwise round the scores (margins
    moved by up to 0.17, and 0.4% of clean decisions flipped).
    """
    with torch.autocast(device_type=v.device.type, enabled=False):
        v32 = F.normalize(v.float(), dim=-1)
        tp, tn = F.normalize(t_pos.float(), dim=-1), F.normalize(t_neg.float(), dim=-1)
        tau32 = tau.float() if torch.is_tensor(tau) else float(tau)
        return DeftScores(s_pos=tau32 * v32 @ tp.t(), s_neg=tau32 * v32.detach() @ tn.t())


def clean_mask(scores: DeftScores, labels: torch.Tensor, real_world: bool = False) -> torch.Tensor:
    """A sample is clean iff ``p_y > 0.5`` (i.e. ``cos(v,t+_y) > cos(v,t-_y)``);
    with ``real_world`` also ``argmax_k p_k == y``."""
    with torch.no_grad():
        p = scores.p
        clean = p.gather(1, labels[:, None]).squeeze(1) > 0.5
        if real_world:
            clean &= p.argmax(dim=1) == labels
    return clean


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0, beta: float = 1.0,
             reduction: str = "mean") -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al. 2019): ``alpha*CE + beta*RCE`` (``reduction`` mean or sum)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    pred = F.softmax(logits.float(), dim=1).clamp(1e-7, 1.0)
    one_hot = F.one_hot(labels, logits.shape[1]).float().clamp(1e-4, 1.0)
    rce = -(pred * torch.log(one_hot)).sum(dim=1)
    per_sample = alpha * ce + beta * rce
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def random_other_class(labels: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random class different from each label (redrawn every call)."""
    offset = torch.randint(1, k, labels.shape, generator=generator).to(labels.device)
    return (labels + offset) % k


def deft_losses(
    scores: DeftScores,
    labels: torch.Tensor,
    *,
    warmup: bool,
    real_world: bool = False,
    clamp: float = 1e-5,
    sce: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
    other: torch.Tensor | None = None,
    given_target: bool | None = None,
) -> dict[str, torch.Tensor]:
    """``L = L_cls + L_neg`` with the stop-gradients of METHOD.md.

    ``L_cls`` (cross-entropy of ``s+``; SCE during a real-world warm-up) runs over all
    samples in warm-up and over the currently-clean ones afterwards; it never touches
    the negative prompts. ``L_neg = -log(1 - p_cbar) - log(p_yhat)`` trains only the
    negative prompts. An all-noisy batch gives ``L_cls = 0`` (not NaN). ``parts`` holds
    ``(sum, count)`` of each loss so a data-parallel loop can divide by global counts.

    ``given_target`` says whether ``L_neg``'s target ``yhat`` is the given label for every
    sample (True) or the given label for clean samples and ``argmax s+`` for the others
    (False). Default: True during warm-up. The real-world recipe passes True only in the
    first epoch (the official code's ``epoch <= 1``), even inside its 5 warm-up epochs.
    """
    with torch.autocast(device_type=scores.s_pos.device.type, enabled=False):
        return _deft_losses_fp32(scores, labels, warmup=warmup, real_world=real_world, clamp=clamp, sce=sce,
                                 generator=generator, other=other,
                                 given_target=warmup if given_target is None else given_target)


def _deft_losses_fp32(scores: DeftScores, labels: torch.Tensor, *, warmup: bool, real_world: bool, clamp: float,
                      sce: tuple[float, float], generator: torch.Generator | None,
                      other: torch.Tensor | None, given_target: bool) -> dict[str, torch.Tensor]:
    s_pos = scores.s_pos.float()
    k = s_pos.shape[1]
    clean = clean_mask(scores, labels, real_world)
    # L_cls as a sum and a count, so data-parallel ranks can divide by the global count
    if warmup:
        cls_sum = sce_loss(s_pos, labels, *sce, reduction="sum") if real_world else \
            F.cross_entropy(s_pos, labels, reduction="sum")
        cls_n = torch.tensor(float(len(labels)), device=s_pos.device)
    else:
        cls_sum = F.cross_entropy(s_pos[clean], labels[clean], reduction="sum")  # 0 (with a graph) if none clean
        cls_n = clean.sum().float()
    l_cls = cls_sum / cls_n.clamp_min(1.0)  # an all-noisy batch gives 0, not NaN
    p = torch.sigmoid(s_pos.detach() - scores.s_neg.float())
    cbar = other if other is not None else random_other_class(labels, k, generator)
    if given_target:
        yhat = labels
    else:
        yhat = torch.where(clean, labels, s_pos.detach().argmax(dim=1))
    p_cbar = p.gather(1, cbar[:, None]).squeeze(1)
    p_yhat = p.gather(1, yhat[:, None]).squeeze(1)
    neg_sum = (-torch.log((1 - p_cbar).clamp_min(clamp)) - torch.log(p_yhat.clamp_min(clamp))).sum()
    neg_n = torch.tensor(float(len(labels)), device=s_pos.device)
    l_neg = neg_sum / neg_n
    return {"loss": l_cls + l_neg, "l_cls": l_cls, "l_neg": l_neg, "clean": clean,
            "parts": [(cls_sum, cls_n), (neg_sum, neg_n)]}
