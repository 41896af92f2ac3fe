"""The app's server-side layer without a browser: two tabs on one run, offline model error, export."""

import json

import pandas as pd
import pytest

from deft.review import StaleError
from deft.storage.export import EXPORT_COLUMNS
from deft.ui.workspace import AppSettings, Workspace

from .conftest import ROOT

DEMO = ROOT / "assets" / "demo"


def _ready(tmp_path, model) -> Workspace:
    ws = Workspace(AppSettings(data=str(DEMO), model=str(model), runs=tmp_path / "runs", device="cpu",
                               batch_size=64))
    ws.load(str(DEMO))
    job = ws.start_detect(str(model), False, 1)
    job.join(300)
    assert job.status == "done", job.error
    return ws


def test_two_tabs_stale_refused_and_undo_is_per_tab(tmp_path, tiny_clip_dir):
    ws = _ready(tmp_path, tiny_clip_dir)
    a, b = ws.queue("tab-a", "alice"), ws.queue("tab-b", "bob")
    item = a.current()
    sid = item["id"]
    assert b.current()["id"] == sid  # both tabs start on the worst suspect
    to_a, to_b = [c for c in ws.store.classes if c != item["label"]][:2]
    a.act(sid, item["version"], "relabel", to_a)
    with pytest.raises(StaleError):  # b acts on the version it saw: refused, nothing written
        b.act(sid, item["version"], "relabel", to_b)
    fresh = ws.store.sample(sid)
    b.act(sid, fresh["version"], "relabel", to_b)  # after seeing the new state, b may overrule
    assert ws.store.sample(sid)["final_label"] == to_b and ws.store.sample(sid)["decided_by"] == "bob"
    a.undo()  # tab a undoes *its* decision: b's later one stays
    assert ws.store.sample(sid)["final_label"] == to_b
    b.undo()
    assert ws.store.sample(sid)["status"] is None
    assert list(ws.store.log()["client"]) == ["tab-a", "tab-b", "tab-a", "tab-b"]


def test_sessions_do_not_share_datasets(tmp_path, cifar_small):
    from deft.ui.workspace import Workspaces

    reg = Workspaces(AppSettings(data=str(DEMO), runs=tmp_path / "runs", device="cpu"))
    reg.get("a").load(str(DEMO))
    reg.get("b").load(str(cifar_small))  # a second client loads another dataset
    assert reg.get("a").dataset.N == 400 and reg.get("b").dataset.N == 60


def test_restart_reopens_latest_detection_and_decisions(tmp_path, tiny_clip_dir):
    ws = _ready(tmp_path, tiny_clip_dir)
    item = ws.queue("t").current()
    sid = item["id"]
    ws.queue("t").act(sid, item["version"], "exclude")
    again = Workspace(ws.settings)
    again.load(str(DEMO))
    assert again.run is not None and again.store.sample(sid)["status"] == "excluded"
    csv, pq, df = again.export()
    assert list(pd.read_csv(csv).columns) == EXPORT_COLUMNS and len(pd.read_parquet(pq)) == 400


def test_unreachable_checkpoint_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = Workspace(AppSettings(data=str(DEMO), runs=tmp_path / "runs", device="cpu"))
    ws.load(str(DEMO))
    job = ws.start_detect("openai/clip-vit-base-patch16", False, 1)
    job.join(60)
    assert job.status == "error"
    assert job.error.startswith("Could not load the CLIP checkpoint 'openai/clip-vit-base-patch16'")
    assert job.error.count(". ") == 0 and job.error.endswith("--model ./clip.")  # one sentence


def test_detection_finishing_after_a_dataset_switch_does_not_attach(tmp_path, tiny_clip_dir, cifar_small):
    ws = Workspace(AppSettings(data=str(DEMO), runs=tmp_path / "runs", device="cpu"))
    ws.load(str(DEMO))
    job = ws.start_detect(str(tiny_clip_dir), False, 1)
    ws.load(str(cifar_small))  # switch while it runs (or right after)
    job.join(300)
    assert job.status == "done", job.error
    assert ws.dataset.source == str(cifar_small)
    assert ws.store is None or ws.store.count()["total"] == 60


