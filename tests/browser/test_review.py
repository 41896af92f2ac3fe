"""Review cockpit in a real browser, two browser contexts (two reviewers) acting at once on one server.

One detection run (tiny random CLIP on the bundled demo) and one ``python app.py`` serve every test
in this module. Each test works in its own class (a filter) so the tests don't see each other's
decisions. Every page records each card it rendered (a MutationObserver on ``#card``); the proof of
integrity is that every decision in the SQLite log names a sample its context had on screen.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image

from deft.storage.store import ReviewStore
from deft.ui.workspace import dataset_key

from ..conftest import ROOT
from .conftest import Server, detect_into

pytestmark = [pytest.mark.slow, pytest.mark.browser]
DEMO = ROOT / "assets" / "demo"

# every card a page renders, in order (sid@version): what the reviewer was shown
RECORD_SHOWN = """
window.__shown = [];
window.__msgs = [];
new MutationObserver(() => {
  const c = document.getElementById('card');
  if (c && c.dataset.sid) {
    const k = c.dataset.sid + '@' + c.dataset.ver;
    if (window.__shown[window.__shown.length - 1] !== k) window.__shown.push(k);
  }
  const m = document.getElementById('review-msg');
  const t = m ? m.innerText.trim() : '';
  if (t && window.__msgs[window.__msgs.length - 1] !== t) window.__msgs.push(t);
}).observe(document, {subtree: true, childList: true, attributes: true});
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_clip_dir, cifar_small):
    """One detection run and one server for the module: ``(server, store)``."""
    tmp = tmp_path_factory.mktemp("review-app")
    runs = tmp / "runs"
    detect_into(runs, DEMO, tiny_clip_dir, timeout=300)
    server = Server(["--data", str(DEMO), "--model", str(tiny_clip_dir), "--runs", str(runs),
                     "--data-root", str(DEMO), "--data-root", str(cifar_small)], tmp / "server.log").start()
    try:
        yield server, ReviewStore(runs / dataset_key(str(DEMO)) / "review.sqlite")
    finally:
        server.stop()


def open_reviewers(browser, url: str, n: int = 2, init: str = "") -> list:
    """``n`` reviewers: separate browser contexts (own storage, own client id) on the Review tab at 1440x900,
    each recording the cards it was shown (``init``: a script of the caller's, run before the page's own)."""
    pages = []
    for _ in range(n):
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        ctx.add_init_script(RECORD_SHOWN + init)
        page = ctx.new_page()
        page.goto(url)
        open_review(page)
        pages.append(page)
    return pages


@pytest.fixture
def two(app, browser):
    """Two reviewers on the Review tab (:func:`open_reviewers`)."""
    server, store = app
    pages = open_reviewers(browser, server.url)
    yield pages
    for p in pages:
        p.context.close()


def open_review(page):
    page.get_by_role("tab", name="3 · Review").click()
    page.wait_for_selector("#card-id", timeout=60_000)


def card(page) -> tuple[str, int]:
    c = page.locator("#card")
    return c.get_attribute("data-sid"), int(c.get_attribute("data-ver"))


def client_id(page) -> str:
    return page.evaluate("() => document.querySelector('#client-id textarea, #client-id input').value")


def shown(page) -> set[str]:
    return {k.split("@")[0] for k in page.evaluate("() => window.__shown")}


def wait_msg(page, sel, needle, timeout=20_000):
    page.wait_for_function(
        "([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
        arg=[sel, needle], timeout=timeout)


def wait_card(page, pred_js, arg, timeout=20_000):
    page.wait_for_function(f"(a) => {{ const c = document.getElementById('card'); return c && ({pred_js}); }}",
                           arg=arg, timeout=timeout)


# the serial comment (``<!--r<n>-->``) that ends every Gradio render of the card outputs (deft/ui/handlers.py
# ReviewHandlers): a new one per render; key presses take the lean route and leave it as it is
SERIAL_JS = ("(() => { const e = document.querySelector('#review-counter'); "
             "const m = e ? e.innerHTML.match(/<!--r\\d+-->/g) : null; return m ? m.pop() : ''; })()")
# no event that renders the card outputs is queued or running: Gradio's status tracker in the counter is hidden
IDLE_JS = "!Array.from(document.querySelectorAll('#review-counter .wrap')).some(w => !w.classList.contains('hide'))"


def last_render(page) -> str:
    """The serial of the last Gradio render of the card outputs ('' before the first)."""
    return page.evaluate(f"() => {SERIAL_JS}")


