"""The server's defences, against a real ``python app.py`` with the tiny CLIP: login on every route,
no paths before login, login rate limit, Host check (DNS rebinding), private temp folder, credentials."""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.browser.conftest import Server
from ui.security import AuthConfigError, LoginLimiter, load_credentials

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
