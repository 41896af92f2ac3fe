"""The DEFT noisy-label detector, in memory: model, training step and scoring pass (no file I/O).

Everything here works on arrays the caller holds: a ``uint8`` image array ``(N, H, W, 3)``,
integer labels and a loaded CLIP. The run folder (resume, caches, saved scores) is
:mod:`deft.detection`'s job; the method itself is specified in ``docs/METHOD.md``.

How images become embeddings is one of two *image-encoder strategies*
(:class:`deft.core.config.ImageEncoder`):

* :class:`PromptedTower` (full DEFT): every batch goes through the vision tower with the
  learned deep visual prompts (VPT), augmented during training;
* :class:`FrozenFeatures` (the quick preview, ``Phase1Config.feature_cache`` /
  ``--feature-cache``): the frozen tower's embeddings of every image, computed once; only
  the two prompt contexts train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from deft.core.batches import Normalizer, make_batch
from deft.core.config import DEFAULT_TEMPLATE, ImageEncoder, InferenceConfig, Phase1Config
from deft.core.device import autocast
from deft.core.inference import run_batches
from deft.core.losses import DeftScores, clean_mask, deft_losses, deft_scores
from deft.core.models import ClipBundle, DeepVPT, PromptLearner, encode_image
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.core.schema import Stage


class ClassTexts(Protocol):
    """What the detector needs of a dataset (a :class:`deft.storage.data.Dataset`): its classes and their prompts."""

    classes: list[str]
    prompts: dict[str, str]


class DeftModel(nn.Module):
    """Frozen CLIP + dual prompt learner (positive, negative) + deep VPT (none with frozen features)."""

    def __init__(self, bundle: ClipBundle, class_texts: list[str], cfg: Phase1Config) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.clip = bundle.model
        self.bundle = bundle  # tokenizer and normaliser, for :func:`score` (a plain attribute, not a submodule)
        self.class_texts = list(class_texts)
        self.prompts = PromptLearner(self.clip, bundle.tokenize, class_texts, bundle.eos_token_id,
                                     n_ctx=cfg.n_ctx, n_sets=2, init_std=cfg.ctx_init_std, generator=gen)
        frozen = cfg.image_encoder is ImageEncoder.FROZEN
        self.vpt = None if frozen else DeepVPT(self.clip, cfg.vpt_tokens, cfg.vpt_layers, generator=gen)

    @property
    def tau(self) -> torch.Tensor:
        """CLIP's temperature ``exp(logit_scale)`` (frozen)."""
        return self.clip.logit_scale.exp().detach()

    @property
    def frozen_encoder(self) -> bool:
        """True when the image tower has no visual prompts (the frozen-features strategy)."""
        return self.vpt is None

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised positive and negative class text features ``(K, D)`` each."""
        t = self.prompts(self.clip)
        return t[0], t[1]

    def forward(self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None) -> DeftScores:
        """Scores from pixels (through the VPT-prompted image tower) or precomputed image ``features``."""
        t_pos, t_neg = self.text_features()
        v = features if features is not None else encode_image(self.clip, pixel_values, self.vpt)
        return deft_scores(v, t_pos, t_neg, self.tau)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The two prompt contexts, and the visual prompts when there are any."""
        return [self.prompts.ctx] + ([self.vpt.prompts] if self.vpt is not None else [])

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """The learned prompts (``ctx_pos``, ``ctx_neg``, and ``vpt`` when present), detached on the CPU."""
        w = {"ctx_pos": self.prompts.ctx[0], "ctx_neg": self.prompts.ctx[1]}
        if self.vpt is not None:
            w["vpt"] = self.vpt.prompts
        return {k: v.detach().contiguous().cpu() for k, v in w.items()}

    def load_prompt_state(self, w: dict[str, torch.Tensor]) -> None:
        """Copy prompts from a :meth:`prompt_state` dict (``KeyError`` / ``RuntimeError`` on other shapes)."""
        with torch.no_grad():
            self.prompts.ctx.copy_(torch.stack([w["ctx_pos"], w["ctx_neg"]]))
            if self.vpt is not None:
                self.vpt.prompts.copy_(w["vpt"])


