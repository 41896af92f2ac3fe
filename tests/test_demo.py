"""The bundled demo's planted-error list matches the files on disk."""

import pandas as pd

from deft.storage.load import load_dataset

from .conftest import ROOT

DEMO = ROOT / "assets" / "demo"


def test_planted_errors_match_demo_files():
    planted = pd.read_csv(DEMO / "PLANTED.csv")
    ds = load_dataset(DEMO)
    assert ds.N == 400 and ds.K == 10 and len(ds.issues) == 0
    assert len(planted) == 40 and planted["path"].is_unique
    given = dict(zip(ds.samples["id"], ds.samples["label"], strict=True))
    for row in planted.itertuples():
        assert row.path in given, f"{row.path} listed in PLANTED.csv but not in the demo"
        assert given[row.path] == row.given_label == row.path.split("/")[0]
        assert row.true_label != row.given_label and row.true_label in ds.classes
    sizes = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert sizes < 5_000_000
