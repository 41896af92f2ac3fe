"""The learning review queue in a real browser (issue 21): two reviewers on one audited run, the combined
order, a re-rank from their decisions while both have a card on screen.

One detection + audit (tiny random CLIP on the bundled demo) and one ``python app.py --rerank-every 5``:
the queue's model is refit in the background after every 5 decisions, so a handful of key presses forces
a re-rank. The proof that a re-rank never moves what a reviewer sees: the card on screen in both contexts
keeps its sample and its suggestions through it (also when the server renders it again), keys keep
deciding the card on screen, and every decision in the SQLite log names a sample its context showed.
"""

from __future__ import annotations

import json
import time

import pytest

from deft.core.ranking import SOURCE_NAMES

from .conftest import DEMO, audited_server
from .test_review import assert_only_shown, card, open_reviewers, set_class, wait_card, wait_msg

pytestmark = [pytest.mark.slow, pytest.mark.browser]
REPORT = "queue re-ranked from your"


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_clip_dir):
    """A detected and audited demo run, served with a small refit interval: ``(server, store)``."""
    server, store = audited_server(tmp_path_factory.mktemp("learning-app"), tiny_clip_dir, "--rerank-every", "5")
    try:
        yield server, store
    finally:
        server.stop()


def learned(store) -> bool:
    """Whether the last re-rank the store recorded was fitted on the reviewers' decisions."""
    report = store.get_meta("rank_report", "")
    return bool(report) and json.loads(report)["source"].startswith("your")


def suggestions_on(page) -> list[str]:
    return page.eval_on_selector_all("#card .deft-act", "els => els.map(e => e.dataset.label + ':' + e.innerText)")


def rerender(page, sid: str) -> None:
    """Have the server render this context's card again (the Review tab's own event: it reports the re-rank
    under the counter and clears the message line), and wait for that render."""
    page.get_by_role("tab", name="1 · Dataset").click()
    page.get_by_role("tab", name="3 · Review").click()
    page.wait_for_function("(n) => { const e = document.getElementById('queue-note'); "
                           "const m = document.getElementById('msg-live'); "
                           "return e && e.innerText.includes(n) && m && m.innerText.trim() === ''; }", arg=REPORT,
                           timeout=20_000)
    wait_card(page, "c.dataset.sid === a", sid)


def test_rerank_with_two_reviewers_never_moves_the_cards_on_screen(audited, browser, artifacts):
    server, store = audited
    pages = open_reviewers(browser, server.url)
    a, b = pages
    try:
        for p in pages:  # after an audit a new reviewer sees every sample, most likely wrong first
            p.wait_for_function("() => document.querySelector('#f-order input').value.startsWith('most likely "
                                "wrong') && document.querySelector('#f-show input[type=radio]:checked').value "
                                ".startsWith('all')", timeout=20_000)
            wait_msg(p, "#review-counter", "wrong labels likely remain among the 400 unreviewed")
            assert p.locator("#card-pwrong").count() == 1
        # both in the combined order, each in its own class (a never decides b's card): b's card is on screen
        # through the re-rank, a decides until it is reported
        set_class(a, "airplane")
        set_class(b, "truck")
        trucks = store.count_query(suspects=None, label="truck")  # "all": every truck-labelled sample (41)
        assert trucks == len(list((DEMO / "truck").iterdir()))
        # with " in this view": the former "item 1 of 40" also matched the unfiltered "item 1 of 400"
        wait_msg(b, "#review-counter", f"item 1 of {trucks} in this view")
        b_sid = card(b)[0]
        b_sugg, b_s1 = suggestions_on(b), store.sample(b_sid)["s1"]
        # each suggestion button names its sources and its confidence
        assert b_sugg and all("%)" in s and any(n in s for n in SOURCE_NAMES.values()) for s in b_sugg), b_sugg
        # a decides (keep / accept suggestion 1, alternately) until its counter reports the re-rank
        for i in range(39):  # the refit runs in the background: its report shows on a later card
            sid = card(a)[0]
            a.keyboard.press("1" if i % 2 and a.locator("#btn-s1").count() else "k")
            wait_card(a, "c.dataset.sid !== a", sid)
            if REPORT in a.inner_text("#review-counter"):
                break
        else:  # on a loaded machine the refit may still run: wait for it, then the next card reports it
            deadline = time.monotonic() + 60
            while not learned(store) and time.monotonic() < deadline:
                time.sleep(0.2)
            sid = card(a)[0]
            a.keyboard.press("k")
            wait_card(a, "c.dataset.sid !== a", sid)
        if REPORT not in a.inner_text("#review-counter"):
            pytest.fail(f"no re-rank reported after 40 decisions: {a.inner_text('#review-counter')}; store: "
                        f"{store.n_decisions()} decisions, rank_at {store.get_meta('rank_at')}, "
                        f"rank_error {store.get_meta('rank_error')}, report {store.get_meta('rank_report')}")
        report = json.loads(store.get_meta("rank_report"))
        assert report["moved"] > 0 and report["decisions"] >= 10
        a_sid, a_sugg = card(a)[0], suggestions_on(a)
        # the cards on screen did not change: b's (in the page and as the server renders it again), and a's
        assert card(b)[0] == b_sid and suggestions_on(b) == b_sugg
        for page, sid, sugg in ((b, b_sid, b_sugg), (a, a_sid, a_sugg)):
            rerender(page, sid)
            assert suggestions_on(page) == sugg
        assert store.sample(b_sid)["s1"] == b_s1
        a.screenshot(path=str(artifacts / "learning-1-rerank.png"))
        # keys keep working after it, each on the card its context shows
        for page in (b, a):
            sid = card(page)[0]
            page.keyboard.press("k")
            wait_msg(page, "#review-msg", f"kept for {sid}")
            assert store.sample(sid)["status"] == "kept"
        assert not any("changed since you saw it" in m for p in pages for m in p.evaluate("() => window.__msgs"))
        assert_only_shown(store, pages)
    finally:
        for p in pages:
            p.context.close()
