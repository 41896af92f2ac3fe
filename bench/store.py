"""Image store bench (issue 13): cache bytes per image, decode vs model throughput, projected wall time.

    .venv/bin/python bench/store.py            # writes bench/results/store_cpu.json, prints the tables

* bytes per image: the raw uint8 cache (3 x 224 x 224 = 150,528 B) vs the JPEG shard store, on
  the shared CIFAR-10 JPEGs (upscaled to 224 by the store's own resize) and on photo-like
  images the bench generates (640x480, 1/f colour noise: natural images' power spectrum);
* decode throughput (store -> uint8 batch, CPU) and store build throughput, separately from
  model throughput (ViT-B/16 image-tower forward, fp32 and bf16 autocast);
* projected wall time of full DEFT and of the quick preview for 10k, 50k and 1M images.

Times are wall and CPU seconds: this dev box is 2 cores shared with other jobs, so the
wall numbers are inflated by contention (the load average is recorded); CPU seconds per
image are the cost on a dedicated core. The H100 column is unmeasured (no GPU was lent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deft.device import cpu_has_native_bf16
from deft.shards import build_shards

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEFT_SHARED", ROOT.parent / "shared"))
RAW_BYTES_224 = 3 * 224 * 224


def cifar_files(out: Path, n: int) -> list[Path]:
    """The first ``n`` CIFAR-10 train JPEGs of the shared zip, written to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(SHARED / "data" / "cifar10-jpeg.zip") as z:
        names = sorted(x for x in z.namelist() if x.startswith("train/") and x.endswith(".jpg"))[:n]
        paths = []
        for i, name in enumerate(names):
            p = out / f"{i:05d}.jpg"
            p.write_bytes(z.read(name))
            paths.append(p)
    return paths


