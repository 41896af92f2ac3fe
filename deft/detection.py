"""Phase 1 runs: train the DEFT detector into a run folder, score every sample, resume, re-score.

The detector itself (model, training step, scoring pass on in-memory arrays) lives in
:mod:`deft.core.detector`; this module adds the run folder (:class:`deft.storage.run.Run`: images cache,
checkpoint, weights, scores, metrics), distributed training and progress. The detector's
names are re-exported here, so ``from deft.detection import DeftModel, phase1_step`` keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from deft.core.config import ImageEncoder, InferenceConfig, Phase1Config
from deft.core.detector import (
    DeftModel,
    FrozenFeatures,
    PromptedTower,
    class_texts,
    image_features,
    neg_target_is_given,
    phase1_step,
    score,
    score_samples,
    zero_shot_text,
)
from deft.core.device import pick_device
from deft.core.distributed import Dist, init_distributed
from deft.core.models import ClipBundle, load_clip
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.core.schema import RunStatus, Stage
from deft.storage.atomic import save_safetensors
from deft.storage.data import Dataset
from deft.storage.run import Run, RunError
from deft.storage.run_images import load_run_images, run_normalizer
from deft.storage.truth import ground_truth_metrics
from deft.train_loop import train_epochs

__all__ = [
    "DeftModel", "DetectionResult", "FrozenFeatures", "PromptedTower", "build_scores_table", "class_texts",
    "detect", "image_features", "load_detector", "load_run_images", "neg_target_is_given", "open_run",
    "phase1_step", "rescore", "score", "score_samples", "zero_shot_text",
]


@dataclass
class DetectionResult:
    run: Run
    scores: pd.DataFrame
    history: list[dict[str, float]]
    metrics: dict[str, float] | None


def build_scores_table(dataset: Dataset, raw: pd.DataFrame, pseudo_source: str = "zeroshot") -> pd.DataFrame:
    """Join the scoring pass (one row per training row, in order) with sample ids/labels and add the suggestion.

    ``pseudo_source``: ``zeroshot`` suggests frozen zero-shot CLIP's top class (``zs1``), as the
    seed method; ``prompts`` the learned positive-prompt prediction (``pred``).
    """
    s = dataset.samples[["id", "label"]].iloc[dataset.train_rows].reset_index(drop=True)
    df = pd.concat([s, raw.reset_index(drop=True)], axis=1)
    col = {"zeroshot": "zs1", "prompts": "pred"}[pseudo_source]
    df["suggestion"] = df[col]
    df["suggestion_conf"] = df[f"{col}_conf"]
    return df


def open_run(out: str | os.PathLike, dataset: Dataset, cfg: Phase1Config, ddp: Dist) -> Run:
    """Rank 0 creates (or re-opens) the run folder; the other ranks open it after."""
    run = Run.create(out, dataset, cfg) if ddp.is_main else None
    ddp.barrier()
    return run if run is not None else Run.open(out)


def detect(
    dataset: Dataset,
    out: str | os.PathLike,
    config: Phase1Config | None = None,
    *,
    device: str | torch.device = "auto",
    bundle: ClipBundle | None = None,
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    inference: InferenceConfig | None = None,
) -> DetectionResult:
    """Train the DEFT detector on ``dataset`` and score every sample; resumable.

    If ``out`` already holds an interrupted run on the same data, training resumes
    from its last finished epoch. ``inference`` sets the chunk sizes of the no-grad passes.
    """
    ddp, dev = init_distributed(pick_device(device) if isinstance(device, str) else device)
    run = open_run(out, dataset, config or Phase1Config(), ddp)
    cfg = run.config  # a resumed run keeps the config it started with
    bundle = bundle or load_clip(cfg.model, dev, cfg.attn_implementation)
    images = load_run_images(run, bundle.image_size, progress, cancel, ddp)
    bundle = replace(bundle, normalizer=run_normalizer(run, bundle.normalizer, images, save=ddp.is_main))
    model = DeftModel(bundle, class_texts(dataset), cfg)
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    if ddp.is_main:
        run.set(status=RunStatus.TRAINING)

    inference = inference or InferenceConfig()
    feats = (image_features(bundle, images, cfg.precision, progress, cancel, inference.feature_batch_size)
             if cfg.image_encoder is ImageEncoder.FROZEN else None)
    train_rows = dataset.train_rows  # held-out (test/val) rows: no training, no decision, no review
    if len(train_rows) == 0:
        raise ValueError("every sample is in a test/val split; Phase 1 needs training rows (split=train)")
    step = phase1_step(model, images, labels, cfg, bundle.normalizer, feats, rows=train_rows)

    def epoch_end(epoch: int, summary: dict[str, float]) -> None:
        run.log({"stage": Stage.PHASE1, **summary})

    loop = train_epochs(stage=Stage.PHASE1, n=len(train_rows), step_fn=step, module=model,
                        params=model.trainable_parameters(), cfg=cfg.optim, seed=cfg.seed, device=dev,
                        precision=cfg.precision, checkpoint=run.checkpoint_path, on_epoch_end=epoch_end,
                        progress=progress, cancel=cancel, ddp=ddp, loss_parts=2, owner=run.owner)
    if ddp.is_main:
        save_safetensors(run.weights_path, model.prompt_state())
    scores = _score_run(run, model, bundle, images, cfg, progress, cancel, ddp=ddp, features=feats,
                        batch_size=inference.score_batch_size)
    metrics = ground_truth_metrics(run, scores) if ddp.is_main else None
    if ddp.is_main:
        run.set(status=RunStatus.SCORED, history=loop.history)
    return DetectionResult(run=run, scores=scores, history=loop.history, metrics=metrics)


def _score_run(run: Run, model: DeftModel, bundle: ClipBundle, images: np.ndarray, cfg: Phase1Config,
               progress: ProgressCallback, cancel: CancelToken | None, save: bool = True,
               ddp: Dist | None = None, features: torch.Tensor | None = None,
               batch_size: int = InferenceConfig.score_batch_size) -> pd.DataFrame:
    """Score every sample (each rank its strided shard, gathered back in order); rank 0 saves."""
    ds, ddp = run.dataset, ddp or Dist()
    zs = zero_shot_text(bundle, class_texts(ds), cfg.zero_shot_template)
    index = ds.train_rows[ddp.rank :: ddp.world]  # held-out rows get no clean/suspect decision
    part = score_samples(model, images, ds.labels, ds.classes, zs, bundle.normalizer, real_world=cfg.real_world,
                         precision=cfg.precision, progress=progress if ddp.is_main else null_progress,
                         cancel=cancel, index=index, features=features, batch_size=batch_size)
    raw = ddp.gather_frames(part.assign(_order=index))
    scores = build_scores_table(ds, raw, cfg.pseudo_source)
    if save and ddp.is_main:
        run.save_scores(scores)
    ddp.barrier()
    return scores


def load_detector(run: Run, bundle: ClipBundle) -> DeftModel:
    """Rebuild the trained detector of a finished run (its ``bundle`` normalises pixels as the run did)."""
    if not run.weights_path.is_file():
        raise FileNotFoundError(f"{run.path} has no learned prompts yet; finish `deft detect` first.")
    bundle = replace(bundle, normalizer=run_normalizer(run, bundle.normalizer))
    model = DeftModel(bundle, class_texts(run.dataset), run.config)
    try:
        model.load_prompt_state(load_file(str(run.weights_path)))
    except Exception as exc:  # SafetensorError on garbage, KeyError/RuntimeError on other weights
        raise RunError(f"{run.weights_path} is damaged ({type(exc).__name__}); delete it and re-run `deft detect` "
                       f"with --out {run.path} to rebuild it.") from None
    return model


def rescore(run_path: str | os.PathLike, *, device: str = "auto", bundle: ClipBundle | None = None,
            progress: ProgressCallback = null_progress, save: bool = True) -> pd.DataFrame:
    """Re-open a run, rebuild its detector from the saved weights and score every sample again."""
    run = Run.open(run_path)
    cfg = run.config
    ddp, dev = init_distributed(pick_device(device))
    bundle = bundle or load_clip(cfg.model, dev, cfg.attn_implementation)
    model = load_detector(run, bundle)  # before decoding: a damaged weights file is reported at once
    images = load_run_images(run, bundle.image_size, progress, None, ddp)
    return _score_run(run, model, model.bundle, images, cfg, progress, None, save=save, ddp=ddp)