def test_cli_export_sees_the_decisions_made_in_the_app(tmp_path, tiny_clip_dir):
    from deft.cli import main

    ws = _ready(tmp_path, tiny_clip_dir)
    q = ws.queue("t")
    item = q.current()
    sid = item["id"]
    to = next(c for c in ws.store.classes if c != item["label"])
    q.act(sid, item["version"], "relabel", to)
    out = tmp_path / "cli.csv"
    assert main(["export", str(ws.run.path), "--out", str(out)]) == 0
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert rows.loc[sid, "status"] == "relabelled" and rows.loc[sid, "final_label"] == to
    app_csv, _, _ = ws.export()
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(app_csv))


@pytest.mark.slow
def test_each_training_run_gets_its_own_folder_and_is_listed(tmp_path, tiny_clip_dir):
    from deft.ui.blocks import train_summary_md

    ws = _ready(tmp_path, tiny_clip_dir)
    assert ws.training_runs().empty
    for _ in range(2):
        job = ws.start_train("pseudo", 1)
        job.join(300)
        assert job.status == "done", job.error
    res = job.result
    assert res.out_dir == ws.run.phase2_dir / "002" and (ws.run.phase2_dir / "001" / "summary.json").is_file()
    table = ws.training_runs()
    assert list(table["run"]) == ["001", "002"] and set(table["mode"]) == {"pseudo"}
    assert list(table["epochs"]) == ["1/1", "1/1"] and table["last acc"].str.endswith("%").all()
    assert (table["held out on"] == res.heldout).all() and "curated rows held out at random" in res.heldout
    md = train_summary_md(res)
    assert "Held-out accuracy" in md and "Validation" not in md and "no test split" in md


@pytest.mark.slow
def test_detect_tab_curves_in_epochs_and_planted_errors_of_the_demo(tmp_path, tiny_clip_dir):
    ws = _ready(tmp_path, tiny_clip_dir)
    loss, clean = ws.detect_curves(ws.job)
    assert list(clean["epoch"]) == [1.0] and clean["clean fraction"].between(0, 1).all()
    per_step = loss.loc[loss["series"] == "loss per step", "epoch"]
    assert len(per_step) > 1 and per_step.max() == 1.0 and per_step.min() > 0  # x in epochs, not steps
    ws2 = Workspace(ws.settings)  # a reload: the curve comes from the run's log
    ws2.load(str(DEMO))
    assert ws2.detect_curves()[1].equals(clean)
    m = ws.planted_summary()  # the demo's PLANTED.csv lists 40 planted errors
    assert m is not None and m["n_planted"] == 40 and 0 <= m["caught"] <= min(40, m["n_suspects"])


def test_preview_advice_and_projected_time_on_a_cpu(tmp_path, tiny_clip_dir):
    ws = Workspace(AppSettings(data=str(DEMO), model=str(tiny_clip_dir), runs=tmp_path / "runs", device="cpu"))
    pre, why = ws.preview_advice("openai/clip-vit-base-patch16")
    assert pre and "No GPU" in why and "768" in why
    assert ws.preview_advice(str(tiny_clip_dir)) == (False, "")  # a tiny checkpoint: full DEFT is fine
    with pytest.raises(RuntimeError, match="load a dataset first"):
        ws.estimate_full_deft(str(tiny_clip_dir), 10)
    ws.load(str(DEMO))
    line = ws.estimate_full_deft(str(tiny_clip_dir), 10)
    # measured at the app's batch size (64): the run's 7 steps of 64 per epoch, not 400 images at an 8-image rate
    assert "400 images in 7 steps of 64 x 10 epochs" in line and "s per step measured" in line and "(cpu)" in line


