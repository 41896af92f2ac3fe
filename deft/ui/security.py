"""Server hardening around Gradio: credentials, login on every route, rate limit, Host check, private temp.

Gradio's own ``auth`` protects the UI and the queue but lets several routes answer
without login (``/openapi.json``, ``/gradio_api/user``, ``/gradio_api/app_id``...) and
embeds the API description, with every textbox default (dataset and model paths),
in the unauthenticated login page. :class:`Guard` is a plain ASGI middleware, passed
to Gradio's FastAPI app through ``launch(app_kwargs=...)``, that

* answers 400 to a request whose ``Host`` is not this machine when bound to loopback
  (DNS rebinding: a web page cannot make a browser talk to the app under another name);
* lets an unauthenticated client fetch only the login page (with the API description
  blanked), its static assets and ``POST /login``; everything else is 401;
* refuses ``POST /login`` with 429 after ``max_failures`` wrong passwords from one client
  within ``window_s`` seconds;
* refuses (403) a request a browser marks as coming from another site (``Sec-Fetch-Site``, or an
  ``Origin`` that is not this server), except a plain navigation to a page: with or without a login,
  no other site's page can post to the app or read from it (Gradio's own CORS lets every localhost
  origin read, and without ``--auth`` nothing else stands in the way);
* refuses ``/gradio_api/upload`` (403, before reading the body): the app has no upload component,
  so the route only served to fill the disk (``launch`` also caps Gradio's upload size).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_BINDS = {"127.0.0.1", "localhost", "::1"}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                   "/manifest.json", "/robots.txt", "/pwa_icon", "/gradio_api/startup-events")
LOGIN_PATHS = {"/login", "/login/"}
UPLOAD_PATHS = {"/gradio_api/upload", "/gradio_api/upload/", "/upload", "/upload/"}
SAFE_METHODS = {"GET", "HEAD"}
MAX_API_BODY = 1024 * 1024  # a JSON call to the Gradio API (the largest: a grid page's selection, a few KB)
MAX_UPLOAD = "1mb"  # Gradio's max_file_size: a bound should an upload component ever be added
PAGE_PATHS = {"/", ""}
API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)
BLANK_API_INFO = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


class AuthConfigError(ValueError):
    """The credentials given to the app cannot be used; the message says how to fix them."""


# ----------------------------------------------------------------------------- credentials
def parse_credentials(text: str, source: str, commas: bool = True) -> list[tuple[str, str]]:
    """``user:password`` entries, one per line (and, with ``commas``, comma-separated: ``--auth`` and
    ``$DEFT_AUTH``; a file's line is one entry, its password may hold commas); ``#`` comments and blank lines
    skipped."""
    out = []
    for n, line in enumerate(re.split(r"[\n,]" if commas else r"\n", text), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, pw = line.partition(":")
        if not sep or not user.strip() or not pw:
            raise AuthConfigError(f"{source}: entry {n} is not user:password.")
        out.append((user.strip(), pw))
    if not out:
        raise AuthConfigError(f"{source} holds no user:password entry.")
    return out


def load_credentials(auth: str | None, auth_file: str | None,
                     environ: dict[str, str] | None = None) -> list[tuple[str, str]] | None:
    """Credentials from ``--auth-file``, else ``$DEFT_AUTH``, else ``--auth`` (warned: visible in ``ps``)."""
    env = os.environ if environ is None else environ
    if auth_file:
        p = Path(auth_file)
        try:
            return parse_credentials(p.read_text(encoding="utf-8"), str(p), commas=False)
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"cannot read --auth-file {p}: {getattr(exc, 'strerror', None) or exc}.") from None
    if env.get("DEFT_AUTH"):
        return parse_credentials(env["DEFT_AUTH"], "$DEFT_AUTH")
    if auth:
        print("warning: --auth puts the password on the command line, where `ps` shows it to every user of "
              "this machine; use --auth-file FILE or the DEFT_AUTH environment variable.", file=sys.stderr)
        return parse_credentials(auth, "--auth")
    return None


# ----------------------------------------------------------------------------- middleware helpers
def allowed_hosts(port: int) -> frozenset[str]:
    """``Host`` header values accepted when bound to loopback."""
    names = {f"{h}:{port}" for h in LOOPBACK_HOSTS}
    if port == 80:
        names |= set(LOOPBACK_HOSTS)
    return frozenset(names)


def header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def cross_site(scope: dict) -> bool:
    """True for a request a browser sent on behalf of another site's page (a top-level navigation to a
    page excepted: a link to the app must open it). Clients that are not browsers send neither header."""
    navigate = scope.get("method") in SAFE_METHODS and header(scope, b"sec-fetch-mode") == "navigate"
    fetch_site = header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"} and not navigate:
        return True
    origin = header(scope, b"origin")
    if origin is None or navigate:
        return False
    return urlsplit(origin).netloc.lower() != (header(scope, b"host") or "").lower()  # "null" is never this host


def _finite(text: str) -> float:
    value = float(text)
    if value in {float("inf"), float("-inf")}:
        raise ValueError(f"the number {text} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def json_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a request body the app takes (a JSON object of finite numbers, ``data`` a list), as a
    sentence for a 400; None if it is."""
    try:
        body = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        return "The request's JSON is nested too deeply."
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, the two refusals above
        return f"The request is not valid JSON ({str(exc).split(':')[0]})."
    if not isinstance(body, dict):
        return "The request's JSON must be an object ({...})."
    if "data" in body and not isinstance(body["data"], list):
        return "The request's \"data\" must be a list of the event's input values."
    return None


