"""Phase 2: hold-out split, per-epoch history, best/last accuracy, saved model that predicts."""

import json

import numpy as np
import pandas as pd
import pytest

from deft.core.config import OptimConfig, Phase1Config, Phase2Config
from deft.detection import detect
from deft.storage.load import load_dataset
from deft.storage.train_runs import epoch_log, list_training_runs
from deft.training import TrainedClassifier, split_train_val, train_classifier


@pytest.fixture(scope="module")
def run(tmp_path_factory, cifar_small, tiny_clip_dir):
    out = tmp_path_factory.mktemp("p2") / "run"
    cfg = Phase1Config(model=str(tiny_clip_dir), optim=OptimConfig(lr=0.03, epochs=1, batch_size=32))
    return detect(load_dataset(cifar_small), out, cfg).run


def test_train_saves_a_model_that_predicts(run, tmp_path):
    curated = run.dataset.samples[["id", "label"]]
    cfg = Phase2Config(model=run.config.model, optim=OptimConfig(lr=5e-4, epochs=2, batch_size=16), val_fraction=0.2)
    res = train_classifier(run, curated, cfg, out=tmp_path / "model")
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert all({"loss", "val_acc"} <= set(h) for h in res.history)
    assert res.last_val_acc == res.history[-1]["val_acc"] and res.best_val_acc >= res.last_val_acc
    assert res.confusion.sum() == 12  # 20% of 60 held out
    summary = json.loads((tmp_path / "model" / "summary.json").read_text())
    assert summary["classes"] == run.dataset.classes
    clf = TrainedClassifier.load(tmp_path / "model")
    pred = clf.predict([run.dataset.root / i for i in curated["id"][:5]])
    assert len(pred) == 5 and set(pred["pred"]) <= set(run.dataset.classes)
    assert pred["conf"].between(0, 1).all()
    assert (tmp_path / "model" / "best" / "model.safetensors").is_file()


def test_curated_table_errors(run):
    with pytest.raises(ValueError, match="not samples of this run"):
        train_classifier(run, pd.DataFrame({"id": ["nope.jpg", "x.jpg"], "label": ["cat", "cat"]}))
    with pytest.raises(ValueError, match="unknown classes"):
        train_classifier(run, pd.DataFrame({"id": run.dataset.samples["id"][:2], "label": ["cat", "wolf"]}))


def test_split_is_seeded_and_disjoint():
    tr, va = split_train_val(100, 0.1, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 100
    assert (split_train_val(100, 0.1, seed=3)[1] == va).all()


def test_official_trainable_set_is_blocks_and_head(tiny_clip_dir):
    # issue 8 item 6: embeddings and pre/post layer norms stay frozen; the blocks and the head train
    import torch
    import torch.nn.functional as F

    from deft.core.models import load_clip
    from deft.train_loop import make_optimizer
    from deft.training import Classifier

    bundle = load_clip(tiny_clip_dir)
    model = Classifier.from_clip(bundle, 3)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"vision.embeddings.class_embedding", "vision.embeddings.patch_embedding.weight",
                      "vision.embeddings.position_embedding.weight", "vision.pre_layrnorm.weight",
                      "vision.pre_layrnorm.bias", "vision.post_layernorm.weight", "vision.post_layernorm.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, _ = make_optimizer(model.trainable_parameters(), OptimConfig(lr=0.1), 1)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & frozen and "head.weight" in changed and "vision.encoder.layers.0.mlp.fc1.weight" in changed
    assert all(p.requires_grad for p in Classifier.from_clip(bundle, 3, "all").parameters())
    with pytest.raises(ValueError, match="unknown trainable set"):
        Classifier.from_clip(bundle, 3, "heads")


def test_masked_batching_iterates_all_samples_and_learns_from_curated_only(tiny_clip_dir):
    # issue 8 item 7: official Phase 2 draws batches from every sample and masks the loss to the curated ones
    import numpy as np
    import torch
    import torch.nn.functional as F

    from deft.core.models import load_clip
    from deft.training import Classifier, phase2_step, training_rows

    curated_idx, y = np.array([1, 4, 7]), torch.tensor([2, 0, 1])
    rows, labels = training_rows(10, curated_idx, y, "masked", exclude=np.array([9]))
    assert rows.tolist() == list(range(9)) and labels.tolist() == [-1, 2, -1, -1, 0, -1, -1, 1, -1]
    rows_c, labels_c = training_rows(10, curated_idx, y, "curated")
    assert rows_c.tolist() == [1, 4, 7] and labels_c.tolist() == [2, 0, 1]

    bundle = load_clip(tiny_clip_dir)
    model = Classifier.from_clip(bundle, 3).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    step = phase2_step(model, images, rows, labels, bundle.normalizer, augment=False)
    out = step(torch.tensor([0, 1, 2, 4]), 0, torch.Generator())
    from deft.core.batches import make_batch
    logits = model(make_batch(images, torch.tensor([1, 4]), torch.device("cpu"), bundle.normalizer))
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, torch.tensor([2, 0])).item(), rel=1e-5)
    assert out["curated_frac"].item() == 0.5
    empty = step(torch.tensor([0, 2]), 0, torch.Generator())["loss"]
    assert empty.item() == 0.0 and empty.requires_grad


