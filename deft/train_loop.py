"""The one training loop both phases use: SGD + cosine (per epoch; or per step), autocast, progress, checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deft.core.config import OptimConfig
from deft.core.device import autocast
from deft.core.distributed import Dist
from deft.core.errors import RunError
from deft.core.progress import CancelToken, ProgressCallback, ProgressEvent, null_progress
from deft.storage.atomic import save_torch


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, steps_per_epoch: int):
    """SGD with momentum and weight decay, and the cosine schedule ``cfg.lr_schedule`` names.

    ``epoch``: ``CosineAnnealingLR(T_max=epochs)``, to be stepped once per epoch (official);
    ``step``: cosine per batch to 0 over ``steps_per_epoch * epochs`` steps; ``constant``: no decay.
    """
    opt = torch.optim.SGD(list(params), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "epoch":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    if cfg.lr_schedule == "constant":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    total_steps = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    )
    return opt, sched


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Per-epoch RNG: shuffling, augmentation and random classes replay exactly on resume."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)


StepFn = Callable[[torch.Tensor, int, torch.Generator], dict[str, torch.Tensor]]
EpochEndFn = Callable[[int, dict[str, float]], dict[str, float] | None]


def train_epochs(
    *,
    stage: str,
    n: int,
    step_fn: StepFn,
    module: torch.nn.Module,
    params: list[torch.nn.Parameter],
    cfg: OptimConfig,
    seed: int,
    device: torch.device,
    precision: str,
    checkpoint: Path | None = None,
    on_epoch_end: EpochEndFn | None = None,
    progress: ProgressCallback = null_progress,
    cancel: CancelToken | None = None,
    ddp: Dist | None = None,
    loss_parts: int = 0,
    owner: str | None = None,
) -> LoopResult:
    """Train ``params`` for ``cfg.epochs`` epochs over ``n`` samples in shuffled batches.

    ``step_fn(batch_idx, epoch, generator)`` returns a dict with a scalar ``loss``
    and any other scalars to average per epoch. ``checkpoint`` (if given) is written
    after every epoch (trainable state of ``module``, optimizer, scheduler, history)
    and, if it exists, the loop resumes from it; with ``owner`` (the run's stamp) the checkpoint is stamped
    with it and one stamped otherwise (another run's, copied in) is refused.

    Under ``ddp`` every rank draws the same global batch and trains on its slice;
    gradients are averaged across ranks; only rank 0 reports, checkpoints and runs
    ``on_epoch_end``. With ``loss_parts`` > 0 the step also returns ``parts``, that many
    ``(sum, count)`` pairs whose ratios add up to the loss; the counts are summed over
    ranks and each rank backpropagates ``world * sum_i(sum_i / global_count_i)``, so the
    averaged gradient equals one process's on the whole global batch even when ranks hold
    unequal counts (e.g. of clean samples) or none.
    """
    ddp = ddp or Dist()
    if not ddp.is_main:
        progress, on_epoch_end, checkpoint_out = null_progress, None, None
    else:
        checkpoint_out = checkpoint
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    opt, sched = make_optimizer(params, cfg, steps_per_epoch)
    per_step = cfg.lr_schedule == "step"
    result, start_epoch = LoopResult(), 0
    if checkpoint is not None and checkpoint.is_file():
        result.history, start_epoch = load_checkpoint(checkpoint, module, opt, sched, device, owner)
    total = steps_per_epoch * cfg.epochs
    t0, done_images = time.perf_counter(), 0
    for epoch in range(start_epoch, cfg.epochs):
        gen = epoch_generator(seed, epoch)
        sums: dict[str, float] = {}
        module.train()
        order = torch.randperm(n, generator=gen)
        for step in range(steps_per_epoch):
            if cancel is not None:
                cancel.check()
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            idx = ddp.shard(batch)
            out = optimizer_step(step_fn, idx, epoch, step, gen, opt, params, stage=stage, device=device,
                                 precision=precision, ddp=ddp, loss_parts=loss_parts)
            if per_step:
                sched.step()
            for k, v in out.items():
                if torch.is_tensor(v) and v.ndim == 0:
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            done_images += len(batch)
            elapsed = time.perf_counter() - t0
            g = epoch * steps_per_epoch + step + 1
            rate = done_images / elapsed if elapsed > 0 else 0.0
            if "loss" in out:
                progress(ProgressEvent(
                    stage, g, total, epoch, cfg.epochs, rate,
                    eta_s=(total - g) * cfg.batch_size / rate if rate else 0.0,
                    metrics={"loss": float(out["loss"].detach()), "lr": sched.get_last_lr()[0]},
                ))
        if not per_step:
            sched.step()
        keys = sorted(sums)
        totals = ddp.sum([sums[k] for k in keys], device)
        summary = {"epoch": epoch + 1, **{k: v / n for k, v in zip(keys, totals, strict=True)}}
        if on_epoch_end is not None:
            summary.update(on_epoch_end(epoch, summary) or {})
        result.history.append(summary)
        progress(ProgressEvent(stage, (epoch + 1) * steps_per_epoch, total, epoch, cfg.epochs,
                               metrics=summary, epoch_end=True))
        if checkpoint_out is not None:
            save_torch(checkpoint, {"module": trainable_state(module), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "history": result.history, "epoch": epoch,
                                    "owner": owner})
    return result


def load_checkpoint(checkpoint: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, sched,
                    device: torch.device, owner: str | None = None) -> tuple[list[dict[str, float]], int]:
    """Restore ``module``'s trainable state, ``opt`` and ``sched`` from ``checkpoint``; its history and next epoch.

    Raises
    ------
    RunError
        The file is not a checkpoint this program wrote (``weights_only``: a run folder is untrusted,
        shared or downloaded, so unpickling code must never run), or not one of this run (its ``owner``
        stamp differs, or its trainable tensors are not exactly this model's): another run's checkpoint
        copied in was loaded with ``strict=False`` and silently skipped the training.
    """
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal or corruption is one user error
        raise RunError(f"{checkpoint}: not a checkpoint this program wrote ({type(e).__name__}); "
                       f"delete it to train from the start") from e
    if not isinstance(state, dict) or {"module", "optimizer", "scheduler", "history", "epoch"} - set(state):
        raise RunError(f"{checkpoint}: not a checkpoint this program wrote; delete it to train from the start")
    mine = trainable_state(module)
    theirs = state["module"]
    if (owner is not None and state.get("owner") != owner) or set(theirs) != set(mine) or any(
            tuple(theirs[k].shape) != tuple(v.shape) for k, v in mine.items()):
        raise RunError(f"{checkpoint} was written by another run (copied in?), not by this one; delete it to "
                       "train this run from the start.")
    module.load_state_dict(theirs, strict=False)  # the trainable tensors only: the frozen CLIP is not saved
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state["history"], state["epoch"] + 1


def optimizer_step(step_fn: StepFn, idx: torch.Tensor, epoch: int, step: int, gen: torch.Generator,
                   opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], *, stage: str,
                   device: torch.device, precision: str, ddp: Dist, loss_parts: int) -> dict[str, torch.Tensor]:
    """One optimiser step on this rank's slice ``idx`` of the global batch; ``step_fn``'s outputs.

    A rank without samples (a short last batch) still joins the gradient and count reductions with
    zeros. A non-finite loss raises :class:`FloatingPointError` naming ``stage``, epoch and step.
    """
    opt.zero_grad(set_to_none=True)
    if len(idx) == 0:  # a short last batch can leave a rank without samples: it still syncs
        out: dict[str, torch.Tensor] = {}
        if loss_parts and ddp.enabled:
            ddp.sum([0.0] * loss_parts, device)
        for p in params:
            p.grad = torch.zeros_like(p)
    else:
        with autocast(device, precision):
            out = step_fn(idx, epoch, gen)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}: non-finite loss at epoch {epoch + 1}, step {step + 1}")
        global_objective(out, loss_parts, ddp, device).backward()
    ddp.average_gradients(params)
    opt.step()
    return out


def global_objective(out: dict, loss_parts: int, ddp: Dist, device: torch.device) -> torch.Tensor:
    """What this rank backpropagates: its ``loss``, or under ``ddp`` its share of the global-batch loss."""
    if not (loss_parts and ddp.enabled):
        return out["loss"]
    parts = out["parts"]
    counts = ddp.sum([float(c) for _, c in parts], device)
    return ddp.world * sum(s / max(c, 1.0) for (s, _), c in zip(parts, counts, strict=True))


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state of the parameters that train (frozen backbone weights are not saved)."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in module.state_dict().items() if k in names}
