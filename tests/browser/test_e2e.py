"""End to end in a real browser on the bundled demo with a tiny test model:
load -> detect -> review 3 suspects by keyboard -> undo -> kill -9 -> restart -> same decisions
-> train -> export, and the CSV rows are asserted."""

import pandas as pd
import pytest

from deft.storage.export import EXPORT_COLUMNS

from ..conftest import ROOT
from .conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.browser]
DEMO = ROOT / "assets" / "demo"


def text(page, sel):
    return page.inner_text(sel).strip()


def wait_text(page, sel, needle, timeout=60_000):
    page.wait_for_function(
        "([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
        arg=[sel, needle], timeout=timeout)


def wait_card_change(page, old_id, timeout=30_000):
    page.wait_for_function(
        "(old) => { const e = document.querySelector('#card-id'); return e && e.innerText.trim() !== old; }",
        arg=old_id, timeout=timeout)


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def test_review_flow_survives_kill9(tmp_path, tiny_clip_dir, browser, artifacts):
    runs = tmp_path / "runs"
    args = ["--data", str(DEMO), "--model", str(tiny_clip_dir), "--runs", str(runs), "--epochs", "1",
            "--train-epochs", "1"]
    server = Server(args, tmp_path / "server.log").start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server.url)
        # 1. dataset
        page.locator("#data-path textarea").fill(str(DEMO))
        page.click("#btn-load")
        wait_text(page, "#data-msg", "400 images, 10 classes")
        page.screenshot(path=str(artifacts / "1-dataset.png"), full_page=True)
        # 2. detect
        open_tab(page, "2 · Detect")
        # offline: the default hub checkpoint cannot be fetched -> one sentence saying how to pass a folder
        page.locator("#model textarea").fill("openai/clip-vit-base-patch16")
        page.click("#btn-detect")
        wait_text(page, "#detect-progress", "Could not load the CLIP checkpoint 'openai/clip-vit-base-patch16'")
        assert "--model ./clip" in text(page, "#detect-progress")
        page.screenshot(path=str(artifacts / "2a-detect-offline.png"), full_page=True)
        page.locator("#model textarea").fill(str(tiny_clip_dir))
        page.click("#btn-detect")
        wait_text(page, "#detect-summary", "suspects of 400 samples", timeout=300_000)
        n_suspects = int(text(page, "#detect-summary").split()[0])
        assert n_suspects >= 3
        # a tiny random checkpoint flags (almost) everything: the screen says so instead of pretending
        assert ("look like noise" in text(page, "#detect-summary")) == (n_suspects >= 360)
        page.screenshot(path=str(artifacts / "2-detect.png"), full_page=True)
        # 3. review three suspects by keyboard
        open_tab(page, "3 · Review")
        page.wait_for_selector("#card-id")
        wait_text(page, "#review-counter", f"Reviewed 0 / {n_suspects} suspects")
        id1 = text(page, "#card-id")
        page.keyboard.press("1")  # accept the suggestion
        wait_card_change(page, id1)
        id2 = text(page, "#card-id")
        s2 = page.locator("#btn-s2")  # "2: relabel <class> (NN%) <source>"
        assert s2.get_attribute("data-act") == "relabel", text(page, "#btn-s2")
        relabel_to = s2.get_attribute("data-label")
        assert relabel_to != text(page, "#card-label")
        page.keyboard.press("2")  # relabel to suggestion 2
        wait_card_change(page, id2)
        id3 = text(page, "#card-id")
        page.keyboard.press("x")  # exclude
        wait_card_change(page, id3)
        wait_text(page, "#review-counter", f"Reviewed 3 / {n_suspects}")
        page.keyboard.press("u")  # undo the exclusion: back on the third card, pending again
        page.wait_for_function("(id) => document.querySelector('#card-id').innerText.trim() === id", arg=id3)
        wait_text(page, "#review-counter", f"Reviewed 2 / {n_suspects}")
        assert text(page, "#card-status") == "pending"
        page.screenshot(path=str(artifacts / "3-review.png"), full_page=True)

        # 4. kill -9 and restart: the confirmed decisions are still there; a key pressed while the server is
        # down says it was not saved (and is not applied later)
        server.kill9()
        page.keyboard.press("k")
        wait_text(page, "#review-msg", "not saved")
        assert text(page, "#card-id") == id3 and text(page, "#card-status") == "pending"
        server.start()
        page.goto(server.url)
        open_tab(page, "3 · Review")
        wait_text(page, "#review-counter", f"Reviewed 2 / {n_suspects}")
        page.screenshot(path=str(artifacts / "4-review-after-restart.png"), full_page=True)

        # 5. train on clean + reviewed + pseudo-labels
        open_tab(page, "5 · Train")
        page.get_by_label("+ pseudo-labels for unreviewed suspects").check()
        page.click("#btn-train")
        wait_text(page, "#train-summary", "Held-out accuracy", timeout=300_000)
        wait_text(page, "#train-runs", "pseudo")  # the run is listed with its mode
        page.screenshot(path=str(artifacts / "5-train.png"), full_page=True)

        # 6. export, downloaded through the browser
        open_tab(page, "6 · Export")
        page.click("#btn-export")
        wait_text(page, "#export-msg", "Exported 400 rows")
        with page.expect_download() as dl:
            page.locator('#export-files a[download="cleaned_labels.csv"]').click()
        csv_path = tmp_path / "downloaded.csv"
        dl.value.save_as(csv_path)
        page.screenshot(path=str(artifacts / "6-export.png"), full_page=True)
    finally:
        server.stop()

    df = pd.read_csv(csv_path, keep_default_na=False)
    assert list(df.columns) == EXPORT_COLUMNS and len(df) == 400
    rows = df.set_index("path")
    assert rows.loc[id1, "status"] == "accepted"
    assert rows.loc[id1, "final_label"] == rows.loc[id1, "suggestion"]
    assert rows.loc[id2, "status"] == "relabelled" and rows.loc[id2, "final_label"] == relabel_to
    assert rows.loc[id3, "status"] == "pending" and rows.loc[id3, "final_label"] == ""
    assert rows.loc[id1, "decided_at"] and rows.loc[id2, "decided_at"]
    assert rows.loc[id1, "decided_by"] == "local"
    assert (df["status"] != "pending").sum() + (df["status"] == "pending").sum() == 400
    assert set(df["status"]) <= {"clean", "pending", "accepted", "relabelled"}
