"""The Review cockpit's rough edges (issue 19, items 17, 18, 21, 22), in a real browser at 1440x900.

One audited demo run (tiny random CLIP: the map, the combined order) and one ``python app.py`` serve every
test; each test reviews its own classes, so they don't see each other's decisions. The jobs test loads a
small copy of the demo in its own session, so its detections never touch the reviewed run.
"""

from __future__ import annotations

import shutil

import pytest

from .conftest import DEMO, audited_server
from .test_review import card, choose, open_reviewers, set_class, wait_msg

pytestmark = [pytest.mark.slow, pytest.mark.browser]
SHOW_ALL = "all (most likely wrong first)"


@pytest.fixture(scope="module")
def cockpit(tmp_path_factory, tiny_clip_dir):
    """``(server, store, mini)``: the audited demo served with ``mini`` (8 demo images per class) also loadable."""
    tmp = tmp_path_factory.mktemp("cockpit")
    mini = tmp / "mini"
    for cls in sorted(p for p in DEMO.iterdir() if p.is_dir()):
        (mini / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:8]:
            shutil.copy(f, mini / cls.name / f.name)
    server, store = audited_server(tmp, tiny_clip_dir, "--data-root", str(DEMO), "--data-root", str(mini))
    try:
        yield server, store, mini
    finally:
        server.stop()


@pytest.fixture
def reviewer(cockpit, browser):
    """One reviewer on the Review tab, once the page load's restore has filled the filters (the audited run's
    order): a filter chosen before it lands could be reset by it."""
    page = open_reviewers(browser, cockpit[0].url, 1, init=KEEP_TIMINGS)[0]
    page.wait_for_function("() => document.querySelector('#f-order input').value.startsWith('most likely wrong')",
                           timeout=30_000)
    yield page
    page.context.close()


# Gradio events the page has sent (each a POST to queue/join) and whether all of them have been answered, read
# from the page's resource timing: its buffer holds 250 entries unless a page raises it (KEEP_TIMINGS, an init
# script), and a long test with job timers ticking fills it (the last entries would be missing)
KEEP_TIMINGS = "performance.setResourceTimingBufferSize(1000000);"
GRADIO_EVENTS = "() => performance.getEntriesByType('resource').filter(e => e.name.includes('queue/join')).length"
# (a chain of events sends the next one as soon as one is answered: answered and a second without a new one)
ANSWERED = """() => { const r = performance.getEntriesByType('resource');
  const t = (s, k) => r.filter(e => e.name.includes(s)).map(e => e[k]);
  const end = Math.max(0, ...t('queue/data', 'responseEnd'));
  return end > Math.max(0, ...t('queue/join', 'startTime')) && performance.now() - end > 1000; }"""


def sends_no_event_for(page, seconds: float) -> int:
    """Once every event sent so far is answered, the number the page sends in the next ``seconds``."""
    page.wait_for_function(ANSWERED, timeout=60_000)
    before = page.evaluate(GRADIO_EVENTS)
    page.wait_for_timeout(seconds * 1000)  # a window in which nothing may happen: no condition to wait for
    return page.evaluate(GRADIO_EVENTS) - before


def test_an_idle_page_sends_no_events(cockpit, reviewer):
    """Issue 24: the job timers are off while no job runs. Each tick (two timers, once a second) was a Gradio
    round trip and an update of its outputs in the page, and a key press that met one waited 60-130 ms."""
    assert sends_no_event_for(reviewer, 3.5) == 0


def shown_filters(page) -> dict:
    return page.evaluate("""() => ({
        show: document.querySelector('#f-show input[type=radio]:checked').value,
        cls: document.querySelector('#f-class input').value,
        status: document.querySelector('#f-status input').value})""")