# -- image-encoder strategies -----------------------------------------------------------------


class ImageEncoding(Protocol):
    """How a batch of rows becomes DEFT scores (training) and embeddings (scoring)."""

    def train_scores(self, model: DeftModel, idx: torch.Tensor, gen: torch.Generator | None) -> DeftScores: ...

    def embed(self, model: DeftModel, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class FrozenFeatures:
    """Quick preview: frozen image embeddings of every image, computed once; no visual prompts."""

    features: torch.Tensor

    def train_scores(self, model: DeftModel, idx: torch.Tensor, gen: torch.Generator | None) -> DeftScores:
        return model(features=self.features[idx.to(self.features.device)])

    def embed(self, model: DeftModel, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(zero-shot embedding, detector embedding)``: the same cached features."""
        v = self.features[idx.to(self.features.device)]
        return v, v


@dataclass(frozen=True)
class PromptedTower:
    """Full DEFT: each batch of ``images`` through the vision tower with the model's visual prompts."""

    images: np.ndarray
    normalizer: Normalizer
    augment: bool = True

    def train_scores(self, model: DeftModel, idx: torch.Tensor, gen: torch.Generator | None) -> DeftScores:
        return model(make_batch(self.images, idx, model.tau.device, self.normalizer, gen if self.augment else None))

    def prefetch(self, model: DeftModel, idx: torch.Tensor) -> None:
        """Start decoding the batch ``idx`` in the background (image stores that can; a no-op otherwise)."""
        if hasattr(self.images, "prefetch"):
            self.images.prefetch(idx.numpy(), model.tau.device)

    def embed(self, model: DeftModel, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frozen zero-shot embedding, VPT-prompted embedding)`` of an un-augmented batch."""
        x = make_batch(self.images, idx, model.tau.device, self.normalizer)
        v0 = encode_image(model.clip, x, None)
        return v0, (v0 if model.vpt is None else encode_image(model.clip, x, model.vpt))


def image_encoding(model: DeftModel, images: np.ndarray, normalizer: Normalizer, features: torch.Tensor | None,
                   augment: bool = True) -> ImageEncoding:
    """The strategy for ``model``: cached ``features`` when given and the model has no visual prompts."""
    if features is not None and model.frozen_encoder:
        return FrozenFeatures(features)
    return PromptedTower(images, normalizer, augment)


# -- training ---------------------------------------------------------------------------------


def phase1_step(model: DeftModel, images: np.ndarray, labels: torch.Tensor, cfg: Phase1Config, normalizer,
                features: torch.Tensor | None = None, rows: np.ndarray | None = None):
    """The Phase 1 training step: batch (augmented on device) -> DEFT scores -> the two losses.

    ``features`` (frozen image embeddings of every image) selects :class:`FrozenFeatures`.
    ``rows`` maps the loop's sample positions to dataset rows (the training rows; held-out
    test/val rows never train); default: every row.
    """
    dev = model.tau.device
    row_map = torch.as_tensor(rows, dtype=torch.long) if rows is not None else None
    encoder = FrozenFeatures(features) if features is not None else PromptedTower(images, normalizer, cfg.augment)
    offsets: dict[int, torch.Tensor] = {}

    def other_class(idx: torch.Tensor, y: torch.Tensor, k: int, epoch: int) -> torch.Tensor:
        # cbar, a random class != y, drawn per sample and epoch: the same whichever rank holds the sample
        if epoch not in offsets:
            offsets.clear()
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7_919)
            offsets[epoch] = torch.randint(1, k, (len(labels),), generator=g)
        return (y + offsets[epoch][idx].to(y.device)) % k

    def step(idx: torch.Tensor, epoch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = row_map[idx] if row_map is not None else idx
        y = labels[idx].to(dev)
        scores = encoder.train_scores(model, idx, gen)
        other = other_class(idx, y, scores.s_pos.shape[1], epoch)
        out = deft_losses(scores, y, warmup=epoch < cfg.warmup, real_world=cfg.real_world,
                          clamp=cfg.prob_clamp, sce=(cfg.sce_alpha, cfg.sce_beta), other=other,
                          given_target=neg_target_is_given(cfg, epoch))
        out["clean_frac"] = out["clean"].float().mean()
        out["other"] = other  # the random classes drawn (recorded for the oracle test)
        return out

    return step


def neg_target_is_given(cfg: Phase1Config, epoch: int) -> bool:
    """Whether ``L_neg`` targets the given label in 0-based ``epoch``.

    Standard recipe: throughout warm-up. Real-world recipe: only in the first epoch (the
    official code's ``epoch <= 1``), the pseudo target after, even inside the 5 warm-up epochs.
    """
    return epoch < 1 if cfg.real_world else epoch < cfg.warmup


# -- text and frozen features -----------------------------------------------------------------


def class_texts(dataset: ClassTexts) -> list[str]:
    """The prompt text of every class, in class order."""
    return [dataset.prompts[c] for c in dataset.classes]


@torch.no_grad()
def zero_shot_text(bundle: ClipBundle, texts: list[str], template: str, chunk: int = 256) -> torch.Tensor:
    """Normalised text features of ``template.format(text)`` for every class."""
    feats = []
    for i in range(0, len(texts), chunk):
        enc = bundle.tokenize([template.format(t) for t in texts[i : i + chunk]])
        feats.append(bundle.model.get_text_features(**enc).pooler_output.float())
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def image_features(bundle: ClipBundle, images: np.ndarray, precision: str = "auto",
                   progress: ProgressCallback = null_progress, cancel: CancelToken | None = None,
                   batch_size: int = InferenceConfig.feature_batch_size) -> torch.Tensor:
    """Frozen CLIP image embeddings (no VPT, no augmentation) of every image, ``(N, D)`` on the model's device."""
    def encode(idx: torch.Tensor) -> torch.Tensor:
        return encode_image(bundle.model, make_batch(images, idx, bundle.device, bundle.normalizer))

    return torch.cat(run_batches(np.arange(len(images)), batch_size, encode, device=bundle.device,
                                 precision=precision, stage=Stage.FEATURES, progress=progress, cancel=cancel))


# -- the scoring pass -------------------------------------------------------------------------

SCORE_PASS_COLUMNS = ("sim_pos", "sim_neg", "p_clean", "is_clean", "pred_idx", "pred_conf", "zs_idx", "zs_conf")


@torch.no_grad()
def score_samples(
    model: DeftModel,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    zs_text: torch.Tensor,
    normalizer,
    *,
    real_world: bool = False,
    batch_size: int = InferenceConfig.score_batch_size,
    precision: str = "auto",
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    index: np.ndarray | None = None,
    features: torch.Tensor | None = None,
) -> pd.DataFrame:
    """One deterministic pass (no augmentation) over every sample.

    Returns one row per sample: ``sim_pos``, ``sim_neg``, ``margin`` (cosines),
    ``p_clean``, ``is_clean``, the positive-prompt prediction ``pred`` with
    ``pred_conf``, and the zero-shot top-3 ``zs1..zs3`` with ``zs1_conf..zs3_conf``.
    With ``index``, only those samples are scored (one row each, in that order).
    ``features`` (frozen image embeddings of all samples) selects :class:`FrozenFeatures`
    when the model has no visual prompts. The prompts' text features are computed under the
    autocast of ``precision``, as each training step computed them (bf16 on CUDA and native-bf16
    CPUs with ``auto``): in fp32 here, borderline decisions could differ from what training saw.
    """
    model.eval()
    encoder = image_encoding(model, images, normalizer, features, augment=False)
    tau = model.tau
    with autocast(tau.device, precision):  # as training computed them (under its autocast), so no decision moves
        t_pos, t_neg = model.text_features()
    y_all = torch.as_tensor(labels, dtype=torch.long)
    index = np.arange(len(labels)) if index is None else np.asarray(index)

    def finish(idx: torch.Tensor, embedded: tuple[torch.Tensor, torch.Tensor]) -> dict[str, np.ndarray]:
        v0, v = embedded
        y = y_all[idx].to(tau.device)
        sc = deft_scores(v, t_pos, t_neg, tau)
        k = min(3, zs_text.shape[0])
        zs = (tau * F.normalize(v0.float(), dim=-1) @ zs_text.t()).softmax(dim=1).topk(k, dim=1)
        conf, pred = sc.s_pos.softmax(dim=1).max(dim=1)
        parts = {
            "sim_pos": (sc.s_pos / tau).gather(1, y[:, None]).squeeze(1),  # fp32 cosines, as the scores
            "sim_neg": (sc.s_neg / tau).gather(1, y[:, None]).squeeze(1),
            "p_clean": sc.p.gather(1, y[:, None]).squeeze(1), "is_clean": clean_mask(sc, y, real_world),
            "pred_idx": pred, "pred_conf": conf, "zs_idx": zs.indices, "zs_conf": zs.values,
        }
        return {k: v.cpu().numpy() for k, v in parts.items()}

    ahead = (lambda idx: encoder.prefetch(model, idx)) if isinstance(encoder, PromptedTower) else None
    chunks = run_batches(index, batch_size, lambda idx: encoder.embed(model, idx), finish, device=tau.device,
                         precision=precision, stage=Stage.SCORE, progress=progress, cancel=cancel, prefetch=ahead)
    return score_frame({k: np.concatenate([c[k] for c in chunks]) for k in SCORE_PASS_COLUMNS}, classes)


def score_frame(cat: dict[str, np.ndarray], classes: list[str]) -> pd.DataFrame:
    """The scoring pass's table from its concatenated per-sample arrays (class indices -> names)."""
    names = np.asarray(classes, dtype=object)
    cols = {
        "sim_pos": cat["sim_pos"], "sim_neg": cat["sim_neg"],
        "margin": cat["sim_pos"] - cat["sim_neg"], "p_clean": cat["p_clean"],
        "is_clean": cat["is_clean"].astype(bool),
        "pred": names[cat["pred_idx"]], "pred_conf": cat["pred_conf"],
    }
    for j in range(cat["zs_idx"].shape[1]):
        cols[f"zs{j + 1}"] = names[cat["zs_idx"][:, j]]
        cols[f"zs{j + 1}_conf"] = cat["zs_conf"][:, j]
    return pd.DataFrame(cols)


def score(images: np.ndarray, labels: np.ndarray, model: DeftModel, *, classes: list[str] | None = None,
          zero_shot_template: str = DEFAULT_TEMPLATE, real_world: bool = False, precision: str = "auto",
          batch_size: int = InferenceConfig.score_batch_size) -> pd.DataFrame:
    """Score in-memory images with a (trained) detector, cleanlab-style: one row per image.

    Parameters
    ----------
    images : np.ndarray
        ``uint8`` array ``(N, S, S, 3)`` at the model's resolution (see :func:`deft.storage.images.decode_images`).
    labels : np.ndarray
        Given class index of every image, ``(N,)``.
    model : DeftModel
        The detector (e.g. from :func:`deft.detection.load_detector`, or freshly trained).
    classes : list of str, optional
        Class names for the ``pred`` / ``zs*`` columns; default: the model's class texts.
    zero_shot_template, real_world, precision, batch_size
        As :class:`deft.core.config.Phase1Config` and :class:`deft.core.config.InferenceConfig`.

    Returns
    -------
    pd.DataFrame
        The columns of :func:`score_samples`; ``is_clean`` False marks a suspected noisy label.
    """
    zs = zero_shot_text(model.bundle, model.class_texts, zero_shot_template)
    return score_samples(model, images, labels, classes or model.class_texts, zs, model.bundle.normalizer,
                         real_world=real_world, precision=precision, batch_size=batch_size)
