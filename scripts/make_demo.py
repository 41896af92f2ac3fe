"""Rebuild assets/demo/ from ../shared/data/cifar10-jpeg.zip.

10 classes x 40 real CIFAR-10 test images, upscaled to 64 px, in ImageFolder layout,
with 10% of them deliberately placed in a wrong class folder. The wrong ones are
listed in assets/demo/PLANTED.csv (path, true_label, given_label) so a user can see
detection catch them. Deterministic: the same zip gives the same files.

    python scripts/make_demo.py [--zip ../shared/data/cifar10-jpeg.zip] [--out assets/demo]
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS, SIZE, NOISE_RATE, SEED = 40, 64, 0.10, 7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "demo"))
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(SEED)
    with zipfile.ZipFile(a.zip) as z:
        by_class: dict[str, list[str]] = defaultdict(list)
        for n in sorted(z.namelist()):
            if n.startswith("test/") and n.endswith(".jpg"):
                by_class[n.split("/")[1]].append(n)
        classes = sorted(by_class)
        items = [(c, n) for c in classes for n in by_class[c][:PER_CLASS]]
        n_wrong = round(NOISE_RATE * len(items))
        wrong = set(rng.choice(len(items), size=n_wrong, replace=False).tolist())
        planted = []
        counters: dict[str, int] = defaultdict(int)
        for i in rng.permutation(len(items)).tolist():  # numbering must not reveal which are planted
            true, name = items[i]
            given = true
            if i in wrong:
                others = [c for c in classes if c != true]
                given = others[int(rng.integers(len(others)))]
            counters[given] += 1
            rel = f"{given}/img_{counters[given]:03d}.jpg"
            im = Image.open(io.BytesIO(z.read(name))).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            (out / given).mkdir(parents=True, exist_ok=True)
            im.save(out / rel, quality=90)
            if given != true:
                planted.append({"path": rel, "true_label": true, "given_label": given})
    with open(out / "PLANTED.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "true_label", "given_label"])
        w.writeheader()
        w.writerows(sorted(planted, key=lambda r: r["path"]))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(items)} images ({len(planted)} planted wrong labels) to {out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
