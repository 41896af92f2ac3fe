"""Review store: decision log, undo, concurrent writers (threads and processes), resume, export."""

import multiprocessing as mp
import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest

from deft.review import ReviewFilter, ReviewQueue, suggestions
from deft.storage.export import EXPORT_COLUMNS, curated_labels, export_table, read_curated, write_export
from deft.storage.store import ReviewError, ReviewStore, StaleError

CLASSES = ["cat", "dog", "fish"]


def fake_scores(n=12):
    rng = np.random.default_rng(0)
    labels = [CLASSES[i % 3] for i in range(n)]
    margin = np.linspace(-0.5, 0.5, n)
    return pd.DataFrame({
        "id": [f"{lab}/{i:03d}.jpg" for i, lab in enumerate(labels)], "label": labels,
        "sim_pos": rng.random(n), "sim_neg": rng.random(n), "margin": margin, "p_clean": margin + 0.5,
        "is_clean": margin > 0, "pred": [CLASSES[(i + 1) % 3] for i in range(n)], "pred_conf": np.full(n, 0.7),
        "zs1": "cat", "zs1_conf": 0.5, "zs2": "dog", "zs2_conf": 0.3, "zs3": "fish", "zs3_conf": 0.2,
        "suggestion": [CLASSES[(i + 1) % 3] for i in range(n)], "suggestion_conf": np.linspace(0.1, 0.9, n),
    })


@pytest.fixture
def store(tmp_path):
    s = ReviewStore(tmp_path / "review.sqlite")
    s.load_scores(fake_scores(), CLASSES)
    return s


def test_queue_is_suspects_worst_margin_first(store):
    q = store.query()
    assert len(q) == 6 and list(q["margin"]) == sorted(q["margin"]) and not q["is_clean"].any()
    assert set(q["status"]) == {"pending"}
    assert store.count() == {"total": 12, "suspects": 6, "reviewed": 0, "decided": 0}
    assert store.count_query(label="cat") == len(store.query(label="cat"))
    assert len(store.query(suspects=False)) == 6


def test_decisions_log_and_state(store):
    ids = store.query()["id"].tolist()
    d1 = store.decide(ids[0], "accept", client="a")
    assert d1.label == store.sample(ids[0])["suggestion"]
    store.decide(ids[1], "relabel", "fish", client="a")
    store.decide(ids[2], "exclude", client="a")
    store.decide(ids[3], "keep", client="a")
    cur = store.current().set_index("id")
    assert cur.loc[ids[1], "final_label"] == "fish" and cur.loc[ids[2], "status"] == "excluded"
    assert cur.loc[ids[3], "final_label"] == store.sample(ids[3])["label"]
    assert store.count()["reviewed"] == 4
    assert list(store.log()["action"]) == ["accept", "relabel", "exclude", "keep"]
    with pytest.raises(ReviewError, match="unknown class"):
        store.decide(ids[0], "relabel", "wolf")
    with pytest.raises(ReviewError, match="unknown sample"):
        store.decide("nope.jpg", "keep")
    with pytest.raises(ReviewError, match="unknown action"):
        store.decide(ids[0], "burn")


def test_undo_is_exact_and_logged(store):
    ids = store.query()["id"].tolist()
    store.decide(ids[0], "accept", client="a")
    store.decide(ids[0], "exclude", client="a")
    store.decide(ids[1], "keep", client="b")
    [undone] = store.undo(client="a")
    assert undone.sample_id == ids[0] and undone.action == "exclude"
    assert store.sample(ids[0])["status"] == "accepted"  # back to the previous decision
    store.undo(client="a")
    assert store.sample(ids[0])["status"] is None  # pending again
    assert store.undo(client="a") == []  # nothing left for a; b's decision untouched
    assert store.sample(ids[1])["status"] == "kept"
    log = store.log()
    assert list(log["action"]) == ["accept", "exclude", "keep", "undo", "undo"]
    assert list(log["undoes"].dropna().astype(int)) == [2, 1]


def test_batch_accept_is_one_undo_step(store):
    q = store.query()
    high = q[q["suggestion_conf"] >= 0.3]["id"].tolist()
    store.decide(q["id"].iloc[0], "keep", client="a")
    res = store.decide_many(high, "accept", client="a")
    assert len(res.applied) == len(high) >= 2 and res.stale == [] and res.batch is not None
    assert store.count()["reviewed"] == len(high) + (q["id"].iloc[0] not in high)
    undone = store.undo(client="a")  # the whole batch, in one step
    assert sorted(d.sample_id for d in undone) == sorted(high)
    assert all(store.sample(i)["status"] is None for i in high if i != q["id"].iloc[0])
    assert [d.action for d in store.undo(client="a")] == ["keep"]  # then the single decision before it


