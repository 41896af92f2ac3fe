"""Audit passes vs the embedding pass that feeds them, on 10k real CIFAR-10 JPEGs.

The issue's target: baselines + data-issue passes together take under 10% of the time of
the CLIP embedding pass (decode + image tower). Timed here:

* embedding pass = decoding all N JPEGs to the model's resolution (the run's uint8 cache, timed
  in full) + the frozen ViT-B/16 image tower (``image_features``), timed on ``--embed-sample``
  images and scaled to N (the per-image cost of a forward pass does not depend on N). Weights are
  random with openai/clip-vit-base-patch16's shapes (no checkpoint can be downloaded here): the
  cost is the same as the pretrained model's.
* audit passes on all N: zero-shot, confident learning (5-fold logistic probe + cleanlab), exact
  duplicates (file hashes), chunked k-NN, near duplicates, outliers (global + per class), image
  problems on the 224 px decode cache, class report. Their input embeddings are 512-d (ViT-B/16's
  projection width) from a 2-layer CLIP on the same images, since the passes only see the vectors.
* the t-SNE map, reported separately (it is not a detector; it runs once per run for the UI).

    python bench/audit.py                 # 10k images, writes bench/results/audit_cpu.json
    python bench/audit.py --n 2000 --embed-sample 32
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

try:  # python -m bench.audit (the repository root is the cwd)
    from bench.common import CIFAR_ZIP, ROOT, build_model
except ModuleNotFoundError:  # python3 bench/audit.py: bench/ is on sys.path; common puts the repo root there
    from common import CIFAR_ZIP, ROOT, build_model  # noqa: I001
from deft.audit import data_issue_frames, method_frames  # noqa: E402
from deft.core import data_issues as di  # noqa: E402
from deft.core.config import Phase1Config  # noqa: E402
from deft.core.schema import BASELINES  # noqa: E402
from deft.detection import class_texts, image_features, load_run_images, zero_shot_text  # noqa: E402
from deft.embeddings import Embeddings  # noqa: E402
from deft.projection import project_2d  # noqa: E402
from deft.storage.load import load_dataset  # noqa: E402
from deft.storage.run import Run  # noqa: E402
from deft.testing import extract_cifar, save_tiny_clip  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images (CIFAR-10 train JPEGs, balanced)")
    ap.add_argument("--embed-sample", type=int, default=128, help="images the ViT-B/16 forward is timed on")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "audit_cpu.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="deft-bench-audit-"))
    data = work / "data"
    if not data.is_dir():
        extract_cifar(CIFAR_ZIP, data, args.n // 10)
    ds = load_dataset(data)
    vitb = build_model("vitb16", torch.device("cpu"), "sdpa")
    run = Run.create(work / "run", ds, Phase1Config(model=vitb.source))

    t = time.perf_counter()
    images = load_run_images(run, vitb.image_size)  # decode-once cache at 224 px
    decode_s = time.perf_counter() - t
    sample = images[: args.embed_sample]
    image_features(vitb, sample[: args.batch], batch_size=args.batch)  # warm-up
    t = time.perf_counter()
    image_features(vitb, sample, batch_size=args.batch)
    fwd_per_img = (time.perf_counter() - t) / len(sample)
    embed_s = decode_s + fwd_per_img * ds.N

    d512 = save_tiny_clip(work / "clip512", width=512)
    from deft.core.models import load_clip

    small = load_clip(str(d512), "cpu")
    small_imgs = load_run_images(run, small.image_size)
    feats = image_features(small, small_imgs).numpy()
    text = zero_shot_text(small, class_texts(ds), "a photo of a {}.").numpy()
    emb = Embeddings(image=feats, text_zs=text, logit_scale=100.0, key="bench", image_size=vitb.image_size)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    table = method_frames(ds.labels, emb, BASELINES, ds.K, timings=timings)
    issues, thr = data_issue_frames(run, emb, di.DataIssueConfig(), timings)
    import pandas as pd

    di.class_report(ds.labels, ds.classes, pd.concat([table, issues], axis=1))
    audit_s = time.perf_counter() - t
    t = time.perf_counter()
    project_2d(feats)
    tsne_s = time.perf_counter() - t

    meta = {"machine": "2-core CPU dev box, shared with other agents (numbers are noisy)",
            "cpu": f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} torch threads",
            "torch": torch.__version__, "n": ds.N, "embed_sample": len(sample), "batch": args.batch,
            "note": "embedding pass = full decode + ViT-B/16 forward timed on embed_sample images, scaled to n"}
    res = {"decode_s": decode_s, "vitb16_forward_s_per_img": fwd_per_img, "embedding_pass_s": embed_s,
           "audit_s": audit_s, "audit_pct_of_embedding_pass": 100 * audit_s / embed_s,
           "audit_breakdown_s": timings, "tsne_map_s": tsne_s, "near_duplicate_cos": 1 - thr,
           "issue_counts": di.summarize(issues)}
    print(f"\naudit passes vs embedding pass, N={ds.N}  [{meta['machine']}; {meta['cpu']}]")
    print(f"{'pass':<28}{'seconds':>10}")
    print(f"{'embedding pass (ViT-B/16)':<28}{embed_s:>10.1f}   decode {decode_s:.1f} s + "
          f"{fwd_per_img * 1000:.0f} ms/img x {ds.N}")
    for k, v in timings.items():
        print(f"  {k:<26}{v:>10.2f}")
    print(f"{'audit passes, total':<28}{audit_s:>10.1f}   = {res['audit_pct_of_embedding_pass']:.1f}% "
          f"of the embedding pass (target < 10%)")
    print(f"{'t-SNE map (separate)':<28}{tsne_s:>10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": res}, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
