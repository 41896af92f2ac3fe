"""The lean key route: ``POST /deft/act`` answers a review key press with the next card's HTML.

Gradio's event path costs a key press its client-side dispatch, the server's pre/post-processing and a
Svelte re-render of every output (~300 ms median on a 2-core box); this route runs the review handler
(:meth:`deft.ui.handlers.ReviewHandlers.lean`: every card decision goes through it, the API's ``/decide`` calls
the same :meth:`~deft.ui.handlers.ReviewHandlers.decide`) and the page script (``deft/ui/static/review.js``) swaps the
card itself.

It is one more route of the same app, behind the same :class:`deft.ui.security.Guard` (Host check, login):
the user is read from the session cookie exactly as Gradio reads it, and only JSON bodies are taken
(a cross-site form cannot send one without a CORS preflight, which this app never grants).
"""

from __future__ import annotations

import json
import time

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deft.ui.handlers import USER_ERRORS, ReviewHandlers
from deft.ui.security import json_problem, scope_user

PATH = "/deft/act"
MAX_BODY = 64 * 1024


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to exceed ``limit`` bytes: by its Content-Length
    before anything is read, else by the bytes counted while it streams in (never more than ``limit`` held)."""
    length = request.headers.get("content-length", "")
    if length.strip().isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def server_timing(t0: float, started: float, done: float) -> str:
    """``Server-Timing`` of one key press (seen in the browser's devtools and resource timing, read by
    ``bench/review_latency.py``): ``wait`` for a worker thread, ``handler`` the review handler, in ms."""
    return f"wait;dur={(started - t0) * 1000:.1f}, handler;dur={(done - started) * 1000:.1f}"


def act_route(h: ReviewHandlers) -> Route:
    """The route, bound to this app's handlers."""

    async def act(request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON (Content-Type: application/json)"}, status_code=415)
        raw = await bounded_body(request, MAX_BODY)
        if raw is None:
            return JSONResponse({"error": f"request too large (a key press is under {MAX_BODY // 1024} KB)"},
                                status_code=413)
        why = json_problem(raw)
        if why:
            return JSONResponse({"error": why}, status_code=400)
        body, user, t0 = json.loads(raw), scope_user(request.scope), time.perf_counter()

        def timed() -> tuple[dict, float, float]:
            started = time.perf_counter()
            return h.lean(body, user), started, time.perf_counter()

        try:
            out, started, done = await to_thread.run_sync(timed)
        except USER_ERRORS as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(out, headers={"Cache-Control": "no-store",
                                          "Server-Timing": server_timing(t0, started, done)})

    return Route(PATH, act, methods=["POST"])
