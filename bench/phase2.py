"""Phase 2 throughput (full fine-tuning + linear head): the reference recipe vs our fast path.

reference: fp16 weights (fp32 on CPU), fp32 data pipeline on the CPU, eager attention, no autocast.
ours: the library's own step (deft.training.phase2_step): uint8 batches augmented on the device,
bf16 autocast with fp32 master weights on CUDA, SDPA attention.

    python bench/phase2.py --device cuda --n 50000 --classes 100
    python bench/phase2.py --device cpu --models tiny vitb16 --batch 16 --steps 3 --warmup 1   # CPU table
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

try:  # python -m bench.phase2 (the repository root is the cwd)
    from bench.common import bench_args, run_bench, timed_training_step
except ModuleNotFoundError:  # python3 bench/phase2.py: bench/ is on sys.path; common puts the repo root there
    from common import bench_args, run_bench, timed_training_step  # noqa: I001

from deft.core.batches import augment
from deft.core.config import Phase2Config
from deft.train_loop import make_optimizer
from deft.training import Classifier, phase2_step


def make(recipe, bundle, images, labels, args, device):
    model = Classifier.from_clip(bundle, args.classes).to(device)
    if recipe == "reference" and device.type == "cuda":
        model.half()
    opt, _ = make_optimizer(model.parameters(), replace(Phase2Config().optim, batch_size=args.batch), 10_000)
    dtype = next(model.parameters()).dtype

    def ref_step(idx, epoch, g):
        x = augment(bundle.normalizer(torch.from_numpy(images[idx.numpy()])), g).to(device, dtype)
        return {"loss": F.cross_entropy(model(x).float(), labels[idx].to(device))}

    ours = phase2_step(model, images, np.arange(len(images)), labels, bundle.normalizer)
    return timed_training_step(recipe, ours if recipe == "ours" else ref_step, opt, len(images), args.batch, device)

if __name__ == "__main__":
    a = bench_args(__doc__.splitlines()[0], "phase2.json")
    run_bench("Phase 2 (full fine-tuning) training throughput", a, make)
