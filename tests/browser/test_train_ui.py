"""The Train tab and the tab bar as a reviewer sees them (issue 19, item 24), in a real browser at 1440x900:
before any training run no empty "1 2 3" tables; after a training run and a page reload, its curve, result line
and confusion matrix are back (read from the run folder); every tab is numbered; the filters' "no constraint"
choice has a visible label."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from .conftest import DEMO, Server, detect_into

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def wait_text(page, sel, needle, timeout=60_000):
    page.wait_for_function(
        "([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
        arg=[sel, needle], timeout=timeout)


def test_train_tab_before_a_run_and_after_a_reload(tmp_path, tiny_clip_dir, browser, artifacts):
    mini = tmp_path / "mini"  # 6 demo images per class: detection and training stay short on any CPU
    for cls in sorted(p for p in DEMO.iterdir() if p.is_dir()):
        (mini / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:6]:
            shutil.copy(f, mini / cls.name / f.name)
    runs = tmp_path / "runs"
    detect_into(runs, mini, tiny_clip_dir)
    server = Server(["--data", str(mini), "--model", str(tiny_clip_dir), "--runs", str(runs)],
                    tmp_path / "server.log").start()
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server.url)
        wait_text(page, "#data-msg", "60 images")
        tabs = [t.strip() for t in page.get_by_role("tab").all_inner_texts()]
        assert len(tabs) == 6 and all(re.match(r"\d · ", t) for t in tabs), tabs  # the Map tab was unnumbered
        page.get_by_role("tab", name="3 · Review").click()
        page.wait_for_selector("#card-id")
        for sel in ("#f-class input", "#f-status input"):  # a blank field (and a blank first option) before
            assert page.locator(sel).input_value() == "all", sel

        page.get_by_role("tab", name="5 · Train").click()
        page.wait_for_selector("#btn-train")
        assert not page.locator("#train-runs").is_visible()  # no run yet: no empty "1 2 3" tables
        assert not page.locator("#train-confusion").is_visible()
        page.locator("#train-epochs input").fill("2")
        page.get_by_label("+ pseudo-labels for unreviewed suspects").check()  # a random CLIP flags them all
        page.click("#btn-train")
        wait_text(page, "#train-msg", "Training finished", timeout=300_000)
        wait_text(page, "#train-confusion", "label")

        page.reload()  # a new session: nothing in memory, all from the run folder
        wait_text(page, "#data-msg", "60 images")
        page.get_by_role("tab", name="5 · Train").click()
        wait_text(page, "#train-summary", "Held-out accuracy", timeout=60_000)
        assert "2/2 epochs" in page.inner_text("#train-summary")
        page.locator("#train-confusion").wait_for(state="visible", timeout=30_000)
        confusion = page.inner_text("#train-confusion")
        assert "airplane" in confusion or "ship" in confusion, confusion
        wait_text(page, "#train-runs", "2/2")
        page.locator("#train-curve .vega-embed").wait_for(state="visible", timeout=30_000)  # the curve is drawn
        page.screenshot(path=str(artifacts / "train-after-reload.png"))

        # item 24 (rest): a run cancelled after some epochs is listed with the epochs it finished, not 0/N
        page.locator("#train-epochs input").fill("40")
        page.get_by_label("+ pseudo-labels for unreviewed suspects").check()
        page.click("#btn-train")
        wait_text(page, "#train-msg", "Training started.")
        log = next(runs.glob("*/detect-*")) / "phase2" / "002" / "log.jsonl"
        deadline = time.monotonic() + 300
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline, ("two epochs did not finish in time", page.inner_text("#train-msg"))
            page.wait_for_timeout(200)
        page.click("#btn-cancel-train")
        wait_text(page, "#train-msg", "Training cancelled", timeout=120_000)
        done = len(log.read_text().splitlines())
        assert done >= 2
        wait_text(page, "#train-runs", "interrupted")
        wait_text(page, "#train-runs", f"{done}/40")
        page.screenshot(path=str(artifacts / "train-cancelled.png"))
    finally:
        server.stop()