def test_stale_action_is_refused_and_nothing_written(store):
    sid = store.query()["id"].iloc[0]
    v0 = store.sample(sid)["version"]
    assert v0 == 0
    d = store.decide(sid, "keep", client="a", by="alice", expected_version=v0)
    assert d.version == 1 and store.sample(sid)["version"] == 1
    n = len(store.log())
    with pytest.raises(StaleError, match="changed since you saw it.*kept by alice"):
        store.decide(sid, "exclude", client="b", by="bob", expected_version=v0)
    assert len(store.log()) == n and store.sample(sid)["status"] == "kept"
    store.undo(client="a")
    assert store.sample(sid)["version"] == 2  # an undo is a new version too: a card shown before it is stale
    with pytest.raises(StaleError, match="pending again"):
        store.decide(sid, "exclude", expected_version=1)
    res = store.decide_many([(sid, 1), (store.query()["id"].iloc[1], 0)], "keep", client="a")
    assert res.stale == [sid] and len(res.applied) == 1


def test_decided_by_in_state_and_export(store):
    sid = store.query()["id"].iloc[0]
    store.decide(sid, "keep", by="alice")
    assert store.sample(sid)["decided_by"] == "alice"
    assert store.export().set_index("path").loc[sid, "decided_by"] == "alice"


def test_relabel_to_the_same_label_is_refused_and_never_offered(store):
    row = store.query().iloc[0].to_dict()
    with pytest.raises(ReviewError, match="already labelled"):
        store.decide(row["id"], "relabel", row["label"])
    item = dict(row, suggestion=row["label"], zs1=row["label"], zs2="dog", zs3="fish")
    offered = [s.label for s in suggestions(item)]
    assert row["label"] not in offered and offered
    con = sqlite3.connect(store.path)
    with con:
        con.execute("UPDATE samples SET suggestion = label WHERE id = ?", (row["id"],))
    con.close()
    with pytest.raises(ReviewError, match="use keep"):  # accepting a suggestion equal to the label
        store.decide(row["id"], "accept")


def test_queue_acts_on_the_named_sample_and_keeps_place(store):
    a = ReviewQueue(store, ReviewFilter(status="pending"), client="tab-a", user="alice")
    b = ReviewQueue(store, ReviewFilter(status="pending"), client="tab-b", user="bob")
    ca, cb = a.current(), b.current()
    assert ca["id"] == cb["id"]
    a.act(ca["id"], ca["version"], "keep")
    with pytest.raises(StaleError):  # b still shows the card a just decided
        b.act(cb["id"], cb["version"], "exclude")
    assert b.current()["id"] == ca["id"] or store.sample(ca["id"])["status"] == "kept"
    nxt = a.current()
    assert nxt["id"] != ca["id"]
    a.save_place()
    again = ReviewQueue(store, client="tab-a")
    assert again.restore_place() and again.current()["id"] == nxt["id"] and again.filter.status == "pending"
    assert a.next_pending()["status"] == "pending"


def test_open_keeps_the_filters_that_contain_the_sample_and_drops_only_the_others(store):
    """A click on the map: the reviewer's filters stay unless they leave the sample out (issue 19, item 17)."""
    q = ReviewQueue(store, ReviewFilter(label="cat", status="pending", margin_max=0.0, order="margin"), client="t")
    assert q.open("cat/003.jpg") == {}  # a pending cat suspect below the bound: nothing changes
    assert q.filter == ReviewFilter(label="cat", status="pending", margin_max=0.0, order="margin")
    assert q.current()["id"] == "cat/003.jpg"
    # a clean dog above the bound: Show widens to every sample, the class and the bound go, Status stays
    assert q.open("dog/010.jpg") == {"suspects": True, "label": "cat", "margin_max": 0.0}
    assert q.filter == ReviewFilter(suspects=None, status="pending", order="margin")
    assert q.current()["id"] == "dog/010.jpg"
    with pytest.raises(ReviewError, match="not in this review"):
        q.open("cat/999.jpg")


def test_resume_after_reopen(tmp_path):
    s = ReviewStore(tmp_path / "r.sqlite")
    s.load_scores(fake_scores(), CLASSES)
    sid = s.query()["id"][0]
    s.decide(sid, "relabel", "dog")
    del s
    again = ReviewStore(tmp_path / "r.sqlite")
    assert again.classes == CLASSES
    assert again.sample(sid)["final_label"] == "dog"
    # re-loading scores (re-detection) keeps decisions keyed by sample id
    again.load_scores(fake_scores(), CLASSES)
    assert again.sample(sid)["final_label"] == "dog"


