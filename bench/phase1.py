"""Phase 1 throughput: the reference recipe vs our fast path, same machine, same run.

reference: fp16 weights (fp32 on CPU, where fp16 matmuls are not a real option), all 2K prompts
re-encoded every step at the full 77-token context, fp32 data pipeline on the CPU (normalise +
augment there, then copy), eager attention, no autocast.
ours: the library's own step (deft.detection.phase1_step): uint8 batches augmented on the device,
bf16 autocast on CUDA, SDPA attention, prompts cut at the last EOS (exact under causal attention).

    python bench/phase1.py --device cuda --n 50000 --classes 100
    python bench/phase1.py --device cpu --models tiny vitb16 --batch 16 --steps 3 --warmup 1   # CPU table
"""

from __future__ import annotations

import torch

try:  # python -m bench.phase1 (the repository root is the cwd)
    from bench.common import bench_args, run_bench, timed_training_step
except ModuleNotFoundError:  # python3 bench/phase1.py: bench/ is on sys.path; common puts the repo root there
    from common import bench_args, run_bench, timed_training_step  # noqa: I001

from deft.core.batches import augment
from deft.core.config import phase1_preset
from deft.core.losses import deft_losses
from deft.core.models import PromptLearner
from deft.detection import DeftModel, phase1_step
from deft.train_loop import make_optimizer


def make(recipe, bundle, images, labels, args, device):
    cfg = phase1_preset("deft", optim={"batch_size": args.batch, "epochs": 10}, model=bundle.source)
    classes = [f"class {i}" for i in range(args.classes)]
    model = DeftModel(bundle, classes, cfg)
    if recipe == "reference":
        model.prompts = PromptLearner(bundle.model, bundle.tokenize, classes, bundle.eos_token_id, cfg.n_ctx, 2,
                                      cfg.ctx_init_std, truncate=False)
        if device.type == "cuda":
            model.half()
    opt, _ = make_optimizer(model.trainable_parameters(), cfg.optim, 10_000)
    dtype = next(model.parameters()).dtype

    def ref_step(idx, epoch, g):
        x = bundle.normalizer(torch.from_numpy(images[idx.numpy()]))  # fp32 on the CPU
        x = augment(x, g).to(device, dtype)
        return deft_losses(model(x), labels[idx].to(device), warmup=epoch < cfg.warmup, generator=g)

    step = phase1_step(model, images, labels, cfg, bundle.normalizer) if recipe == "ours" else ref_step
    return timed_training_step(recipe, step, opt, len(images), args.batch, device)

if __name__ == "__main__":
    a = bench_args(__doc__.splitlines()[0], "phase1.json")
    run_bench("Phase 1 (DEFT detector) training throughput", a, make)