def open_from_map(page, sid: str) -> None:
    """Click the point of ``sid`` on the Map (dispatched on the point itself: another may be drawn over it)
    and wait until Review shows its card."""
    page.get_by_role("tab", name="Map").click()
    point = page.locator(f'#map .pt[data-sid="{sid}"]')
    point.wait_for(state="attached", timeout=30_000)
    point.dispatch_event("click")
    page.wait_for_function("(s) => { const e = document.getElementById('card-id'); "
                           "return e && e.offsetParent !== null && e.innerText.trim() === s; }", arg=sid,
                           timeout=30_000)


def test_map_click_keeps_the_reviewers_filters(cockpit, reviewer, artifacts):
    """Item 17: a point inside the reviewer's filters opens under them unchanged; one outside clears only
    what leaves it out (the class, Show), keeps the rest (Status), and says what it changed."""
    _, store, _ = cockpit
    a = reviewer
    set_class(a, "horse")
    choose(a, "f-status", "pending")
    pending = store.query(suspects=None, label="horse", status="pending", limit=-1)["id"].tolist()
    wait_msg(a, "#review-counter", f"of {len(pending)} in this view")
    before = shown_filters(a)
    assert before == {"show": SHOW_ALL, "cls": "horse", "status": "pending"}
    target = next(s for s in pending[3:] if s != card(a)[0])
    open_from_map(a, target)
    assert shown_filters(a) == before  # Review rendered the card and its filters at once
    wait_msg(a, "#review-msg", "your filters are unchanged")
    assert f"of {len(pending)} in this view" in a.inner_text("#review-counter")
    a.screenshot(path=str(artifacts / "cockpit-1-map-click-review.png"))
    # Show the clean samples, then a suspect of another class: Class and Show widen, Status stays
    a.locator("#f-show label").nth(2).click()
    wait_msg(a, "#review-counter", f"of {store.count_query(suspects=False, label='horse', status='pending')} in")
    other = store.query(suspects=True, label="ship", status="pending", limit=1)["id"].iloc[0]
    open_from_map(a, other)
    wait_msg(a, "#review-msg", "outside your filters")
    msg = a.inner_text("#review-msg")
    assert "Show clean (spot-check) → all (most likely wrong first)" in msg and "Class horse → all" in msg, msg
    assert "Status" not in msg, msg
    a.wait_for_function("() => document.querySelector('#f-class input').value === 'all'", timeout=20_000)
    assert shown_filters(a) == {"show": SHOW_ALL, "cls": "all", "status": "pending"}
    a.screenshot(path=str(artifacts / "cockpit-2-map-click-widened.png"))


def counted(page, store) -> None:
    """Wait until the counter shows the store's count of reviewed suspects (without a key press)."""
    wait_msg(page, "#review-counter", f"Reviewed {store.count()['reviewed']} / ")


def test_counter_follows_grid_and_batch_and_undo_clears_the_batch_message(cockpit, reviewer):
    """Item 18: the counter after grid and batch actions; item 22: "Accepted N…" goes when that batch is undone."""
    _, store, _ = cockpit
    a = reviewer
    set_class(a, "deer")
    a.locator("#f-show label").first.click()  # suspects: each decision counts
    wait_msg(a, "#review-counter", f"of {store.count_query(suspects=True, label='deer')} in this view")
    counted(a, store)
    a.get_by_role("tab", name="Grid").click()
    a.wait_for_selector("#grid .tile")
    tiles = a.locator("#grid .tile")
    tiles.nth(0).click()
    tiles.nth(1).click()
    before = store.count()["reviewed"]
    a.click("#btn-grid-keep")
    wait_msg(a, "#grid-msg", "Kept 2 sample(s) as one batch")
    assert store.count()["reviewed"] == before + 2
    counted(a, store)
    a.click("#btn-grid-undo")
    wait_msg(a, "#grid-msg", "Undid a batch of 2")
    counted(a, store)
    # batch accept in card mode, then u: the counter follows, the batch's message goes
    a.get_by_role("tab", name="Card").click()
    a.wait_for_selector("#card-id")
    a.locator("#batch-t input[type=number]").fill("0")
    a.locator("#batch-t input[type=number]").press("Enter")
    a.click("#btn-batch")
    wait_msg(a, "#batch-msg", "Will accept")
    a.click("#btn-batch-confirm")
    wait_msg(a, "#batch-msg", "Accepted ")
    counted(a, store)
    a.locator("#card-id").click()  # focus out of the number field: keys go to the card
    a.keyboard.press("u")
    wait_msg(a, "#review-msg", "Undid a batch of")
    a.wait_for_function("() => document.querySelector('#batch-msg').innerText.trim() === ''", timeout=20_000)
    counted(a, store)
    # a batch undone with the Undo button (Gradio's route) clears it too
    a.click("#btn-batch")
    wait_msg(a, "#batch-msg", "Will accept")
    a.click("#btn-batch-confirm")
    wait_msg(a, "#batch-msg", "Accepted ")
    a.click("#btn-undo")
    wait_msg(a, "#review-msg", "Undid a batch of")
    a.wait_for_function("() => document.querySelector('#batch-msg').innerText.trim() === ''", timeout=20_000)
    counted(a, store)


