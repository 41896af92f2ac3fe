"""The server's defences, against a real ``python app.py`` with the tiny CLIP: login on every route,
no paths before login, login rate limit, Host check (DNS rebinding), private temp folder, credentials."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from deft.storage.store import ReviewStore
from deft.ui.security import AuthConfigError, LoginLimiter, load_credentials
from deft.ui.workspace import AppSettings, Workspace
from tests.browser.conftest import Server

PROTECTED = ["/config", "/openapi.json", "/docs", "/gradio_api/info", "/gradio_api/openapi.json",
             "/gradio_api/user", "/gradio_api/token", "/gradio_api/app_id", "/monitoring",
             "/gradio_api/file=/etc/passwd", "/gradio_api/file=assets/demo/PLANTED.csv"]


def request(url: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode("utf-8", "replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)


def login_cookie(server: Server, user: str, password: str) -> tuple[int, str]:
    status, _, headers = request(server.url + "login", {"username": user, "password": password})
    cookies = [c.split(";", 1)[0] for k, c in headers.items() if k.lower() == "set-cookie"]
    return status, "; ".join(cookies)


slow = pytest.mark.slow  # each server start takes ~15 s on the loaded 2-core dev box


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tiny_clip_dir, cifar_small):
    tmp = tmp_path_factory.mktemp("secured")
    (tmp / "auth").write_text("# reviewers\nalice:s3cret-pw\n")
    ws = Workspace(AppSettings(data=str(cifar_small), model=str(tiny_clip_dir), runs=tmp / "runs", device="cpu"))
    ws.load(str(cifar_small))
    job = ws.start_detect(str(tiny_clip_dir), False, 1)  # a finished run: the review route has cards to act on
    job.join(300)
    assert job.status == "done", job.error
    server = Server(["--data", str(cifar_small), "--model", str(tiny_clip_dir), "--runs", str(tmp / "runs"),
                     "--auth-file", str(tmp / "auth")], tmp / "server.log").start()
    yield server
    server.stop()


@slow
def test_unauthenticated_page_has_no_paths_and_every_other_route_needs_login(secured, tiny_clip_dir, cifar_small):
    status, page, _ = request(secured.url)
    assert status == 200 and "auth_required" in page
    for secret in (str(cifar_small), str(tiny_clip_dir), "PLANTED"):
        assert secret not in page
    for route in PROTECTED:
        assert request(secured.url.rstrip("/") + route)[0] in {401, 404}, route
    assert request(secured.url.rstrip("/") + "/config")[0] == 401


@slow
def test_after_login_the_same_routes_answer(secured, tiny_clip_dir):
    status, cookie = login_cookie(secured, "alice", "s3cret-pw")
    assert status == 200 and cookie
    status, config, _ = request(secured.url + "config", headers={"Cookie": cookie})
    assert status == 200 and str(tiny_clip_dir) in config  # the 401s above are about login, not missing routes
    assert request(secured.url + "gradio_api/info", headers={"Cookie": cookie})[0] == 200


def post_json(url: str, body: dict, cookie: str = "", ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": ctype, **({"Cookie": cookie} if cookie else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        return e.code, json.loads(text) if text.startswith("{") else {"text": text}


def card_of(html: str) -> tuple[str, int]:
    m = re.search(r'id="card" data-sid="([^"]*)" data-ver="(\d*)"', html)
    assert m, html[:300]
    return m.group(1), int(m.group(2) or 0)


@slow
def test_lean_key_route_needs_login_and_records_the_logged_in_user(secured, tmp_path_factory):
    """POST /deft/act (what a key press sends): login first, JSON only, the cookie's user is who decided, and
    an action for a version the reviewer no longer has is refused and changes nothing."""
    route = secured.url + "deft/act"
    assert post_json(route, {"op": "next"})[0] == 401  # the Guard covers the route
    _, cookie = login_cookie(secured, "alice", "s3cret-pw")
    status, got = post_json(route, {"op": "next"}, cookie, ctype="text/plain")
    assert status == 415, got  # a cross-site form can't send JSON without a preflight
    status, got = post_json(route, {"op": "pending", "client": "c1"}, cookie)
    assert status == 200, got
    sid, ver = card_of(got["card"])
    assert sid and "item" in got["counter"]
    req = urllib.request.Request(route, data=json.dumps({"op": "pending", "client": "c1"}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Cookie": cookie})
    with urllib.request.urlopen(req, timeout=30) as r:  # its own share of a key press (devtools, the bench)
        assert re.fullmatch(r"wait;dur=[\d.]+, handler;dur=[\d.]+", r.headers["Server-Timing"]), r.headers
    status, got = post_json(route, {"op": "act", "client": "c1", "sample_id": sid, "version": ver,
                                    "action": "keep"}, cookie)
    res = json.loads(got["result"])
    assert status == 200 and res["status"] == "applied" and res["sample_id"] == sid, got
    assert "kept" in got["msg"] and card_of(got["card"])[0] != sid  # the next card comes back
    store = ReviewStore(next(Path(secured.args[secured.args.index("--runs") + 1]).rglob("review.sqlite")))
    assert store.sample(sid)["status"] == "kept" and store.sample(sid)["decided_by"] == "alice"
    n = len(store.log())
    status, got = post_json(route, {"op": "act", "client": "c1", "sample_id": sid, "version": ver,
                                    "action": "exclude"}, cookie)  # the version alice saw before her decision
    assert status == 200 and json.loads(got["result"])["status"] == "stale", got
    assert len(store.log()) == n and store.sample(sid)["status"] == "kept"
    assert post_json(route, {"op": "rm -rf"}, cookie)[0] == 400


def queue_call(server: Server, cookie: str, button: str, data: list, timeout: float = 30) -> str:
    """Click the button with ``elem_id == button`` the way the page does (``/gradio_api/queue/join`` with its
    event's fn_index, private events included) and return the event's first output (or its error)."""
    _, config, _ = request(server.url + "config", headers={"Cookie": cookie})
    cfg = json.loads(config)
    target = next(c["id"] for c in cfg["components"] if c.get("props", {}).get("elem_id") == button)
    dep = next(d for d in cfg["dependencies"] if [target, "click"] in d["targets"] and d.get("backend_fn"))
    session = f"s{time.monotonic_ns()}"
    body = {"data": data, "fn_index": dep["id"], "trigger_id": target, "session_hash": session, "event_data": None}
    req = urllib.request.Request(server.url + "gradio_api/queue/join", json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Cookie": cookie})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200
    url = server.url + f"gradio_api/queue/data?session_hash={session}"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            msg = json.loads(line.removeprefix("data:"))
            if msg.get("msg") == "process_completed":
                out = msg.get("output") or {}
                return str((out.get("data") or [out.get("error")])[0])
    raise AssertionError("the event never completed")


def outside_image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (200, 10, 10)).save(folder / "private_photo.png")
    return folder / "private_photo.png"


@slow
def test_zoom_serves_only_samples_of_the_dataset(secured, cifar_small, tmp_path):
    """The zoom event takes the sample id from the client: an absolute path, an id climbing out of the root,
    a missing file or a FIFO are refused with one sentence (which never says whether the path exists), nothing
    is copied into the thumbnail cache, and a FIFO does not block the zooms after it."""
    _, cookie = login_cookie(secured, "alice", "s3cret-pw")
    thumbs = Path(secured.args[secured.args.index("--runs") + 1]) / ".thumbs"
    sample = next(p for p in sorted(cifar_small.rglob("*.jpg")))
    good = queue_call(secured, cookie, "btn-zoom", ["", "zoom-client", sample.relative_to(cifar_small).as_posix()])
    assert "/gradio_api/file=" in good and "full resolution" in good  # the dataset's own samples still zoom
    private = outside_image(tmp_path / "outside")
    fifo = tmp_path / "outside" / "fifo.png"
    os.mkfifo(fifo)
    inside_fifo = cifar_small / "not-a-sample.png"
    os.mkfifo(inside_fifo)
    try:
        before = sorted(p.name for p in thumbs.rglob("*.png"))
        hostile = [str(private), os.path.relpath(private, cifar_small), str(tmp_path / "outside" / "missing.png"),
                   os.path.relpath(tmp_path / "outside" / "missing.png", cifar_small), str(fifo),
                   inside_fifo.name, "/etc/passwd"]
        answers = set()
        for sid in hostile:
            t0 = time.monotonic()
            got = queue_call(secured, cookie, "btn-zoom", ["", "zoom-client", sid], timeout=20)
            assert time.monotonic() - t0 < 15, sid
            assert "/gradio_api/file=" not in got and "private_photo" not in got, (sid, got)
            answers.add(re.sub(r"<!--r\d+-->", "", got))
        assert len(answers) == 1 and "not in this dataset" in answers.pop()  # one neutral sentence for all
        assert sorted(p.name for p in thumbs.rglob("*.png")) == before  # nothing copied
        assert "/gradio_api/file=" in queue_call(secured, cookie, "btn-zoom", ["", "zoom-client",
                                                 sample.relative_to(cifar_small).as_posix()])
    finally:
        inside_fifo.unlink()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, tiny_clip_dir, cifar_small):
    """The app as most people run it: no --auth."""
    tmp = tmp_path_factory.mktemp("open")
    server = Server(["--data", str(cifar_small), "--model", str(tiny_clip_dir), "--runs", str(tmp / "runs")],
                    tmp / "server.log").start()
    yield server
    server.stop()


def raw(server: Server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(server.url + path.lstrip("/"), data=body or None, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def multipart(name: str, size: int) -> tuple[bytes, dict]:
    boundary = "deftboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body += b"x" * size + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@slow
def test_uploads_refused_and_other_sites_cannot_post(open_server, secured):
    """No upload component: /gradio_api/upload is refused (it filled the disk without limit), with or without a
    login; a page on another site can neither post to the app nor read it (Sec-Fetch-Site / Origin), while the
    app's own page (same origin), a link to it (navigation) and non-browser clients still work."""
    body, headers = multipart("big.bin", 200_000)
    for server in (open_server, secured):
        status, text = raw(server, "POST", "/gradio_api/upload", body, headers)
        assert status == 403 and "no file uploads" in text, (status, text)
    _, cookie = login_cookie(secured, "alice", "s3cret-pw")
    status, _ = raw(secured, "POST", "/gradio_api/upload", body, {**headers, "Cookie": cookie})
    assert status == 403
    own = f"http://127.0.0.1:{open_server.port}"
    decide = json.dumps({"data": ["x-session", "x-client", "no-such-sample", 0, "keep", ""]}).encode()
    js = {"Content-Type": "application/json"}
    for hostile in ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
                    {"Origin": "http://localhost:8000", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
                    {"Origin": "http://evil.example"}, {"Origin": "null"}):
        for path in ("/gradio_api/call/decide", "/deft/act", "/gradio_api/queue/join"):
            status, text = raw(open_server, "POST", path, decide, {**js, **hostile})
            assert status == 403 and "another site" in text, (path, hostile, status, text)
    status, _ = raw(open_server, "GET", "/config", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors",
                                                            "Origin": "http://localhost:8000"})
    assert status == 403  # Gradio's CORS would let any localhost page read the config (paths)
    status, _ = raw(secured, "POST", "/deft/act", json.dumps({"op": "next"}).encode(),
                    {**js, "Cookie": cookie, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403  # a login cookie does not make another site's request the reviewer's
    assert raw(open_server, "POST", "/gradio_api/call/decide", decide,
               {**js, "Origin": own, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert raw(open_server, "POST", "/gradio_api/call/decide", decide, js)[0] == 200  # curl, the Python client
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert raw(open_server, "GET", "/", headers=link)[0] == 200


def send_raw(server: Server, head: str, body: bytes, timeout: float = 10) -> str:
    """Send a request's head and only ``body`` (however long the head says the body is); the first answer line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        try:
            return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]
        except TimeoutError:
            return "no answer: the server waits for the rest of the body"


@slow
def test_lean_route_refuses_an_oversized_body_before_reading_it(secured):
    """A 400 MB body to /deft/act was read whole before the 413 (server memory +700 MB): the Content-Length
    alone now refuses it, and a chunked body with no length is refused once 64 KB have streamed in; neither
    waits for the rest of the body."""
    _, cookie = login_cookie(secured, "alice", "s3cret-pw")
    base = (f"POST /deft/act HTTP/1.1\r\nHost: 127.0.0.1:{secured.port}\r\nCookie: {cookie}\r\n"
            "Content-Type: application/json\r\n")
    first = send_raw(secured, base + "Content-Length: 400000000\r\n\r\n", b'{"op": "next", "pad": "' + b"x" * 1000)
    assert " 413 " in first, first
    chunk = b"%x\r\n" % 4096 + b"x" * 4096 + b"\r\n"
    first = send_raw(secured, base + "Transfer-Encoding: chunked\r\n\r\n", chunk * 20)  # 80 KB, no last chunk
    assert " 413 " in first, first
    status, got = post_json(secured.url + "deft/act", {"op": "next", "client": "c1"}, cookie)
    assert status == 200 and "card" in got  # a key press still answers


def gradio_call(server: Server, api: str, body: bytes, cookie: str) -> tuple[int, str]:
    """POST /gradio_api/call/<api> as the Python client does; the status and, if it queued, the event stream."""
    status, text = raw(server, "POST", f"/gradio_api/call/{api}", body,
                       {"Content-Type": "application/json", "Cookie": cookie})
    if status != 200:
        return status, text
    return status, raw(server, "GET", f"/gradio_api/call/{api}/{json.loads(text)['event_id']}",
                       headers={"Cookie": cookie})[1]


@slow
def test_malformed_json_values_get_a_400_with_a_sentence_and_no_traceback(secured):
    """``1e400``, ``NaN``, ``[1]``, ``null`` where a number or an object belongs, to the lean route and to the
    Gradio API (decide, grid_decide): a 400 (or the action's own error result) with a sentence; the server log
    gets no traceback, and a well-formed action still applies."""
    _, cookie = login_cookie(secured, "alice", "s3cret-pw")
    tracebacks = secured.log.read_text().count("Traceback")
    act = secured.url + "deft/act"
    js = {"Content-Type": "application/json", "Cookie": cookie}
    for body in (b'{"op": "act", "sample_id": "x", "version": 1e400, "action": "keep"}',
                 b'{"op": "act", "sample_id": "x", "version": [1], "action": "keep"}',
                 b'{"op": "act", "sample_id": "x", "version": NaN, "action": "keep"}',
                 b'{"op": "act", "sample_id": ["x"], "version": 1, "action": "keep"}',
                 b'{"op": 5}', b"[1]", b"null", b"[" * 50_000, b'{"op": "next", "client": "\xff"}'):
        status, text = raw(secured, "POST", "/deft/act", body, js)
        assert status == 400, (body[:60], status, text)
        assert text.startswith("{") and json.loads(text)["error"].endswith("."), text
    for body in (b"null", b'{"data": null}', b'{"data": ["", "c", "x", 1e400, "keep", ""]}', b"[1]"):
        status, text = gradio_call(secured, "decide", body, cookie)
        assert status == 400 and text.endswith("."), (body, status, text)
    status, text = raw(secured, "POST", "/gradio_api/run/decide", b'{"data": ["", "c", "x", 1e400, "keep", ""]}', js)
    assert status == 400, (status, text)  # was a 500 from Gradio's Number preprocessing
    for version in (b"[1]", b"null", b'"3; drop"'):
        body = b'{"data": ["", "c", "x", ' + version + b', "keep", ""]}'
        status, text = gradio_call(secured, "decide", body, cookie)
        assert status == 200 and "event: complete" in text and "whole number" in text, (version, text[:400])
    status, text = gradio_call(secured, "grid_decide", json.dumps(
        {"data": ["", "c", '[["x", 1e400]]', "keep", None, 0]}).encode(), cookie)
    assert "event: complete" in text and "whole number" in text, text[:400]
    status, got = post_json(act, {"op": "pending", "client": "c5"}, cookie)
    sid, ver = card_of(got["card"])
    status, got = post_json(act, {"op": "act", "client": "c5", "sample_id": sid, "version": ver,
                                  "action": "exclude"}, cookie)
    assert status == 200 and json.loads(got["result"])["status"] == "applied", got
    assert secured.log.read_text().count("Traceback") == tracebacks, secured.log.read_text()[-3000:]


@slow
def test_host_header_checked_on_loopback(secured):
    port = secured.port
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert request(secured.url, headers={"Host": good})[0] == 200, good
    for bad in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"localhost.evil.example:{port}"):
        assert request(secured.url, headers={"Host": bad})[0] == 400, bad


@slow
def test_private_temp_folder_is_0700_and_removed_at_exit(secured):
    folders = list(Path("/tmp").glob(f"deft-audit-{secured.proc.pid}-*"))
    assert len(folders) == 1 and stat.S_IMODE(folders[0].stat().st_mode) == 0o700


@slow
def test_failed_logins_are_rate_limited(secured):
    # last in the module: it locks 127.0.0.1 out of POST /login for a minute
    codes = [login_cookie(secured, "alice", f"wrong{i}")[0] for i in range(5)]
    assert codes == [400] * 5
    assert login_cookie(secured, "alice", "s3cret-pw")[0] == 429  # even the right password, until the window ends


@slow
def test_temp_folder_removed_when_the_server_stops(tmp_path, tiny_clip_dir, cifar_small):
    env_before = os.environ.get("DEFT_AUTH")
    os.environ["DEFT_AUTH"] = "bob:pw-from-env"  # credentials from the environment, not argv
    try:
        server = Server(["--data", str(cifar_small), "--model", str(tiny_clip_dir), "--runs", str(tmp_path / "r")],
                        tmp_path / "log").start()
    finally:
        os.environ.pop("DEFT_AUTH") if env_before is None else os.environ.update(DEFT_AUTH=env_before)
    try:
        assert "pw-from-env" not in " ".join(server.proc.args)
        assert login_cookie(server, "bob", "pw-from-env")[0] == 200
        folders = list(Path("/tmp").glob(f"deft-audit-{server.proc.pid}-*"))
        assert len(folders) == 1
    finally:
        server.stop()
    assert server.proc.returncode is not None and not folders[0].exists()


def test_credentials_sources(tmp_path, capsys):
    f = tmp_path / "auth"
    f.write_text("a:1\n\n# comment\nb:pass:with:colons\n")
    assert load_credentials(None, str(f), {}) == [("a", "1"), ("b", "pass:with:colons")]
    assert load_credentials(None, None, {"DEFT_AUTH": "c:2"}) == [("c", "2")]
    assert load_credentials("d:3", None, {}) == [("d", "3")]
    assert "`ps` shows it" in capsys.readouterr().err
    assert load_credentials(None, None, {}) is None
    for bad in ("nopassword", "user:", ":pw"):
        with pytest.raises(AuthConfigError):
            load_credentials(bad, None, {})
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_credentials(None, str(tmp_path / "missing"), {})


def test_login_limiter_window():
    now = [0.0]
    lim = LoginLimiter(max_failures=5, window_s=60, clock=lambda: now[0])
    for _ in range(5):
        assert not lim.blocked("1.2.3.4")
        lim.failed("1.2.3.4")
    assert lim.blocked("1.2.3.4") and not lim.blocked("5.6.7.8")
    now[0] = 61.0
    assert not lim.blocked("1.2.3.4")
