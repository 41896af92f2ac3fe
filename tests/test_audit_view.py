"""The app's view of an audit: metrics table, issue counts and filter masks, map points (downsampling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deft.audit_view import conflict_line, issue_counts, issue_mask, map_points, methods_table


def _table(n: int = 6) -> pd.DataFrame:
    t = pd.DataFrame({"id": [f"c/{i}.png" for i in range(n)]})
    t["deft_issue"] = [True, False, False, False, False, False][:n]
    t["zeroshot_issue"] = [False, True, False, False, False, False][:n]
    t["near_duplicate"] = [False, False, True, True, False, False][:n]
    t["near_dup_label_conflict"] = [False, False, True, True, False, False][:n]
    t["exact_duplicate"] = False
    t["exact_dup_label_conflict"] = False
    t["outlier"] = [False, False, False, False, True, False][:n]
    t["class_outlier"] = False
    t["blurry"] = [False, False, False, False, False, True][:n]
    return t


def test_issue_masks_and_counts():
    t = _table()
    assert issue_mask(t, "near duplicate").tolist() == [False, False, True, True, False, False]
    assert issue_mask(t, "outlier").sum() == 1 and issue_mask(t, "blurry")[5]
    assert not issue_mask(t, "dark").any()  # a column the audit did not write: nothing matches
    with pytest.raises(ValueError, match="unknown data issue"):
        issue_mask(t, "fuzzy")
    c = issue_counts(t).set_index("issue")["samples"]
    assert c["duplicate with a different label"] == 2 and c["exact duplicate"] == 0 and "dark" not in c
    assert "⚠ 2 samples" in conflict_line(issue_counts(t))
    assert conflict_line(issue_counts(t.assign(near_dup_label_conflict=False))) == ""


def test_methods_table_and_no_truth():
    assert methods_table(None) is None
    m = methods_table({"deft": {"precision": 0.91234, "recall": 0.8, "f1": 0.85, "auroc": 0.9, "n": 10},
                       "zeroshot": {"precision": 0.5, "recall": 0.4, "f1": 0.44, "auroc": 0.6}})
    assert list(m.columns) == ["method", "precision", "recall", "F1", "AUROC"]
    assert m["method"].tolist() == ["deft", "zeroshot"] and m["precision"][0] == 0.9123


def test_map_points_kinds_and_train_rows_only():
    t = _table()
    proj = pd.DataFrame({"id": [*t["id"], "test/held.png"], "x": np.arange(7.0), "y": np.arange(7.0)})
    labels = pd.Series(["a"] * 7, index=proj["id"])
    pts, total = map_points(proj, t, labels)
    assert total == 6 and "test/held.png" not in set(pts["id"])  # held-out rows are not reviewable
    assert pts["kind"].tolist() == ["suspect", "suspect", "duplicate with a different label",
                                    "duplicate with a different label", "outlier", "blurry"]
    assert (pts["label"] == "a").all()


def test_map_downsamples_keeping_flagged_points():
    n = 20000
    ids = [f"x/{i}" for i in range(n)]
    t = pd.DataFrame({"id": ids, "deft_issue": np.arange(n) % 100 == 0})
    proj = pd.DataFrame({"id": ids, "x": np.random.default_rng(0).normal(size=n), "y": 0.0})
    pts, total = map_points(proj, t, pd.Series("a", index=ids), max_points=1000)
    assert total == n and len(pts) == 1000
    assert (pts["kind"] == "suspect").sum() == 200  # every suspect kept
    assert pts["id"].is_unique


def test_names_match_the_audit_modules():
    from deft import audit_view
    from deft.core import baselines, data_issues

    assert audit_view.METHODS == baselines.METHODS and audit_view.IMAGE_PROBLEMS == data_issues.IMAGE_PROBLEMS


def test_load_audit_reads_the_run_folder(tmp_path):
    from deft.audit_view import load_audit

    assert load_audit(tmp_path) is None  # not audited yet
    _table().to_parquet(tmp_path / "audit.parquet")
    (tmp_path / "metrics.json").write_text('{"precision": 1.0}')  # DEFT's own metrics only: no methods table
    v = load_audit(tmp_path)
    assert len(v.table) == 6 and v.metrics is None and v.projection is None and v.class_report is None
    (tmp_path / "metrics.json").write_text('{"methods": {"deft": {"precision": 1.0}}}')
    assert load_audit(tmp_path).metrics == {"deft": {"precision": 1.0}}


def test_review_filter_on_a_data_issue(tmp_path):
    """The Review queue restricted to one data issue: count, order, navigation, grid page, saved place."""
    from deft.audit_view import issue_rows
    from deft.review import ReviewFilter, ReviewQueue
    from deft.storage.store import ReviewStore

    from .test_store import CLASSES, fake_scores

    sc = fake_scores()  # 12 samples, margins ascending, the first 6 suspects
    store = ReviewStore(tmp_path / "review.sqlite")
    store.load_scores(sc, CLASSES)
    t = pd.DataFrame({"id": sc["id"], "blurry": [i in (1, 4, 9) for i in range(12)],
                      "outlier": [i == 4 for i in range(12)]})
    rows = issue_rows(t)
    assert ("blurry", sc["id"][9]) in rows and ("outlier", sc["id"][4]) in rows and len(rows) == 4
    store.load_issues(rows, "s1")
    assert store.get_meta("issues_stamp") == "s1"
    q = ReviewQueue(store, ReviewFilter(issue="blurry"), client="c")
    assert q.size() == 2 and q.current()["id"] == sc["id"][1]
    assert q.move(1)["id"] == sc["id"][4] and q.move(1)["id"] == sc["id"][4]  # the last one: stays
    assert store.query(**q.filter.kwargs())["id"].tolist() == [sc["id"][1], sc["id"][4]]
    q.filter = ReviewFilter(suspects=False, issue="blurry")
    assert q.size() == 1 and q.current()["id"] == sc["id"][9]
    q.save_place()
    q2 = ReviewQueue(store, client="c")
    assert q2.restore_place() and q2.filter.issue == "blurry"
    q.act(sc["id"][9], 0, "keep")
    assert store.count_query(suspects=False, issue="blurry", status="pending") == 0
    store.load_issues([], "")  # re-audited without the issue: the filter matches nothing
    assert ReviewQueue(store, ReviewFilter(issue="blurry")).size() == 0


def test_workspace_baseline_detect_audits_filters_and_exports(tmp_path, cifar_small, tiny_clip_dir):
    """The app's server side: detect with a baseline (the audit runs with it), the Review issue filter
    matches the audit table, a re-audit in the background works, and the app's export has the audit columns."""
    from deft.ui.workspace import AppSettings, Workspace

    ws = Workspace(AppSettings(data=str(cifar_small), model=str(tiny_clip_dir), runs=tmp_path / "runs",
                               device="cpu", batch_size=64))
    ws.load(str(cifar_small))
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        ws.start_detect(str(tiny_clip_dir), False, 1, method="bogus")
    job = ws.start_detect(str(tiny_clip_dir), False, 1, method="zeroshot")
    job.join(300)
    assert job.status == "done", job.error
    assert ws.run.path.name.endswith("-zeroshot") and ws.run.meta.get("method") == "zeroshot"
    table = pd.read_parquet(ws.run.path / "audit.parquet")
    for issue in ("outlier", "near duplicate"):
        n = int(issue_mask(table, issue).sum())
        both = sum(_queue_size(ws, suspects, issue) for suspects in (True, False))
        assert both == n, issue
    from deft.audit import review_order
    from deft.review import ReviewFilter, ReviewQueue

    suspects = set(ws.store.query(limit=-1)["id"])
    want = [i for i in review_order(table, "agreement")["id"] if i in suspects]
    assert ReviewQueue(ws.store, ReviewFilter(order="agreement")).current()["id"] == want[0]
    job = ws.start_audit()
    job.join(300)
    assert job.status == "done", job.error
    _, _, df = ws.export()
    assert {"zeroshot_issue", "zeroshot_score", "outlier", "blurry", "near_duplicate"} <= set(df.columns)