def test_z_shows_the_image_large_in_view_and_esc_or_z_closes_it(cockpit, reviewer, artifacts):
    """Item 21: the 64 px original fills ~80% of the viewport's height, pixelated, over the page."""
    a = reviewer
    set_class(a, "frog")
    sid = card(a)[0]
    a.keyboard.press("z")
    a.wait_for_function("() => { const i = document.querySelector('#zoom img'); "
                        "return i && i.complete && i.naturalWidth === 64; }", timeout=20_000)
    assert f"{sid} · 64×64 px" in a.inner_text("#zoom")
    box = a.locator("#zoom img").bounding_box()
    assert 0.7 * 900 <= box["height"] <= 900 and box["y"] >= 0 and box["y"] + box["height"] <= 900, box
    assert 0 <= box["x"] and box["x"] + box["width"] <= 1440, box
    assert a.evaluate("() => getComputedStyle(document.querySelector('#zoom img')).imageRendering") == "pixelated"
    centre = a.evaluate(f"() => document.elementFromPoint({box['x'] + box['width'] / 2}, "
                        f"{box['y'] + box['height'] / 2}).closest('#zoom') !== null")
    assert centre  # on top of the page, not under it
    a.screenshot(path=str(artifacts / "cockpit-3-zoom.png"))
    a.keyboard.press("Escape")
    a.wait_for_function("() => !document.getElementById('zoom')", timeout=5_000)
    a.keyboard.press("z")
    a.wait_for_selector("#zoom img", state="visible", timeout=20_000)
    a.keyboard.press("z")
    a.wait_for_function("() => !document.getElementById('zoom')", timeout=5_000)
    assert card(a)[0] == sid


