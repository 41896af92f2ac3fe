"""Issue 24: a key press at Clothing1M scale visits a bounded number of rows, never the whole samples table.

Not timed: SQLite's progress handler counts the virtual-machine instructions of every query a key press runs
on the server's connection (a scan of the samples table costs several per row), through the app's own lean
route handler (:meth:`deft.ui.handlers.ReviewHandlers.lean`), after warm-up, right after a re-rank of the learning
queue (which changes every unseen sample's ``p_wrong``) and in a freshly started server on the same database.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from deft.storage.data import Dataset
from deft.storage.store import SAMPLE_COLUMNS, ReviewStore
from deft.ui.handlers import ReviewHandlers
from deft.ui.workspace import AppSettings, Workspaces

N = 30_000  # big enough that one scan of the samples table (several VM steps per row) dwarfs a key press
CLASSES = ["cat", "dog", "ship"]
STEP = 10  # the progress handler runs every STEP instructions


def scores(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(CLASSES), n)
    names = np.asarray(CLASSES, dtype=object)
    other = names[(lab + 1) % len(CLASSES)]
    df = pd.DataFrame({"id": [f"{names[k]}/s{i:06d}.jpg" for i, k in enumerate(lab)], "label": names[lab],
                       "is_clean": rng.random(n) < 0.5, "sim_pos": rng.random(n), "sim_neg": rng.random(n),
                       "margin": rng.normal(0, 1, n), "pred": other, "zs1": other, "zs2": other, "zs3": other,
                       **{f"zs{k}_conf": rng.random(n) for k in (1, 2, 3)},
                       "pred_conf": rng.random(n), "suggestion": other, "suggestion_conf": rng.random(n),
                       "p_wrong": rng.random(n), "s1": other, "s1_conf": rng.random(n), "s1_src": "combined"})
    return df.reindex(columns=SAMPLE_COLUMNS)


def server(path, samples: pd.DataFrame) -> tuple[ReviewHandlers, str]:
    """The lean route's handler over a workspace on the review store at ``path`` (as after a page load)."""
    reg = Workspaces(AppSettings(data="unused", runs=path.parent / "runs"))
    ws = reg.get("s")
    ws.dataset = Dataset(root=path.parent / "images", samples=samples, classes=CLASSES,
                         prompts={c: c for c in CLASSES})  # no image files: the card says "image unreadable"
    ws.store = ReviewStore(path)
    names = ("card", "counter", "review_msg", "zoom_box", "relabel_dd")
    return ReviewHandlers(reg, SimpleNamespace(review=SimpleNamespace(**{k: k for k in names}))), "s"


def steps_of(store: ReviewStore, fn) -> int:
    """VM instructions run on this thread's connection to ``store`` (the one the handler uses) during ``fn()``."""
    con, n = store._conn(), [0]

    def tick() -> int:
        n[0] += STEP
        return 0

    con.set_progress_handler(tick, STEP)
    try:
        fn()
    finally:
        con.set_progress_handler(None, STEP)
    return n[0]


def press(h: ReviewHandlers, sid: str, key: str) -> dict:
    ws = h.reg.get(sid)
    q = ws.queue("reviewer")
    item = q.current()
    body = {"session": sid, "client": "reviewer", "sample_id": item["id"], "version": int(item["version"])}
    if key in ("keep", "exclude", "accept"):
        label = item["suggestion"] if key == "accept" else ""
        return h.lean(body | {"op": "act", "action": key, "label": label}, None)
    return h.lean(body | {"op": key}, None)


KEYS = ["keep", "next", "exclude", "accept", "undo", "prev", "pending", "keep"]


