"""Frozen CLIP image embeddings, computed once per run and cached in the run folder.

Every audit feature (zero-shot and confident-learning baselines, near duplicates,
outliers, the 2-D map) reads the same ``RUN/embeddings.safetensors``:

* ``image``   ``(N, D)`` float32, L2-normalised frozen image embeddings (no VPT, no augmentation),
  in manifest order;
* ``text_zs`` ``(K, D)`` float32, L2-normalised zero-shot text embeddings of the run's
  ``zero_shot_template`` for every class;
* ``logit_scale`` ``()`` the model's temperature ``tau``.

The file's metadata holds a ``key``: a hash of the sample ids, every file's size and
modification time, the image resolution, the class prompts and the model (hub id, or a
local folder's config and weight files). When any of them changes the embeddings are
recomputed. The file is safetensors, so loading it never executes code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open

from deft.core.errors import read_derived
from deft.core.progress import CancelToken, ProgressCallback, null_progress
from deft.storage.atomic import save_safetensors
from deft.storage.run import Run

if TYPE_CHECKING:
    from deft.core.models import ClipBundle

EMBEDDINGS_FILE = "embeddings.safetensors"


@dataclass
class Embeddings:
    """The cached embeddings of one run (NumPy, float32, CPU)."""

    image: np.ndarray
    text_zs: np.ndarray
    logit_scale: float
    key: str
    image_size: int = 0

    @property
    def N(self) -> int:  # noqa: N802 (cleanlab naming)
        return int(self.image.shape[0])

    def subset(self, rows: np.ndarray) -> Embeddings:
        """The same embeddings restricted to ``rows`` (positions in the dataset)."""
        return replace(self, image=self.image[rows])


def embeddings_path(run: Run) -> Path:
    return run.path / EMBEDDINGS_FILE


def _model_fingerprint(model: str) -> str:
    """The hub id, plus size and mtime of every config/weight file when ``model`` is a local folder."""
    local = Path(model)
    parts = [model]
    if local.is_dir():
        for f in sorted(local.iterdir()):
            if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".txt"}:
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def content_key(run: Run, image_size: int) -> str:
    """Hash of what the embeddings depend on: sample files (id, size, mtime), model, resolution, prompts."""
    cfg = run.config
    h = hashlib.sha1()
    h.update(_model_fingerprint(cfg.model).encode())
    h.update(f"|{image_size}|{cfg.zero_shot_template}|".encode())
    h.update(json.dumps([run.dataset.prompts[c] for c in run.dataset.classes]).encode())
    for rel, p in zip(run.dataset.samples["id"], run.dataset.paths(), strict=True):
        try:
            st = os.stat(p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # file gone since import: still keyed by its id
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read an embeddings file (safetensors: no code is executed)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        image = f.get_tensor("image").float().numpy()
        text = f.get_tensor("text_zs").float().numpy()
        scale = float(f.get_tensor("logit_scale"))
    size = meta.get("image_size", "0")
    return Embeddings(image=image, text_zs=text, logit_scale=scale, key=meta.get("key", ""),
                      image_size=int(size) if size.isdigit() else 0)


def save_embeddings(path: Path, emb: Embeddings) -> None:
    save_safetensors(path, {"image": torch.from_numpy(np.ascontiguousarray(emb.image, dtype=np.float32)),
               "text_zs": torch.from_numpy(np.ascontiguousarray(emb.text_zs, dtype=np.float32)),
               "logit_scale": torch.tensor(emb.logit_scale, dtype=torch.float32)},
                     metadata={"key": emb.key, "image_size": str(emb.image_size)})


def _read_meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


REBUILD = "`deft audit` computes the embeddings again"


def _cached_meta(path: Path, notes: list[str] | None = None) -> dict[str, str]:
    """Metadata of a cached embeddings file (header only), empty when there is none or it is damaged (then
    ignored with a warning: the file is recomputed)."""
    return read_derived(path, _read_meta, REBUILD, notes) or {}


def _cached(path: Path, notes: list[str] | None = None) -> Embeddings | None:
    """The cached embeddings, None when a damaged body (a sound header) makes them unreadable."""
    return read_derived(path, load_embeddings, REBUILD, notes)


def run_embeddings(run: Run, *, bundle: ClipBundle | None = None, device: str | torch.device = "auto",
                   progress: ProgressCallback = null_progress, cancel: CancelToken | None = None,
                   recompute: bool = False) -> Embeddings:
    """The run's frozen CLIP embeddings: loaded from ``RUN/embeddings.safetensors`` when its key
    still matches, otherwise computed with the Phase 1 batched inference pass and cached.

    Parameters
    ----------
    run : Run
        A run folder (detection need not have finished).
    bundle : ClipBundle, optional
        An already loaded CLIP; loaded from the run's config only when a recompute is needed.
    recompute : bool
        Ignore the cache.
    """
    from deft.core.detector import class_texts, image_features, zero_shot_text
    from deft.core.device import pick_device
    from deft.core.models import load_clip
    from deft.storage.run_images import load_run_images

    cfg = run.config
    p = embeddings_path(run)
    meta = _cached_meta(p)
    if bundle is None and not recompute and meta.get("image_size", "").isdigit() \
            and meta.get("key") == content_key(run, int(meta["image_size"])):
        cached = _cached(p, run.notes)  # no model load when nothing changed
        if cached is not None:
            return cached
        meta = {}
    if bundle is None:
        dev = pick_device(device) if isinstance(device, str) else device
        bundle = load_clip(cfg.model, dev, cfg.attn_implementation)
    key = content_key(run, bundle.image_size)
    if not recompute and meta.get("key") == key:
        cached = _cached(p, run.notes)
        if cached is not None:
            return cached
    if meta.get("key") and meta["key"] != key:
        # the files changed since the last pass; the decode cache is keyed on sample ids only, so drop it
        run.cache_file(bundle.image_size).unlink(missing_ok=True)
    images = load_run_images(run, bundle.image_size, progress, cancel)
    feats = image_features(bundle, images, cfg.precision, progress, cancel)
    text = zero_shot_text(bundle, class_texts(run.dataset), cfg.zero_shot_template)
    emb = Embeddings(image=feats.float().cpu().numpy(), text_zs=text.float().cpu().numpy(),
                     logit_scale=float(bundle.model.logit_scale.exp().item()), key=key,
                     image_size=bundle.image_size)
    save_embeddings(p, emb)
    return emb
