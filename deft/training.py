"""Phase 2: full fine-tuning of the CLIP image encoder + a linear head on the curated set."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from deft.core.batches import Normalizer, make_batch
from deft.core.config import InferenceConfig, Phase2Config
from deft.core.device import pick_device
from deft.core.distributed import init_distributed
from deft.core.errors import RunError
from deft.core.inference import run_batches
from deft.core.metrics import accuracy, confusion_matrix
from deft.core.models import ClipBundle, load_clip
from deft.core.models.vpt import vision_tokens
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.core.schema import Stage
from deft.storage.atomic import save_safetensors, write_json
from deft.storage.data import Dataset
from deft.storage.images import decode_images
from deft.storage.run import Run
from deft.storage.run_images import load_run_images, run_normalizer
from deft.storage.train_runs import CHECKPOINT, EPOCH_LOG, SUMMARY, TRAIN_META, fingerprint, log_epoch
from deft.train_loop import train_epochs

TRAINABLE_SETS = ("blocks", "all")


class Classifier(nn.Module):
    """CLIP vision tower + ``Linear(width -> K)`` on the pre-projection CLS."""

    def __init__(self, vision: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.vision = vision
        self.head = nn.Linear(vision.config.hidden_size, num_classes)

    @classmethod
    def from_clip(cls, bundle: ClipBundle, num_classes: int, trainable: str = "blocks") -> Classifier:
        """A copy of the bundle's vision tower (the bundle's frozen CLIP stays untouched) + a new head.

        ``trainable="blocks"`` (official): the transformer blocks and the head train; the patch,
        class and position embeddings and the pre/post layer norms stay frozen. ``"all"``: everything.
        """
        vision = CLIPVisionModel(bundle.model.config.vision_config)
        vision.load_state_dict(bundle.model.vision_model.state_dict())
        return cls(vision, num_classes).set_trainable(trainable)

    def set_trainable(self, trainable: str) -> Classifier:
        """Freeze everything but the parameter set ``trainable`` names (see :meth:`from_clip`)."""
        if trainable not in TRAINABLE_SETS:
            raise ValueError(f"unknown trainable set {trainable!r}; choose one of {list(TRAINABLE_SETS)}")
        for name, p in self.named_parameters():
            p.requires_grad_(trainable == "all" or name.startswith("head.") or ".encoder.layers." in f".{name}")
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cls = self.vision.post_layernorm(vision_tokens(self.vision, pixel_values)[:, 0])
        return self.head(cls)


@dataclass
class TrainedClassifier:
    """A Phase 2 model with what is needed to use it: classes and preprocessing."""

    model: Classifier
    classes: list[str]
    normalizer: Normalizer
    image_size: int
    meta: dict

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_safetensors(out / "model.safetensors", weights)
        meta = {**self.meta, "classes": self.classes, "image_size": self.image_size,
                "mean": list(self.normalizer.mean), "std": list(self.normalizer.std),
                "vision_config": self.model.vision.config.to_dict()}
        write_json(out / "classifier.json", meta)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedClassifier:
        path = Path(path)
        if not (path / "classifier.json").is_file():
            raise FileNotFoundError(f"{path} has no trained classifier (classifier.json); run `deft train` first.")
        meta = json.loads((path / "classifier.json").read_text())
        vision = CLIPVisionModel(CLIPVisionConfig(**meta["vision_config"]))
        model = Classifier(vision, len(meta["classes"]))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        model.to(device).eval()
        return cls(model, meta["classes"], Normalizer(tuple(meta["mean"]), tuple(meta["std"])),
                   int(meta["image_size"]), meta)

    @torch.no_grad()
    def predict(self, images: list[str | Path | Image.Image],
                batch_size: int = InferenceConfig.predict_batch_size) -> pd.DataFrame:
        """Predict classes for image paths or PIL images: ``pred``, ``conf`` per image."""
        arr = decode_images(images, self.image_size)
        probs = predict_proba(self.model, arr, self.normalizer, batch_size)
        return pd.DataFrame({"pred": np.asarray(self.classes, dtype=object)[probs.argmax(1)], "conf": probs.max(1)})


@torch.no_grad()
def predict_proba(model: Classifier, images: np.ndarray, normalizer: Normalizer,
                  batch_size: int = InferenceConfig.predict_batch_size, precision: str = "auto",
                  index: np.ndarray | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` for (a subset ``index`` of) a uint8 image array."""
    model.eval()
    device = next(model.parameters()).device
    index = np.arange(len(images)) if index is None else np.asarray(index)

    def encode(idx: torch.Tensor) -> np.ndarray:
        return F.softmax(model(make_batch(images, idx, device, normalizer)).float(), dim=1).cpu().numpy()

    out = run_batches(index, batch_size, encode, device=device, precision=precision)
    return np.concatenate(out) if out else np.zeros((0, len(model.head.weight)))


