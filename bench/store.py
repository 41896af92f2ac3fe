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

try:  # python -m bench.store (the repository root is the cwd)
    from bench.common import build_model, synthetic_images
except ModuleNotFoundError:  # python3 bench/store.py: common puts this checkout's root first on sys.path
    from common import build_model, synthetic_images  # noqa: I001

from deft.core.device import autocast_dtype, cpu_has_native_bf16
from deft.storage.shards import build_shards

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


PRECISIONS = ("fp32", "bf16")  # deft.core.device.autocast names: fp32 = no autocast, bf16 = bf16 autocast (fp32 master)
PHASE_BATCH = 64  # both phases' default batch (OptimConfig.batch_size): the batch the projection is for


def timed_steps(step, images: int, warmup: int, steps: int) -> dict:
    """``warmup`` untimed calls of ``step()``, then ``steps`` timed ones: img/s (wall) and CPU s per image."""
    for _ in range(warmup):
        step()
    wall, cpu, _ = timed(lambda: [step() for _ in range(steps)])
    return {"img_per_s_wall": steps * images / wall, "cpu_s_per_img": cpu / (steps * images),
            "step_wall_s": wall / steps, "step_cpu_s": cpu / steps, "timed_steps": steps, "warmup_steps": warmup}


def model_rows(batch: int, classes: int, warmup: int, steps: int) -> list[dict]:
    """Library steps on a random-weight ViT-B/16 CLIP (bench/common.py), fp32 and bf16 autocast, this CPU.

    * embedding forward: ``deft.core.detector.image_features`` (the frozen-tower embedding / scoring pass);
    * Phase 1 step: ``deft.core.detector.phase1_step`` on a ``DeftModel`` (dual prompts + deep VPT, CLIP frozen)
      through ``deft.train_loop.optimizer_step`` (forward, backward, SGD step), ``classes`` classes;
    * Phase 1 preview step: the same with ``feature_cache=True`` (frozen features, prompts only) at the
      default batch of 64: almost all of it is the text tower over the 2K prompts, a per-step cost;
    * Phase 2 step: ``deft.training.phase2_step`` on ``Classifier.from_clip`` (blocks + head train) through
      ``optimizer_step``.

    Precision goes through ``deft.core.device.autocast`` exactly as the library's loops use it.
    """
    from deft.core.config import Phase2Config, phase1_preset
    from deft.core.detector import DeftModel, image_features, phase1_step
    from deft.core.distributed import Dist
    from deft.train_loop import make_optimizer, optimizer_step
    from deft.training import Classifier, phase2_step

    cpu = torch.device("cpu")
    bundle = build_model("vitb16", cpu, "sdpa")
    pool = max(batch, PHASE_BATCH)
    images = synthetic_images(pool, 224)
    labels = torch.randint(0, classes, (pool,), generator=torch.Generator().manual_seed(0))
    texts = [f"class {i}" for i in range(classes)]
    native = cpu_has_native_bf16()
    rows: list[dict] = []

    def add(step: str, precision: str, b: int, fn, n_images: int | None = None) -> None:
        r = timed_steps(fn, n_images or b, warmup, steps)
        rows.append({"step": step, "precision": precision, "batch": b, **r,
                     "bf16_native_on_this_cpu": native if precision == "bf16" else None})
        print(f"  {step:58s} {precision:5s} b={b:<3d} {r['img_per_s_wall']:8.3f} img/s  "
              f"{r['cpu_s_per_img']:7.3f} CPU s/img", flush=True)

    def trainer(stage: str, step_fn, params, optim, precision: str, b: int):
        opt, _ = make_optimizer(params, optim, 10_000)
        gen = torch.Generator().manual_seed(0)

        def one() -> None:
            idx = torch.randint(0, pool, (b,), generator=gen)
            optimizer_step(step_fn, idx, 1, 0, gen, opt, params, stage=stage, device=cpu, precision=precision,
                           ddp=Dist(), loss_parts=0)  # epoch 1: after the warm-up epoch, the usual case

        return one

    for precision in PRECISIONS:
        add("embedding forward (ViT-B/16, 224 px)", precision, batch,
            lambda p=precision: image_features(bundle, images[:batch], precision=p, batch_size=batch))

    cfg = phase1_preset("deft", optim={"batch_size": batch}, model=bundle.source)
    det = DeftModel(bundle, texts, cfg)
    step1 = phase1_step(det, images, labels, cfg, bundle.normalizer)
    for precision in PRECISIONS:
        add(f"Phase 1 step (prompts + deep VPT, {classes} classes)", precision, batch,
            trainer("phase1", step1, det.trainable_parameters(), cfg.optim, precision, batch))
    del det, step1

    pcfg = phase1_preset("preview", optim={"batch_size": PHASE_BATCH}, model=bundle.source)
    prev_model = DeftModel(bundle, texts, pcfg)
    feats = image_features(bundle, images[:1], precision="fp32").expand(pool, -1).contiguous()
    step_p = phase1_step(prev_model, images, labels, pcfg, bundle.normalizer, features=feats)
    for precision in PRECISIONS:
        add(f"Phase 1 preview step (cached features, {classes} classes)", precision, PHASE_BATCH,
            trainer("phase1", step_p, prev_model.trainable_parameters(), pcfg.optim, precision, PHASE_BATCH))
    del prev_model, step_p

    clf = Classifier.from_clip(bundle, classes)
    step2 = phase2_step(clf, images, np.arange(pool), labels, bundle.normalizer)
    optim2 = Phase2Config().optim
    for precision in PRECISIONS:
        add("Phase 2 step (full fine-tune: blocks + head)", precision, batch,
            trainer("phase2", step2, clf.trainable_parameters(), optim2, precision, batch))
    return rows


