"""Audit in a real browser (real ``python app.py``, demo set with its PLANTED.csv, tiny test CLIP):
detect -> Audit -> methods table -> data issues in the Dataset tab -> Map -> click a point -> that
sample's card in Review."""

import pandas as pd
import pytest

from deft.audit import review_order
from deft.audit_view import issue_mask

from ..conftest import ROOT
from .conftest import Server
from .test_e2e import open_tab, text, wait_text
from .test_review import choose

pytestmark = [pytest.mark.slow, pytest.mark.browser]
DEMO = ROOT / "assets" / "demo"


def test_audit_methods_table_map_and_point_into_review(tmp_path, tiny_clip_dir, browser, artifacts):
    args = ["--data", str(DEMO), "--model", str(tiny_clip_dir), "--runs", str(tmp_path / "runs"), "--epochs", "1"]
    server = Server(args, tmp_path / "server.log").start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server.url)
        wait_text(page, "#data-msg", "400 images, 10 classes")
        open_tab(page, "2 · Detect")
        page.locator("#model textarea").fill(str(tiny_clip_dir))
        page.click("#btn-detect")
        wait_text(page, "#detect-summary", "suspects of 400 samples", timeout=120_000)
        wait_text(page, "#methods-msg", "No audit yet")
        assert not page.locator("#methods-table").is_visible()  # no empty "1 2 3" table before an audit
        page.click("#btn-audit")
        wait_text(page, "#methods-msg", "Methods side by side", timeout=120_000)  # PLANTED.csv is ground truth
        table = text(page, "#methods-table")
        for name in ("deft", "zeroshot", "cleanlab", "precision", "recall", "F1", "AUROC"):
            assert name in table, table
        page.screenshot(path=str(artifacts / "audit-1-methods.png"), full_page=True)
        open_tab(page, "1 · Dataset")
        wait_text(page, "#audit-issues-msg", "400 reviewable samples")
        counts = text(page, "#issue-counts")
        for name in ("near duplicate", "outlier", "blurry", "dark"):
            assert name in counts, counts
        assert "airplane" in text(page, "#class-report")
        open_tab(page, "Map")
        page.wait_for_selector("#map svg .pt")
        assert page.locator("#map .pt").count() == 400  # every reviewable sample (under the display cap)
        point = page.locator("#map .pt.flag").first  # a suspect / data-issue point, drawn on top
        sid = point.get_attribute("data-sid")
        page.screenshot(path=str(artifacts / "audit-2-map.png"), full_page=True)
        point.dispatch_event("click")  # on the point itself: a click at its centre may land on one drawn over it
        page.wait_for_function("(s) => { const e = document.querySelector('#card-id'); "
                               "return e && e.offsetParent !== null && e.innerText.trim() === s; }",
                               arg=sid, timeout=30_000)
        assert page.locator("#card").get_attribute("data-sid") == sid
        # evidence under the card: the nearest trusted examples of its given label, for this very sample
        page.wait_for_function("(s) => { const e = document.querySelector('#evidence'); "
                               "return e && e.dataset.sid === s; }", arg=sid, timeout=30_000)
        label = sid.split("/")[0]
        assert f"given label: clean {label}" in text(page, "#evidence")
        page.screenshot(path=str(artifacts / "audit-3-review.png"), full_page=True)
        # Review filtered on a data issue: only outliers among the suspects, counted as the run's files say
        run = next((tmp_path / "runs").glob("*/detect-*/audit.parquet")).parent
        table, scores = pd.read_parquet(run / "audit.parquet"), pd.read_parquet(run / "scores.parquet")
        suspects = set(scores.loc[~scores["is_clean"], "id"])
        outliers = {i for i in table.loc[issue_mask(table, "outlier"), "id"] if i in suspects}
        assert outliers
        choose(page, "f-issue", "outlier")
        wait_text(page, "#review-counter", f"of {len(outliers)} in this view")
        assert text(page, "#card-id") in outliers
        # ordered by agreement of the methods: the card on screen stays, at its place in the audit's order
        cur = text(page, "#card-id")
        want = [i for i in review_order(table, "agreement")["id"] if i in outliers]
        choose(page, "f-order", "agreement (flagged by most methods first)")
        wait_text(page, "#review-counter", f"item {want.index(cur) + 1} of {len(outliers)} in this view")
        assert text(page, "#card-id") == cur
    finally:
        server.stop()
