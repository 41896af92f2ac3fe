"""kill -9 loop: a real app server is SIGKILLed 10 times while a client records decisions through the app's
Gradio queue (``/gradio_api/call/decide``, the queue the browser's buttons use); every decision the client
saw acknowledged must be in the review database afterwards.

Importing Gradio takes ~20 s on the loaded 2-core dev box, so ten ``python app.py`` starts would take minutes.
A zygote process imports ``app`` and ``deft.ui.blocks`` once, then forks a fresh server (``app.main``: the same code
path as ``python app.py``, own process, own port binding, own SQLite connections) for each cycle; the test
SIGKILLs that child. Nothing is shared between two servers but the files on disk.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from deft.core.config import OptimConfig, Phase1Config
from deft.core.errors import ReviewError
from deft.detection import detect
from deft.storage.load import load_dataset
from deft.storage.store import ReviewStore
from deft.ui.workspace import dataset_key
from tests.browser.conftest import free_port

from .conftest import ROOT

KILLS = 10


def zygote() -> None:
    """Import the app once; for each line on stdin fork ``app.main(argv)`` and print the child's PID."""
    import app  # noqa: I001 - heavy imports (gradio, pandas, PIL) happen here, once, before any thread starts
    import deft.ui.blocks  # noqa: F401

    argv, log = json.loads(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped by the kernel
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                app.main(argv)
            finally:
                os._exit(1)
        print(pid, flush=True)


def decide(base: str, store: ReviewStore, sample_id: str, action: str) -> dict:
    """One decision through the app's ``decide`` route, the one the review keys and buttons call, with the
    sample's current version as a reviewer's card would carry it; returns the server's acknowledgement."""
    try:
        version = int(store.sample(sample_id)["version"])
    except ReviewError:  # the server fills the store when the first session opens the run: nothing decided yet
        version = 0
    # session "": an API client with no page (the server's own dataset); an id the server never handed out is refused
    body = json.dumps({"data": ["", "kill9-client", sample_id, version, action, ""]}).encode()
    req = urllib.request.Request(base + "gradio_api/call/decide", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(base + f"gradio_api/call/decide/{event_id}", timeout=15) as r:
        stream = r.read().decode()
    lines = stream.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "event: complete":
            ack = json.loads(json.loads(lines[i + 1].removeprefix("data:").strip())[0])
            return {**ack, "action": action}
    raise ConnectionError(f"no decision acknowledged: {stream[-300:]!r}")


def wait_ready(base: str, pid: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise RuntimeError("the forked app server died at start") from None
        try:
            with urllib.request.urlopen(base, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"app server not ready on {base} in {timeout}s")


@pytest.mark.slow
def test_acknowledged_decisions_survive_ten_kill9(tmp_path, cifar_small, tiny_clip_dir):
    runs = tmp_path / "runs"
    ds = load_dataset(cifar_small)
    home = runs / dataset_key(str(cifar_small))
    cfg = Phase1Config(model=str(tiny_clip_dir), optim=OptimConfig(lr=0.03, epochs=1, batch_size=16))
    detect(ds, home / "detect-kill9", cfg, device="cpu")
    ids = ds.samples["id"].tolist()

    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    argv = ["--data", str(cifar_small), "--model", str(tiny_clip_dir), "--runs", str(runs), "--port", str(port)]
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    zyg = subprocess.Popen([sys.executable, "-c", "from tests.test_kill9_loop import zygote; zygote()",
                            json.dumps(argv), str(log)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    acked: list[dict] = []
    rng = random.Random(0)
    actions = ["keep", "exclude"]  # valid on any sample (accept needs a suggestion unlike the label)
    t0 = time.perf_counter()
    try:
        for cycle in range(KILLS):
            zyg.stdin.write("fork\n")
            zyg.stdin.flush()
            pid = int(zyg.stdout.readline())
            wait_ready(base, pid)
            reader = ReviewStore(home / "review.sqlite")  # the versions a reviewer's cards would show
            stop, mine, errors = threading.Event(), [], []

            def client(cycle=cycle, mine=mine, stop=stop, reader=reader, errors=errors):
                n = 0
                while not stop.is_set():
                    sid, action = ids[(cycle * 7 + n) % len(ids)], actions[n % 2]
                    n += 1
                    try:
                        d = decide(base, reader, sid, action)
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        errors.append(exc)
                        return  # the server died under this request: not acknowledged
                    if d["status"] != "applied" or d["sample_id"] != sid:
                        errors.append(AssertionError(f"not applied: {d}"))
                        return
                    mine.append(d)

            t = threading.Thread(target=client, daemon=True)
            t.start()
            deadline = time.time() + 60
            while not mine and time.time() < deadline and t.is_alive():
                time.sleep(0.05)
            assert mine, f"cycle {cycle}: no decision acknowledged ({errors}):\n{log.read_text()[-2000:]}"
            time.sleep(rng.uniform(0.1, 0.6))  # keep deciding, then kill mid-stream
            os.kill(pid, signal.SIGKILL)
            stop.set()
            t.join(20)
            acked += mine
    finally:
        zyg.stdin.close()
        zyg.kill()
        zyg.wait(10)
    elapsed = time.perf_counter() - t0

    # "restart": a fresh store on the same file, as the next server would open it
    logged = ReviewStore(home / "review.sqlite").log()
    by_seq = {int(r.seq): (r.sample_id, r.action) for r in logged.itertuples()}
    missing = [d for d in acked if by_seq.get(int(d["seq"])) != (d["sample_id"], d["action"])]
    print(f"{KILLS} kill -9 cycles in {elapsed:.1f}s: {len(acked)} acknowledged decisions, "
          f"{len(logged)} logged, {len(missing)} missing")
    assert len(acked) >= KILLS and not missing