def test_masked_is_the_default_and_takes_more_steps(run, tmp_path):
    curated = run.dataset.samples[["id", "label"]].iloc[::2]  # 30 of 60 curated
    steps = {}
    for batching in ("masked", "curated"):
        events = []
        cfg = Phase2Config(model=run.config.model, optim=OptimConfig(lr=5e-4, epochs=1, batch_size=16),
                           val_fraction=0.2, batching=batching)
        res = train_classifier(run, curated, cfg, out=tmp_path / batching, progress=events.append)
        steps[batching] = next(e.steps for e in events if e.stage == "phase2")
        assert res.classifier.meta["n_train"] == 24
    assert Phase2Config().batching == "masked"
    assert steps == {"masked": 4, "curated": 2}  # 60 - 6 held out = 54 rows / 16; 24 curated rows / 16


@pytest.fixture(scope="module")
def split_table(tmp_path_factory, cifar_small):
    """The 60 images as a path,label,split table: 2 per class are split=test."""
    rows = []
    for d in sorted(p for p in cifar_small.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(d.iterdir())):
            rows.append({"path": f"{d.name}/{f.name}", "label": d.name, "split": "test" if i < 2 else "train"})
    table = tmp_path_factory.mktemp("split") / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


@pytest.mark.slow  # a Phase 1 + a Phase 2 run: ~10 s idle, 26 s on the loaded 2-core dev box
def test_test_rows_never_train_and_phase2_reports_on_them(split_table, cifar_small, tiny_clip_dir, tmp_path):
    # issue 8 item 2: split=test rows stay out of Phase 1, the decision, the review queue and Phase 2 training
    ds = load_dataset(split_table, root=cifar_small)
    test_ids = set(ds.samples.loc[ds.samples["split"] == "test", "id"])
    assert len(test_ids) == 20
    cfg = Phase1Config(model=str(tiny_clip_dir), optim=OptimConfig(lr=0.03, epochs=1, batch_size=16))
    events = []
    det = detect(ds, tmp_path / "run", cfg, progress=events.append)
    assert next(e.steps for e in events if e.stage == "phase1") == 3  # 40 training rows / 16
    assert len(det.scores) == 40 and not set(det.scores["id"]) & test_ids  # no decision -> not in the review queue
    run = det.run
    with pytest.raises(ValueError, match="held-out test/val rows"):
        train_classifier(run, ds.samples[["id", "label"]])
    p2 = Phase2Config(model=str(tiny_clip_dir), optim=OptimConfig(lr=5e-4, epochs=2, batch_size=16))
    events = []
    res = train_classifier(run, det.scores[["id", "label"]], p2, out=tmp_path / "m", progress=events.append)
    assert next(e.steps for e in events if e.stage == "phase2") == 2 * 3  # 40 rows, none held out of them
    accs = [h["test_acc"] for h in res.history]
    assert len(accs) == 2 and res.last_val_acc == accs[-1] and res.best_val_acc == max(accs)
    assert res.confusion.sum() == 20 and "split=test" in res.heldout
    assert res.classifier.meta["n_train"] == 40 and res.classifier.meta["n_val"] == 20


def test_without_a_test_split_the_heldout_measure_says_what_it_is(run, tmp_path):
    cfg = Phase2Config(model=run.config.model, optim=OptimConfig(lr=5e-4, epochs=1, batch_size=32))
    res = train_classifier(run, run.dataset.samples[["id", "label"]], cfg, out=tmp_path / "m")
    assert "curated labels" in res.heldout and "no test split" in res.heldout


