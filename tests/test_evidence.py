"""Evidence beside a decision: nearest clean examples of the given and the suggested class."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deft.core.config import Phase1Config
from deft.embeddings import run_embeddings
from deft.evidence import EvidenceIndex, nearest_rows, trusted_labels
from deft.storage.load import load_dataset
from deft.storage.run import Run

from .conftest import extract_cifar


def test_nearest_rows_equal_brute_force_and_exclude_the_query():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cand = rng.choice(200, 80, replace=False)
    q = int(cand[3])  # the query is among the candidates: never its own neighbour
    rows, sims = nearest_rows(x, q, cand, k=5)
    others = cand[cand != q]
    brute = others[np.argsort(-(x[others] @ x[q]), kind="stable")][:5]
    assert rows.tolist() == brute.tolist() and q not in rows
    assert np.allclose(sims, x[rows] @ x[q]) and np.all(np.diff(sims) <= 0)
    assert nearest_rows(x, q, np.array([q]), 5)[0].size == 0


def test_index_searches_only_trusted_samples_of_the_asked_class():
    ids = pd.Series([f"s{i}" for i in range(6)])
    labels, trusted = trusted_labels(
        ids, pd.Series(["cat", "cat", "dog", "dog", "dog", "cat"]),
        pd.DataFrame({"id": ids, "is_clean": [True, False, True, True, True, False]}),
        pd.DataFrame({"id": ["s1", "s3", "s4"], "status": ["kept", "excluded", "relabelled"],
                      "final_label": [None, None, "cat"]}))
    assert trusted.tolist() == [True, True, True, False, True, False]  # kept wins over DEFT, excluded too
    assert labels.tolist() == ["cat", "cat", "dog", "dog", "cat", "cat"]  # a relabel moves the sample
    img = np.eye(6, dtype=np.float32)
    img[3] = img[2]  # s3 is identical to s2 but excluded: never offered
    img[5] = (img[1] + img[2]) / np.sqrt(2)
    idx = EvidenceIndex(ids, img).trust(labels, trusted)
    assert [n.sample_id for n in idx.nearest("s5", "cat", k=1)] == ["s1"]
    assert [n.sample_id for n in idx.nearest("s5", "dog", k=5)] == ["s2"]
    assert {n.sample_id for n in idx.nearest("s5", "cat", k=5)} == {"s0", "s1", "s4"}
    assert idx.nearest("s5", "horse") == [] and idx.nearest("unknown", "cat") == []
    with pytest.raises(ValueError, match="one row per sample"):
        EvidenceIndex(ids[:5], img)


def test_run_evidence_finds_the_copy_and_goes_stale_when_an_image_changes(tmp_path, tiny_clip_dir):
    root = extract_cifar(tmp_path / "data", 4)
    src = sorted((root / "airplane").iterdir())[0]
    (root / "cat" / "copy_of_airplane.jpg").write_bytes(src.read_bytes())  # labelled cat, is an airplane
    run = Run.create(tmp_path / "run", load_dataset(root), Phase1Config(model=str(tiny_clip_dir)))
    ids = run.dataset.samples["id"]
    assert EvidenceIndex.for_run(run) is None  # no embeddings yet: no evidence, no model load
    run_embeddings(run, device="cpu")
    idx = EvidenceIndex.for_run(run).trust(run.dataset.samples["label"].to_numpy(), np.ones(len(ids), bool))
    best = idx.nearest("cat/copy_of_airplane.jpg", "airplane", k=3)
    assert best[0].sample_id == src.relative_to(root).as_posix() and best[0].similarity > 0.999
    assert all(n.sample_id.startswith("cat/") for n in idx.nearest("cat/copy_of_airplane.jpg", "cat"))
    target = run.dataset.paths()[0]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(target, format="JPEG")
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert EvidenceIndex.for_run(run) is None  # stale embeddings are never shown as evidence


def test_evidence_html_serves_thumbnails_through_the_ui_file_url(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from deft.evidence import Neighbour
    from deft.storage.thumbs import thumbnail_file
    from deft.ui import views
    from deft.ui.evidence_strip import evidence_html

    root = tmp_path / "data"
    for sid in ("cat/a.jpg", "dog/b c.jpg"):  # a space: the URL quoting rules apply
        (root / sid).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / sid, format="JPEG")
    rows = [("given label", "cat", [Neighbour("cat/a.jpg", 0.9)]),
            ("top suggestion", "dog", [Neighbour("dog/b c.jpg", 0.5)])]
    ws = SimpleNamespace(dataset=SimpleNamespace(root=root), thumbs=tmp_path / "thumbs",
                         evidence=lambda item, k: rows)
    item = {"id": "cat/x.jpg", "label": "cat"}
    thumbs = [thumbnail_file(root / sid, 96, ws.thumbs) for sid in ("cat/a.jpg", "dog/b c.jpg")]
    srcs = re.findall(r'<img src="([^"]*)"', evidence_html(ws, item))
    assert srcs == [views.file_url(t) for t in thumbs]
    monkeypatch.setattr(views, "file_url", lambda p: f"/served/{Path(p).name}")  # one place for the URL rules
    assert re.findall(r'<img src="([^"]*)"', evidence_html(ws, item)) == [f"/served/{t.name}" for t in thumbs]
