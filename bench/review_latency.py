"""Review latency in the browser: key press -> next card rendered, at 1k, 100k and 1M samples.

For each size the bench builds an image folder of N files (hard links to the bundled demo
images), a detection run with synthetic scores (every sample a suspect, so the queue is N
long), starts the real app (``python app.py``), and drives Debian's chromium with Playwright.
A key press is timed inside the page: from the ``keydown`` event to the first animation frame
after the card's sample id or version changed (what the reviewer sees), once the page has settled after the
first card (its start-up events answered); ``server_*_ms`` are the key route's own share (its Server-Timing).
The key sequence mixes keep, exclude, accept (1), next (j) and undo (u), all committed to SQLite
(WAL, synchronous=FULL).
Keys travel the app's lean route (``POST /deft/act``, :mod:`deft.ui.key_route`), as they do for a reviewer.
By default the run also holds synthetic learning-queue signals (as ``deft audit`` leaves them), so the
server refits and re-ranks the queue every 25 decisions in the background while the keys are timed
(``--no-learning``: the app before an audit); the keys go on past ``--presses`` until a re-rank has
finished (at 1M the learner loads for ~20 s and refits for ~40 s), so every size's numbers include keys
pressed beside one. Each size also times the first card of the fresh server (no review database yet: the
detection's scores are loaded into one) and, after stopping it, of the same server started again
(``restart_first_card_s``: nothing on disk is recomputed); ``server_up_s`` is the time before the app
answers HTTP, which the first-card times (page opened -> card shown) do not include.

    python bench/review_latency.py --sizes 1000 100000 1000000 [--presses 120] [--out bench/results/review_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

try:  # python -m bench.review_latency (the repository root is the cwd)
    from bench.common import ROOT
except ModuleNotFoundError:  # python3 bench/review_latency.py: bench/ is on sys.path; common puts the repo root there
    from common import ROOT  # noqa: I001

from deft.core.config import Phase1Config  # noqa: E402
from deft.review import dataset_key  # noqa: E402
from deft.storage.load import load_dataset  # noqa: E402
from deft.storage.run import Run  # noqa: E402
from deft.storage.store import SAMPLE_COLUMNS  # noqa: E402

DEMO = ROOT / "assets" / "demo"
TIMER_JS = """
performance.setResourceTimingBufferSize(1000000);  // SETTLED_JS reads them (250 by default)
window.__lat = []; window.__t0 = null; window.__last = null;
document.addEventListener('keydown', () => { window.__t0 = performance.now(); }, true);
new MutationObserver(() => {
  const c = document.getElementById('card');
  if (!c || !c.dataset.sid) return;
  const k = c.dataset.sid + '@' + c.dataset.ver;
  if (k === window.__last) return;
  window.__last = k;
  const t0 = window.__t0;
  if (t0 === null) return;
  window.__t0 = null;
  requestAnimationFrame(() => window.__lat.push(performance.now() - t0));
}).observe(document, {subtree: true, childList: true, attributes: true});
window.__srv = [];  // each key route answer's Server-Timing: thread wait + review handler, ms
new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.name.includes('/deft/act'))
  window.__srv.push((e.serverTiming || []).reduce((a, x) => a + x.duration, 0)); }).observe({type: 'resource'});
"""
# The page has settled: its start-up events (the page-load chain, the first card's evidence strip) have all been
# answered (Gradio's event stream closed after the last one joined) and nothing new started for 0.5 s.
SETTLED_JS = """() => {
  const r = performance.getEntriesByType('resource'), now = performance.now();
  const joins = r.filter(e => e.name.includes('queue/join')).map(e => e.startTime);
  const ends = r.filter(e => e.name.includes('queue/data')).map(e => e.responseEnd);
  if (!joins.length || !ends.length) return false;
  const last = Math.max(...ends);
  return last > Math.max(...joins) && now - last > 500;
}"""


def make_folder(n: int, out: Path) -> Path:
    """``out/<class>/s<i>.jpg`` for i < n: hard links to the demo images (no copies)."""
    src = sorted(DEMO.rglob("*.jpg"))
    base = out / "_src"
    base.mkdir(parents=True)
    local = []
    for i, p in enumerate(src):  # one copy on this file system, then links
        q = base / f"{i}.jpg"
        shutil.copyfile(p, q)
        local.append((p.parent.name, q))
    data = out / "data"
    for i in range(n):
        cls, q = local[i % len(local)]
        (data / cls).mkdir(parents=True, exist_ok=True)
        os.link(q, data / cls / f"s{i:07d}.jpg")
    shutil.rmtree(base)
    return data


def fake_scores(ids: pd.Series, labels: pd.Series, classes: list[str], seed: int = 0) -> pd.DataFrame:
    """Synthetic scores: every sample a suspect, suggestions never equal to the given label."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    names = np.asarray(classes, dtype=object)
    lab = np.searchsorted(names, labels.to_numpy())

    def other(k: int) -> np.ndarray:  # the k-th class after the given one: never the given label
        return names[(lab + 1 + k) % len(classes)]

    margin = rng.normal(-0.2, 0.1, n)
    df = pd.DataFrame({
        "id": ids.to_numpy(), "label": labels.to_numpy(), "is_clean": np.zeros(n, bool),
        "sim_pos": rng.random(n), "sim_neg": rng.random(n), "margin": margin, "p_clean": rng.random(n),
        "pred": other(0), "pred_conf": rng.random(n), "zs1": other(0), "zs1_conf": rng.random(n),
        "zs2": other(1), "zs2_conf": rng.random(n), "zs3": other(2), "zs3_conf": rng.random(n),
        "suggestion": other(0), "suggestion_conf": rng.random(n),
    })
    return df.reindex(columns=SAMPLE_COLUMNS)  # no audit: p_wrong and the combined suggestions are empty


