"""One scale measurement, run in its own process so its peak RSS is its own (``tests/test_scale.py``).

``python -m tests.scale_job make ROOT ROWS``: ROWS distinct image files (hard links to 256 tiny JPEGs,
so a million files cost a million directory entries, not a million inodes; two processes link them) and
``ROOT/rows_<ROWS>.csv``.

``python -m tests.scale_job run CSV CLIP_DIR RUN_DIR OUT_JSON``: import the CSV (``load_dataset``, images
verified), build the image store, stream every image out of it, then one scoring pass (``detect`` with
0 training epochs: the detector's initial prompts score every sample). Peak RSS (``VmHWM``) is reset
(``/proc/self/clear_refs``) before each stage, so each stage's peak is measured on its own; each stage's
CPU seconds (this process and its worker processes) are recorded next to its wall time.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

N_DISTINCT = 256
SIZE = 16
CLASSES = 10


def make(root: Path, rows: int) -> Path:
    """ROWS image paths under ``root`` (hard links to 256 distinct 16x16 JPEGs) and their CSV."""
    src = root / "_src"
    if not src.is_dir():
        src.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for k in range(N_DISTINCT):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
            (src / f"{k}.jpg").write_bytes(buf.getvalue())
    folders = -(-rows // 1000)
    with multiprocessing.get_context("fork").Pool(2) as pool:  # link() is a syscall each: two at a time
        pool.starmap(_link_folder, [(str(root), str(src), d, rows) for d in range(folders)], chunksize=16)
    paths = [f"d{i // 1000:04d}/{i % 1000:03d}.jpg" for i in range(rows)]
    labels = [f"class{(i * 7919) % CLASSES}" for i in range(rows)]
    csv = root / f"rows_{rows}.csv"
    pd.DataFrame({"path": paths, "label": labels}).to_csv(csv, index=False)
    return csv


def _link_folder(root: str, src: str, d: int, rows: int) -> None:
    """Folder ``d<d>`` of images ``1000 d`` .. ``1000 d + 999`` (fewer in the last), hard-linked."""
    folder = f"{root}/d{d:04d}"
    os.makedirs(folder, exist_ok=True)
    for i in range(d * 1000, min(rows, d * 1000 + 1000)):
        with contextlib.suppress(FileExistsError):
            os.link(f"{src}/{i % N_DISTINCT}.jpg", f"{folder}/{i % 1000:03d}.jpg")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished worker processes (the wall times depend on
    what else the machine runs; these do not, much)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def run(csv: Path, clip_dir: str, run_dir: Path, out_json: Path) -> dict:
    import torch

    from deft.core.config import InferenceConfig, OptimConfig, Phase1Config
    from deft.detection import detect
    from deft.storage.load import load_dataset
    from deft.storage.run import Run
    from deft.storage.run_images import load_run_images

    torch.set_num_threads(1)
    res: dict = {"rss_start": _status("VmRSS")}
    t, c = time.perf_counter(), _cpu()
    ds = load_dataset(csv)
    res.update(
        rows=ds.N,
        import_s=time.perf_counter() - t,
        import_cpu_s=_cpu() - c,
        import_peak=_status("VmHWM"),
        rss_after_import=_status("VmRSS"),
    )

    cfg = Phase1Config(
        model=clip_dir, optim=OptimConfig(lr=0.03, epochs=0, batch_size=1024), augment=False, vpt_tokens=2
    )  # tiny model: 4 patches + 2 prompt tokens per image
    _reset_peak()
    t, c = time.perf_counter(), _cpu()
    run = Run.create(run_dir, ds, cfg)
    images = load_run_images(run, SIZE)
    shard_files = list((run_dir / "cache" / f"shards_{SIZE}").glob("*.arrow"))
    res.update(
        build_s=time.perf_counter() - t,
        build_cpu_s=_cpu() - c,
        build_peak=_status("VmHWM"),
        rss_after_build=_status("VmRSS"),
        store_bytes=sum(f.stat().st_size for f in shard_files),
        max_shard_bytes=max(f.stat().st_size for f in shard_files),
        max_open_shards=images.max_open,
        shards=len(shard_files),
        store_rows=len(images),
    )

    _reset_peak()
    base = _status("VmRSS")
    t, c = time.perf_counter(), _cpu()
    checksum = 0
    for s in range(0, len(images), 4096):
        checksum += int(images[s : s + 4096][:, :, 0, 0].sum())
    res.update(
        read_s=time.perf_counter() - t,
        read_cpu_s=_cpu() - c,
        read_peak_over_base=_status("VmHWM") - base,
        checksum=checksum,
    )

    _reset_peak()
    t, c = time.perf_counter(), _cpu()
    # scoring chunks of 1024 rows, as the training batch: the tiny model's forward is per-op overhead, which
    # 256-row chunks (the default, sized for ViT-B/16) pay four times as often (~25% of this stage's CPU)
    result = detect(ds, run_dir, cfg, device="cpu", inference=InferenceConfig(score_batch_size=1024))
    res.update(
        score_s=time.perf_counter() - t,
        score_cpu_s=_cpu() - c,
        score_peak=_status("VmHWM"),
        scored=len(result.scores),
        finite=bool(np.isfinite(result.scores["margin"]).all()),
    )
    out_json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    if sys.argv[1] == "make":
        print(make(Path(sys.argv[2]), int(sys.argv[3])))
    else:
        print(json.dumps(run(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])), indent=2))
