"""The web dashboard: static files shipped in the package (redis_api/static, no CDN, works
offline) at `/`, and its one live feed, `GET /events` (see live_feed.py).

The page holds no secret: it is served without a key. When API keys are on, it asks for one
and sends it as a bearer header on every call (kept in the tab's sessionStorage only).
"""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from .errors import BadRequest
from .jobs import parse_job_list_query
from .live_feed import TOPICS
from .runtime import CALLER, HUB_KEY

STATIC = resources.files("redis_api") / "static"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# Everything the page loads comes from this hub; outputs are shown through blob: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
KEEPALIVE_S = 15.0
MAX_JOBS_LISTED = 500


def _static(name: str) -> web.Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    path = STATIC / name
    if "/" in name or name.startswith(".") or suffix not in CONTENT_TYPES or not path.is_file():
        raise web.HTTPNotFound(reason=f"no dashboard file {name!r}")
    return web.Response(
        body=path.read_bytes(),
        content_type=CONTENT_TYPES[suffix],
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )


async def index(request: web.Request) -> web.Response:
    return _static("index.html")


async def static_file(request: web.Request) -> web.Response:
    return _static(request.match_info["name"])


def _feed_query(request: web.Request) -> tuple[frozenset[str], str | None, int]:
    raw = request.query.get("topics") or ",".join(TOPICS)
    topics = frozenset(t.strip() for t in raw.split(",") if t.strip())
    if not topics or not topics <= set(TOPICS):
        raise BadRequest(f"topics must be a comma-separated subset of {','.join(TOPICS)}", "topics")
    status, limit = parse_job_list_query(request.query, MAX_JOBS_LISTED)
    return topics, status, limit


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of everything the caller may see: `workers`, `queue`, `jobs`
    (filters: `topics`, `status` and `limit` of the job list)."""
    hub = request.app[HUB_KEY]
    topics, status, limit = _feed_query(request)
    key = request.get(CALLER)  # tenancy: a key sees its own jobs (all of them when admin)
    may_see = key.may_see if key is not None else (lambda owner: True)
    async with hub.live.watch(topics, status, limit, may_see) as viewer:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        try:
            await response.write(b"retry: 2000\n\n")
            while not hub.closing:
                try:
                    item = await viewer.next(KEEPALIVE_S)
                except EOFError:
                    break  # fell behind (or the hub stops): the page reconnects
                if item is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                topic, data = item
                await response.write(f"event: {topic}\ndata: {data}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass  # the viewer went away
        return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{name}", static_file)
    app.router.add_get("/events", events)
