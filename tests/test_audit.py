"""Baselines, data-issue detectors, cached embeddings and the map, on planted cases.

Unit tests use synthetic embeddings and pixels with known answers; the integration
tests plant problems among real CIFAR-10 JPEGs and audit them with the tiny test CLIP.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from deft.audit import AuditConfig, audit, ground_truth, review_order
from deft.core import baselines as bl
from deft.core import data_issues as di
from deft.core.config import Phase1Config
from deft.embeddings import embeddings_path, load_embeddings, run_embeddings
from deft.projection import project_2d
from deft.storage.load import load_dataset
from deft.storage.run import Run

from .conftest import extract_cifar


def deft(*args) -> str:
    """The CLI in this process (no interpreter + torch start-up per call); returns its stdout."""
    import contextlib
    import io

    from deft.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(a) for a in args])
    assert rc == 0, f"deft {args} exited {rc}:\n{buf.getvalue()}"
    return buf.getvalue()


def clusters(n_per: int, k: int, d: int = 16, spread: float = 0.05, seed: int = 0):
    """Unit-norm embeddings in ``k`` tight clusters, labels = cluster index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + spread * rng.normal(size=(len(y), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y, centres


# -- unit: nearest neighbours, duplicates, outliers -------------------------

def test_chunked_knn_equals_brute_force():
    x, _, _ = clusters(30, 4)
    dist, idx = di.knn(x, 5, chunk=7)  # chunks much smaller than N: never an N x N block
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    ref = np.argsort(-sim, axis=1)[:, :5]
    assert (idx == ref).all()
    assert np.allclose(dist, 1 - np.take_along_axis(sim, ref, axis=1), atol=1e-5)


def test_exact_duplicates_flag_label_conflicts():
    out = di.find_exact_duplicates(["a", "b", "a", "c", "c"], np.array([0, 1, 2, 3, 3]))
    assert out["exact_duplicate"].tolist() == [True, False, True, True, True]
    assert out["exact_dup_label_conflict"].tolist() == [True, False, True, False, False]


def test_near_duplicates_use_a_threshold_relative_to_neighbour_spread():
    x, y, _ = clusters(20, 3)
    copy = x[5] + 1e-4 * np.random.default_rng(1).normal(size=x.shape[1]).astype(np.float32)
    x = np.vstack([x, copy / np.linalg.norm(copy)])
    y = np.append(y, 2)  # the copy of a class-0 sample carries class 2: one of them is wrong
    out, thr = di.find_near_duplicates(y, *di.knn(x, 5))
    assert set(np.flatnonzero(out["near_duplicate"])) == {5, 60}
    assert out["near_dup_label_conflict"].sum() == 2 and out.loc[60, "near_dup_of"] == 5
    assert 0 < thr < 0.13 * np.median(di.knn(x, 1)[0]) + 1e-9


def test_outliers_global_and_per_class():
    x, y, centres = clusters(25, 3)
    far = np.random.default_rng(3).normal(size=x.shape[1]).astype(np.float32)
    between = centres[1] / np.linalg.norm(centres[1])  # sits in class 1's cluster, labelled 0
    x = np.vstack([x, far / np.linalg.norm(far), between.astype(np.float32)])
    y = np.append(y, [0, 0])
    out = di.find_outliers(x, y, di.DataIssueConfig(k=5))
    assert out["outlier"].to_numpy().nonzero()[0].tolist() == [75]
    assert out["outlier_score"].idxmax() == 75
    assert out.loc[76, "class_outlier"] and not out.loc[76, "outlier"]  # far from its class only


# -- unit: image problems -----------------------------------------------------

def _natural(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour images with edges: a stand-in for photos."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, 8, 8)).astype(np.float32)
    return np.kron(base, np.ones((1, 1, 8, 8))).astype(np.uint8)  # 64 px, 8 px blocks


def test_image_problems_on_planted_pixels():
    imgs = _natural(40)
    imgs[0] = 0                                   # black
    imgs[1] = 250                                 # white
    blurred = Image.fromarray(imgs[2].transpose(1, 2, 0)).filter(ImageFilter.GaussianBlur(4))
    imgs[2] = np.asarray(blurred).transpose(2, 0, 1)
    imgs[3] = imgs[3].mean(0, keepdims=True).astype(np.uint8)  # grayscale in a colour set
    sizes = pd.DataFrame({"width": [64] * 40, "height": [64] * 40})
    sizes.loc[4, "width"], sizes.loc[5, "width"] = 640, 16   # odd aspect, odd size
    sizes.loc[5, "height"] = 4
    p = di.find_image_problems(di.image_stats(imgs), sizes)
    assert p["dark"].to_numpy().nonzero()[0].tolist() == [0]
    assert p["bright"].to_numpy().nonzero()[0].tolist() == [1]
    assert p["low_information"].to_numpy().nonzero()[0].tolist() == [0, 1]
    assert p["blurry"].to_numpy().nonzero()[0].tolist() == [2]
    assert p["grayscale"][3] and not p["grayscale"][4:].any()
    assert p["odd_aspect"].to_numpy().nonzero()[0].tolist() == [4, 5]
    assert p["odd_size"].to_numpy().nonzero()[0].tolist() == [5]


def test_grayscale_set_is_not_flagged_as_grayscale():
    imgs = np.repeat(_natural(10).mean(1, keepdims=True), 3, axis=1).astype(np.uint8)
    assert not di.find_image_problems(di.image_stats(imgs))["grayscale"].any()


# -- unit: baselines ----------------------------------------------------------

def test_zero_shot_flags_label_mismatch():
    x, y, centres = clusters(10, 3)
    text = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    noisy = y.copy()
    noisy[[0, 11]] = [1, 2]
    out = bl.find_zero_shot_issues(noisy, bl.zero_shot_pred_probs(x, text, 100.0))
    assert out["zeroshot_issue"].to_numpy().nonzero()[0].tolist() == [0, 11]
    assert out["zeroshot_pred"][0] == 0 and out["zeroshot_score"][0] < 0.01


def test_confident_learning_finds_flipped_labels_out_of_sample():
    x, y, _ = clusters(40, 4, spread=0.3)
    noisy = y.copy()
    flipped = np.arange(0, 160, 10)
    noisy[flipped] = (noisy[flipped] + 1) % 4
    probs = bl.cross_val_pred_probs(x, noisy, 4, n_folds=5)
    assert probs.shape == (160, 4) and np.allclose(probs.sum(1), 1)
    out = bl.find_confident_learning_issues(noisy, probs)
    found = set(np.flatnonzero(out["cleanlab_issue"]))
    assert len(found & set(flipped)) >= 14 and len(found - set(flipped)) <= 3
    m = bl.methods_metrics(out.assign(**bl.agreement(out)), noisy == y, methods=["cleanlab"])
    assert m["cleanlab"]["auroc"] > 0.9 and m["cleanlab"]["precision"] > 0.95


def test_agreement_counts_methods():
    t = pd.DataFrame({"deft_issue": [True, True, False], "zeroshot_issue": [True, False, False],
                      "cleanlab_issue": [True, True, False]})
    a = bl.agreement(t)
    assert a["n_flagged"].tolist() == [3, 2, 0] and a["agreement"].tolist() == ["3/3", "2/3", "0/3"]


def test_review_order_by_agreement_and_by_method():
    t = pd.DataFrame({"id": list("abcd"), "deft_issue": [False, True, True, True],
                      "deft_score": [0.9, -0.1, -0.5, -0.2], "cleanlab_issue": [False, True, False, True],
                      "cleanlab_score": [0.8, 0.3, 0.6, 0.1]})
    t = pd.concat([t, bl.agreement(t)], axis=1)
    assert review_order(t)["id"].tolist() == ["d", "b", "c", "a"]  # 2/2 first, worse scores first
    assert review_order(t, "deft")["id"].tolist() == ["c", "d", "b", "a"]
    with pytest.raises(ValueError, match="zeroshot"):
        review_order(t, "zeroshot")


def test_projection_shape_and_tiny_sets():
    x, _, _ = clusters(20, 3)
    xy = project_2d(x)
    assert xy.shape == (60, 2) and np.isfinite(xy).all()
    assert project_2d(x[:3]).shape == (3, 2)


# -- integration: planted problems among real CIFAR-10 JPEGs -----------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_clip_dir):
    """60 CIFAR-10 images + a copy of an airplane labelled cat, a black image, a blurred bird,
    an out-of-class checkerboard and a resized re-encoded copy of a horse; audited once."""
    root = extract_cifar(tmp_path_factory.mktemp("planted"), 6)
    src = sorted((root / "airplane").iterdir())[0]
    (root / "cat" / "copy_of_airplane.jpg").write_bytes(src.read_bytes())
    Image.new("RGB", (32, 32)).save(root / "dog" / "black.jpg")
    bird = sorted((root / "bird").iterdir())[0]
    Image.open(bird).filter(ImageFilter.GaussianBlur(2)).save(root / "bird" / "blurred.jpg")
    checker = ((np.indices((32, 32)) // 4).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.repeat(checker[..., None], 3, axis=2)).save(root / "ship" / "checkerboard.png")
    horse = sorted((root / "horse").iterdir())[0]
    Image.open(horse).resize((40, 40)).save(root / "horse" / "recoded.jpg", quality=70)
    run = Run.create(tmp_path_factory.mktemp("run") / "r", load_dataset(root),
                     Phase1Config(model=str(tiny_clip_dir)))
    res = audit(run, AuditConfig(), device="cpu")
    ids = {"airplane": src.relative_to(root).as_posix(), "horse": horse.relative_to(root).as_posix()}
    return run, res, res.table.set_index("id"), ids


def test_planted_duplicate_with_a_different_label(planted):
    _, res, t, ids = planted
    for i in ("cat/copy_of_airplane.jpg", ids["airplane"]):
        assert t.loc[i, "exact_duplicate"] and t.loc[i, "exact_dup_label_conflict"]
        assert t.loc[i, "near_duplicate"] and t.loc[i, "near_dup_label_conflict"]
    assert t["exact_duplicate"].sum() == 2
    assert t.loc["horse/recoded.jpg", "near_duplicate"] and not t.loc["horse/recoded.jpg", "exact_duplicate"]
    assert not t.loc["horse/recoded.jpg", "near_dup_label_conflict"]
    assert t.loc["horse/recoded.jpg", "near_dup_of"] == t.index.get_loc(ids["horse"])
    assert res.summary["issues"]["exact_dup_label_conflict"] == 2


def test_planted_black_and_blurred_images(planted):
    _, _, t, _ = planted
    assert t.loc["dog/black.jpg", "dark"] and t.loc["dog/black.jpg", "low_information"]
    assert t["dark"].sum() == 1 and not t["bright"].any()
    assert t.loc["bird/blurred.jpg", "blurry"] and t["blurry"].sum() == 1
    assert t["sharpness"].idxmin() in {"dog/black.jpg", "bird/blurred.jpg"}


def test_planted_out_of_class_image_is_the_top_outlier(planted):
    _, _, t, _ = planted
    assert t["outlier_score"].idxmax() == "ship/checkerboard.png"
    assert t.loc["ship/checkerboard.png", "outlier"] and t.loc["ship/checkerboard.png", "class_outlier"]
    assert t["outlier"].sum() <= 3 and t["class_outlier"].sum() <= 4


def test_audit_writes_its_tables_into_the_run(planted):
    run, res, t, _ = planted
    for name in ("audit.parquet", "class_report.csv", "audit.json", "projection.parquet", "embeddings.safetensors"):
        assert (run.path / name).is_file(), name
    rep = pd.read_csv(run.path / "class_report.csv")
    assert rep.set_index("class").loc["cat", "count"] == 7 and rep["imbalance"].max() == 1.0
    assert {"zeroshot_suspect_rate", "cleanlab_suspect_rate", "near_duplicate"} <= set(rep.columns)
    proj = pd.read_parquet(run.path / "projection.parquet")
    assert len(proj) == run.dataset.N and proj["id"].tolist() == run.dataset.samples["id"].tolist()
    assert {"zeroshot_score", "cleanlab_score", "n_flagged", "agreement"} <= set(t.columns)


def test_embeddings_are_cached_keyed_and_recomputed_on_change(planted):
    run, _, _, _ = planted
    p = embeddings_path(run)
    first = load_embeddings(p)
    assert first.image.shape == (run.dataset.N, 64) and np.allclose(np.linalg.norm(first.image, axis=1), 1, atol=1e-4)
    stamp = p.stat().st_mtime_ns
    again = run_embeddings(run, device="cpu")  # key matches: read back, nothing recomputed
    assert p.stat().st_mtime_ns == stamp and again.key == first.key
    target = run.dataset.paths()[0]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(target, format="JPEG")
    os.utime(target, ns=(stamp + 10**9, stamp + 10**9))
    changed = run_embeddings(run, device="cpu")
    assert changed.key != first.key and p.stat().st_mtime_ns != stamp
    assert not np.allclose(changed.image[0], first.image[0]) and np.allclose(changed.image[1:], first.image[1:],
                                                                             atol=1e-5)


def test_ground_truth_from_planted_csv(tmp_path, cifar_small, tiny_clip_dir):
    ds = load_dataset(cifar_small)
    run = Run.create(tmp_path / "r", ds, Phase1Config(model=str(tiny_clip_dir)))
    assert ground_truth(run) is None
    wrong = ds.samples["id"].iloc[3]
    pd.DataFrame({"path": [wrong], "true_label": ["dog"], "given_label": [ds.samples["label"].iloc[3]]}).to_csv(
        cifar_small / "PLANTED.csv", index=False)
    try:
        truth = ground_truth(run)
    finally:
        (cifar_small / "PLANTED.csv").unlink()
    assert truth is not None and (~truth).sum() == 1 and not truth[3]


# -- benchmark: `deft noise` on CIFAR-10 JPEGs, every method, metrics.json ----

@pytest.mark.slow
@pytest.mark.parametrize("kind,rate", [("sym", 0.2), ("sym", 0.4), ("pair", 0.2)])
def test_methods_metrics_on_noise_benchmarks(tmp_path, cifar_small, tiny_clip_dir, kind, rate):
    noisy = tmp_path / "noisy.csv"
    deft("noise", cifar_small, "--kind", kind, "--rate", rate, "--seed", 1, "--out", noisy)
    run = tmp_path / "run"
    out = deft("detect", noisy, "--root", cifar_small, "--model", tiny_clip_dir, "--out", run, "--feature-cache",
               "--epochs", 1, "--batch-size", 32, "--method", "all", "--device", "cpu")
    assert '"cleanlab"' in out
    methods = json.loads((run / "metrics.json").read_text())["methods"]
    assert set(methods) == {"deft", "zeroshot", "cleanlab", "agree_2plus"}
    truth = pd.read_csv(noisy)
    n_noisy = int((truth["label"] != truth["true_label"]).sum())
    for m, v in methods.items():
        assert v["n"] == 60 and v["n_truly_clean"] == 60 - n_noisy, m
        assert {"precision", "recall", "f1", "auroc"} <= set(v), m
    exp_path = tmp_path / "cleaned.csv"
    deft("export", run, "--out", exp_path)
    exp = pd.read_csv(exp_path)
    assert {"deft_score", "zeroshot_score", "cleanlab_score", "agreement", "near_duplicate", "outlier", "blurry"} \
        <= set(exp.columns)
    assert (exp["deft_score"] == exp["margin"]).all()


@pytest.mark.slow
def test_detect_with_a_baseline_only_gives_a_reviewable_run(tmp_path, cifar_small, tiny_clip_dir):
    noisy = tmp_path / "noisy.csv"
    deft("noise", cifar_small, "--kind", "sym", "--rate", 0.4, "--out", noisy)
    run = tmp_path / "run"
    out = deft("detect", noisy, "--root", cifar_small, "--model", tiny_clip_dir, "--out", run,
               "--method", "cleanlab", "--device", "cpu")
    assert "(cleanlab)" in out and not (run / "prompts.safetensors").exists()  # no DEFT training
    scores = pd.read_parquet(run / "scores.parquet")
    audit_t = pd.read_parquet(run / "audit.parquet")
    assert (scores["is_clean"] == ~audit_t["cleanlab_issue"]).all()
    assert set(json.loads((run / "metrics.json").read_text())["methods"]) == {"cleanlab"}
    exp = tmp_path / "x.csv"
    deft("export", run, "--out", exp)
    assert set(pd.read_csv(exp)["status"]) <= {"clean", "pending"}


@pytest.mark.slow
def test_heldout_rows_are_never_judged_and_deft_columns_join_on_id(tmp_path, cifar_small, tiny_clip_dir):
    noisy = tmp_path / "noisy.csv"
    deft("noise", cifar_small, "--kind", "sym", "--rate", 0.4, "--seed", 2, "--out", noisy)
    table = pd.read_csv(noisy)
    table["split"] = np.where(np.arange(len(table)) % 3 == 0, "test", "train")  # test rows interleaved
    table.to_csv(noisy, index=False)
    run = tmp_path / "run"
    deft("detect", noisy, "--root", cifar_small, "--model", tiny_clip_dir, "--out", run, "--feature-cache",
         "--epochs", 1, "--batch-size", 32, "--method", "all", "--device", "cpu")
    train_ids = set(table.loc[table["split"] == "train", "path"])
    scores = pd.read_parquet(run / "scores.parquet")
    audit_t = pd.read_parquet(run / "audit.parquet")
    assert set(audit_t["id"]) == set(scores["id"]) == train_ids
    joined = audit_t.merge(scores[["id", "margin"]], on="id")
    assert np.allclose(joined["deft_score"], joined["margin"])  # each DEFT verdict on its own sample
    methods = json.loads((run / "metrics.json").read_text())["methods"]
    assert all(v["n"] == len(train_ids) for v in methods.values())
    only = tmp_path / "zs"
    deft("detect", noisy, "--root", cifar_small, "--model", tiny_clip_dir, "--out", only, "--method", "zeroshot",
         "--device", "cpu")
    assert set(pd.read_parquet(only / "scores.parquet")["id"]) == train_ids
