"""Large-dataset import: time to load and validate (paths, labels, duplicates) an N-row label table.

Image decoding is not included (``verify=False``): that cost is per image and the same at any size.

    python bench/manifest.py [--rows 1000000] [--out bench/results/manifest.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

try:  # python -m bench.manifest (the repository root is the cwd)
    from bench.common import ROOT
except ModuleNotFoundError:  # python3 bench/manifest.py: bench/ is on sys.path; common puts the repo root there
    from common import ROOT  # noqa: I001

from deft.storage.data import load_table  # noqa: E402
from deft.storage.run import ids_hash  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "manifest.json"))
    a = ap.parse_args()
    res = {"rows": a.rows}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        df = pd.DataFrame({"path": [f"c{i % a.classes}/img_{i:08d}.jpg" for i in range(a.rows)],
                           "label": [f"c{i % a.classes}" for i in range(a.rows)]})
        for fmt in ("csv", "parquet"):
            f = d / f"labels.{fmt}"
            df.to_csv(f, index=False) if fmt == "csv" else df.to_parquet(f, index=False)
            t = time.perf_counter()
            ds = load_table(f, root=d, verify=False)
            res[f"load_{fmt}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ds.samples.to_parquet(d / "manifest.parquet", index=False)
        pd.read_parquet(d / "manifest.parquet")
        res["manifest_roundtrip_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ids_hash(ds.samples["id"])
        res["ids_hash_s"] = time.perf_counter() - t
    print(f"{'rows':>9} {'load csv s':>11} {'load parquet s':>15} {'manifest rt s':>14} {'ids hash s':>11}")
    print(f"{res['rows']:>9} {res['load_csv_s']:>11.2f} {res['load_parquet_s']:>15.2f} "
          f"{res['manifest_roundtrip_s']:>14.2f} {res['ids_hash_s']:>11.2f}")
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
