"""The learning review queue: combined ranking, pooled suggestions, re-rank of the unseen queue only,
the simulator (`deft simulate`) on planted data, and the suggestion/batch fixes (issue 21)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deft.core import ranking as rk
from deft.learning import ORDER, QueueLearner, Signals, order_rows, rank_columns
from deft.review import ReviewFilter, ReviewQueue, suggestions
from deft.storage.store import ReviewStore, StaleError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
CLASSES = ["cat", "dog", "ship"]


# -- a synthetic store whose wrong labels a planted feature reveals --------------------------------------


def synthetic(n: int = 300, noise: float = 0.3, seed: int = 0):
    """Scores, signals and truth: ``planted`` separates wrong labels, every other signal is noise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    labels = truth.copy()
    wrong = rng.random(n) < noise
    labels[wrong] = (truth[wrong] + rng.integers(1, 3, wrong.sum())) % 3
    ids = np.array([f"s{i:04d}" for i in range(n)], dtype=object)
    names = np.asarray(CLASSES, dtype=object)
    scores = pd.DataFrame({"id": ids, "label": names[labels], "is_clean": rng.random(n) < 0.5,
                           "sim_pos": 0.3, "sim_neg": 0.3, "margin": rng.normal(size=n), "p_clean": 0.5,
                           "pred": names[truth], "pred_conf": 0.9})
    zs = np.full((n, 3), 0.1)
    zs[np.arange(n), truth] = 0.8
    sources = {"zeroshot": rk.topk(zs, labels), "prompts": rk.prompt_topk(truth, np.full(n, 0.9), labels, 3)}
    nn_idx = np.stack([(np.arange(n) + j) % n for j in (1, 2, 3)], axis=1)
    features = pd.DataFrame({"margin": scores["margin"], "noise": rng.normal(size=n),
                             "planted": np.where(labels != truth, 2.0, 0.0) + rng.normal(0, 0.3, n)})
    flags = rng.random((n, 2)) < 0.3  # the methods' verdicts: unrelated to the truth
    sig = Signals(ids, labels.astype(np.int64), CLASSES, features, sources, nn_idx,
                  np.full(nn_idx.shape, 0.5, np.float32), flags)
    return scores, sig, names[truth]


def fresh_store(tmp_path: Path, scores: pd.DataFrame, sig: Signals) -> ReviewStore:
    store = ReviewStore(tmp_path / "review.sqlite")
    model = rk.WrongLabelModel.unsupervised(sig.features.drop(columns="planted"), sig.flags)
    ranked = rank_columns(sig, model, rk.pool_suggestions(sig.sources, sig.labels, model.p_wrong))
    store.load_scores(scores.drop(columns=["suggestion"], errors="ignore").merge(ranked, on="id"), CLASSES)
    store.load_issues([], "", order_rows(ranked))
    return store


def oracle(q: ReviewQueue, truth: dict[str, str], n: int) -> int:
    """Review ``n`` cards as the simulator's oracle does; returns the wrong labels found."""
    found = 0
    for _ in range(n):
        item = q.current()
        q.save_place()
        t = truth[item["id"]]
        if t == item["label"]:
            q.act(item["id"], item["version"], "keep")
        else:
            found += 1
            q.act(item["id"], item["version"], "relabel", t)
    return found


def test_reviewer_model_learns_a_planted_signal_and_reranks_it_to_the_front(tmp_path):
    scores, sig, truth_names = synthetic()
    truth = dict(zip(sig.ids, truth_names, strict=True))
    store = fresh_store(tmp_path, scores, sig)
    q = ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="a", user="a")
    learner = QueueLearner(store, sig, rk.RankConfig(every=25, min_decisions=20))
    learner.prior = rk.WrongLabelModel(store.scores()["p_wrong"].to_numpy(), "methods agree")  # blind to it
    before = oracle(q, truth, 50) / 50
    report = learner.refit()
    assert report.decisions == 50 and report.moved > 0
    assert report.precision is not None and report.precision > 0.8
    after = oracle(q, truth, 50)
    assert before < 0.5  # the unsupervised order cannot see the planted signal
    # after the slack of 20 already-rendered places, the re-ranked part is (nearly) all wrong labels
    assert after >= 0.6 * 50, (before, after)
    assert learner.model.coef["planted"] > 1.0


