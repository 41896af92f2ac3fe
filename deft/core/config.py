"""Configs as data: one dataclass per phase, defaults = the paper (METHOD.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from deft.core.schema import DEFAULT_MODEL

DEFAULT_TEMPLATE = "a photo of a {}."
LR_SCHEDULES = ("epoch", "step", "constant")
PSEUDO_SOURCES = ("zeroshot", "prompts")
#: The official code's per-dataset pixel normalisation (HotanLee/DeFT dataloaders), by name: ``(mean, std)``.
OFFICIAL_PIXEL_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    "clothing1m": ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # the official WebVision loader
}
#: ``Phase1Config.pixel_stats``: the checkpoint's own (CLIP's) mean/std, the run's training images' mean/std,
#: or one of the official code's named constants.
PIXEL_STATS = ("clip", "dataset", *OFFICIAL_PIXEL_STATS)


class ImageEncoder(StrEnum):
    """How Phase 1 turns images into embeddings (:mod:`deft.core.detector`'s two strategies).

    ``PROMPTED`` (full DEFT): the vision tower with learned deep visual prompts, run on every
    augmented batch. ``FROZEN`` (the quick preview; ``Phase1Config.feature_cache``,
    ``--feature-cache``): the frozen tower's embeddings, computed once; only the text prompts train.
    """

    PROMPTED = "prompted"
    FROZEN = "frozen"


@dataclass
class OptimConfig:
    """SGD + cosine schedule, shared by both phases.

    ``lr_schedule="epoch"`` (default) is the official ``CosineAnnealingLR(T_max=epochs)``
    stepped once per epoch: epoch ``e`` (0-based) trains at ``lr*(1+cos(pi*e/epochs))/2``.
    ``"step"`` anneals the cosine per batch down to 0 at the end of training. ``"constant"``
    keeps ``lr`` (what the official real-world scripts do: they never step their scheduler).
    """

    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    epochs: int = 10
    lr_schedule: str = "epoch"  # epoch (official) | step | constant

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")


@dataclass
class InferenceConfig:
    """Chunk sizes of the no-grad passes (not stored with a run: they do not change the results).

    ``feature_batch_size``: frozen image embeddings (quick preview, audit); ``score_batch_size``:
    Phase 1's scoring pass; ``predict_batch_size``: Phase 2 predictions and held-out evaluation.
    """

    feature_batch_size: int = 256
    score_batch_size: int = 256
    predict_batch_size: int = 128


@dataclass
class Phase1Config:
    """DEFT noisy-label detector (PEFT: dual CoOp prompts + deep VPT).

    Defaults follow the official recipe; ``real_world=True`` adds the
    ``argmax == label`` clean condition, SCE warm-up and 5 warm-up epochs.
    """

    model: str = DEFAULT_MODEL
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.03))
    n_ctx: int = 16
    ctx_init_std: float = 0.02
    vpt_tokens: int = 20
    vpt_layers: int | None = None  # None: every layer of the vision tower
    warmup_epochs: int | None = None  # None: 1, or 5 when real_world
    real_world: bool = False
    sce_alpha: float = 1.0
    sce_beta: float = 1.0
    prob_clamp: float = 1e-5
    augment: bool = True
    # Quick preview / CPU mode: frozen image encoder (no VPT), image features computed once,
    # only the two prompt contexts train. Much faster; weaker than full DEFT (see README).
    feature_cache: bool = False
    zero_shot_template: str = DEFAULT_TEMPLATE
    # Pseudo-label (suggestion) for suspects: "zeroshot" = frozen zero-shot CLIP, as the seed method whose
    # Phase 2 gain is measured (METHOD.md, Table 4); "prompts" = the learned positive-prompt prediction.
    pseudo_source: str = "zeroshot"
    # Pixel normalisation of both phases on this run (see PIXEL_STATS): "clip" (default) is what the checkpoint
    # was pre-trained with; the official code normalises with per-dataset statistics ("dataset", or its constants).
    pixel_stats: str = "clip"
    precision: str = "auto"  # auto (bf16 autocast on CUDA and native-bf16 CPUs) | fp32 | bf16
    attn_implementation: str = "sdpa"
    seed: int = 0

    @property
    def image_encoder(self) -> ImageEncoder:
        """The image-encoder strategy ``feature_cache`` selects (the stored field keeps its name)."""
        return ImageEncoder.FROZEN if self.feature_cache else ImageEncoder.PROMPTED

    def __post_init__(self) -> None:
        if self.pseudo_source not in PSEUDO_SOURCES:
            raise ValueError(f"unknown pseudo-label source {self.pseudo_source!r}; "
                             f"choose one of {list(PSEUDO_SOURCES)}")
        if self.pixel_stats not in PIXEL_STATS:
            raise ValueError(f"unknown pixel stats {self.pixel_stats!r}; choose one of {list(PIXEL_STATS)}")

    @property
    def warmup(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 5 if self.real_world else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phase1Config:
        return _from_dict(cls, d)


@dataclass
class Phase2Config:
    """Full fine-tuning of the image encoder + a linear head on the curated set."""

    model: str = DEFAULT_MODEL
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    val_fraction: float = 0.1  # without a test/val split: curated rows held out (0: none, as the official code)
    augment: bool = True
    trainable: str = "blocks"  # blocks (official: transformer blocks + head) | all
    # masked (official): each epoch iterates all samples, loss over the curated ones in the batch;
    # curated: batches of curated samples only (fewer steps, full batches)
    batching: str = "masked"
    precision: str = "auto"
    attn_implementation: str = "sdpa"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phase2Config:
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in known}
    if isinstance(kwargs.get("optim"), dict):
        kwargs["optim"] = OptimConfig(**kwargs["optim"])
    return cls(**kwargs)


#: Phase 1 presets (selectable with ``deft detect --preset NAME``; explicit flags override them):
#: ``deft`` the paper's recipe for synthetic noise (the defaults); ``deft-real`` the real-world
#: (human noise) variant; ``preview`` the quick preview (frozen image encoder, prompts only).
PRESETS: dict[str, dict[str, Any]] = {
    "deft": {},
    "deft-real": {"real_world": True},
    "preview": {"feature_cache": True},
}


def phase1_preset(name: str = "deft", optim: dict[str, Any] | None = None, **fields: Any) -> Phase1Config:
    """The Phase 1 config of preset ``name`` with ``fields`` (and ``optim`` fields) overriding it.

    Parameters
    ----------
    name : str
        One of :data:`PRESETS`.
    optim : dict, optional
        :class:`OptimConfig` fields to change from the phase's default optimiser.
    **fields
        :class:`Phase1Config` fields to change.

    Raises
    ------
    ValueError
        An unknown preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    cfg = Phase1Config(**{**PRESETS[name], **fields})
    return replace(cfg, optim=replace(cfg.optim, **(optim or {})))