def test_job_messages_give_way_to_the_outcome(cockpit, browser, tiny_clip_dir, artifacts):
    """Item 22: "Detection started.", "Cancelling…", "Audit started.", "Training started." are replaced by the
    job's outcome when it ends; while a detection runs, the previous run's summary says it is the previous."""
    server, _, mini = cockpit
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.add_init_script(KEEP_TIMINGS)
    try:
        page.goto(server.url)
        wait_msg(page, "#data-msg", "400 images")
        page.locator("#data-path textarea").fill(str(mini))
        page.click("#btn-load")
        wait_msg(page, "#data-msg", "80 images")
        page.get_by_role("tab", name="2 · Detect").click()
        page.locator("#model textarea").fill(str(tiny_clip_dir))
        page.click("#btn-detect")
        wait_msg(page, "#detect-msg", "Detection started.")
        wait_msg(page, "#detect-msg", "Detection finished", timeout=120_000)
        wait_msg(page, "#detect-summary", "suspects of 80 samples")
        # a long one, cancelled: the summary says the previous run is still the one in Review meanwhile
        page.locator("#det-epochs input").fill("5000")
        page.click("#btn-detect")
        wait_msg(page, "#detect-msg", "Detection started.")
        wait_msg(page, "#detect-summary", "Review shows the previous run's results")
        page.click("#btn-cancel-detect")
        wait_msg(page, "#detect-msg", "Cancelling…")
        wait_msg(page, "#detect-msg", "Detection cancelled", timeout=120_000)
        wait_msg(page, "#detect-summary", "suspects of 80 samples")
        page.click("#btn-audit")
        wait_msg(page, "#audit-msg", "Audit started.")
        wait_msg(page, "#audit-msg", "Audit finished", timeout=120_000)
        page.screenshot(path=str(artifacts / "cockpit-4-detect-messages.png"))
        page.get_by_role("tab", name="5 · Train").click()
        page.locator("#train-epochs input").fill("1")
        page.get_by_label("+ pseudo-labels for unreviewed suspects").check()  # a random CLIP flags them all
        page.click("#btn-train")
        wait_msg(page, "#train-msg", "Training started.")
        wait_msg(page, "#train-msg", "Training finished", timeout=120_000)
        for sel in ("#detect-msg", "#audit-msg", "#train-msg"):
            text = page.inner_text(sel)
            assert "started" not in text and "Cancelling" not in text, (sel, text)
        assert sends_no_event_for(page, 3.5) == 0  # the job timers turned themselves off once it was shown
    finally:
        page.close()



def grid_heads(page) -> list[str]:
    return page.eval_on_selector_all("#grid .group h4", "els => els.map(e => e.innerText)")


def wait_grid_of(page, cls: str, timeout=30_000) -> None:
    """Wait until the grid is on screen and every group in it is of class ``cls``."""
    page.wait_for_function("(c) => { const g = document.getElementById('grid'); if (!g || g.offsetParent === null) "
                           "return false; const h = Array.from(g.querySelectorAll('.group h4')); "
                           "return h.length > 0 && h.every(e => e.innerText.startsWith('labelled ' + c + ',')); }",
                           arg=cls, timeout=timeout)


def test_grid_follows_a_filter_edit(cockpit, reviewer, artifacts):
    """Item 20: after a filter edit in Grid mode the grid kept the old filter's tiles, and a click on the Grid
    sub-tab (already selected) did nothing: the click looked lost. A click on Grid right after a filter edit
    in Card mode shows the new filter's tiles."""
    a = reviewer
    a.get_by_role("tab", name="Grid").click()
    a.wait_for_selector("#grid .tile", timeout=30_000)
    before = grid_heads(a)
    assert before and not all(h.startswith("labelled dog,") for h in before), before
    choose(a, "f-class", "dog")
    a.get_by_role("tab", name="Grid").click()  # the reviewer's retry: changes nothing by itself
    wait_grid_of(a, "dog")
    a.screenshot(path=str(artifacts / "cockpit-5-grid-after-filter.png"))
    a.get_by_role("tab", name="Card").click()
    a.wait_for_selector("#card-id", state="visible")
    choose(a, "f-class", "cat")  # type, Enter; the filter's render is on its way when the click comes
    a.get_by_role("tab", name="Grid").click()
    wait_grid_of(a, "cat")


def name_reviewer(page, name: str) -> None:
    """Type this browser's reviewer name (no login) and leave the field (Enter)."""
    field = page.locator("#reviewer-name textarea, #reviewer-name input").first
    field.fill(name)
    field.press("Enter")


