"""Phase 1: the DEFT noisy-label detector and its deterministic scoring pass."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Phase1Config
from .data import Dataset
from .device import autocast, pick_device
from .distributed import Dist, init_distributed
from .images import make_batch
from .losses import DeftScores, clean_mask, deft_losses, deft_scores
from .metrics import detection_metrics
from .models import ClipBundle, DeepVPT, PromptLearner, encode_image, load_clip
from .progress import CancelToken, ProgressCallback, ProgressEvent, null_progress
from .run import Run, RunError
from .run_images import load_run_images
from .train_loop import train_epochs


class DeftModel(nn.Module):
    """Frozen CLIP + dual prompt learner (positive, negative) + deep VPT."""

    def __init__(self, bundle: ClipBundle, class_texts: list[str], cfg: Phase1Config) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.clip = bundle.model
        self.prompts = PromptLearner(self.clip, bundle.tokenize, class_texts, bundle.eos_token_id,
                                     n_ctx=cfg.n_ctx, n_sets=2, init_std=cfg.ctx_init_std, generator=gen)
        self.vpt = None if cfg.feature_cache else DeepVPT(self.clip, cfg.vpt_tokens, cfg.vpt_layers, generator=gen)

    @property
    def tau(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().detach()

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.prompts(self.clip)
        return t[0], t[1]

    def forward(self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None) -> DeftScores:
        """Scores from pixels (through the VPT-prompted image tower) or precomputed image ``features``."""
        t_pos, t_neg = self.text_features()
        v = features if features is not None else encode_image(self.clip, pixel_values, self.vpt)
        return deft_scores(v, t_pos, t_neg, self.tau)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompts.ctx] + ([self.vpt.prompts] if self.vpt is not None else [])

    def save_weights(self, path: Path) -> None:
        w = {"ctx_pos": self.prompts.ctx[0], "ctx_neg": self.prompts.ctx[1]}
        if self.vpt is not None:
            w["vpt"] = self.vpt.prompts
        save_file({k: v.detach().contiguous().cpu() for k, v in w.items()}, str(path))

    def load_weights(self, path: Path) -> None:
        w = load_file(str(path))
        with torch.no_grad():
            self.prompts.ctx.copy_(torch.stack([w["ctx_pos"], w["ctx_neg"]]))
            if self.vpt is not None:
                self.vpt.prompts.copy_(w["vpt"])


@dataclass
class DetectionResult:
    run: Run
    scores: pd.DataFrame
    history: list[dict[str, float]]
    metrics: dict[str, float] | None


def phase1_step(model: DeftModel, images: np.ndarray, labels: torch.Tensor, cfg: Phase1Config, normalizer,
                features: torch.Tensor | None = None, rows: np.ndarray | None = None):
    """The Phase 1 training step: batch (augmented on device) -> DEFT scores -> the two losses.

    ``rows`` maps the loop's sample positions to dataset rows (the training rows; held-out
    test/val rows never train); default: every row.
    """
    dev = model.tau.device
    row_map = torch.as_tensor(rows, dtype=torch.long) if rows is not None else None
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
        if features is not None:
            scores = model(features=features[idx.to(features.device)])
        else:
            scores = model(make_batch(images, idx, dev, normalizer, gen if cfg.augment else None))
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


def class_texts(dataset: Dataset) -> list[str]:
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
                   batch_size: int = 256) -> torch.Tensor:
    """Frozen CLIP image embeddings (no VPT, no augmentation) of every image, ``(N, D)`` on the model's device."""
    out = []
    for start in range(0, len(images), batch_size):
        if cancel is not None:
            cancel.check()
        idx = torch.arange(start, min(len(images), start + batch_size))
        with autocast(bundle.device, precision):
            out.append(encode_image(bundle.model, make_batch(images, idx, bundle.device, bundle.normalizer)))
        progress(ProgressEvent("features", int(idx[-1]) + 1, len(images)))
    return torch.cat(out)


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
    batch_size: int = 256,
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
    ``features`` (frozen image embeddings of all samples, feature-cache mode) replaces
    the image pass when the model has no visual prompts.
    """
    model.eval()
    device = model.tau.device
    t_pos, t_neg = model.text_features()
    tau = model.tau
    y_all = torch.as_tensor(labels, dtype=torch.long)
    index = np.arange(len(labels)) if index is None else np.asarray(index)
    n = len(index)
    out: dict[str, list[np.ndarray]] = {k: [] for k in (
        "sim_pos", "sim_neg", "p_clean", "is_clean", "pred_idx", "pred_conf", "zs_idx", "zs_conf")}
    for start in range(0, n, batch_size):
        if cancel is not None:
            cancel.check()
        idx = torch.as_tensor(index[start : start + batch_size])
        y = y_all[idx].to(device)
        if features is not None and model.vpt is None:
            v0 = v = features[idx.to(features.device)]
        else:
            x = make_batch(images, idx, device, normalizer)
            with autocast(device, precision):
                v0 = encode_image(model.clip, x, None)
                v = v0 if model.vpt is None else encode_image(model.clip, x, model.vpt)
        sc = deft_scores(v, t_pos, t_neg, tau)
        cos_pos = (sc.s_pos / tau).gather(1, y[:, None]).squeeze(1)  # fp32, as the scores
        cos_neg = (sc.s_neg / tau).gather(1, y[:, None]).squeeze(1)
        probs = sc.s_pos.softmax(dim=1)
        zs = (tau * F.normalize(v0.float(), dim=-1) @ zs_text.t()).softmax(dim=1).topk(min(3, zs_text.shape[0]), dim=1)
        out["sim_pos"].append(cos_pos.cpu().numpy())
        out["sim_neg"].append(cos_neg.cpu().numpy())
        out["p_clean"].append(sc.p.gather(1, y[:, None]).squeeze(1).cpu().numpy())
        out["is_clean"].append(clean_mask(sc, y, real_world).cpu().numpy())
        conf, pred = probs.max(dim=1)
        out["pred_idx"].append(pred.cpu().numpy())
        out["pred_conf"].append(conf.cpu().numpy())
        out["zs_idx"].append(zs.indices.cpu().numpy())
        out["zs_conf"].append(zs.values.cpu().numpy())
        progress(ProgressEvent("score", min(n, start + batch_size), n))
    cat = {k: np.concatenate(v) for k, v in out.items()}
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
) -> DetectionResult:
    """Train the DEFT detector on ``dataset`` and score every sample; resumable.

    If ``out`` already holds an interrupted run on the same data, training resumes
    from its last finished epoch.
    """
    ddp, dev = init_distributed(pick_device(device) if isinstance(device, str) else device)
    run = open_run(out, dataset, config or Phase1Config(), ddp)
    cfg = run.config  # a resumed run keeps the config it started with
    bundle = bundle or load_clip(cfg.model, dev, cfg.attn_implementation)
    images = load_run_images(run, bundle.image_size, progress, cancel, ddp)
    model = DeftModel(bundle, class_texts(dataset), cfg)
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    if ddp.is_main:
        run.set(status="training")

    feats = image_features(bundle, images, cfg.precision, progress, cancel) if cfg.feature_cache else None
    train_rows = dataset.train_rows  # held-out (test/val) rows: no training, no decision, no review
    if len(train_rows) == 0:
        raise ValueError("every sample is in a test/val split; Phase 1 needs training rows (split=train)")
    step = phase1_step(model, images, labels, cfg, bundle.normalizer, feats, rows=train_rows)

    def epoch_end(epoch: int, summary: dict[str, float]) -> None:
        run.log({"stage": "phase1", **summary})

    loop = train_epochs(stage="phase1", n=len(train_rows), step_fn=step, module=model,
                        params=model.trainable_parameters(), cfg=cfg.optim, seed=cfg.seed, device=dev,
                        precision=cfg.precision, checkpoint=run.checkpoint_path, on_epoch_end=epoch_end,
                        progress=progress, cancel=cancel, ddp=ddp, loss_parts=2)
    if ddp.is_main:
        model.save_weights(run.weights_path)
    scores = _score_run(run, model, bundle, images, cfg, progress, cancel, ddp=ddp, features=feats)
    metrics = _ground_truth_metrics(run, scores) if ddp.is_main else None
    if ddp.is_main:
        run.set(status="scored", history=loop.history)
    return DetectionResult(run=run, scores=scores, history=loop.history, metrics=metrics)


def _score_run(run: Run, model: DeftModel, bundle: ClipBundle, images: np.ndarray, cfg: Phase1Config,
               progress: ProgressCallback, cancel: CancelToken | None, save: bool = True,
               ddp: Dist | None = None, features: torch.Tensor | None = None) -> pd.DataFrame:
    """Score every sample (each rank its strided shard, gathered back in order); rank 0 saves."""
    ds, ddp = run.dataset, ddp or Dist()
    zs = zero_shot_text(bundle, class_texts(ds), cfg.zero_shot_template)
    index = ds.train_rows[ddp.rank :: ddp.world]  # held-out rows get no clean/suspect decision
    part = score_samples(model, images, ds.labels, ds.classes, zs, bundle.normalizer, real_world=cfg.real_world,
                         precision=cfg.precision, progress=progress if ddp.is_main else null_progress,
                         cancel=cancel, index=index, features=features)
    raw = ddp.gather_frames(part.assign(_order=index))
    scores = build_scores_table(ds, raw, cfg.pseudo_source)
    if save and ddp.is_main:
        run.save_scores(scores)
    ddp.barrier()
    return scores


def _ground_truth_metrics(run: Run, scores: pd.DataFrame) -> dict[str, float] | None:
    if "true_label" not in run.dataset.samples:
        return None
    s = run.dataset.samples.iloc[run.dataset.train_rows]
    truly_clean = s["true_label"].to_numpy() == s["label"].to_numpy()  # over the training set, as the paper
    m = detection_metrics(scores["is_clean"].to_numpy(), truly_clean, scores["margin"].to_numpy())
    (run.path / "metrics.json").write_text(json.dumps(m, indent=2))
    return m


def load_detector(run: Run, bundle: ClipBundle) -> DeftModel:
    """Rebuild the trained detector of a finished run."""
    if not run.weights_path.is_file():
        raise FileNotFoundError(f"{run.path} has no learned prompts yet; finish `deft detect` first.")
    model = DeftModel(bundle, class_texts(run.dataset), run.config)
    try:
        model.load_weights(run.weights_path)
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
    model = load_detector(run, bundle)
    images = load_run_images(run, bundle.image_size, progress, None, ddp)
    return _score_run(run, model, bundle, images, cfg, progress, None, save=save, ddp=ddp)