def phase2_step(model: Classifier, images: np.ndarray, image_index: np.ndarray, labels: torch.Tensor,
                normalizer: Normalizer, augment: bool = True):
    """The Phase 2 training step over training rows: image ``image_index[i]`` has label ``labels[i]``.

    A label of ``-1`` marks a row that is iterated but not learned from (masked batching,
    as the official code: the batch is drawn from all samples and the cross-entropy is
    averaged over the curated ones in it). A batch with no curated row gives a zero loss.
    """
    dev = next(model.parameters()).device

    def step(idx: torch.Tensor, epoch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        rows = idx.numpy()
        x = make_batch(images, torch.as_tensor(image_index[rows]), dev, normalizer, gen if augment else None)
        y = labels[rows].to(dev)
        keep = y >= 0
        logits = model(x).float()
        ce_sum = F.cross_entropy(logits[keep], y[keep], reduction="sum")  # 0 with a graph when none is kept
        n = keep.sum().float()
        return {"loss": ce_sum / n.clamp_min(1.0), "curated_frac": keep.float().mean(), "parts": [(ce_sum, n)]}

    return step


def training_rows(n_samples: int, curated_idx: np.ndarray, labels: torch.Tensor, batching: str,
                  exclude: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """The rows one Phase 2 epoch iterates, and their labels (``-1``: iterated, not learned from).

    ``curated``: only the curated samples. ``masked`` (official): every sample of the run
    except ``exclude`` (held-out rows), the non-curated ones masked out of the loss.
    """
    if batching == "curated":
        return curated_idx, labels
    if batching != "masked":
        raise ValueError(f"unknown batching {batching!r}; choose one of {list(BATCHINGS)}")
    pool = np.setdiff1d(np.arange(n_samples), np.asarray(exclude if exclude is not None else [], dtype=np.int64))
    pool = np.union1d(pool, curated_idx)
    y = torch.full((len(pool),), -1, dtype=torch.long)
    y[torch.as_tensor(np.searchsorted(pool, curated_idx))] = labels
    return pool, y


BATCHINGS = ("masked", "curated")


@dataclass
class Phase2Result:
    classifier: TrainedClassifier
    history: list[dict[str, float]]
    best_val_acc: float
    last_val_acc: float
    confusion: np.ndarray
    out_dir: Path
    heldout: str = ""  # what the held-out accuracy is measured against, in words
    zeroshot_acc: float = float("nan")  # zero-shot CLIP on the same held-out rows (NaN: no cached embeddings)

    def below_zeroshot(self) -> str:
        """A warning when fine-tuning ended below the model it started from (zero-shot CLIP on the same rows),
        else ''."""
        if not (self.best_val_acc < self.zeroshot_acc):  # NaN on either side: nothing to compare
            return ""
        return (f"held-out accuracy {self.best_val_acc:.1%} is below zero-shot CLIP's {self.zeroshot_acc:.1%} on the "
                "same rows: fine-tuning lost what the model knew (too few curated samples or epochs for full "
                "fine-tuning); use zero-shot, train longer, or train on more curated labels")


def zeroshot_heldout_accuracy(run: Run, eval_idx: np.ndarray, eval_y: np.ndarray) -> float:
    """Zero-shot CLIP's accuracy on the held-out rows, from the run's cached embeddings (``deft audit`` or the
    app wrote them); NaN when there are none or they are for other samples."""
    from deft.embeddings import EMBEDDINGS_FILE, load_embeddings

    path = run.path / EMBEDDINGS_FILE
    if not len(eval_idx) or not path.is_file():
        return float("nan")
    try:
        emb = load_embeddings(path)
    except Exception:  # noqa: BLE001 - a derived file: no comparison rather than a failed training run
        return float("nan")
    if emb.N != run.dataset.N:
        return float("nan")
    pred = (emb.image[np.asarray(eval_idx, dtype=np.int64)] @ emb.text_zs.T).argmax(axis=1)
    return accuracy(pred, np.asarray(eval_y))


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random hold-out of ``val_fraction`` (at least one sample when n > 1)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 and n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def heldout_eval_set(ds: Dataset, n_curated: int, cfg: Phase2Config) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The data's own held-out rows (``split=test``, else ``val``) with their given labels, or None.

    The paper's tables report accuracy on the test set: "last" after the final epoch and
    "best" over epochs. Those rows never enter Phase 1 or the curated set.
    """
    split = ds.samples["split"].astype(str).str.strip().str.lower().to_numpy()
    for names in (("test",), ("val", "valid", "validation")):
        idx = np.flatnonzero(np.isin(split, names))
        if len(idx):
            return idx, ds.labels[idx], (f"the {len(idx)} split={names[0]} rows (never trained on, never "
                                         f"reviewed), against their given labels")
    return None


def curated_rows(ds: Dataset, curated: pd.DataFrame) -> tuple[np.ndarray, torch.Tensor]:
    """The dataset rows and class indices of a curated ``id, label`` table, checked.

    Raises
    ------
    ValueError
        An id is not a sample of the run, a label is not a class, fewer than 2 rows, or a
        row is a held-out test/val sample (those never train).
    """
    pos = pd.Series(np.arange(ds.N), index=ds.samples["id"])
    unknown = sorted(set(curated["id"]) - set(pos.index))
    if unknown:
        raise ValueError(f"{len(unknown)} curated id(s) are not samples of this run, e.g. {unknown[:3]}")
    cls_index = {c: i for i, c in enumerate(ds.classes)}
    bad = sorted(set(curated["label"]) - set(cls_index))
    if bad:
        raise ValueError(f"curated labels name unknown classes {bad[:10]}; classes are {ds.classes[:20]}")
    if len(curated) < 2:
        raise ValueError("the curated set has fewer than 2 samples; nothing to train on")
    sample_idx = pos.loc[curated["id"]].to_numpy()
    y_all = torch.as_tensor(curated["label"].map(cls_index).to_numpy(dtype=np.int64, copy=True))
    leaked = int(ds.heldout[sample_idx].sum())
    if leaked:
        raise ValueError(f"{leaked} curated id(s) are held-out test/val rows, which never train; "
                         f"remove them from the curated labels")
    return sample_idx, y_all


def curated_holdout_description(n_val: int, val_fraction: float) -> str:
    """In words, what held-out accuracy means when the data has no test/val split."""
    if n_val == 0:
        return (f"nothing: val_fraction {val_fraction} trains on every curated row, as the official code, and "
                f"reports no held-out accuracy (add a split column with test rows to measure one)")
    return (f"{n_val} curated rows held out at random (val_fraction {val_fraction}), scored against their "
            f"curated labels: possibly noisy, and pseudo-labels where the curated set has them; the data has no "
            f"test split (add a split column with test rows for a clean measure)")


def train_classifier(
    run: Run | str | os.PathLike,
    curated: pd.DataFrame,
    config: Phase2Config | None = None,
    *,
    out: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    bundle: ClipBundle | None = None,
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    tags: dict | None = None,
) -> Phase2Result:
    """Fine-tune on a curated label table ``id, label`` (rows of the run's samples).

    Reports per-epoch loss and held-out accuracy, the last and best accuracy (as the
    paper's tables), and saves the model to ``out`` (default ``RUN/phase2``). Held out:
    the data's ``split=test`` rows (else ``val``) with their given labels; without such a
    split, ``val_fraction`` of the curated rows against their curated (possibly noisy or
    pseudo) labels, which :attr:`Phase2Result.heldout` says in words.

    ``out`` is one training run's folder (see :mod:`deft.storage.train_runs`): ``train.json`` names what
    it trains on, ``checkpoint.pt`` holds the last finished epoch. If ``out`` holds an interrupted
    run on the same config and curated labels, training resumes at the next epoch (a different
    one is refused); ``tags`` (e.g. ``{"mode": "relabels"}``) are kept with the run for listing.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    cfg = config or Phase2Config(model=run.config.model)
    ddp, dev = init_distributed(pick_device(device) if isinstance(device, str) else device)
    ds = run.dataset
    sample_idx, y_all = curated_rows(ds, curated)
    ev = heldout_eval_set(ds, len(curated), cfg)
    tr, va = (np.arange(len(curated)), np.zeros(0, np.int64)) if ev is not None else \
        split_train_val(len(curated), cfg.val_fraction, cfg.seed)
    eval_idx, eval_y, eval_desc = ev if ev is not None else (
        sample_idx[va], y_all[va].numpy(), curated_holdout_description(len(va), cfg.val_fraction))
    heldout = ds.heldout

    bundle = bundle or load_clip(cfg.model, "cpu", cfg.attn_implementation)
    images = load_run_images(run, bundle.image_size, progress, cancel, ddp)
    normalizer = run_normalizer(run, bundle.normalizer, images, save=ddp.is_main)  # as Phase 1 saw the pixels
    torch.manual_seed(cfg.seed)
    model = Classifier.from_clip(bundle, ds.K, cfg.trainable).to(dev)

    rows, row_labels = training_rows(ds.N, sample_idx[tr], y_all[tr], cfg.batching,
                                     exclude=np.union1d(np.flatnonzero(heldout), sample_idx[va]))
    step = phase2_step(model, images, rows, row_labels, normalizer, cfg.augment)

    out_dir = Path(out) if out is not None else run.phase2_dir
    fp = fingerprint(cfg.to_dict(), curated[["id", "label"]])  # also the stamp of this folder's checkpoints
    best: dict = {"acc": resume_point(out_dir, fp,
                                      {"config": cfg.to_dict(), "tags": tags or {}, "heldout": eval_desc},
                                      ddp.is_main),
                  "last_pred": None}
    trained = TrainedClassifier(model, ds.classes, normalizer, bundle.image_size,
                                {"base_model": cfg.model, "config": cfg.to_dict(), "n_train": int(len(tr)),
                                 "n_iterated": int(len(rows)), "n_val": int(len(eval_idx)),
                                 "heldout": eval_desc})
    acc_keys = ("test_acc", "val_acc") if ev is not None else ("val_acc",)  # val_acc: the UI's name

    def val_pred() -> np.ndarray:
        return predict_proba(model, images, normalizer, index=eval_idx, precision=cfg.precision).argmax(1)

    def epoch_end(epoch: int, summary: dict[str, float]) -> dict[str, float]:
        best["last_pred"] = val_pred() if len(eval_idx) else None
        acc = accuracy(best["last_pred"], eval_y) if len(eval_idx) else float("nan")
        if len(eval_idx) and acc > best["acc"]:
            best["acc"] = acc
            trained.meta.update(best_epoch=epoch + 1, best_acc=acc)
            trained.save(out_dir / "best")
        accs = dict.fromkeys(acc_keys, acc)
        run.log({"stage": Stage.PHASE2, **summary, **accs})
        log_epoch(out_dir, {**summary, **accs})  # this training run's own log (the Train tab's list and curve)
        return accs

    loop = train_epochs(stage=Stage.PHASE2, n=len(rows), step_fn=step, module=model,
                        params=model.trainable_parameters(),
                        cfg=cfg.optim, seed=cfg.seed, device=dev, precision=cfg.precision,
                        checkpoint=out_dir / CHECKPOINT, on_epoch_end=epoch_end, progress=progress,
                        cancel=cancel, ddp=ddp, loss_parts=1, owner=f"phase2:{fp}")
    trained.meta["history"] = loop.history
    if not len(eval_idx):  # nothing held out (val_fraction 0 without a test split): no accuracy to report
        best["acc"] = float("nan")
    if not ddp.is_main:  # one writer: rank 0 evaluates and saves
        ddp.barrier()
        return Phase2Result(trained, loop.history, best["acc"], float("nan"), np.zeros((ds.K, ds.K), int), out_dir,
                            eval_desc)
    trained.save(out_dir)
    last = loop.history[-1]["val_acc"] if loop.history else float("nan")
    if best["last_pred"] is None and len(eval_idx):  # resumed after its last epoch: nothing trained now
        best["last_pred"] = val_pred()
    cm = (confusion_matrix(best["last_pred"], eval_y, ds.K) if best["last_pred"] is not None
          else np.zeros((ds.K, ds.K), int))
    summary = {"best_val_acc": best["acc"], "last_val_acc": last, "heldout": eval_desc, "out": str(out_dir),
               "zeroshot_acc": zeroshot_heldout_accuracy(run, eval_idx, eval_y),
               "history": loop.history, "confusion": cm.tolist(), "classes": ds.classes,
               "config": cfg.to_dict(), "tags": tags or {}}
    write_json(out_dir / SUMMARY, summary)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: training into this folder again starts afresh
    ddp.barrier()
    return Phase2Result(trained, loop.history, best["acc"], last, cm, out_dir, eval_desc, summary["zeroshot_acc"])


def resume_point(out_dir: Path, fp: str, meta: dict, is_main: bool = True) -> float:
    """Prepare ``out_dir`` for a training run with fingerprint ``fp``; the best held-out accuracy so far.

    With a checkpoint of the same run there, training resumes (the best accuracy is read back from
    ``best/``); a checkpoint of another config or curated set is refused; otherwise ``train.json``
    is (re)written and a previous run's summary removed.
    """
    if not is_main:
        return -1.0
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / CHECKPOINT).is_file():
        try:
            old = json.loads((out_dir / TRAIN_META).read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") != fp:
            raise RunError(f"{out_dir} holds an interrupted training run on another config or curated set; "
                           f"choose another --out (or delete {out_dir / CHECKPOINT} to start afresh)")
        try:
            return float(json.loads((out_dir / "best" / "classifier.json").read_text()).get("best_acc", -1.0))
        except (OSError, ValueError):
            return -1.0
    (out_dir / SUMMARY).unlink(missing_ok=True)
    (out_dir / EPOCH_LOG).unlink(missing_ok=True)  # a fresh run: the epochs logged there were another run's
    write_json(out_dir / TRAIN_META, {"fingerprint": fp, **meta})
    return -1.0
