"""Real server + real browser: ``python app.py`` in a subprocess, Playwright driving Debian's chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ..conftest import ROOT

DEMO = ROOT / "assets" / "demo"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_path() -> str:
    path = os.environ.get("DEFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Debian chromium is required for browser tests: `make test` installs it "
                           "(apt-get install chromium), or set DEFT_CHROMIUM=/path/to/chromium")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python app.py`` as a child process; ``kill9`` and ``start`` again on the same port and data."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log, self.port = args, log, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120) -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        out = open(self.log, "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *self.args, "--port", str(self.port)],
                                     cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app.py did not answer on {self.url} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no clean shutdown, no flush
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


def detect_into(runs: Path, data: Path, clip: Path, method: str = "deft", timeout: float = 600) -> None:
    """One detection (``method``: deft, a baseline or all) of ``data`` with the tiny CLIP, 1 epoch, under
    ``runs``, as the app's Detect tab starts it; fails the test unless it finishes."""
    from deft.ui.workspace import AppSettings, Workspace

    ws = Workspace(AppSettings(data=str(data), model=str(clip), runs=runs, device="cpu"))
    ws.load(str(data))
    job = ws.start_detect(str(clip), False, 1, method=method)
    job.join(timeout)
    assert job.status == "done", job.error


def audited_server(tmp: Path, clip: Path, *args: str):
    """The bundled demo detected and audited (DEFT, then every baseline: the combined order, the map) with the
    tiny CLIP under ``tmp/runs``, and ``python app.py`` serving it with ``args``: ``(server, review store)``.
    The caller stops the server."""
    from deft.storage.store import ReviewStore
    from deft.ui.workspace import dataset_key

    runs = tmp / "runs"
    detect_into(runs, DEMO, clip, method="all")
    server = Server(["--data", str(DEMO), "--model", str(clip), "--runs", str(runs), *args],
                    tmp / "server.log").start()
    return server, ReviewStore(runs / dataset_key(str(DEMO)) / "review.sqlite")