def test_concurrent_threads_last_write_wins_and_all_logged(store):
    ids = store.query()["id"].tolist()
    errors = []

    def worker(client, label):
        try:
            for _ in range(20):
                for sid in ids:
                    store.decide(sid, *_relabel_or_keep(sid, label), client=client)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(f"tab{i}", CLASSES[i])) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    log = store.log()
    assert len(log) == 3 * 20 * len(ids)
    last = log.groupby("sample_id").tail(1).set_index("sample_id")["label"]
    cur = store.current().set_index("id")["final_label"]
    assert (cur.loc[last.index] == last).all()
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _relabel_or_keep(sid, label):
    """Relabel to ``label``, or keep when that is already the sample's label (relabel-to-same is refused)."""
    return ("keep", None) if sid.startswith(label + "/") else ("relabel", label)


def _proc(path, client, label, ids):
    s = ReviewStore(path)
    for sid in ids:
        s.decide(sid, *_relabel_or_keep(sid, label), client=client)


def test_concurrent_processes(store):
    ids = store.query()["id"].tolist()
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_proc, args=(store.path, f"p{i}", CLASSES[i], ids * 5)) for i in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    assert all(p.exitcode == 0 for p in ps)
    assert len(store.log()) == 2 * 5 * len(ids)


def test_export_columns_statuses_and_curation(store, tmp_path):
    ids = store.query()["id"].tolist()
    store.decide(ids[0], "accept")
    store.decide(ids[1], "exclude")
    store.decide(ids[2], "relabel", "cat")
    exp = store.export()
    assert list(exp.columns) == EXPORT_COLUMNS and len(exp) == 12
    st = exp.set_index("path")
    assert st.loc[ids[0], "status"] == "accepted" and st.loc[ids[0], "final_label"] == st.loc[ids[0], "suggestion"]
    assert st.loc[ids[1], "status"] == "excluded" and st.loc[ids[1], "final_label"] == ""
    assert st.loc[ids[2], "final_label"] == "cat" and st.loc[ids[2], "decided_at"] != ""
    assert (st["status"] == "pending").sum() == 3 and (st["status"] == "clean").sum() == 6
    assert len(curated_labels(exp, "clean")) == 6
    assert len(curated_labels(exp, "relabels")) == 8
    assert len(curated_labels(exp, "pseudo")) == 11  # everything but the excluded sample
    out = write_export(exp, tmp_path / "e.csv")
    back = read_curated(out)
    assert len(back) == 8 and ids[1] not in set(back["id"])
    pseudo = export_table(store.scores(), store.current(), pseudo=True)
    assert set(pseudo["status"]) == {"clean", "accepted", "excluded", "relabelled", "pseudo"}


