"""The run's images as the training and scoring passes read them (one decode per run).

Phase 1, Phase 2, the embedding pass and the audit all read images through
:func:`load_run_images`; none of them imports another phase for it.
"""

from __future__ import annotations

import numpy as np

from .distributed import Dist
from .images import decode_images
from .progress import CancelToken, ProgressCallback, null_progress
from .run import Run


def load_run_images(run: Run, size: int, progress: ProgressCallback = null_progress,
                    cancel: CancelToken | None = None, ddp: Dist | None = None) -> np.ndarray:
    """The run's decode-once image cache; under ``ddp`` rank 0 decodes and writes it, the others read it."""
    ddp = ddp or Dist()

    def load() -> np.ndarray:
        return decode_images(run.dataset.paths(), size, cache_file=run.cache_file(size),
                             progress=progress if ddp.is_main else null_progress, cancel=cancel)

    images = load() if ddp.is_main else None
    ddp.barrier()
    return images if images is not None else load()
