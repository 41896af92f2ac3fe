"""Shared bench plumbing: model shapes, synthetic data, timing, FLOP counting, device peak."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
# The one sys.path patch of bench/ and scripts/. `python3 bench/phase1.py` (the documented GPU command) puts
# bench/, not the repository root, on sys.path, so `deft` is either not importable (package not installed)
# or, with an editable install made from another checkout (a worktree sharing one .venv), the wrong code.
# Putting this checkout first makes every bench script time the code next to it. Every bench script
# imports this module before `deft`.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deft.core.models import load_clip  # noqa: E402
from deft.testing import save_tiny_clip  # noqa: E402

SHARED = Path(os.environ.get("DEFT_SHARED", ROOT.parent / "shared"))
CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"  # real CIFAR-10 JPEGs (tests use tests/data/cifar10-train-1000.zip)

# ViT-B/16 CLIP shapes (openai/clip-vit-base-patch16), random weights when no checkpoint is reachable
VITB16 = {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12}


def build_model(name: str, device: torch.device, attn: str):
    """``tiny``, ``vitb16`` (random weights, ViT-B/16 shapes) or a checkpoint folder / hub id."""
    if name in ("tiny", "vitb16"):
        d = Path(tempfile.gettempdir()) / f"deft-bench-{name}"
        if not (d / "config.json").is_file():
            if name == "tiny":
                save_tiny_clip(d)
            else:
                save_vitb16(d)
        name = str(d)
    return load_clip(name, device, attn)


def save_vitb16(out: Path) -> None:
    """Random-weight CLIP with ViT-B/16's vision tower and CLIP's 12-layer, 512-wide text tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from deft.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 8, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
        projection_dim=512, logit_scale_init_value=4.6052)
    out.mkdir(parents=True, exist_ok=True)
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 images ``(n, 3, size, size)``: throughput only, content is irrelevant."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds per step after ``warmup`` untimed steps."""
    for i in range(warmup):
        step(i)
    sync(device)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(warmup + i)
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 20) -> float:
    """Measured dense matmul FLOP/s on this device: the achievable peak the fractions are taken against."""
    if device.type == "cpu":
        n, reps = 1024, 10
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):  # best of 5 trials: the achievable peak, not a noisy sample of it
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS (Linux: KiB)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def report(title: str, rows: list[dict], out: Path, meta: dict) -> None:
    cols = ["recipe", "model", "batch", "img_per_s", "speedup", "epoch_s", "gflop_per_img", "achieved_tflops",
            "pct_of_peak", "peak_mem_gb"]
    print(f"\n{title}  [{meta['device']}]  peak matmul {meta['peak_tflops']:.2f} TFLOP/s ({meta['peak_dtype']})")
    print(f"peak_mem_gb: {meta['peak_mem_note']}")
    print("  ".join(f"{c:>15}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>15.3f}" if isinstance(r[c], float) else f"{r[c]!s:>15}" for c in cols))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


def timed_training_step(recipe: str, step_fn: Callable, opt, n_images: int, batch: int, device: torch.device):
    """One optimiser step of ``step_fn`` on a random batch (ours under bf16 autocast on CUDA), and its FLOP counter."""
    gen = torch.Generator().manual_seed(0)

    def one(i: int, b: int = batch) -> None:
        idx = torch.randint(0, n_images, (b,), generator=gen)
        opt.zero_grad(set_to_none=True)
        use_amp = recipe == "ours" and device.type == "cuda"
        with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
            out = step_fn(idx, 1, gen)
        out["loss"].backward()
        opt.step()

    return one, lambda b: count_flops(lambda: one(0, b))


def bench_args(description: str, default_out: str):
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="+", default=["tiny", "vitb16"], help="tiny, vitb16 or checkpoint folders")
    ap.add_argument("--n", type=int, default=50_000, help="dataset size the epoch time is projected for")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--pool", type=int, default=1024, help="distinct synthetic images held (drawn from repeatedly)")
    ap.add_argument("--recipes", nargs="+", default=["reference", "ours"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / default_out))
    return ap.parse_args()


def run_bench(title: str, args, make: Callable) -> None:
    """Time ``make(recipe, bundle, images, labels, args, device) -> (step(i), flops(b))`` for each model/recipe.

    FLOPs per image come from one counted step of *our* recipe at two batch sizes (separating the per-step
    text cost from the per-image cost): the floor the fractions use, for both recipes.
    """
    from deft.core.device import pick_device

    device = pick_device(args.device)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_matmul_flops(device, peak_dtype)
    rows = []
    for model_name in args.models:
        floor = None
        for recipe in sorted(args.recipes, key=lambda r: r != "ours"):  # ours first: it defines the floor
            bundle = build_model(model_name, device, "eager" if recipe == "reference" else "sdpa")
            images = synthetic_images(min(args.pool, args.n), bundle.image_size)
            labels = torch.randint(0, args.classes, (len(images),), generator=torch.Generator().manual_seed(0))
            step, flops = make(recipe, bundle, images, labels, args, device)
            if recipe == "ours":
                f2, f4 = flops(2), flops(4)
                per_img, per_step = (f4 - f2) / 2, max(0.0, f2 - (f4 - f2))
                floor = (per_img * args.batch + per_step) / args.batch
            reset_peak(device)
            times = time_steps(step, device, args.warmup, args.steps)
            ips = args.batch / float(np.median(times))
            achieved = (floor or 0.0) * ips
            rows.append({"recipe": recipe, "model": model_name, "batch": args.batch, "img_per_s": ips,
                         "speedup": 1.0, "epoch_s": args.n / ips, "gflop_per_img": (floor or 0.0) / 1e9,
                         "achieved_tflops": achieved / 1e12, "pct_of_peak": 100 * achieved / peak,
                         "peak_mem_gb": peak_memory_gb(device), "step_s": [float(t) for t in times]})
            del bundle, step
        ref = next((r for r in rows if r["model"] == model_name and r["recipe"] == "reference"), None)
        for r in rows:
            if r["model"] == model_name and ref is not None:
                r["speedup"] = r["img_per_s"] / ref["img_per_s"]
    meta = {"device": device_name(device), "peak_tflops": peak / 1e12, "peak_dtype": str(peak_dtype),
            "n": args.n, "classes": args.classes, "steps": args.steps, "warmup": args.warmup,
            "torch": torch.__version__, "note": "epoch_s is projected: n / median img/s over the timed steps",
            "peak_mem_note": ("CUDA max allocated, reset per recipe" if device.type == "cuda" else
                              "CPU: process max RSS so far, cumulative over the rows in run order "
                              "(not attributable per recipe)")}
    report(title, rows, Path(args.out), meta)