async def _bounded(scope: dict, receive, limit: int) -> bytes | None:
    """The request body from ``receive``, or None once it is known to exceed ``limit`` bytes (Content-Length
    first, then the bytes streamed in)."""
    length = header(scope, b"content-length") or ""
    if length.strip().isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not msg.get("more_body"):
            return b"".join(chunks)


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES)


def scope_user(scope: dict) -> str | None:
    """The user whose session cookie (issued by the Gradio app at login) the request carries, else None."""
    app = scope.get("app")
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    raw = header(scope, b"cookie")
    if not tokens or not cookie_id or not raw:
        return None
    jar = SimpleCookie()
    with contextlib.suppress(Exception):
        jar.load(raw)
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        if name in jar and jar[name].value in tokens:
            return str(tokens[jar[name].value])
    return None


def logged_in(scope: dict) -> bool:
    """True if the request carries a session cookie the Gradio app issued at login."""
    return scope_user(scope) is not None


@dataclass
class LoginLimiter:
    """At most ``max_failures`` failed logins per client within ``window_s`` seconds."""

    max_failures: int = 5
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, client: str) -> deque:
        q, now = self._fails[client], self.clock()
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client)) >= self.max_failures

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(self.clock())


async def _reply(send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: Host check, cross-site and upload refusal, login on every route, login rate limit
    (see the module docstring)."""

    def __init__(self, app, *, auth: bool, hosts: frozenset[str] | None, limiter: LoginLimiter | None = None,
                 uploads: bool = False) -> None:
        self.app, self.auth, self.hosts, self.uploads = app, auth, hosts, uploads
        self.limiter = limiter or LoginLimiter()

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            return await self.app(scope, receive, send)
        if self.hosts is not None and (header(scope, b"host") or "").lower() not in self.hosts:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _reply(send, 400, "Bad Host header: open the app as http://127.0.0.1:<port>/.")
        if cross_site(scope):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _reply(send, 403, "Refused: a request from another site's page. Open the app at its own "
                                           "address.")
        if not self.uploads and scope["path"] in UPLOAD_PATHS:
            return await _reply(send, 403, "This app takes no file uploads.")
        if not self.auth or is_public(scope["path"]):
            return await self.forward(scope, receive, send)
        if scope["path"] in LOGIN_PATHS and scope.get("method") == "POST":
            return await self._login(scope, receive, send)
        if logged_in(scope):
            return await self.forward(scope, receive, send)
        if scope["path"] in PAGE_PATHS and scope.get("method") in {"GET", "HEAD"}:
            return await self._login_page(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        return await _reply(send, 401, "Not authenticated: log in first.")

    async def forward(self, scope: dict, receive, send) -> None:
        """Pass the request on; a JSON call to the Gradio API first has its body read (bounded) and checked by
        :func:`json_problem`: a non-finite number, a body that is no object, ``data`` that is no list get a 400
        with a sentence here instead of a 500 and a traceback from Gradio's input processing."""
        ctype = (header(scope, b"content-type") or "application/json").split(";")[0].strip().lower()
        if (scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].startswith("/gradio_api/")
                or not ctype.endswith("json")):
            return await self.app(scope, receive, send)
        body = await _bounded(scope, receive, MAX_API_BODY)
        if body is None:
            return await _reply(send, 413, f"Request too large (the app's API takes under {MAX_API_BODY >> 20} MB).")
        why = json_problem(body)
        if why:
            return await _reply(send, 400, why)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # only a disconnect is left to wait for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _login(self, scope: dict, receive, send) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        if self.limiter.blocked(client):
            return await _reply(send, 429, "Too many failed logins; wait a minute and try again.")

        async def watch(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start" and msg["status"] in {400, 401, 403}:
                self.limiter.failed(client)
            await send(msg)

        await self.app(scope, receive, watch)

    async def _login_page(self, scope: dict, receive, send) -> None:
        """Gradio's login page with the API description (textbox defaults: paths) blanked out."""
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def buffer(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                start.update(msg)
                return
            if msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
                if msg.get("more_body"):
                    return
                body = API_INFO.sub(lambda _: BLANK_API_INFO, b"".join(chunks))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body if scope.get("method") == "GET" else b""})
                return
            await send(msg)

        await self.app(scope, receive, buffer)


def guard_kwargs(host: str, port: int, auth: bool) -> dict[str, Any]:
    """``app_kwargs`` for ``Blocks.launch``: the :class:`Guard` middleware, and no FastAPI docs routes."""
    from starlette.middleware import Middleware

    hosts = allowed_hosts(port) if host in LOOPBACK_BINDS else None
    return {"middleware": [Middleware(Guard, auth=auth, hosts=hosts)],
            "docs_url": None, "redoc_url": None}


# ----------------------------------------------------------------------------- private temp folder
def private_temp_dir(prefix: str = "deft-audit-") -> Path:
    """A 0700 temp folder for this process (Gradio's cache and exports), removed at exit.

    Sets ``GRADIO_TEMP_DIR`` (call before importing gradio), removes it at normal exit
    and on SIGTERM, and removes folders left by earlier processes that died (kill -9).
    """
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{prefix}*-*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and old.owner() == _me():
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))  # mkdtemp: mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    atexit.register(shutil.rmtree, path, True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run atexit on `kill`, too
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