def _queue_size(ws, suspects: bool, issue: str) -> int:
    from deft.review import ReviewFilter, ReviewQueue

    return ReviewQueue(ws.store, ReviewFilter(suspects=suspects, issue=issue)).size()


def test_review_order_by_a_method_or_agreement(tmp_path):
    """Review ordered by an audit order: the store walks deft.audit.review_order's sequence."""
    from deft.audit import review_order
    from deft.audit_view import order_rows
    from deft.review import ReviewFilter, ReviewQueue
    from deft.storage.store import ReviewStore

    from .test_store import CLASSES, fake_scores

    sc = fake_scores()
    store = ReviewStore(tmp_path / "review.sqlite")
    store.load_scores(sc, CLASSES)
    rng = np.random.default_rng(1)
    t = pd.DataFrame({"id": sc["id"], "zeroshot_score": rng.random(12), "zeroshot_issue": rng.random(12) < 0.5,
                      "cleanlab_score": rng.random(12), "cleanlab_issue": rng.random(12) < 0.5})
    t["n_flagged"] = t["zeroshot_issue"].astype(int) + t["cleanlab_issue"].astype(int)
    orders = order_rows(t)
    assert {o for o, _, _ in orders} == {"agreement", "zeroshot", "cleanlab"}  # no deft columns: no deft order
    store.load_issues([], "s", orders)
    suspects = set(sc.loc[~sc["is_clean"], "id"])
    for by in ("zeroshot", "agreement"):
        want = [i for i in review_order(t, by)["id"] if i in suspects]
        q = ReviewQueue(store, ReviewFilter(order=by))
        seen = [q.current()["id"]]
        while (nxt := q.move(1))["id"] != seen[-1]:
            seen.append(nxt["id"])
        assert seen == want, by
        assert store.query(**q.filter.kwargs())["id"].tolist() == want
        assert [q.position({"id": i}) for i in want] == list(range(len(want)))
        assert q.move(-1)["id"] == want[-2]
    assert ReviewQueue(store, ReviewFilter()).current()["id"] == sc["id"][0]  # default: DEFT margin
