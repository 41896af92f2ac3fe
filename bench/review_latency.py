"""Review-action latency at 1k and 100k samples (server time, what a reviewer waits for).

Each timed action does what the UI's review handler does: commit the decision to
SQLite (WAL, synchronous=FULL), fetch the next card under the current filter, the
progress counters, the filter size and the card's image thumbnail.

    python bench/review_latency.py [--sizes 1000 100000] [--actions 300] [--out bench/results/review_latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deft.review import ReviewFilter, ReviewQueue  # noqa: E402
from deft.store import ReviewStore  # noqa: E402
from ui.app import thumbnail  # noqa: E402

DEMO = ROOT / "assets" / "demo"


def fake_scores(n: int, classes: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(classes), n)
    names = np.asarray(classes, dtype=object)
    margin = rng.normal(0.05, 0.1, n)
    return pd.DataFrame({
        "id": [f"{names[c]}/s{i:07d}.jpg" for i, c in enumerate(lab)], "label": names[lab],
        "sim_pos": rng.random(n), "sim_neg": rng.random(n), "margin": margin, "p_clean": rng.random(n),
        "is_clean": margin > 0, "pred": names[rng.integers(0, len(classes), n)], "pred_conf": rng.random(n),
        "zs1": names[rng.integers(0, len(classes), n)], "zs1_conf": rng.random(n),
        "zs2": names[rng.integers(0, len(classes), n)], "zs2_conf": rng.random(n),
        "zs3": names[rng.integers(0, len(classes), n)], "zs3_conf": rng.random(n),
        "suggestion": names[rng.integers(0, len(classes), n)], "suggestion_conf": rng.random(n),
    })


def bench(n: int, actions: int, workdir: Path) -> dict:
    classes = sorted(p.name for p in DEMO.iterdir() if p.is_dir())
    images = sorted(DEMO.rglob("*.jpg"))
    store = ReviewStore(workdir / f"review_{n}.sqlite")
    t0 = time.perf_counter()
    store.load_scores(fake_scores(n, classes), classes)
    load_s = time.perf_counter() - t0
    q = ReviewQueue(store, ReviewFilter(), 0, "bench")
    plan = ["accept", "keep", "exclude", "relabel", "next", "undo", "accept", "keep"]
    times = []
    for i in range(actions):
        a = plan[i % len(plan)]
        t = time.perf_counter()
        if a == "next":
            item = q.move(1)
        elif a == "undo":
            item = q.undo()
        elif a == "relabel":
            item = q.act("relabel", classes[i % len(classes)])
        else:
            item = q.act(a)
        store.count()
        q.size()
        if item is not None:
            q.suggestions(item)
            thumbnail(images[i % len(images)], 300)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    # filtered view (one class, pending only): the slowest query shape
    q.filter = ReviewFilter(label=classes[0], status="pending")
    ft = []
    for _ in range(50):
        t = time.perf_counter()
        q.act("keep")
        store.count()
        q.size()
        ft.append(time.perf_counter() - t)
    fms = np.array(ft) * 1000
    return {"samples": n, "suspects": int(store.count()["suspects"]), "actions": actions,
            "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
            "filtered_median_ms": float(np.median(fms)), "filtered_p99_ms": float(np.percentile(fms, 99)),
            "load_scores_s": load_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--actions", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_latency.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = [bench(n, a.actions, Path(d)) for n in a.sizes]
    print(f"{'samples':>9} {'suspects':>9} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} "
          f"{'filt. med':>10} {'filt. p99':>10} {'load s':>7}")
    for r in rows:
        print(f"{r['samples']:>9} {r['suspects']:>9} {r['median_ms']:>10.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} "
              f"{r['filtered_median_ms']:>10.2f} {r['filtered_p99_ms']:>10.2f} {r['load_scores_s']:>7.2f}")
    info = {"machine": platform.platform(), "processor": platform.processor(), "python": platform.python_version()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": info, "results": rows}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