@pytest.mark.parametrize("order", ["combined", None])
def test_a_key_press_visits_no_whole_table(tmp_path, order):
    """Every key press of the lean route, in the learning queue's order (every sample) and in DEFT's margin
    order (suspects), costs fewer VM instructions than there are samples: at warm-up, after a re-rank, and
    in a restarted server whose first card and first key must not count or sum the table again."""
    df = scores(N)
    path = tmp_path / "review.sqlite"
    store = ReviewStore(path)
    store.load_scores(df, CLASSES)
    rank = np.argsort(-df["p_wrong"].to_numpy(), kind="stable")
    store.load_issues([], "audit", [("combined", df["id"].iloc[i], float(r)) for r, i in enumerate(rank)])
    h, sid = server(path, df[["id", "label"]])
    ws = h.reg.get(sid)
    q = ws.queue("reviewer")
    q.filter.suspects, q.filter.order = (None, "combined") if order else (True, None)
    h.show_card(sid, "reviewer", None)  # the first card (may count once: the same process keeps it)
    budget = N  # a scan visits every row: several instructions each
    for key in KEYS:
        assert steps_of(ws.store, lambda k=key: press(h, sid, k)) < budget, key

    # the learning queue re-ranks every unseen sample (new p_wrong): the next keys sum nothing again
    new = df.set_index("id").assign(p_wrong=np.random.default_rng(1).random(N))
    ws.store.rerank("combined", list(new.sort_values("p_wrong", ascending=False).index), new)
    for key in KEYS:
        assert steps_of(ws.store, lambda k=key: press(h, sid, k)) < budget, f"after a re-rank: {key}"

    # a restarted server (new process state) on the same database: its first card and keys count nothing whole
    h2, sid2 = server(path, df[["id", "label"]])
    ws2 = h2.reg.get(sid2)
    ws2.queue("reviewer")  # the reviewer's saved place and filter are restored
    assert steps_of(ws2.store, lambda: h2.show_card(sid2, "reviewer", None)) < budget, "first card after restart"
    for key in KEYS:
        assert steps_of(ws2.store, lambda k=key: press(h2, sid2, k)) < budget, f"after a restart: {key}"
    assert ws2.store.count()["decided"] > 0


def test_an_import_decodes_only_new_or_changed_images(tmp_path):
    """A restart re-imports a 1M-image folder: only files no earlier import decoded (new, rewritten, replaced)
    are decoded; a bad file keeps its problem; a finished detection's manifest vouches for files older than it."""
    import os
    import time

    from PIL import Image

    from deft.storage.load import load_dataset
    from deft.storage.verified import VerifiedFiles

    data = tmp_path / "data"
    for cls in ("cat", "dog"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(data / cls / f"{i}.png")
    (data / "dog" / "bad.png").write_bytes(b"not an image")
    rec = VerifiedFiles(tmp_path / "verified.parquet")
    first = load_dataset(data, verify=rec)
    assert rec.decoded == 7 and len(first.samples) == 6 and list(first.issues["path"]) == ["dog/bad.png"]
    again = load_dataset(data, verify=rec)
    assert rec.decoded == 0 and again.samples["id"].tolist() == first.samples["id"].tolist()
    assert list(again.issues["path"]) == ["dog/bad.png"]  # the recorded problem, not decoded again
    (data / "cat" / "0.png").write_bytes(b"broken now")  # rewritten in place
    Image.new("RGB", (8, 8)).save(data / "cat" / "new.png")
    third = load_dataset(data, verify=rec)
    assert rec.decoded == 2 and sorted(third.issues["path"]) == ["cat/0.png", "dog/bad.png"]
    ids = third.samples["id"].tolist()
    trusted = VerifiedFiles(tmp_path / "other.parquet", (ids, time.time_ns() + 10**9))
    load_dataset(data, verify=trusted)
    assert trusted.decoded == 2  # the two files the manifest does not list (as good) are decoded
    os.utime(data / "cat" / "1.png", ns=(time.time_ns() + 10**10,) * 2)  # modified after the manifest
    later = VerifiedFiles(tmp_path / "x.parquet", (ids, time.time_ns() + 10**9))
    load_dataset(data, verify=later)
    assert later.decoded == 3