def test_card_evidence_after_audit_nearest_clean_of_given_and_suggested_label(tmp_path, tiny_clip_dir):
    ws = _ready(tmp_path, tiny_clip_dir)
    item = ws.queue("tab-a").current()
    assert ws.evidence(item) is None  # no embeddings before the audit: the card says how to get them
    job = ws.start_audit()
    job.join(300)
    assert job.status == "done", job.error
    assert ws.evidence(item, k=3)[0][2] == []  # the tiny random checkpoint flags everything: nothing trusted yet
    q = ws.queue("tab-b")
    trusted = {}
    for cls in {item["label"], *(g.label for g in q.suggestions(item))}:  # a reviewer keeps two of each class
        for sid in ws.store.scores().query("label == @cls")["id"][:3]:
            if sid != item["id"] and len(trusted.setdefault(cls, [])) < 2:
                q.act(sid, ws.store.sample(sid)["version"], "keep")
                trusted[cls].append(sid)
    ev = ws.evidence(item, k=3)
    assert [role for role, _, _ in ev][0] == "given label" and ev[0][1] == item["label"]
    for _, label, near in ev:
        assert {n.sample_id for n in near} == set(trusted[label])  # only what a reviewer confirmed
        assert [n.similarity for n in near] == sorted((n.similarity for n in near), reverse=True)
    if len(ev) > 1:
        assert ev[1][1] != item["label"]  # the other class: the top suggestion, never the given label


def test_evidence_strip_html_says_how_to_get_it_then_shows_thumbnails(tmp_path, tiny_clip_dir):
    from deft.ui.evidence_strip import evidence_html

    ws = _ready(tmp_path, tiny_clip_dir)
    item = ws.queue("tab-a").current()
    assert "after <b>Audit</b>" in evidence_html(ws, item)
    job = ws.start_audit()
    job.join(300)
    assert job.status == "done", job.error
    assert "no trusted example of this class yet" in evidence_html(ws, item)
    q = ws.queue("tab-b")
    kept = [s for s in ws.store.scores().query("label == @item['label']")["id"] if s != item["id"]][:2]
    for sid in kept:
        q.act(sid, ws.store.sample(sid)["version"], "keep")
    out = evidence_html(ws, item)
    assert out.count("<figure>") >= 2 and all(f'alt="{s}"' in out for s in kept)
    assert f'data-sid="{item["id"]}"' in out and "/gradio_api/file=" in out