def test_read_curated_rejects_unknown_status(tmp_path):
    p = tmp_path / "c.csv"
    pd.DataFrame({"path": ["a.jpg"], "final_label": ["cat"], "status": ["maybe"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="unknown status"):
        read_curated(p)


def test_count_query_matches_the_query_for_every_filter(store):
    ids = store.query()["id"].tolist()
    store.decide(ids[0], "accept")
    store.decide(ids[1], "exclude")
    store.decide(ids[2], "keep")
    store.undo()
    for suspects in (True, False):
        for label in (None, "cat", "dog"):
            for status in (None, "pending", "accepted", "excluded", "kept"):
                for mmin, mmax in ((None, None), (-0.3, None), (None, 0.2)):
                    kw = dict(suspects=suspects, label=label, status=status, margin_min=mmin, margin_max=mmax)
                    assert store.count_query(**kw) == len(store.query(**kw, limit=-1)), kw
    assert store.count()["reviewed"] == 2 and store.count()["suspects"] == 6


def test_cached_counts_follow_a_new_scores_table_from_another_process(store):
    assert store.count_query() == 6 and store.count_query(label="cat") == 2  # cached from here on
    other = ReviewStore(store.path)  # e.g. the CLI re-scoring while the app is open
    flipped = fake_scores()
    flipped["is_clean"] = flipped["margin"] > 0.3
    other.load_scores(flipped, CLASSES)
    assert store.count_query() == int((~flipped["is_clean"]).sum()) == len(store.query(limit=-1))
    assert store.count_query(label="cat") == len(store.query(label="cat", limit=-1))


def test_thumbnails_are_immutable_content_addressed_files(tmp_path):
    from PIL import Image

    from deft.storage.thumbs import thumbnail_file

    src = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(src)
    first = thumbnail_file(src, 64, tmp_path / "cache")
    st = first.stat()
    again = thumbnail_file(src, 64, tmp_path / "cache")
    assert again == first and again.stat().st_ino == st.st_ino and again.stat().st_mtime_ns == st.st_mtime_ns
    assert Image.open(first).size == (64, 48)
    Image.new("RGB", (40, 30), (10, 200, 10)).save(src)  # replaced image, same name: a new thumbnail file
    changed = thumbnail_file(src, 64, tmp_path / "cache")
    assert changed != first and first.is_file() and first.stat().st_mtime_ns == st.st_mtime_ns
    assert thumbnail_file(src, 32, tmp_path / "cache") != changed  # the size is part of the name
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # no temporary files left behind


def test_thumbnail_of_a_sample_replaced_by_a_fifo_is_refused_not_blocked(tmp_path):
    """A dataset image swapped for a FIFO after the import (the card, grid, gallery and zoom all make
    thumbnails of dataset files): refused at once with the import's reason, the caller never blocks."""
    import os

    from deft.core.errors import DataError
    from deft.storage.thumbs import thumbnail_file

    fifo = tmp_path / "cat" / "img.png"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    got: list = []

    def zoom():
        try:
            thumbnail_file(fifo, 64, tmp_path / "cache")
        except DataError as exc:
            got.append(exc)

    t = threading.Thread(target=zoom, daemon=True)  # daemon: a blocked reader must not hang the test run
    t.start()
    t.join(10)
    assert not t.is_alive(), "thumbnail_file blocked on a FIFO"
    assert got and "not a regular file" in str(got[0])


def test_a_review_order_walks_its_ranked_samples_then_the_unranked_in_table_order(tmp_path):
    """Every sample has a row in every order (the next card and its position use the order's index): samples
    an order does not rank come last, in table order, also after new scores and in a store from before."""
    sc = fake_scores()
    ids = sc["id"].tolist()
    store = ReviewStore(tmp_path / "r.sqlite")
    store.load_scores(sc, CLASSES)
    store.load_issues([], "", [("combined", ids[7], 0.0), ("combined", ids[2], 1.0)])

    def walk(s: ReviewStore) -> list[str]:
        got, item = [], s.step(None, 1, suspects=None, order="combined")
        while item is not None:
            got.append(item["id"])
            assert s.position(item["id"], suspects=None, order="combined") == len(got) - 1
            item = s.step(item["id"], 1, suspects=None, order="combined")
        return got

    want = [ids[7], ids[2], *[i for i in ids if i not in (ids[7], ids[2])]]
    assert walk(store) == want
    assert store.query(suspects=None, order="combined", limit=-1)["id"].tolist() == want
    store.load_scores(pd.concat([sc, sc.tail(1).assign(id="new/999.jpg")]), CLASSES)  # a sample added later
    assert walk(store) == [*want, "new/999.jpg"]
    with sqlite3.connect(tmp_path / "r.sqlite") as con:  # as a store written before the unranked rows existed
        con.execute("DELETE FROM orders WHERE key > 1e299")
    assert walk(ReviewStore(tmp_path / "r.sqlite")) == [*want, "new/999.jpg"]


def test_an_order_with_no_rows_falls_back_to_margin_order(store):
    """QA: a re-detection (no audit yet) left the combined order with no rows, and the inner join on it emptied
    every queue ("item 0 of 44", "Nothing matches this filter"). An order with no rows is DEFT margin order."""
    by_margin = store.query(limit=-1)["id"].tolist()
    q = ReviewQueue(store, ReviewFilter(order="combined"), client="t")
    assert q.size() == 6 and [r["id"] for r in q.page()] == by_margin
    assert q.current()["id"] == by_margin[0] and q.position(q.current()) == 0
    assert q.move(1)["id"] == by_margin[1] and not store.has_order("combined")
    store.load_issues([], "", [("combined", by_margin[3], 0.0)])  # after an audit: its order again
    assert store.has_order("combined") and store.query(order="combined", limit=1)["id"][0] == by_margin[3]


def test_a_filter_change_starts_at_the_top_of_the_new_view(store):
    """QA: switching Show to "suspects" from a clean card landed on the last suspect ("item 56 of 56"): the old
    anchor, outside the new view, fell back to its nearest neighbour. A new view starts at its top."""
    q = ReviewQueue(store, ReviewFilter(suspects=None), client="t")
    q.show(store.query(suspects=False, limit=-1)["id"].iloc[-1])  # a clean card, far down the margin order
    q.save_place()
    q.set_filter(ReviewFilter(suspects=True))
    top = store.query(limit=1)["id"][0]
    assert q.current()["id"] == top and q.position(q.current()) == 0
    q.move(1)
    q.save_place()
    q.set_filter(ReviewFilter(suspects=True))  # the same view: the place is kept
    assert q.position(q.current()) == 1


def test_a_batch_that_applied_nothing_is_not_the_undo_target(store):
    """The undo behind the batch message fix: a batch whose samples all changed since they were shown logs nothing,
    so u undoes the reviewer's previous decision (and the message no longer promises the batch)."""
    ids = store.query(limit=-1)["id"].tolist()
    store.decide(ids[0], "keep", client="t")
    res = store.decide_many([(i, 99) for i in ids[1:4]], "exclude", client="t")
    assert res.batch is None and not res.applied and len(res.stale) == 3
    done = store.undo("t")
    assert [d.sample_id for d in done] == [ids[0]] and store.sample(ids[0])["status"] is None