def wait_render(page, before: str, timeout=20_000):
    """Wait for a Gradio render of the card outputs after the one whose serial was ``before``, with none
    still queued or running (a render already on its way when ``before`` was read does not count alone)."""
    page.wait_for_function(f"(s) => {{ const r = {SERIAL_JS}; return r !== '' && r !== s && {IDLE_JS}; }}",
                           arg=before, timeout=timeout)


def position(page) -> tuple[int, int]:
    """``(item, of)`` from the counter's ``item 4 of 12 in this view``."""
    words = page.inner_text("#review-counter").split("item ")[1].split()
    return int(words[0]), int(words[2])


def wait_until(page, cond, timeout: float = 20) -> None:
    """Poll a Python-side ``cond()`` (Playwright delivers page events while the page waits)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(50)


def choose(page, elem_id, value):
    """Pick ``value`` in a Gradio dropdown as a user does (type, Enter)."""
    inp = page.locator(f"#{elem_id} input")
    inp.click()
    inp.fill(value)
    inp.press("Enter")


def set_filter(page, elem_id, value):
    """Choose a Review filter (:func:`choose`) and wait until the server rendered the filtered view: the card on
    screen before may well match the filter too, so no check on the card alone tells that it was applied."""
    before = last_render(page)
    choose(page, elem_id, value)
    wait_render(page, before)


def set_class(page, cls):
    set_filter(page, "f-class", cls)
    wait_card(page, "document.getElementById('card-label') && "
                    "document.getElementById('card-label').innerText === a", cls)


def log_of(store, page):
    log = store.log()
    return log[log["client"] == client_id(page)]


def assert_only_shown(store, pages):
    """Nothing was applied to a sample its context did not show."""
    for page in pages:
        decided = set(log_of(store, page).query("action != 'undo'")["sample_id"])
        assert decided <= shown(page), decided - shown(page)


def test_two_reviewers_at_once_never_decide_an_unseen_sample(two, app):
    _, store = app
    a, b = two
    for p in two:
        set_class(p, "airplane")
    for _ in range(4):  # both press at once, each on the card it shows (often the same one)
        sa, sb = card(a), card(b)
        a.keyboard.press("k")
        b.keyboard.press("x")
        wait_card(a, "c.dataset.sid !== a[0] || c.dataset.ver !== String(a[1])", list(sa))
        wait_card(b, "c.dataset.sid !== a[0] || c.dataset.ver !== String(a[1])", list(sb))
        for page, (sid, _ver) in ((a, sa), (b, sb)):
            mine = log_of(store, page)
            hit = mine[mine["sample_id"] == sid]
            # either applied to the card it showed, or refused as stale with a message
            assert len(hit) == 1 or "changed since you saw it" in page.inner_text("#review-msg")
    assert_only_shown(store, two)
    # the refused reviewer saw the other's decision, with who made it
    a.keyboard.press("p")
    wait_msg(a, "#card", "by local")
    exp = store.export().set_index("path")
    decided = store.log()["sample_id"].iloc[-1]
    assert exp.loc[decided, "decided_by"] == "local"


def test_stale_version_is_refused_through_the_route_the_browser_uses(two, app):
    _, store = app
    a, b = two
    for p in two:
        set_class(p, "bird")
    sid, ver = card(b)
    assert card(a) == (sid, ver)
    a.keyboard.press("x")
    wait_card(a, "c.dataset.sid !== a", sid)
    n = len(store.log())
    b.keyboard.press("k")  # b still shows the old version of sid
    wait_msg(b, "#review-msg", "changed since you saw it")
    assert len(store.log()) == n and store.sample(sid)["status"] == "excluded"
    wait_msg(b, "#card-status", "excluded")  # b's card refreshed to the current state
    assert_only_shown(store, two)


def test_suggestions_never_offer_the_given_label(two, app):
    _, store = app
    a = two[0]
    set_class(a, "cat")
    for _ in range(8):
        sid, _ = card(a)
        given = a.inner_text("#card-label")
        offered = a.eval_on_selector_all("#card .deft-act", "els => els.map(e => e.dataset.label)")
        assert given not in offered, (sid, given, offered)
        a.keyboard.press("j")
        wait_card(a, "c.dataset.sid !== a", sid)


def test_batch_accept_preview_confirm_and_undo_as_one_step(two, app):
    _, store = app
    a, b = two
    set_class(a, "deer")
    a.locator("#batch-t input[type=number]").fill("0")
    a.locator("#batch-t input[type=number]").press("Enter")
    before = store.count()["reviewed"]
    assert a.locator("#btn-batch-confirm").is_disabled()  # nothing to confirm before a preview
    assert a.locator("#btn-relabel").is_disabled()  # nor to relabel before a label is chosen
    a.click("#btn-batch")
    wait_msg(a, "#batch-msg", "Will accept")
    assert a.locator("#btn-batch-confirm").is_enabled()
    a.evaluate("() => window.scrollTo(0, 0)")
    for sel in ("#batch-msg", "#btn-batch-confirm", "#keys-help", "#btn-next", "#btn-prev"):  # above the fold
        box = a.locator(sel).bounding_box()
        assert box is not None and box["height"] > 0 and box["y"] + box["height"] <= 900, (sel, box)
    n = int(a.inner_text("#batch-msg").split("Will accept ")[1].split()[0])
    assert n >= 2 and store.count()["reviewed"] == before  # a preview applies nothing
    # meanwhile reviewer b decides one of them: the batch skips it instead of overwriting
    set_class(b, "deer")
    b.keyboard.press("k")
    wait_msg(b, "#review-msg", "kept for")
    a.click("#btn-batch-confirm")
    wait_msg(a, "#batch-msg", "Accepted ")
    msg = a.inner_text("#batch-msg")
    log = log_of(store, a)
    assert log["batch"].nunique() == 1 and len(log) in (n, n - 1)
    assert "skipped because they changed" in msg or len(log) == n
    a.keyboard.press("u")
    wait_msg(a, "#review-msg", f"Undid a batch of {len(log)}")
    assert all(store.sample(s)["status"] is None for s in log["sample_id"])
    assert_only_shown(store, [b])


def test_place_filters_and_last_decisions_survive_reload(two, app):
    _, store = app
    a = two[0]
    set_class(a, "dog")
    set_filter(a, "f-status", "pending")
    sid, _ = card(a)
    a.keyboard.press("k")
    wait_msg(a, "#review-msg", f"kept for {sid} (u to undo)")  # one-line feedback
    pos, n = position(a)
    assert pos + 2 <= n
    a.keyboard.press("j")
    a.keyboard.press("j")
    wait_msg(a, "#review-counter", f"item {pos + 2} of {n} in this view")  # both moves landed
    here, _ = card(a)
    a.reload()
    open_review(a)
    wait_card(a, "c.dataset.sid === a", here)
    # The Review tab's own render can show the card before the page-load restore has filled the filters and
    # the recent list: wait (bounded) for the restore, then check every piece of it.
    a.wait_for_function("(s) => document.querySelector('#f-class input').value === 'dog' && "
                        "document.querySelector('#recent').innerText.includes(s)", arg=sid, timeout=20_000)
    assert a.locator("#f-class input").input_value() == "dog"
    assert a.locator("#f-status input").input_value() == "pending"
    assert sid in a.inner_text("#recent")  # on reconnect: the last decisions recorded
    a.keyboard.press("u")  # undo works after a reload: it is the log, not page state
    wait_msg(a, "#review-msg", f"Undid: kept for {sid}")
    assert store.sample(sid)["status"] is None
    a.keyboard.press("n")  # jump to next pending
    wait_msg(a, "#card-status", "pending")


def test_keys_relabel_typeahead_radios_and_bursts(two, app):
    _, store = app
    a = two[0]
    set_class(a, "frog")
    a.locator("#f-show label").first.click()  # clicking a radio must not swallow the keys
    sid, _ = card(a)
    a.keyboard.press("z")  # full resolution of the card on screen
    wait_msg(a, "#zoom-box", "px (full resolution)")
    with Image.open(DEMO / sid) as im:
        w, h = im.size
    assert f"{sid} · {w}×{h} px" in a.inner_text("#zoom-box")
    a.wait_for_function("(w) => { const i = document.querySelector('#zoom img'); "
                        "return i && i.complete && i.naturalWidth === w; }", arg=w, timeout=20_000)  # served, full size
    target = "horse"
    a.keyboard.press("r")
    a.keyboard.type(target)
    a.keyboard.press("Enter")
    wait_card(a, "c.dataset.sid !== a", sid)
    assert store.sample(sid)["status"] == "relabelled" and store.sample(sid)["final_label"] == target
    assert a.locator("#relabel-dd input").input_value() == ""  # cleared for the next card
    a.locator("#f-show label").first.click()
    before = len(log_of(store, a))
    answered = []  # every key press is one POST deft/act, answered after the server applied or refused it

    def key_press(r) -> bool:  # not the counter's poll, which takes the same route
        return r.url.endswith("/deft/act") and '"op":"counter"' not in (r.post_data or "")
    a.on("requestfinished", lambda r: answered.append(r) if key_press(r) else None)
    a.on("requestfailed", lambda r: answered.append(r) if key_press(r) else None)
    for _ in range(4):  # a burst faster than the server answers
        a.keyboard.press("k")
    wait_until(a, lambda: len(answered) == 4)  # all four presses landed
    assert all(r.failure is None for r in answered)
    burst = log_of(store, a).iloc[before:]
    assert 1 <= len(burst) <= 4 and burst["sample_id"].is_unique  # never two decisions from one stale card
    if len(burst) < 4:  # a press that arrived for a card already decided was reported, not silently dropped
        a.wait_for_function("() => window.__msgs.some(m => m.includes('ignored a key press'))", timeout=20_000)
    assert_only_shown(store, [a])


def test_grid_multiselect_apply_and_undo_two_contexts(two, app):
    _, store = app
    a, b = two
    for p in two:
        set_class(p, "ship")
        p.get_by_role("tab", name="Grid").click()
        p.wait_for_selector("#grid .tile")
    heads = a.eval_on_selector_all("#grid .group h4", "els => els.map(e => e.innerText)")
    assert heads and all(h.startswith("labelled ship, looks like ") for h in heads)
    tiles = a.locator("#grid .tile")
    assert 2 <= tiles.count() <= 36
    tiles.nth(0).click()
    tiles.nth(1).click()
    a.keyboard.press("ArrowRight")
    a.keyboard.press(" ")  # keyboard: select the third tile
    chosen = a.eval_on_selector_all("#grid .tile.sel", "els => els.map(e => e.dataset.sid)")
    assert len(chosen) == 3
    # reviewer b selects the first tile too, before a applies
    b.locator("#grid .tile").nth(0).click()
    b_first = b.eval_on_selector_all("#grid .tile.sel", "els => els.map(e => e.dataset.sid)")
    a.click("#btn-grid-exclude")
    wait_msg(a, "#grid-msg", "Excluded 3 sample(s) as one batch")
    assert all(store.sample(s)["status"] == "excluded" for s in chosen)
    b.click("#btn-grid-keep")  # b's tile changed since b saw it: skipped, not overwritten
    wait_msg(b, "#grid-msg", "skipped because they changed")
    assert store.sample(b_first[0])["status"] == "excluded"
    a.click("#btn-grid-undo")
    wait_msg(a, "#grid-msg", "Undid a batch of 3")
    assert all(store.sample(s)["status"] is None for s in chosen)
    for page in two:  # grid decisions name tiles that page showed
        tiles_seen = set(page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.sid)"))
        assert set(log_of(store, page)["sample_id"]) <= tiles_seen | shown(page)


def test_a_load_in_one_session_does_not_change_the_other(two, app, cifar_small, tiny_clip_dir):
    _, store = app
    a, b = two
    sid, _ = card(a)
    b.get_by_role("tab", name="1 · Dataset").click()
    b.locator("#data-path textarea").fill(str(tiny_clip_dir))  # readable by the server, outside its data roots
    b.click("#btn-load")
    wait_msg(b, "#data-msg", "outside the data folders this server may read")
    b.locator("#data-path textarea").fill(str(cifar_small))
    b.click("#btn-load")
    wait_msg(b, "#data-msg", "60 images")
    a.keyboard.press("k")  # a still reviews the demo: its key lands on the demo card it shows
    wait_msg(a, "#review-msg", f"kept for {sid}")
    assert store.sample(sid)["status"] == "kept"
    a.get_by_role("tab", name="1 · Dataset").click()
    wait_msg(a, "#data-msg", "400 images")


def test_keys_take_the_lean_route_and_gradio_renders_still_land(two, app):
    """Keys go to POST deft/act and the page swaps the card itself; a Gradio render that follows (a mouse
    click on Prev) must still replace what the script put there, even when it renders the same card as
    Gradio's last render did (the serial comment keeps it from being skipped as unchanged)."""
    _, store = app
    a = two[0]
    set_class(a, "ship")
    for plumbing in ("#btn-evidence", "#btn-grid-act", "#zoom-sid"):  # in the page, not on screen
        assert a.locator(plumbing).count() == 1 and not a.locator(plumbing).is_visible(), plumbing
    posts = []
    a.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    first = card(a)
    a.keyboard.press("j")  # lean
    wait_card(a, "c.dataset.sid !== a", first[0])
    assert any(u.endswith("/deft/act") for u in posts), posts
    assert not any("/run/" in u for u in posts), posts  # not Gradio's event route (timers use its queue)
    second = card(a)
    a.click("#btn-prev")  # Gradio's event renders the card it rendered last (`first`, unchanged)
    wait_card(a, "c.dataset.sid === a", first[0])
    assert "item 1 of" in a.inner_text("#review-counter")
    a.keyboard.press("k")  # lean again, on the card Gradio just put back
    wait_card(a, "c.dataset.sid !== a", first[0])
    assert store.sample(first[0])["status"] == "kept" and card(a)[0] == second[0]
    assert_only_shown(store, two)