def test_rerank_never_moves_the_cards_on_screen_or_decided(tmp_path):
    scores, sig, truth_names = synthetic()
    truth = dict(zip(sig.ids, truth_names, strict=True))
    store = fresh_store(tmp_path, scores, sig)
    a = ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="a", user="alice")
    b = ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="b", user="bob")
    oracle(a, truth, 30)
    b.show(store.query(suspects=None, order=ORDER, offset=60, limit=1)["id"].iloc[0])  # bob jumped ahead
    b.save_place()
    on_screen = {a.current()["id"], b.current()["id"]}
    a.save_place()
    before = store.query(suspects=None, order=ORDER, limit=-1)[["id", "s1"]]
    keys0 = dict(before.itertuples(index=False))
    order0 = before["id"].tolist()
    QueueLearner(store, sig, rk.RankConfig(every=25, min_decisions=20)).refit()
    after = store.query(suspects=None, order=ORDER, limit=-1)["id"].tolist()
    edge = max(order0.index(s) for s in on_screen) + 20  # every place up to bob's card + the slack
    assert after[: edge + 1] == order0[: edge + 1]
    assert {a.current()["id"], b.current()["id"]} == on_screen  # the cards on screen stay
    assert after != order0  # something after them was re-ranked
    for sid in after[: edge + 1]:  # and nothing shown had its suggestion changed
        assert store.sample(sid)["s1"] == keys0[sid]


def test_rerank_in_chunks_equals_one_transaction_and_spares_a_card_seen_meanwhile(tmp_path):
    scores, sig, _ = synthetic(120)
    for name in ("one", "chunks"):
        (tmp_path / name).mkdir()
    stores = [fresh_store(tmp_path / name, scores, sig) for name in ("one", "chunks")]
    ranked = stores[0].query(suspects=None, order=ORDER, limit=-1)
    new_order = ranked["id"].tolist()[::-1]  # reversed: every unseen sample moves
    values = ranked.set_index("id")[["p_wrong"]].assign(p_wrong=0.5)
    for store, chunk in zip(stores, (10_000, 7), strict=True):
        ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="a", user="alice").save_place()
        assert store.rerank(ORDER, new_order, values, slack=5, chunk=chunk) == 120 - 5
    one, chunks = (s.query(suspects=None, order=ORDER, limit=-1) for s in stores)
    assert chunks["id"].tolist() == one["id"].tolist() == new_order[-5:][::-1] + new_order[:-5]
    assert (chunks["p_wrong"].to_numpy()[5:] == 0.5).all()
    # a card a reviewer opens while the chunks are written keeps its place and its values
    store = stores[1]
    order0 = store.query(suspects=None, order=ORDER, limit=-1)["id"].tolist()
    late = order0[-30]  # 30th of the new order: its chunk comes after the second
    real_tx, calls = store._tx, []

    def tx():  # the second chunk's transaction: bob opened ``late`` just before it
        calls.append(1)
        if len(calls) == 2:
            bob = ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="b", user="bob")
            bob.show(late)
            bob.save_place()
        return real_tx()

    store._tx = tx
    moved = store.rerank(ORDER, order0[::-1], values.assign(p_wrong=0.25), slack=5, chunk=7)
    store._tx = real_tx
    after = store.query(suspects=None, order=ORDER, limit=-1)["id"].tolist()
    assert moved == 120 - 5 - 1 and after.index(late) == 5  # before every re-ranked sample, as before
    assert store.sample(late)["p_wrong"] == 0.5


def test_accept_refuses_a_suggestion_that_changed_since_it_was_shown(tmp_path):
    scores, sig, _ = synthetic(30)
    store = fresh_store(tmp_path, scores, sig)
    item = store.query(suspects=None, order=ORDER, limit=1).iloc[0]
    other = next(c for c in CLASSES if c not in (item["label"], item["suggestion"]))
    with pytest.raises(StaleError, match="suggestion changed"):
        store.decide(item["id"], "accept", other, expected_version=0)
    assert store.log().empty
    d = store.decide(item["id"], "accept", item["suggestion"], expected_version=0)
    assert d.label == item["suggestion"]


