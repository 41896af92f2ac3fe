"""Wrong labels fixed per card: every review order (and the learning queue) through the review simulator.

On the proxy CLIP (``../shared/models/proxy-clip-cifar10``, a small real CLIP) and the 10,000 CIFAR-10
**test** JPEGs, with synthetic noise (``deft noise``: ins 0.2 and sym 0.4 by default): detection, the
audit (baselines, data issues, signals), then ``deft simulate`` (the app's own queue, store and learner)
for each order. Prints a table and writes ``bench/results/review_sim.json``.

    python bench/review_sim.py                         # full DEFT, 10 epochs (hours on a 2-core CPU)
    python bench/review_sim.py --preset preview        # quick preview detection (minutes)
    python bench/review_sim.py --noise ins:0.2 --work /tmp/sim   # reuse a work folder's runs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

try:  # python -m bench.review_sim (the repository root is the cwd)
    from bench.common import CIFAR_ZIP, ROOT, SHARED
except ModuleNotFoundError:  # python3 bench/review_sim.py: bench/ is on sys.path; common puts the repo root there
    from common import CIFAR_ZIP, ROOT, SHARED  # noqa: I001

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deft.audit import AuditConfig, audit  # noqa: E402
from deft.core.config import phase1_preset  # noqa: E402
from deft.core.noise import make_noise  # noqa: E402
from deft.detection import detect  # noqa: E402
from deft.simulate import ORDER_NAMES, SimConfig, simulate, table  # noqa: E402
from deft.storage.load import load_dataset  # noqa: E402
from deft.testing import extract_cifar  # noqa: E402

PROXY = SHARED / "models" / "proxy-clip-cifar10"


def noisy_csv(work: Path, kind: str, rate: float, seed: int = 0) -> Path:
    """``work/<kind><rate>.csv`` (path,label,true_label) over the 10k CIFAR-10 test images, as ``deft noise``."""
    data = work / "test"
    if not data.is_dir():
        extract_cifar(CIFAR_ZIP, data, 1000, split="test")
    out = work / f"{kind}{rate}.csv"
    if out.is_file():
        return out
    ds = load_dataset(data)
    feats = None
    if kind == "ins":
        from deft.storage.images import decode_images

        feats = decode_images(ds.paths(), 32).reshape(ds.N, -1)
    noisy = make_noise(kind, ds.labels, ds.K, rate, seed, feats)
    names = np.asarray(ds.classes, dtype=object)
    pd.DataFrame({"path": ds.samples["id"], "label": names[noisy], "true_label": ds.samples["label"]}).to_csv(
        out, index=False)
    return out


def prepared_run(work: Path, kind: str, rate: float, preset: str, epochs: int | None) -> Path:
    """Detect (``preset``) and audit one noisy set, reusing what ``work`` already holds."""
    out = work / "runs" / f"{kind}{rate}-{preset}{'' if epochs is None else f'-e{epochs}'}"
    if (out / "signals.safetensors").is_file():
        return out
    csv = noisy_csv(work, kind, rate)
    ds = load_dataset(csv, work / "test")
    cfg = phase1_preset(preset, optim={"epochs": epochs} if epochs else None, model=str(PROXY))
    t = time.perf_counter()
    detect(ds, out, cfg, device="cpu")
    audit(out, AuditConfig(projection=False), device="cpu")
    (out / "bench_prep.json").write_text(json.dumps({"detect_and_audit_s": round(time.perf_counter() - t, 1)}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", default="ins:0.2,sym:0.4", help="kind:rate list (default: %(default)s)")
    ap.add_argument("--preset", default="deft", help="detection preset: deft (full DEFT) or preview")
    ap.add_argument("--epochs", type=int, default=None, help="Phase 1 epochs (default: the preset's)")
    ap.add_argument("--budget", default="250,500,1000")
    ap.add_argument("--work", default=str(Path("/tmp") / "deft-review-sim"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_sim.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    budgets = tuple(int(b) for b in args.budget.split(","))
    results, rows = [], []
    for spec in args.noise.split(","):
        kind, rate = spec.split(":")
        run = prepared_run(work, kind, float(rate), args.preset, args.epochs)
        for order in ORDER_NAMES:
            for learn in ((False, True) if order == "combined" else (False,)):
                t = time.perf_counter()
                res = simulate(run, SimConfig(budgets=budgets, order=order, learn=learn))
                res |= {"noise": spec, "preset": args.preset, "seconds": round(time.perf_counter() - t, 1)}
                results.append(res)
        part = table([r for r in results if r["noise"] == spec]).assign(noise=spec)
        rows.append(part)
        print(f"\n{spec} ({args.preset}, {results[-1]['errors_total']} wrong labels of {results[-1]['samples']})")
        print(part.drop(columns="noise").to_string(index=False))
    meta = {"machine": f"2-core CPU dev box ({platform.processor() or platform.machine()})",
            "model": "proxy-clip-cifar10 (small real CLIP, 56% zero-shot on CIFAR-10 test)",
            "data": "CIFAR-10 test, 10,000 JPEGs", "preset": args.preset, "epochs": args.epochs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results,
                               "table": pd.concat(rows).to_dict("records")}, indent=1, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