def photo_files(out: Path, n: int, hw: tuple[int, int] = (480, 640), seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (quality 95): colour noise with a 1/f amplitude spectrum, as natural images."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = hw
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    paths = []
    for i in range(n):
        chans = []
        for _ in range(3):
            spec = amp * np.exp(2j * np.pi * rng.random(amp.shape)) * rng.standard_normal(amp.shape)
            chans.append(np.fft.irfft2(spec, s=(h, w)))
        x = np.stack(chans, -1)
        x = (x - x.mean()) / (x.std() + 1e-9) * 50 + 120
        p = out / f"{i:05d}.jpg"
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(p, quality=95)
        paths.append(p)
    return paths


def timed(fn) -> tuple[float, float, object]:
    """(wall s, process CPU s, result) of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def store_rows(name: str, paths: list[Path], work: Path, size: int = 224) -> dict:
    """Build the store of ``paths`` at ``size``; bytes per image; build and decode throughput."""
    wall_b, cpu_b, store = timed(lambda: build_shards(paths, size, work / f"store_{name}"))
    n = len(paths)
    store_bytes = sum(f.stat().st_size for f in store.files)
    idx = np.arange(n)
    store.decode(idx[:64])  # warm-up: torchvision's decoder library loads on first use
    wall_d, cpu_d, _ = timed(lambda: [store.decode(idx[s : s + 256]) for s in range(0, n, 256)])
    wall_p, cpu_p, _ = timed(lambda: [store._decode_one(b, 0) for b in store.encoded(idx[:256])])
    src_bytes = sum(p.stat().st_size for p in paths)
    return {
        "images": name,
        "n": n,
        "source_bytes_per_image": src_bytes / n,
        "raw_cache_bytes_per_image": RAW_BYTES_224 if size == 224 else 3 * size * size,
        "store_bytes_per_image": store_bytes / n,
        "ratio": (3 * size * size) / (store_bytes / n),
        "build_img_per_s_wall": n / wall_b,
        "build_cpu_ms_per_img": 1e3 * cpu_b / n,
        "decode_img_per_s_wall": n / wall_d,
        "decode_cpu_ms_per_img": 1e3 * cpu_d / n,
        "decode_pil_cpu_ms_per_img": 1e3 * cpu_p / min(n, 256),
    }


def model_rows(n_images: int, batch: int) -> list[dict]:
    """ViT-B/16 image-tower forward (the embedding / scoring pass) img/s, fp32 and bf16 autocast."""
    from common import build_model  # the bench helpers build ViT-B/16 shapes (bench/ is on sys.path)

    bundle = build_model("vitb16", torch.device("cpu"), "sdpa")
    x = bundle.normalizer(torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8))
    rows = []
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):

        def fwd(dtype: torch.dtype | None = dtype) -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                bundle.model.get_image_features(pixel_values=x)

        fwd()  # warm-up
        steps = max(1, n_images // batch)
        wall, cpu, _ = timed(lambda fwd=fwd, steps=steps: [fwd() for _ in range(steps)])
        rows.append(
            {
                "step": "embedding forward (ViT-B/16, 224 px)",
                "precision": precision,
                "batch": batch,
                "img_per_s_wall": steps * batch / wall,
                "cpu_s_per_img": cpu / (steps * batch),
                "bf16_native_on_this_cpu": cpu_has_native_bf16() if dtype is not None else None,
            }
        )
    return rows


def projection(
    decode_ms: float, build_ms: float, embed_ips: float, p1_ips: float | None, p2_ips: float | None, epochs: int = 10
) -> list[dict]:
    """Projected wall time (hours) on this CPU for 10k / 50k / 1M images; the H100 column is unmeasured.

    full DEFT = store build + Phase 1 (``epochs`` x N training images) + two scoring passes
    (zero-shot suggestion and the detector's scores) + Phase 2 (``epochs`` x N); quick preview =
    store build + one embedding pass (prompt training on cached features is negligible). Decode
    time is added for every pass (not overlapped with compute, so an upper bound).
    """
    rows = []
    for n in (10_000, 50_000, 1_000_000):
        dec_h = n * decode_ms / 1e3 / 3600
        build_h = n * build_ms / 1e3 / 3600
        embed_h = n / embed_ips / 3600
        preview = build_h + embed_h + dec_h
        full = None
        if p1_ips and p2_ips:
            full = (
                build_h
                + epochs * (n / p1_ips / 3600 + dec_h)
                + 2 * (embed_h + dec_h)
                + epochs * (n / p2_ips / 3600 + dec_h)
            )
        rows.append(
            {
                "images": n,
                "cpu_quick_preview_h": preview,
                "cpu_full_deft_h": full,
                "h100_quick_preview_h": "unmeasured",
                "h100_full_deft_h": "unmeasured",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 JPEGs (upscaled to 224 by the store)")
    ap.add_argument("--photos", type=int, default=200, help="generated 640x480 photo-like JPEGs")
    ap.add_argument("--model-images", type=int, default=8, help="images per precision for the ViT-B/16 forward")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "store_cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stores = [
            store_rows("CIFAR-10 JPEG 32 px -> 224", cifar_files(work / "cifar", a.cifar), work),
            store_rows("generated photos 640x480 -> 224", photo_files(work / "photos", a.photos), work),
        ]
    models = model_rows(a.model_images, a.batch)
    prev = {k: json.loads((ROOT / "bench" / "results" / f"{k}_cpu.json").read_text()) for k in ("phase1", "phase2")}

    def vitb(name: str) -> float | None:
        return next(
            (r["img_per_s"] for r in prev[name]["rows"] if r["model"] == "vitb16" and r["recipe"] == "ours"), None
        )

    photo = stores[1]
    fp32 = models[0]
    cores = os.cpu_count() or 1
    proj = projection(
        photo["decode_cpu_ms_per_img"] / cores,
        photo["build_cpu_ms_per_img"] / cores,
        cores / fp32["cpu_s_per_img"],
        vitb("phase1"),
        vitb("phase2"),
    )
    result = {
        "meta": {
            "machine": f"{platform.machine()} x{os.cpu_count()} cores, shared with other jobs (wall times inflated)",
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "torch": torch.__version__,
            "cpu_native_bf16": cpu_has_native_bf16(),
            "bf16_note": "this CPU has no native bf16 (AVX2 only): bf16 autocast is emulated and slower here; "
            "precision=auto keeps fp32 on it"
            if not cpu_has_native_bf16()
            else "native bf16",
            "projection_uses": "this run's CPU seconds per image spread over all cores (the cost on an idle "
            "machine; wall times here are inflated by other jobs): store build and decode of the generated "
            "photos, ViT-B/16 fp32 embedding forward; Phase 1 and Phase 2 ViT-B/16 training img/s (wall) from "
            "bench/results/phase1_cpu.json and phase2_cpu.json ('ours', batch 16); full DEFT = build + 10 "
            "Phase 1 epochs + 2 scoring passes + 10 Phase 2 epochs, decode added to every pass",
            "gpu": "unmeasured: no GPU lent to this task; the nvJPEG path (ShardImages.decode_jpeg on cuda) "
            "is tested on CPU through the same torchvision call",
        },
        "bytes_and_decode": stores,
        "model": models,
        "projection_hours": proj,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{'images':34s} {'raw B/img':>10s} {'store B/img':>11s} {'ratio':>6s} {'build ms':>9s} "
        f"{'decode ms':>9s} {'PIL ms':>7s} (CPU ms per image)"
    )
    for r in stores:
        print(
            f"{r['images']:34s} {r['raw_cache_bytes_per_image']:>10,d} {r['store_bytes_per_image']:>11,.0f} "
            f"{r['ratio']:>6.1f} {r['build_cpu_ms_per_img']:>9.2f} {r['decode_cpu_ms_per_img']:>9.2f} "
            f"{r['decode_pil_cpu_ms_per_img']:>7.2f}"
        )
    print(f"\n{'model step':40s} {'prec':5s} {'img/s (wall)':>12s} {'CPU s/img':>10s}")
    for r in models:
        print(f"{r['step']:40s} {r['precision']:5s} {r['img_per_s_wall']:>12.2f} {r['cpu_s_per_img']:>10.2f}")
    print(f"\n{'images':>9s} {'CPU preview h':>14s} {'CPU full DEFT h':>16s} {'H100':>11s}")
    for r in proj:
        full = f"{r['cpu_full_deft_h']:.1f}" if r["cpu_full_deft_h"] is not None else "n/a"
        print(f"{r['images']:>9,d} {r['cpu_quick_preview_h']:>14.1f} {full:>16s} {'unmeasured':>11s}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