def test_evidence_rereads_the_store_only_after_a_decision_or_new_scores(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from deft.evidence import EvidenceIndex
    from deft.storage.store import ReviewStore

    ids = [f"s{i}" for i in range(6)]
    scores = pd.DataFrame({"id": ids, "label": ["cat", "cat", "dog", "dog", "dog", "cat"],
                           "is_clean": [True, True, True, True, False, False], "margin": np.linspace(-1, 1, 6)})
    img = np.eye(6, dtype=np.float32)
    img[4] = (img[4] + img[5]) / np.sqrt(2)  # s4 (labelled dog, flagged) looks like the card s5 (a cat)
    monkeypatch.setattr(EvidenceIndex, "for_run", lambda run: EvidenceIndex(pd.Series(ids), img))
    run = SimpleNamespace(path=tmp_path / "run", dataset=SimpleNamespace(samples=scores[["id", "label"]]))
    run.path.mkdir()
    (run.path / "embeddings.safetensors").write_bytes(b"x")  # only its stamp is read (for_run is stubbed)
    store = ReviewStore(tmp_path / "review.sqlite")
    store.load_scores(scores, ["cat", "dog"])
    reads = {"scores": 0, "current": 0}

    def counting(name):
        fn = getattr(store, name)

        def counted(*args):
            reads[name] += 1
            return fn(*args)
        return counted

    for name in reads:
        monkeypatch.setattr(store, name, counting(name))
    ws = Workspace(AppSettings(runs=tmp_path / "runs"), run=run, store=store)
    item = {"id": "s5", "label": "cat", "suggestion": "dog", "pred": "dog", "pred_conf": 0.9}  # a named source

    def near(label):
        return [n.sample_id for role, lab, ns in ws.evidence(item, k=5) if lab == label for n in ns]

    assert near("cat") == ["s0", "s1"] and near("dog") == ["s2", "s3"]
    assert reads == {"scores": 1, "current": 1}  # two cards, no decision in between: read once
    store.decide("s4", "relabel", "cat", client="t")  # a reviewer moves s4 to cat: evidence for cat now
    assert near("cat")[0] == "s4" and near("dog") == ["s2", "s3"]
    assert reads == {"scores": 1, "current": 2}  # the decisions again, not the samples table (1M rows)
    store.undo(client="t")  # an undo is a decision too
    assert near("cat") == ["s0", "s1"] and reads == {"scores": 1, "current": 3}
    store.load_scores(scores.assign(is_clean=[True, True, False, True, False, False]), ["cat", "dog"])
    assert near("dog") == ["s3"] and reads == {"scores": 2, "current": 4}  # new scores: read again


def test_sessions_on_an_audited_run_share_one_learning_queue(tmp_path, tiny_clip_dir):
    """Two sessions on one audited dataset: one QueueLearner (both reviewers feed it), the combined order and
    every sample by default, a refit started by the decisions (in the background) and the stopping rule."""
    import threading

    from deft.ui.workspace import Workspaces

    reg = Workspaces(AppSettings(data=str(DEMO), model=str(tiny_clip_dir), runs=tmp_path / "runs", device="cpu",
                                 batch_size=64, rerank_every=5))
    a = reg.get("a")
    a.load(str(DEMO))
    for start in (lambda: a.start_detect(str(tiny_clip_dir), False, 1), a.start_audit):
        job = start()
        job.join(600)
        assert job.status == "done", job.error
        if a.learner is None:  # detected, not audited yet: DEFT's suspects by margin
            assert a.queue_note() == "" and a.queue("before-audit").filter.suspects is True
            a.queue("before-audit").save_place()
    b = reg.get("b")
    b.load(str(DEMO))
    assert a.learner is not None and a.learner is b.learner
    qa, qb = a.queue("tab-a", "alice"), b.queue("tab-b", "bob")
    assert (qa.filter.suspects, qa.filter.order) == (None, "combined") and qa.size() == 400
    assert a.queue("before-audit").filter.suspects is True  # a reviewer from before the audit keeps its filter
    assert a.queue_note() == b.queue_note()
    assert "likely remain among the 400 unreviewed" in a.queue_note() and "re-ranked" not in a.queue_note()
    qb.show(a.store.query(suspects=None, order="combined", offset=10, limit=1)["id"].iloc[0])  # bob starts ahead
    for q, ws in ((qa, a), (qb, b), (qa, a), (qb, b), (qa, a)):  # 5 decisions from two reviewers
        item = q.current()
        q.act(item["id"], item["version"], "keep")
        ws.learn()
    for t in threading.enumerate():
        if t.name == "deft-rerank":
            t.join(60)
    assert a.store.get_meta("rank_error") is None
    report = json.loads(a.store.get_meta("rank_report"))
    assert report["decisions"] == 5 and report["unreviewed"] == 395
    note = b.queue_note()
    assert note.startswith("queue re-ranked after 5 decisions")
    assert "likely remain among the 395 unreviewed (ranking model " in note


def test_sessions_loading_at_once_import_and_fill_the_store_once(tmp_path, tiny_clip_dir, monkeypatch):
    """Issue 24: a browser's first page and its Review tab (no session id yet) each loaded the dataset, side by
    side: at 1M samples two imports and two 1M-row store loads on two cores (~100 s to the first card)."""
    import threading
    import time

    from deft.storage.store import ReviewStore
    from deft.ui.workspace import Workspaces

    _ready(tmp_path, tiny_clip_dir)  # a finished detection in tmp_path/runs; its review store is removed below
    for p in (tmp_path / "runs").glob("*/review.sqlite*"):
        p.unlink()
    calls = {"import": 0, "scores": 0}
    real_import, real_load = Workspace._verified_import, ReviewStore.load_scores

    def slow_import(self, source, root):
        calls["import"] += 1
        time.sleep(0.5)  # both sessions ask while the first import runs
        return real_import(self, source, root)

    def counted_load(self, scores, classes):
        calls["scores"] += 1
        time.sleep(0.5)
        return real_load(self, scores, classes)

    monkeypatch.setattr(Workspace, "_verified_import", slow_import)
    monkeypatch.setattr(ReviewStore, "load_scores", counted_load)
    reg = Workspaces(AppSettings(data=str(DEMO), runs=tmp_path / "runs", device="cpu"))
    errors: list[BaseException] = []

    def load(session: str) -> None:
        try:
            reg.get(session).load(str(DEMO))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(s,)) for s in ("page", "review-tab", "api")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and calls == {"import": 1, "scores": 1}
    cards = [reg.get(s).queue("c").current()["id"] for s in ("page", "review-tab", "api")]
    assert len(set(cards)) == 1 and reg.get("api").store.count()["total"] == 400
