"""The app's pure view functions (deft/ui/views.py), without a browser or a Gradio server."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from deft.core.progress import ProgressEvent
from deft.core.ranking import remaining_estimate
from deft.storage.store import BatchResult, Decision, ReviewStore, score_summary
from deft.ui import views


def _job(status="running", name="detection", last=None, epochs=()):
    return SimpleNamespace(name=name, status=status, error="CUDA out of memory <oops>",
                           snapshot=lambda: (last or {}, [], list(epochs)))


def _scores():
    return pd.DataFrame({"label": ["cat", "cat", "cat", "dog", "dog", "dog", "dog", "dog"],
                         "is_clean": [True, True, False, True, False, False, True, True],
                         "margin": [0.3, 0.2, -0.1, 0.27, -0.2, -0.15, 0.12, 0.4]})


def test_progress_line_running_done_failed_cancelled_and_starting():
    ev = ProgressEvent("phase1", step=25, steps=100, epoch=1, epochs=5, images_per_s=812.4, eta_s=33.2)
    out = views.progress_html(_job(last={"phase1": ev}))
    assert 'style="width:25.0%"' in out
    assert ">detection: running · stage phase1 · epoch 2/5 · step 25/100 · 812 img/s · ETA 33s</p>" in out
    done = views.progress_html(_job("done", last={"phase1": ev}))
    assert 'style="width:100.0%"' in done and "ETA" not in done and "detection: done" in done
    assert views.progress_html(_job("error")) == "<p><b>detection failed:</b> CUDA out of memory &lt;oops&gt;</p>"
    assert "cancelled. Run again to resume" in views.progress_html(_job("cancelled"))
    assert views.progress_html(_job()) == "<p>detection: starting (loading model)…</p>"
    assert views.progress_html(None) == ""


def test_job_outcome_replaces_started_and_cancelling():
    def job(status, name="detection", took=3.24):
        return SimpleNamespace(name=name, status=status, started=100.0, finished=100.0 + took)
    assert views.job_outcome(job("done")) == "Detection finished after 3.2 s."
    assert views.job_outcome(job("cancelled", "training", 58.4)) == "Training cancelled after 58 s."
    assert views.job_outcome(job("error", "audit")) == "**⚠ Audit failed** (the reason is below)."


def test_suspect_rates_per_class():
    rate = views.suspect_rates(score_summary(_scores()))
    assert list(rate.columns) == ["class", "suspect_rate"]
    assert dict(zip(rate["class"], rate["suspect_rate"], strict=True)) == pytest.approx({"cat": 1 / 3, "dog": 2 / 5})


def test_margin_histogram_splits_clean_and_suspect_on_shared_bins():
    hist = views.margin_histogram(score_summary(_scores(), bins=4))
    assert list(hist.columns) == ["margin", "count", "kind"] and len(hist) == 8
    clean, sus = hist[hist["kind"] == "clean"], hist[hist["kind"] == "suspect"]
    assert clean["count"].sum() == 5 and sus["count"].sum() == 3
    assert clean["margin"].tolist() == sus["margin"].tolist()  # same bins for both
    assert sus["count"].tolist() == [3, 0, 0, 0]  # bins of 0.15 from -0.2: all suspects below -0.05
    assert clean["count"].tolist() == [0, 0, 2, 3]  # 0.12, 0.2 | 0.27, 0.3, 0.4 (the maximum is counted)
    assert np.all(np.diff(clean["margin"]) > 0)


def test_detect_summary_counts_and_warns_when_almost_all_flagged():
    msg = views.detect_summary(score_summary(_scores()), Path("runs/demo"))
    assert msg.startswith("### 3 suspects of 8 samples (37.5%)") and "`runs/demo`" in msg
    assert "Almost every sample" not in msg
    noisy = _scores().assign(is_clean=False)
    assert "Almost every sample is flagged" in views.detect_summary(score_summary(noisy), "r")


def test_counter_and_lines():
    assert views.counter_html({"reviewed": 3, "suspects": 12}, 4, 10) == (
        "<b>Reviewed 3 / 12 suspects</b> · item 4 of 10 in this view")
    assert "item – of 10 in this view" in views.counter_html({"reviewed": 3, "suspects": 12}, None, 10)
    assert views.map_open_line("a/1.png", []) == "Opened a/1.png from the Map; your filters are unchanged."
    assert views.map_open_line("a/1.png", [("Class", "cat", "any"), ("Status", "pending", "any")]) == (
        "Opened a/1.png from the Map. It is outside your filters, so this changed: Class cat → any; "
        "Status pending → any.")
    d = Decision(seq=7, sample_id="truck/img_028", action="accept", label="ship", at="t")
    assert views.decision_line(d) == "accepted -> ship for truck/img_028 (u to undo)"
    assert views.undo_line([]) == "Nothing to undo."
    assert views.undo_line([d]) == "Undid: accepted -> ship for truck/img_028."
    assert views.undo_line([d, d]).startswith("Undid a batch of 2 decisions")
    res = BatchResult(batch=1, applied=[d, d], stale=["a"], refused=[("b", "no <such> label")])
    assert views.batch_line(res, "Accepted") == (
        "Accepted 2 sample(s) as one batch (u undoes the whole batch); 1 skipped because they changed since "
        "they were shown; 1 refused (no &lt;such&gt; label).")


def test_queue_note_reports_the_rerank_and_the_stopping_rule():
    assert views.queue_note(None, None) == ""  # before an audit
    alone = remaining_estimate(12.4, None, 400)  # no DEFT verdicts: the model's count alone
    assert views.queue_note(None, alone) == "about 12 wrong labels likely remain among the 400 unreviewed"
    report = {"decisions": 125, "source": "your 125 decisions", "precision": 0.93, "holdout": 25, "moved": 300,
              "remaining": 40.2, "unreviewed": 9875, "weights": {}}  # a report written before remaining_model
    note = views.queue_note(report, remaining_estimate(900.0, 1600, 9875))
    assert note == ("queue re-ranked from your 125 decisions; precision 93% on 25 held-out decisions · "
                    "about 1,200 wrong labels likely remain among the 9,875 unreviewed "
                    "(ranking model 900, DEFT's suspects 1,600)")
    early = views.queue_note(report | {"decisions": 5, "source": "methods <agree>", "precision": None}, None)
    assert early.startswith("queue re-ranked after 5 decisions (ranked by methods &lt;agree&gt;")
    line = views.counter_html({"reviewed": 3, "suspects": 12}, 4, 10, note)
    assert line.endswith(f'<br><span id="queue-note">{note}</span>')


def test_stopping_rule_is_the_geometric_mean_of_the_model_and_deft():
    est = remaining_estimate(900.0, 1600, 9875)
    assert est.point == pytest.approx(1200.0) and (est.low, est.high) == (900.0, 1600.0)
    # DEFT flags none of the unreviewed (all its suspects reviewed) or the run has none: the model alone
    assert remaining_estimate(30.0, 0, 50).point == 30.0 and remaining_estimate(30.0, None, 50).point == 30.0
    assert remaining_estimate(-1.0, 10, 50).point == 0.0


def test_parse_bound():
    assert views.parse_bound(" 0.25 ") == 0.25 and views.parse_bound("") is None and views.parse_bound(None) is None
    with pytest.raises(ValueError, match="margin bound must be a number"):
        views.parse_bound("abc")


def _item(**kw):
    item = {"id": "cat/1.png", "label": "cat", "status": "pending", "version": 3, "sim_pos": 0.21, "sim_neg": 0.25,
            "margin": -0.04, "pred": "dog", "pred_conf": 0.8, "suggestion": "dog", "suggestion_conf": 0.8,
            "zs1": "dog", "zs1_conf": 0.7, "zs2": "fox", "zs2_conf": 0.2, "zs3": "cat", "zs3_conf": 0.1}
    return item | kw


def test_card_html_carries_sample_version_and_suggestions():
    out = views.card_html(_item())
    assert '<div id="card" data-sid="cat/1.png" data-ver="3">' in out
    assert 'id="btn-s1" data-act="accept" data-label="dog"' in out
    assert 'id="btn-s2" data-act="relabel" data-label="fox"' in out
    assert "btn-s3" not in out  # the given label is never suggested
    assert '<b id="card-status">pending</b>' in out and "<b>-0.040</b>" in out
    decided = views.card_html(_item(status="relabelled", final_label="fox", decided_by="ann<"))
    assert "→ <b>fox</b>" in decided and 'by <b id="card-by">ann&lt;</b>' in decided
    assert "card-pwrong" not in out  # no combined probability before an audit
    combined = views.card_html(_item(p_wrong=0.87, s1="fox", s1_conf=0.6, s1_src="zero-shot CLIP + <x>",
                                         s2="dog", s2_conf=0.2, s2_src="learned prompts"))
    assert '<b id="card-pwrong">87%</b>' in combined
    assert ('data-label="fox">1: relabel <b>fox</b> (60%) <span class="src">zero-shot CLIP + &lt;x&gt;</span>'
            in combined)
    assert 'id="btn-s2" data-act="accept" data-label="dog"' in combined  # dog is the sample's suggestion
    assert views.card_html(None) == ('<div id="card" data-sid="" data-ver=""><p>Nothing matches this filter.'
                                         '</p></div>')


def test_recent_list():
    rows = pd.DataFrame([{"seq": 5, "at": "12:00", "sample_id": "cat/1.png", "action": "relabel", "label": "fox",
                          "undoes": None},
                         {"seq": 6, "at": "12:01", "sample_id": "cat/1.png", "action": "undo", "label": None,
                          "undoes": 5}])
    out = views.recent_html(rows)
    assert "<li>#5 12:00 · <code>cat/1.png</code> relabel → fox</li>" in out
    assert "<li>#6 12:01 · <code>cat/1.png</code> undo of #5</li>" in out
    assert views.recent_html(pd.DataFrame()) == ""


def test_job_curves_and_confusion():
    curves = views.job_curves([{"epoch": 1, "loss": 0.9, "val_acc": 0.5}, {"epoch": 2, "loss": 0.4, "val_acc": 0.7}])
    assert curves["series"].tolist() == ["train loss"] * 2 + ["held-out accuracy"] * 2
    assert curves["value"].tolist() == [0.9, 0.4, 0.5, 0.7]
    assert views.job_curves([]) is None
    cm = views.confusion_frame([[3, 1], [0, 4]], ["cat", "dog"])
    assert cm.columns.tolist() == ["label", "cat", "dog"] and cm.loc["dog", "dog"] == 4


def test_dataset_summary_and_audit_absent():
    ds = SimpleNamespace(N=12, K=2, source="assets/demo", issues=pd.DataFrame({"path": ["x"], "problem": ["bad"]}),
                         warnings=["'Ship' vs 'ship'"])
    msg = views.dataset_summary(ds, Path("runs/r1"))
    assert msg.startswith("**12 images, 2 classes** from `assets/demo`; 1 file(s) excluded.")
    assert "⚠ &#x27;Ship&#x27; vs &#x27;ship&#x27;" in msg and "loaded from `runs/r1`" in msg
    assert views.audit_texts(None, None) == ("", None, "", None, None)
    hint = views.audit_texts(None, Path("runs/r1"))
    assert hint[0].startswith("No audit yet") and hint[0] == hint[2]


def test_map_html_and_note():
    pts = pd.DataFrame({"id": ["a/1", "b/2", "a/3"], "label": ["a", "b", "a"], "kind": ["ok", "suspect", "blurry"],
                        "x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 0.5]})
    out = views.map_html(pts, 10, ["a", "b"])
    assert out.count('class="pt"') == 1 and out.count('class="pt flag"') == 2
    assert 'data-points="3" data-total="10"' in out and "3 of 10 points" in out
    assert 'stroke="#dc2626"' in out and 'stroke="#f59e0b"' in out
    assert views.map_note(3, 10).endswith("then a random sample of the rest).")
    assert "Showing" not in views.map_note(10, 10)


def test_job_timers_share_one_dedupe_each_with_its_own_seen_map():
    from deft.ui.handlers import Handlers

    ws = SimpleNamespace(job=None)
    h = Handlers(SimpleNamespace(settings=None, get=lambda sid: ws), SimpleNamespace())
    assert h.job_news("", h.seen) == (None, None) and h.job_news("s1", h.seen) == (ws, None)  # no session / job
    ws.job = SimpleNamespace(name="detection", status="running", running=True)
    assert [h.job_news("s1", h.seen)[1] for _ in range(2)] == [ws.job, ws.job]  # running: every tick
    ws.job.status, ws.job.running = "done", False
    assert h.job_news("s1", h.seen) == (ws, ws.job) and h.job_news("s1", h.seen) == (ws, None)  # done: once
    assert h.job_news("s1", h.audit_seen)[1] is ws.job  # the other timer shows it once too
    assert h.job_news("s1", h.audit_seen)[1] is None and h.job_news("s2", h.seen)[1] is ws.job  # per session
    ws.job = SimpleNamespace(name="audit", status="done", running=False)  # a new job, same status: new
    assert h.job_news("s1", h.seen)[1] is ws.job and h.job_news("s1", h.seen)[1] is None


def test_filter_choices_label_the_no_constraint_choice():
    """Issue 19, item 24: the Status and Class "all" choices showed as a blank row (value "", label "")."""
    choices = views.filter_choices(["pending", "kept"])
    assert choices[0] == ("all", "") and ("pending", "pending") in choices
    assert all(label.strip() for label, _ in choices)
    assert views.filter_choices([], "any") == [("any", "")]


def test_train_curve_is_one_tick_per_epoch_and_a_resumed_run_draws_from_epoch_1():
    """Issue 19, item 24: a resumed run's curve started at epoch 3 (only the resumed job's epochs) on a number axis
    with ticks 1.00, 1.05. The epochs of the run folder's log come first, the job's replace them, and the x values
    are epoch numbers as text, drawn in numeric order."""
    logged = [{"epoch": e, "loss": 1.0 / e, "val_acc": 0.1 * e} for e in (1, 2)]
    job = [{"epoch": e, "loss": 0.1, "val_acc": 0.5} for e in (2, 3, 10, 9)]
    epochs = views.merge_epochs(logged, job)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 9, 10] and epochs[1]["loss"] == 0.1
    curve = views.job_curves(epochs)
    assert curve["epoch"].tolist()[:5] == ["1", "2", "3", "9", "10"]
    assert views.epoch_order(curve) == ["1", "2", "3", "9", "10"] and views.epoch_order(None) == []


def test_a_past_training_run_is_described_after_a_reload(tmp_path):
    from deft.storage.train_runs import TrainingRun

    done = TrainingRun(tmp_path / "001", "pseudo", 2, 2, 0.5, 0.625, "12 curated rows <held out>", "finished")
    md = views.training_run_md(done)
    assert "last **50.00%**, best **62.50%**" in md and "`001` (pseudo, 2/2 epochs)" in md and "&lt;held" in md
    cut = TrainingRun(tmp_path / "002", "clean", 2, 6, float("nan"), float("nan"), "", "interrupted")
    assert "interrupted after 2/6 epochs" in views.training_run_md(cut) and "resume at epoch 3" in \
        views.training_run_md(cut)


def test_reviewer_name_without_login_and_the_login_first():
    """Issue 19, item 19: without --auth the name a browser gives is who decides (tidied); a login wins."""
    from deft.ui.handlers import clean_name, user_of

    assert clean_name("  Ben\tOkafor \n") == "Ben Okafor" and clean_name(None) == ""
    assert clean_name("x" * 100) == "x" * 40 and clean_name("a\x00b") == "a b"
    assert user_of(SimpleNamespace(username=None), "Ana") == "Ana"
    assert user_of(SimpleNamespace(username=None), "") == "local" and user_of(None) == "local"
    assert user_of(SimpleNamespace(username="lee"), "Ana") == "lee"


def test_the_name_field_is_shown_only_without_a_login(tmp_path):
    """Issue 19, item 19: with --auth the login names the reviewer; the name field and its note are not shown."""
    from deft.ui.blocks import build
    from deft.ui.workspace import AppSettings, Workspaces

    reg = Workspaces(AppSettings(data=str(tmp_path), model="none", runs=tmp_path / "runs", device="cpu"))
    for login in (False, True):
        demo, _ = build(reg, login=login)
        box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "reviewer-box")
        assert box.visible is (not login)


def test_a_batch_that_applied_nothing_does_not_offer_to_undo_it():
    """QA: "Accepted 0 sample(s) as one batch (u undoes the whole batch); 3 skipped ..." and then u undid an
    older decision: a batch that applied nothing is not recorded, so the line must not promise to undo it."""
    line = views.batch_line(BatchResult(None, [], ["a", "b", "c"]), "Accepted")
    assert "0 sample" not in line and "undoes the whole batch" not in line and "3 skipped" in line
    assert "no batch was recorded" in line
    one = Decision(1, "a", "accept", "dog", "t", batch=4)
    assert "u undoes the whole batch" in views.batch_line(BatchResult(4, [one], []), "Accepted")


def test_a_decision_for_a_session_the_server_did_not_open_is_refused(tmp_path):
    """Issue 22: the API's /decide (and the lean route) for a made-up session created a workspace (pushing a
    reviewer's out of the registry) and imported the server's dataset. It is refused with a sentence; nothing is
    created or imported. A bad version is refused before anything else, as before."""
    from deft.ui.handlers import ReviewHandlers
    from deft.ui.workspace import AppSettings, Workspaces

    reg = Workspaces(AppSettings(data=str(tmp_path / "never-read"), runs=tmp_path / "runs"))
    names = ("card", "counter", "review_msg", "zoom_box", "relabel_dd")
    h = ReviewHandlers(reg, SimpleNamespace(review=SimpleNamespace(**{k: k for k in names})))
    got = json.loads(h.api_decide("made-up", "c", "cat/1.png", 0, "keep", "", None))
    assert got["status"] == "error" and "reload the page" in got["message"], got
    lean = h.lean({"op": "act", "session": "made-up", "client": "c", "sample_id": "cat/1.png", "version": 0,
                   "action": "keep"}, None)
    assert json.loads(lean["result"])["status"] == "error" and "reload the page" in lean["msg"]
    assert "whole number" in json.loads(h.api_decide("made-up", "c", "x", [1], "keep", "", None))["message"]
    assert reg.find("made-up") is None and not (tmp_path / "runs").exists()


def test_detect_tab_summary_is_kept_with_the_scores(tmp_path):
    """Issue 24: the Detect tab read the samples table at every page load (seconds of the server at 1M): the
    store keeps its summary from the load of the scores, and makes it once for a store that has none."""
    df = _scores().assign(id=[f"s{i}.png" for i in range(8)])
    store = ReviewStore(tmp_path / "review.sqlite")
    store.load_scores(df, ["cat", "dog"])
    assert store.score_summary() == score_summary(df) and store.score_summary()["suspects"] == 3
    store.set_meta("score_summary", "")  # as in a store loaded before the summary was kept
    assert store.score_summary() == score_summary(df) and store.get_meta("score_summary")