def test_pooled_suggestions_never_offer_the_given_label_and_name_their_sources():
    labels = np.array([0, 1, 2])
    zs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    probe = np.array([[0.5, 0.1, 0.4], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    sources = {"zeroshot": rk.topk(zs, labels), "probe": rk.topk(probe, labels)}
    s = rk.pool_suggestions(sources, labels, np.array([1.0, 0.5, 0.2]))
    assert (s.label != labels[:, None]).all()
    assert s.label[1, 0] == 2 and s.sources[1, 0] == "zero-shot CLIP + linear probe"
    assert s.label[0, 0] == 2 and s.sources[0, 0] == "linear probe"  # zero-shot's best other class is 1
    assert s.conf[1].sum() == pytest.approx(0.5)  # p_wrong x a distribution over the other classes
    assert s.conf[2].sum() == pytest.approx(0.2)


def test_source_weights_learn_which_source_the_reviewer_agrees_with():
    rng = np.random.default_rng(0)
    n, k = 200, 5
    truth = rng.integers(0, k, n)
    labels = (truth + 1) % k
    good = np.full((n, k), 0.05)
    good[np.arange(n), truth] = 0.8
    bad = rng.dirichlet(np.ones(k), n)
    w = rk.fit_source_weights({"zeroshot": rk.topk(good, labels), "probe": rk.topk(bad, labels)},
                              labels, np.arange(n), truth)
    assert w["zeroshot"] > w["probe"] + 0.5


def test_source_weights_judge_a_learning_source_by_what_it_said_before_each_correction():
    """A source fitted on the corrections (the mix-ups, the probe on reviewed labels) repeats them in-sample;
    seen out of sample (``held``) it is noise here, and must not outweigh the source that really knows."""
    rng = np.random.default_rng(0)
    n, k = 200, 5
    truth = rng.integers(0, k, n)
    labels = (truth + 1) % k
    good = np.full((n, k), 0.1)
    good[np.arange(n), truth] = 0.6
    parrot = np.full((n, k), 0.01)
    parrot[np.arange(n), truth] = 0.96
    sources = {"zeroshot": rk.topk(good, labels), "mixups": rk.topk(parrot, labels)}
    leaky = rk.fit_source_weights(sources, labels, np.arange(n), truth)
    assert leaky["mixups"] > leaky["zeroshot"]  # in-sample the parrot looks infallible
    held = {"mixups": rk.topk(rng.dirichlet(np.ones(k), n), labels)}
    fair = rk.fit_source_weights(sources, labels, np.arange(n), truth, held=held)
    assert fair["zeroshot"] > fair["mixups"] + 0.5


def test_leave_one_out_mixups_forget_the_correction_itself():
    counts = np.zeros((3, 3))
    counts[0, 2] = 1.0  # one correction: cat -> ship
    alone = rk.mixup_topk_loo(counts, np.array([0]), np.array([2]))
    assert np.allclose(alone.prob[0, :2], 0.5)  # without it, nothing says ship over dog
    counts[0, 2] = 5.0
    seen = rk.mixup_topk_loo(counts, np.array([0]), np.array([2]))
    assert seen.idx[0, 0] == 2 and seen.prob[0, 0] == pytest.approx(5 / 6)


def test_out_of_fold_probe_does_not_see_the_rows_it_predicts():
    rng = np.random.default_rng(1)
    n, K = 300, 3
    image = rng.normal(size=(n, 200))  # no signal at all: only memorising a row could predict its label
    labels = rng.integers(0, K, n)
    rows = np.arange(100)
    final = rng.integers(0, K, 100)
    probs = dict(C=1e4, max_rows=0)  # the reviewed rows alone
    inside = rk.reviewed_probe(image, labels, np.zeros(n), rows, final, K, **probs)
    oof = rk.reviewed_probe_oof(image, labels, np.zeros(n), rows, final, K, rows, **probs)
    assert (inside.idx[rows, 0] == final).mean() > 0.9
    assert (oof.idx[:, 0] == final).mean() < 0.6


def test_probe_on_reviewed_labels_learns_the_corrections_not_the_wrong_labels():
    """Given labels 45% wrong in two clusters whose wrong labels point the same way; the reviewer corrected
    60 of them. The probe on reviewed + trusted labels predicts the truth; one on every given label cannot."""
    rng = np.random.default_rng(0)
    n, K = 600, 3
    truth = rng.integers(0, K, n)
    image = np.eye(K)[truth] * 3.0 + rng.normal(0, 1.0, (n, K))
    labels = truth.copy()
    wrong = (truth == 0) & (rng.random(n) < 0.9)  # class 0 mostly labelled 1
    labels[wrong] = 1
    p_wrong = np.where(wrong, 0.8, 0.2) + rng.uniform(-0.1, 0.1, n)  # the ranking mostly knows
    rows = np.flatnonzero(wrong)[:60]
    src = rk.reviewed_probe(image, labels, p_wrong, rows, truth[rows], K)
    rest = np.setdiff1d(np.flatnonzero(wrong), rows)
    assert (src.idx[rest, 0] == 0).mean() > 0.9  # the truth, not the wrong label 1
    naive = rk.reviewed_probe(image, labels, np.zeros(n), np.array([], int), np.array([], int), K, trusted=1.0)
    assert (naive.idx[rest, 0] == 0).mean() < 0.5
    assert np.allclose(src.given, src.prob_of(labels[:, None])[:, 0], atol=1e-6)


def test_suggestions_name_the_source_they_came_from():
    item = {"label": "ship", "suggestion": "deer", "suggestion_conf": 0.6, "pred": "horse", "pred_conf": 0.9,
            "zs1": "deer", "zs1_conf": 0.6, "zs2": "horse", "zs2_conf": 0.3, "zs3": "ship", "zs3_conf": 0.1}
    got = suggestions(item)
    assert [(g.label, g.source, g.conf, g.action) for g in got[:2]] == [
        ("deer", "zero-shot CLIP", 0.6, "accept"), ("horse", "learned prompts", 0.9, "relabel")]


def test_batch_accept_applies_each_sources_own_label(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    store.load_scores(pd.DataFrame({
        "id": ["ship/img_031", "cat/1"], "label": ["ship", "cat"], "is_clean": [False, False],
        "margin": [-0.2, -0.1], "pred": ["horse", "dog"], "pred_conf": [0.95, 0.3],
        "zs1": ["deer", "dog"], "zs1_conf": [0.5, 0.9], "suggestion": ["deer", "dog"],
        "suggestion_conf": [0.5, 0.9]}), ["cat", "deer", "dog", "horse", "ship"])
    q = ReviewQueue(store)
    items = q.batch_candidates(0.9, "learned prompts")
    assert items == [("ship/img_031", 0, "relabel", "horse")]  # the prompts said horse, not zero-shot's deer
    res = q.apply_many(items, "accept")
    assert [d.label for d in res.applied] == ["horse"]
    assert q.batch_candidates(0.9, "zero-shot CLIP") == [("cat/1", 0, "accept", "dog")]


# -- the simulator on a real (tiny) run of the bundled demo -------------------------------------------------


def deft(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deft", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, check=False)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_clip_dir) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    r = deft("detect", DEMO, "--model", tiny_clip_dir, "--out", out, "--preset", "preview", "--epochs", 1,
             "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = deft("audit", out, "--no-projection", "--no-data-issues", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_simulate_cli_reports_every_budget_and_leaves_the_run_untouched(demo_run, tmp_path):
    out = tmp_path / "sim.json"
    r = deft("simulate", demo_run, "--budget", "20,40", "--every", "10", "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["errors_total"] == 40 and res["learn"] and [b["budget"] for b in res["budgets"]] == [20, 40]
    for b in res["budgets"]:
        assert b["cards"] == b["budget"] and 0 <= b["errors_found"] <= b["cards"]
        assert b["true_remaining"] == 40 - b["errors_found"] and b["estimated_remaining"] >= 0
        assert set(b) >= {"precision", "one_key_rate", "top3_rate"}
    assert "queue re-ranked from" in res["last_rerank"]
    assert not (demo_run / "review.sqlite").exists()  # a scratch store, never the run's
    r = deft("simulate", demo_run, "--order", "cleanlab", "--no-learn", "--budget", "10")
    assert r.returncode == 0 and "cleanlab" in r.stdout


@pytest.mark.slow
def test_simulate_with_a_planted_signal_learns_to_find_it(demo_run, tmp_path):
    """The real simulator on a run whose signals file gains a feature that reveals the planted errors."""
    from deft.audit import true_labels
    from deft.simulate import SimConfig, simulate
    from deft.storage.run import Run

    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    run = Run.open(run_dir)
    ids = run.scores()["id"].astype(str).to_numpy()
    sig = Signals.load(run_dir / "signals.safetensors", ids)
    truth = dict(zip(run.dataset.samples["id"].astype(str), true_labels(run), strict=True))
    wrong = np.array([truth[i] != lab for i, lab in zip(ids, run.scores()["label"], strict=True)])
    rng = np.random.default_rng(0)
    sig.features["planted"] = wrong * 2.0 + rng.normal(0, 0.3, len(ids))
    sig.save(run_dir / "signals.safetensors")
    cfg = dict(budgets=(30, 90), order="combined")
    learned = simulate(run_dir, SimConfig(**cfg, learn=True, rank=rk.RankConfig(every=10, min_decisions=10)))
    fixed = simulate(run_dir, SimConfig(**cfg, learn=False))
    # the unsupervised prior (fit on the methods' agreement) may use the feature too; learning must at least
    # find most of the 40 planted errors within 90 cards
    assert learned["budgets"][1]["errors_found"] >= 30, learned
    assert learned["budgets"][1]["errors_found"] >= fixed["budgets"][1]["errors_found"]


@pytest.mark.slow
def test_learner_suggests_from_a_probe_on_the_reviewers_labels(demo_run, tmp_path):
    from deft.audit import true_labels
    from deft.learning import load_learner
    from deft.simulate import _store
    from deft.storage.run import Run

    run = Run.open(demo_run)
    store = _store(run, tmp_path / "review.sqlite", "combined")
    learner = load_learner(store, demo_run, rk.RankConfig(every=10, min_decisions=10))
    assert learner.image is not None and learner.image.shape[0] == len(learner.signals.ids)
    truth = dict(zip(run.dataset.samples["id"].astype(str), true_labels(run), strict=True))
    q = ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="a", user="a")
    oracle(q, truth, 60)
    seen = {}
    real = rk.reviewed_probe

    def spy(*a, **kw):
        seen["rows"] = len(a[3])
        return real(*a, **kw)

    rk.reviewed_probe = spy
    try:
        learner.refit()
    finally:
        rk.reviewed_probe = real
    assert seen["rows"] == 60  # fitted on every decided card (kept and corrected)


def test_simulate_refuses_a_run_without_ground_truth(tmp_path, demo_run):
    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(DEMO, data)
    (data / "PLANTED.csv").unlink()
    meta["root"] = str(data)
    (run_dir / "run.json").write_text(json.dumps(meta))
    r = deft("simulate", run_dir, "--budget", "10")
    assert r.returncode != 0 and "no ground truth" in r.stderr + r.stdout


def test_rerank_of_a_large_queue_writes_only_its_head_and_keeps_every_sample(tmp_path):
    """Issue 24: at 1M samples a re-rank wrote every unseen sample (~4 minutes of writes, keys waiting behind
    them). With ``head`` it writes the first ``head`` unseen samples of the new order, then those an earlier
    head placed; every other sample keeps its place after them."""
    scores, sig, _ = synthetic(300)
    store = fresh_store(tmp_path, scores, sig)
    ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="a", user="alice").save_place()
    order0 = store.query(suspects=None, order=ORDER, limit=-1)["id"].tolist()
    values = store.query(suspects=None, order=ORDER, limit=-1).set_index("id")[["p_wrong"]]
    new = order0[::-1]  # reversed: the old tail comes first
    assert store.rerank(ORDER, new, values.assign(p_wrong=0.5), slack=5, head=20) == 20
    after = store.query(suspects=None, order=ORDER, limit=-1)
    ids = after["id"].tolist()
    head = [s for s in new if s not in order0[:5]][:20]
    assert ids[:5] == order0[:5] and ids[5:25] == head  # the kept places, then the new head
    assert ids[25:] == [s for s in order0[5:] if s not in head]  # the rest as it was
    assert (after["p_wrong"].to_numpy()[5:25] == 0.5).all() and (after["p_wrong"].to_numpy()[25:] != 0.5).all()

    # a second re-rank (the reviewer moved on 10 cards): its head, then the first head's leftovers, then the rest
    q = ReviewQueue(store, ReviewFilter(suspects=None, order=ORDER), client="a", user="alice")
    q.move(10)
    q.save_place()
    order1 = ids
    kept = order1[: order1.index(q.current()["id"]) + 6]  # through the card on screen and the 5 after it
    newer = sorted(order1, key=lambda s: (s not in order1[100:130], order1.index(s)))  # 30 from the rest first
    moved = store.rerank(ORDER, newer, values.assign(p_wrong=0.25), slack=5, head=20)
    ids2 = store.query(suspects=None, order=ORDER, limit=-1)["id"].tolist()
    head2 = [s for s in newer if s not in kept][:20]
    leftovers = [s for s in newer if s in head and s not in kept and s not in head2]
    assert moved == len(head2) + len(leftovers) <= 40
    assert ids2[: len(kept)] == kept and ids2[len(kept): len(kept) + len(head2)] == head2
    assert ids2[len(kept) + len(head2): len(kept) + len(head2) + len(leftovers)] == leftovers
    assert sorted(ids2) == sorted(order0) and len(set(ids2)) == 300  # nothing lost or doubled

    # a small queue (fewer than twice the head unseen) is re-ranked whole, as before
    assert store.rerank(ORDER, newer, values, slack=5, head=200) == 300 - len(kept)