def fake_signals(scores: pd.DataFrame, classes: list[str], seed: int = 0):
    """Synthetic learning-queue signals of the real shapes (14 features, four top-5 sources, 10 neighbours,
    three methods' flags), so the app's QueueLearner refits and re-ranks during the bench as after an audit."""
    from deft.core import ranking as rk
    from deft.learning import Signals

    rng = np.random.default_rng(seed + 1)
    n, k = len(scores), len(classes)
    labels = np.searchsorted(np.asarray(classes, dtype=object), scores["label"].to_numpy())
    features = pd.DataFrame(rng.normal(size=(n, 14)), columns=[f"f{j}" for j in range(14)])
    sources = {name: rk.topk(rng.dirichlet(np.ones(k), n), labels, 5)
               for name in ("prompts", "zeroshot", "probe", "neighbours")}
    nn_idx = rng.integers(0, n, (n, 10))
    return Signals(scores["id"].astype(str).to_numpy(dtype=object), labels.astype(np.int64), list(classes),
                   features, sources, nn_idx, rng.random((n, 10)).astype(np.float32), rng.random((n, 3)) < 0.3)


def prepare(n: int, work: Path, learning: bool = False) -> tuple[Path, Path]:
    """An image folder of ``n`` samples and a runs folder holding one finished detection on it; with
    ``learning``, also what ``deft audit`` leaves for the learning queue (signals, the combined order)."""
    data = make_folder(n, work / f"n{n}")
    ds = load_dataset(data, verify=False)
    runs = work / f"runs{n}"
    run = Run.create(runs / dataset_key(str(data)) / "detect-bench", ds, Phase1Config(model="bench"))
    scores = fake_scores(ds.samples["id"], ds.samples["label"], ds.classes)
    if learning:
        from deft.learning import initial_ranking, signals_path
        from deft.storage.atomic import write_parquet

        sig = fake_signals(scores, ds.classes)
        sig.save(signals_path(run.path))
        ranked, _ = initial_ranking(sig)
        scores = scores.drop(columns=[c for c in ranked if c != "id"]).merge(ranked, on="id")[SAMPLE_COLUMNS]
        write_parquet(run.path / "audit.parquet", ranked.assign(label=scores["label"].to_numpy()))
    run.save_scores(scores)
    return data, runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data: Path, runs: Path, log: Path, rerank_every: int = 25) -> tuple[subprocess.Popen, str, float]:
    """Start ``app.py``; returns the process, its URL and the seconds until it answered HTTP."""
    t0 = time.perf_counter()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, str(ROOT / "app.py"), "--data", str(data), "--runs", str(runs), "--port", str(port),
           "--rerank-every", str(rerank_every)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app.py did not start")


