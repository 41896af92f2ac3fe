"""Data-parallel runs under ``torchrun`` / ``accelerate launch`` (NCCL on CUDA, gloo on CPU).

One process per device. Every rank sees the same shuffled global batch and takes
its slice; gradients are averaged across ranks after each backward (the
DistributedDataParallel rule), so all ranks keep identical weights. Rank 0 is the
only writer of the run directory. The scoring pass is sharded and gathered back
in sample order. Without a launcher (``WORLD_SIZE`` unset) everything is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch of indices."""
        return idx[self.rank :: self.world] if self.enabled else idx

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather_frames(self, part: pd.DataFrame) -> pd.DataFrame:
        """Concatenate every rank's rows (each carries an ``_order`` column), sorted back into order."""
        if self.enabled:
            parts: list[pd.DataFrame | None] = [None] * self.world
            dist.all_gather_object(parts, part)
            part = pd.concat(parts, ignore_index=True)
        return part.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group a launcher set up (``WORLD_SIZE`` > 1); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # long timeout: the first barrier waits while rank 0 builds the image store (hours for 1M+ images)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=12))
    return Dist(dist.get_rank(), dist.get_world_size()), device