def test_without_login_each_browser_names_its_reviewer(cockpit, browser):
    """Item 19: without --auth every reviewer was "local", in conflict messages and in the export. Each browser
    now gives a name (kept in the browser), recorded with its decisions; the page says a team needs a login."""
    server, store, _ = cockpit
    a, b = open_reviewers(browser, server.url, 2)
    try:
        for page in (a, b):
            page.wait_for_function("() => document.querySelector('#f-order input').value.startsWith('most likely')",
                                   timeout=30_000)
            assert "--auth-file" in page.inner_text("#no-login-note")  # says how a team gets logins
            assert page.locator("#no-login-note").is_visible()
        name_reviewer(a, "Ana")
        name_reviewer(b, "  Ben\tOkafor ")  # tidied: one space between words
        for page in (a, b):
            set_class(page, "automobile")
        x = card(a)[0]
        assert card(b)[0] == x
        a.keyboard.press("k")
        wait_msg(a, "#review-msg", f"kept for {x}")
        b.keyboard.press("x")  # b still shows x as it was: refused, and b is told who decided it
        wait_msg(b, "#review-msg", "now kept by Ana")
        wait_msg(b, "#card", "by Ana")
        b.keyboard.press("j")
        b.wait_for_function("(s) => document.getElementById('card').dataset.sid !== s", arg=x, timeout=20_000)
        y = card(b)[0]
        b.keyboard.press("x")
        wait_msg(b, "#review-msg", f"excluded for {y}")
        exp = store.export().set_index("path")
        assert exp.loc[x, "decided_by"] == "Ana" and exp.loc[y, "decided_by"] == "Ben Okafor"
        a.reload()  # the name stays with the browser
        a.wait_for_function("() => { const f = document.querySelector('#reviewer-name textarea, #reviewer-name input');"
                            " return f && f.value === 'Ana'; }", timeout=30_000)
    finally:
        a.context.close()
        b.context.close()


def test_counter_follows_another_reviewer_without_a_key(cockpit, browser):
    """Item 18: "Reviewed 26 / 59" went stale after another reviewer's decisions until the next key press."""
    server, store, _ = cockpit
    a, b = open_reviewers(browser, server.url, 2)
    try:
        for page in (a, b):
            set_class(page, "airplane")
        counted(a, store)
        before = store.count()["reviewed"]
        for _ in range(2):
            sid = card(b)[0]
            b.keyboard.press("k")
            wait_msg(b, "#review-msg", f"kept for {sid}")
        assert store.count()["reviewed"] == before + 2
        counted(a, store)  # a pressed nothing
        b.get_by_role("tab", name="Grid").click()  # a grid batch, too
        b.wait_for_selector("#grid .tile")
        b.locator("#grid .tile").nth(0).click()
        b.click("#btn-grid-exclude")
        wait_msg(b, "#grid-msg", "Excluded 1 sample(s)")
        counted(a, store)
    finally:
        a.context.close()
        b.context.close()


def in_view(page, sel: str) -> dict:
    """``sel``'s box, asserted on screen at the top of the page at 1440x900 (not below the fold)."""
    box = page.locator(sel).first.bounding_box()
    assert box is not None and box["height"] > 0 and 0 <= box["y"] and box["y"] + box["height"] <= 900, (sel, box)
    return box