def test_noise_command_keeps_test_rows_clean(split_table, cifar_small, tmp_path):
    from deft.cli import main

    out = tmp_path / "noisy.csv"
    assert main(["noise", str(split_table), "--root", str(cifar_small), "--kind", "sym", "--rate", "1.0",
                 "--out", str(out)]) == 0
    df = pd.read_csv(out)
    test = df["split"] == "test"
    assert test.sum() == 20 and (df.loc[test, "label"] == df.loc[test, "true_label"]).all()
    assert (df.loc[~test, "label"] != df.loc[~test, "true_label"]).mean() > 0.7  # r=1.0 on the 40 training rows


def test_cancelled_training_resumes_at_the_next_epoch_and_equals_an_uninterrupted_run(run, tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from deft.core.progress import Cancelled, CancelToken
    from deft.storage.run import RunError

    curated = run.dataset.samples[["id", "label"]]
    cfg = Phase2Config(model=run.config.model, optim=OptimConfig(lr=5e-4, epochs=3, batch_size=16), val_fraction=0.2)
    full = train_classifier(run, curated, cfg, out=tmp_path / "full")
    token, events = CancelToken(), []

    def stop_in_second_epoch(ev):
        events.append(ev)
        if ev.stage == "phase2" and ev.epoch == 1 and not ev.epoch_end:
            token.cancel()

    with pytest.raises(Cancelled):
        train_classifier(run, curated, cfg, out=tmp_path / "cut", progress=stop_in_second_epoch, cancel=token,
                         tags={"mode": "clean"})
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "summary.json").exists()
    (cut,) = list_training_runs(tmp_path / "cut")  # listed as 1/3 (the folder's log), not 0/3
    assert cut.status == "interrupted" and (cut.epochs_done, cut.epochs) == (1, 3)
    other = Phase2Config(model=run.config.model, optim=OptimConfig(lr=1e-3, epochs=3, batch_size=16),
                         val_fraction=0.2)
    with pytest.raises(RunError, match="another config or curated set"):
        train_classifier(run, curated, other, out=tmp_path / "cut")
    events.clear()
    resumed = train_classifier(run, curated, cfg, out=tmp_path / "cut", progress=events.append,
                               tags={"mode": "clean"})
    assert min(e.epoch for e in events if e.stage == "phase2") == 1  # epoch 1 was not trained again
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["val_acc"] == b["val_acc"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert resumed.best_val_acc == full.best_val_acc and resumed.last_val_acc == full.last_val_acc
    np.testing.assert_array_equal(resumed.confusion, full.confusion)
    wa = load_file(str(tmp_path / "cut" / "model.safetensors"))
    wb = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wb)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # finished: a new run here starts afresh
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["tags"] == {"mode": "clean"} and summary["heldout"] == resumed.heldout
    assert [h["epoch"] for h in epoch_log(tmp_path / "cut")] == [1, 2, 3]  # the resumed run's whole curve


def test_training_below_zero_shot_is_said_with_the_zero_shot_accuracy_on_the_same_rows(tmp_path):
    """QA: 3 epochs on 300 images ended at 3.7% held out, below the CLIP it started from, with no warning."""
    from types import SimpleNamespace

    from deft.embeddings import Embeddings, save_embeddings
    from deft.training import Phase2Result, zeroshot_heldout_accuracy

    rng = np.random.default_rng(0)
    text = np.eye(3, 8, dtype=np.float32)
    truth = rng.integers(0, 3, 40)
    image = text[truth] + rng.normal(0, 0.1, (40, 8)).astype(np.float32)
    image[:4] = text[(truth[:4] + 1) % 3]  # zero-shot gets 4 of the first 20 wrong
    save_embeddings(tmp_path / "embeddings.safetensors", Embeddings(image, text, 100.0, "k", 32))
    run = SimpleNamespace(path=tmp_path, dataset=SimpleNamespace(N=40))
    rows = np.arange(20)
    assert zeroshot_heldout_accuracy(run, rows, truth[rows]) == pytest.approx(0.8)
    assert np.isnan(zeroshot_heldout_accuracy(SimpleNamespace(path=tmp_path, dataset=SimpleNamespace(N=41)),
                                              rows, truth[rows]))  # embeddings of other samples: no comparison
    res = Phase2Result(None, [], 0.037, 0.037, np.zeros((3, 3)), tmp_path, "", zeroshot_acc=0.8)
    assert "3.7% is below zero-shot CLIP's 80.0%" in res.below_zeroshot()
    assert Phase2Result(None, [], 0.9, 0.9, np.zeros((3, 3)), tmp_path, "", zeroshot_acc=0.8).below_zeroshot() == ""
    assert Phase2Result(None, [], 0.1, 0.1, np.zeros((3, 3)), tmp_path, "").below_zeroshot() == ""  # unknown