def measure(url: str, presses: int, chromium: str, reranked=None, cap: int = 3000) -> dict:
    """Time ``presses`` key presses; with ``reranked`` (a callable: has a re-rank finished?), go on pressing
    until one has and 25 presses more (at most ``cap``), so that the timed presses include the re-rank's."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    keys = ["k", "x", "1", "j", "k", "u", "x", "j"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        ctx = b.new_context(viewport={"width": 1440, "height": 900})
        ctx.add_init_script(TIMER_JS)
        page = ctx.new_page()
        t = time.perf_counter()
        page.goto(url)
        page.get_by_role("tab", name="3 · Review").click()
        page.wait_for_selector("#card-id", timeout=600_000)
        first_card_s = time.perf_counter() - t
        if presses:  # keys are timed on a settled page (a reviewer looks at the first card before a key)
            page.wait_for_function(SETTLED_JS, timeout=600_000)
        lost = 0  # presses whose card did not change within 30 s (an error answer, or a stall): counted, not timed
        i, end, at = 0, presses + 5, None  # the first 5 warm up the page
        while i < end:
            n0 = page.evaluate("() => window.__lat.length")
            page.keyboard.press(keys[i % len(keys)])
            try:
                page.wait_for_function("(n) => window.__lat.length > n", arg=n0, timeout=30_000)
            except PlaywrightTimeout:
                lost += 1
            i += 1
            if i == end and presses and reranked is not None and at is None:
                if reranked():
                    at, end = i - 5, i + 25
                elif i < cap:
                    end = i + 25
        lat = np.array(page.evaluate("() => window.__lat"))[5:]
        srv = np.array(page.evaluate("() => window.__srv"))[5:]
        b.close()
    if not len(lat):
        return {"first_card_s": first_card_s}
    return {"presses": int(len(lat)), "lost_presses": lost, "median_ms": float(np.median(lat)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "first_card_s": first_card_s,
            "rerank_seen_after_press": at,
            "server_median_ms": float(np.median(srv)) if len(srv) else None,
            "server_p99_ms": float(np.percentile(srv, 99)) if len(srv) else None}


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def rerank_report(runs: Path) -> dict | None:
    """The last re-rank the server recorded (decisions learned from, samples moved), None if none ran."""
    import sqlite3

    for db in runs.glob("*/review.sqlite"):
        con = sqlite3.connect(db)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='rank_report'").fetchone()
        finally:
            con.close()
        if row and row[0]:
            rep = json.loads(row[0])
            return {k: rep.get(k) for k in ("decisions", "moved", "unreviewed")}
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    ap.add_argument("--presses", type=int, default=120)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_latency.json"))
    ap.add_argument("--no-learning", dest="learning", action="store_false",
                    help="no audit signals: the queue does not learn (the app before `deft audit`)")
    ap.add_argument("--rerank-every", type=int, default=25, help="app.py --rerank-every (default: %(default)s)")
    ap.add_argument("--no-until-rerank", dest="until_rerank", action="store_false",
                    help="stop after --presses even if no re-rank has finished (by default the keys go on until "
                         "one has, so that every size times keys beside a re-rank)")
    a = ap.parse_args()
    rows, load_start = [], os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        for n in a.sizes:
            t = time.perf_counter()
            data, runs = prepare(n, Path(d), a.learning)
            prep_s = time.perf_counter() - t
            proc, url, up_s = serve(data, runs, Path(d) / f"server{n}.log", a.rerank_every)
            try:
                done = partial(rerank_report, runs) if a.learning and a.until_rerank else None
                r = measure(url, a.presses, a.chromium, done)
            finally:
                proc.terminate()
                proc.wait(20)
            r["reranks"] = rerank_report(runs)
            r["server_up_s"] = up_s  # process start -> the app answers HTTP (before the page opens)
            # the same server started again on the same runs folder: nothing on disk is recomputed
            proc, url, up2_s = serve(data, runs, Path(d) / f"server{n}-restart.log", a.rerank_every)
            try:
                again = measure(url, 0, a.chromium)
            finally:
                proc.terminate()
                proc.wait(20)
            r["restart_first_card_s"], r["restart_server_up_s"] = again["first_card_s"], up2_s
            rows.append({"samples": n, **r, "prepare_s": prep_s, "learning": a.learning})
            print(f"{n:>8} samples: median {r['median_ms']:.1f} ms, p90 {r['p90_ms']:.1f}, p99 {r['p99_ms']:.1f}, "
                  f"max {r['max_ms']:.1f} ({r['presses']} key presses; first card after {r['first_card_s']:.1f} s "
                  f"(+{up_s:.1f} s server start), after a restart {r['restart_first_card_s']:.1f} s "
                  f"(+{up2_s:.1f} s); last re-rank {r['reranks']})",
                  flush=True)
    info = {"machine": platform.platform(), "processor": platform.processor(), "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(), "what": "key press -> next card rendered (keydown to the animation frame after "
            "the card changed), measured in Debian chromium via Playwright against `python app.py`",
            "note": "2-core CPU dev box; the load average is what else ran (this bench's own server and "
                    "browser add ~2-3)",
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": info, "results": rows}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