def test_results_are_above_the_fold(cockpit, reviewer, artifacts):
    """Item 22: the evidence strip in Review (was at y ~840), Detect's result summary (~1300) and the data issues
    in the Dataset tab (below the thumbnails) are in view at 1440x900 without scrolling."""
    a = reviewer
    set_class(a, "bird")
    # a page of birds kept from the grid: the evidence strip shows trusted examples (thumbnails) at its full
    # height, and the queue is re-ranked, so the counter carries its longest note
    a.get_by_role("tab", name="Grid").click()
    a.wait_for_selector("#grid .tile", timeout=30_000)
    a.keyboard.press("a")
    a.keyboard.press("k")
    wait_msg(a, "#grid-msg", "Kept ")
    wait_msg(a, "#queue-note", "re-ranked", timeout=60_000)
    a.get_by_role("tab", name="Card").click()
    a.wait_for_selector("#card-id", state="visible")
    sid = card(a)[0]
    a.keyboard.press("j")  # another card: its evidence strip is fetched anew
    a.wait_for_function("(s) => document.getElementById('card').dataset.sid !== s", arg=sid, timeout=20_000)
    a.wait_for_function("() => { const i = Array.from(document.querySelectorAll('#evidence figure img')); "
                        "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0); }", timeout=30_000)
    a.evaluate("() => window.scrollTo(0, 0)")
    a.screenshot(path=str(artifacts / "cockpit-6-review-in-view.png"))
    for sel in ("#card", "#evidence", "#btn-keep", "#btn-next", "#keys-help", "#btn-batch", "#batch-msg"):
        in_view(a, sel)
    a.get_by_role("tab", name="2 · Detect").click()
    wait_msg(a, "#detect-summary", "suspects of")
    in_view(a, "#detect-summary")
    a.screenshot(path=str(artifacts / "cockpit-7-detect-in-view.png"))
    a.get_by_role("tab", name="1 · Dataset").click()
    a.locator("#issue-counts").wait_for(state="visible", timeout=30_000)
    wait_msg(a, "#audit-issues-msg", "Data issues")
    in_view(a, "#audit-issues-msg")
    in_view(a, "#issue-counts")
    a.screenshot(path=str(artifacts / "cockpit-8-dataset-in-view.png"))


# ringed (flagged) circles of the map: how many, which another circle covers at their centre (and whose centre
# no other circle shares, so one click there must open them), and which no click at their centre ever opens
# (window.deftMapPick: the page's choice for a click at a point, after the sample it opened last there)
RINGED_JS = """() => {
  const all = Array.from(document.querySelectorAll('#map .pt'));
  const centre = (c) => { const b = c.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; };
  const out = {n: 0, covered: [], unreachable: []};
  for (const c of document.querySelectorAll('#map .pt.flag')) {
    out.n++;
    const [x, y] = centre(c);
    const alone = all.every(o => o === c || Math.hypot(centre(o)[0] - x, centre(o)[1] - y) > 1);
    if (document.elementFromPoint(x, y) !== c && alone) out.covered.push([c.dataset.sid, x, y]);
    if (typeof window.deftMapPick !== 'function') continue;
    let after = '', ok = false;
    for (let i = 0; i < 8 && !ok; i++) { after = window.deftMapPick(x, y, after); ok = after === c.dataset.sid; }
    if (!ok) out.unreachable.push(c.dataset.sid);
  }
  return out;
}"""


def test_every_ringed_point_on_the_map_opens_with_a_click(cockpit, reviewer, artifacts):
    """Item 17 (rest): ringed points that other circles covered could not be clicked; a click now opens the point
    whose centre is nearest, so a click at any ringed point's centre opens it (on a shared spot: in turn)."""
    a = reviewer
    a.set_viewport_size({"width": 1440, "height": 1600})  # the whole map on screen: elementFromPoint sees it all
    a.get_by_role("tab", name="Map").click()
    a.wait_for_selector("#map svg .pt.flag", timeout=30_000)
    a.screenshot(path=str(artifacts / "cockpit-9-map.png"))
    first = a.evaluate(RINGED_JS)
    assert first["n"] > 50 and first["covered"], first  # the tiny CLIP flags every sample: they overlap
    sid, x, y = first["covered"][0]
    a.mouse.click(x, y)  # a real click at the centre of a ringed point that another circle lies over
    a.wait_for_function("(s) => { const e = document.getElementById('card-id'); "
                        "return e && e.offsetParent !== null && e.innerText.trim() === s; }", arg=sid,
                        timeout=30_000)
    a.get_by_role("tab", name="Map").click()
    a.wait_for_selector("#map svg .pt.flag", timeout=30_000)
    again = a.evaluate(RINGED_JS)
    assert again["n"] == first["n"] and again["unreachable"] == [], again["unreachable"]