def rates(models: list[dict], precision: str, cores: int) -> dict[str, float]:
    """CPU seconds per image (per step for the preview) at ``precision``, at the phases' batch of 64.

    Phase 1's step is a per-step text-tower cost (the 2K prompts, measured by the preview step) plus a
    per-image tower cost: the batch-``b`` step is split into the two and re-summed at batch 64.
    Phase 2 has no per-step text cost (its SGD step over the blocks is, and stays counted per image at
    batch ``b``: a small over-estimate).
    """
    def row(prefix: str) -> dict:
        return next(r for r in models if r["step"].startswith(prefix) and r["precision"] == precision)

    emb, p1, pv, p2 = row("embedding"), row("Phase 1 step"), row("Phase 1 preview"), row("Phase 2")
    text_step = pv["step_cpu_s"]
    image_part = max(0.0, (p1["step_cpu_s"] - text_step) / p1["batch"])
    return {
        "embed_cpu_s_per_img": emb["cpu_s_per_img"],
        "phase1_cpu_s_per_img_at_64": text_step / PHASE_BATCH + image_part,
        "preview_cpu_s_per_step_at_64": text_step,
        "phase2_cpu_s_per_img": p2["cpu_s_per_img"],
        "cores": cores,
    }


def projection(decode_ms: float, build_ms: float, r: dict[str, float], epochs: int = 10) -> list[dict]:
    """Projected hours on this CPU for 10k / 50k / 1M images from the rates of :func:`rates`.

    CPU seconds are spread over all cores (the cost on an idle machine). full DEFT = store build +
    Phase 1 (``epochs`` x N images) + two scoring passes (zero-shot suggestion and the detector's scores,
    each timed as one embedding pass; the detector's deep-VPT pass is ~10% longer) + Phase 2 (``epochs`` x
    N, masked batching iterates all of them); quick preview = store build + one embedding pass + ``epochs``
    epochs of prompt training on the cached features (one text-tower step per 64 images). Decode time is
    added for every pass over images (not overlapped with compute, so an upper bound).
    """
    cores = r["cores"]
    rows = []
    for n in (10_000, 50_000, 1_000_000):
        dec_h = n * decode_ms / 1e3 / 3600
        build_h = n * build_ms / 1e3 / 3600
        embed_h = n * r["embed_cpu_s_per_img"] / cores / 3600
        prompts_h = epochs * -(-n // PHASE_BATCH) * r["preview_cpu_s_per_step_at_64"] / cores / 3600
        p1_h = n * r["phase1_cpu_s_per_img_at_64"] / cores / 3600
        p2_h = n * r["phase2_cpu_s_per_img"] / cores / 3600
        rows.append({
            "images": n,
            "quick_preview_h": build_h + embed_h + dec_h + prompts_h,
            "full_deft_h": build_h + epochs * (p1_h + dec_h) + 2 * (embed_h + dec_h) + epochs * (p2_h + dec_h),
        })
    return rows


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["all", "model"], default="all",
                    help="model: rerun only the model steps and the projection; the store section "
                    "(bytes, build, decode) is kept from the existing --out JSON")
    ap.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 JPEGs (upscaled to 224 by the store)")
    ap.add_argument("--photos", type=int, default=200, help="generated 640x480 photo-like JPEGs")
    ap.add_argument("--batch", type=int, default=8, help="batch of the embedding, Phase 1 and Phase 2 steps")
    ap.add_argument("--classes", type=int, default=100, help="classes (Phase 1 prompts: 2 per class)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per row")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per row")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "store_cpu.json"))
    a = ap.parse_args()
    threads = max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    out = Path(a.out)
    load_before = os.getloadavg()
    if a.only == "model":
        old = json.loads(out.read_text())
        stores = old["bytes_and_decode"]
        store_note = (f"not rerun (--only model): kept from the previous {out.name} "
                      f"(machine: {old['meta'].get('machine')}; loadavg then {old['meta'].get('loadavg_before')})")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            stores = [
                store_rows("CIFAR-10 JPEG 32 px -> 224", cifar_files(work / "cifar", a.cifar), work),
                store_rows("generated photos 640x480 -> 224", photo_files(work / "photos", a.photos), work),
            ]
        store_note = "measured in this run"
    print(f"model steps, {threads} threads, batch {a.batch}, {a.warmup} warm-up + {a.steps} timed steps each")
    models = model_rows(a.batch, a.classes, a.warmup, a.steps)

    cores = os.cpu_count() or 1
    photo = stores[1]
    auto = "bf16" if autocast_dtype(torch.device("cpu"), "auto") is not None else "fp32"
    per_precision = {}
    for precision in PRECISIONS:
        r = rates(models, precision, cores)
        per_precision[precision] = {"rates": r, "hours": projection(
            photo["decode_cpu_ms_per_img"] / cores, photo["build_cpu_ms_per_img"] / cores, r)}
    proj = []
    for i, n in enumerate((10_000, 50_000, 1_000_000)):
        row = {"images": n, "cpu_precision_auto": auto,
               "cpu_quick_preview_h": per_precision[auto]["hours"][i]["quick_preview_h"],
               "cpu_full_deft_h": per_precision[auto]["hours"][i]["full_deft_h"]}
        for precision in PRECISIONS:
            row[f"cpu_{precision}_quick_preview_h"] = per_precision[precision]["hours"][i]["quick_preview_h"]
            row[f"cpu_{precision}_full_deft_h"] = per_precision[precision]["hours"][i]["full_deft_h"]
        row.update({"h100_quick_preview_h": "unmeasured", "h100_full_deft_h": "unmeasured"})
        proj.append(row)
    native = cpu_has_native_bf16()
    result = {
        "meta": {
            "machine": f"{cpu_model_name()}, {platform.machine()} x{cores} cores, shared with other jobs "
            f"(wall times inflated)",
            "threads": threads,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "torch": torch.__version__,
            "cpu_native_bf16": native,
            "precision_auto_on_this_cpu": auto,
            "bf16_note": (f"{cpu_model_name()} has native bf16 (avx512_bf16 in /proc/cpuinfo): the bf16 rows run "
                          "bf16 autocast with fp32 master weights, as precision=auto does on this CPU"
                          if native else
                          f"{cpu_model_name()} has no native bf16: bf16 autocast is emulated here; "
                          "precision=auto keeps fp32 on it"),
            "store_section": store_note,
            "model_section": f"measured in this run: random-weight ViT-B/16 CLIP (bench/common.py: vision 768 wide, "
            f"12 layers, 12 heads, patch 16, 224 px; text 512 wide, 12 layers), the library's steps "
            f"(see model_rows), {a.warmup} warm-up + {a.steps} timed steps per row, {threads} threads",
            "projection_uses": "this run's CPU seconds per image spread over all cores (the cost on an idle "
            "machine; wall times here are inflated by other jobs): store build and decode of the generated "
            "photos; the embedding forward, Phase 1, Phase 1 preview and Phase 2 steps of the 'model' rows at the "
            "precision named (Phase 1 re-summed at batch 64: per-step text-tower cost from the preview step + "
            "per-image tower cost); full DEFT = build + 10 Phase 1 epochs + 2 scoring passes + 10 Phase 2 "
            "epochs; quick preview = build + 1 embedding pass + 10 epochs of prompt training on cached "
            "features; decode added to every pass over images. cpu_quick_preview_h / cpu_full_deft_h are at "
            "the precision precision=auto picks on this CPU (cpu_precision_auto)",
            "projection_rates": {p: v["rates"] for p, v in per_precision.items()},
            "gpu": "unmeasured: no GPU lent to this task; the nvJPEG path (ShardImages.decode_jpeg on cuda) "
            "is tested on CPU through the same torchvision call",
        },
        "bytes_and_decode": stores,
        "model": models,
        "projection_hours": proj,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"\n{'images':34s} {'raw B/img':>10s} {'store B/img':>11s} {'ratio':>6s} {'build ms':>9s} "
        f"{'decode ms':>9s} {'PIL ms':>7s} (CPU ms per image; {store_note})"
    )
    for r in stores:
        print(
            f"{r['images']:34s} {r['raw_cache_bytes_per_image']:>10,d} {r['store_bytes_per_image']:>11,.0f} "
            f"{r['ratio']:>6.1f} {r['build_cpu_ms_per_img']:>9.2f} {r['decode_cpu_ms_per_img']:>9.2f} "
            f"{r['decode_pil_cpu_ms_per_img']:>7.2f}"
        )
    print(f"\n{'model step':58s} {'prec':5s} {'batch':>5s} {'img/s (wall)':>12s} {'CPU s/img':>10s}")
    for r in models:
        print(f"{r['step']:58s} {r['precision']:5s} {r['batch']:>5d} {r['img_per_s_wall']:>12.3f} "
              f"{r['cpu_s_per_img']:>10.3f}")
    print(f"\nprojected hours on this CPU (auto = {auto}); H100: unmeasured")
    print(f"{'images':>9s} {'preview':>9s} {'full DEFT':>10s} {'preview fp32':>13s} {'full fp32':>10s} "
          f"{'preview bf16':>13s} {'full bf16':>10s}")
    for r in proj:
        print(f"{r['images']:>9,d} {r['cpu_quick_preview_h']:>9.1f} {r['cpu_full_deft_h']:>10.1f} "
              f"{r['cpu_fp32_quick_preview_h']:>13.1f} {r['cpu_fp32_full_deft_h']:>10.1f} "
              f"{r['cpu_bf16_quick_preview_h']:>13.1f} {r['cpu_bf16_full_deft_h']:>10.1f}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
