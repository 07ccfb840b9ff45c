"""The web dashboard: static files shipped in the package (redis_api/static, no CDN, works
offline) at `/`, and its one live feed, `GET /events` (see live_feed.py).

The page holds no secret: it is served without a key. When API keys are on, it asks for one
and sends it as a bearer header on every call (kept in the tab's sessionStorage only).
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources

from aiohttp import web

from .errors import BadRequest, StoreUnavailable
from .event_fanout import SubscriberDropped
from .jobs import parse_job_list_query
from .live_feed import TOPICS, Viewer
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
    """Server-sent events of everything the caller may see: `workers`, `queue`, `jobs` at
    connect, then `job` per change (filters: `topics`, `status` and `limit` of the job list).
    Follows the hub's feed of changes (live_feed.py): pushed as they happen, not polled."""
    hub = request.app[HUB_KEY]
    topics, status, limit = _feed_query(request)
    key = request.get(CALLER)  # tenancy: a key sees its own jobs (all of them when admin)
    viewer = Viewer(topics, status, limit, key.may_see if key is not None else _everyone)
    async with hub.live.watch() as sub:
        transport = request.transport
        sub.alive = lambda: transport is not None and not transport.is_closing()
        # Subscribed first, then the snapshot: a change in between comes as an event. Read
        # before the 200, so that a Redis error is still a 503.
        snapshot = await hub.live.snapshot(viewer)
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
            await _send(response, snapshot)
            quiet_since = time.monotonic()
            while not hub.closing:
                try:
                    batch = await sub.next(min(hub.config.live_interval_s, KEEPALIVE_S))
                except SubscriberDropped:
                    break  # fell behind (or the hub stops): the page reconnects
                batch += sub.pending()  # all that came meanwhile, in one go
                items = await hub.live.changes(batch, viewer)
                if items:
                    await _send(response, items)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
        except StoreUnavailable as exc:
            hub.redis_failed(exc)  # the stream ends; the page reconnects to a fresh snapshot
        except (ConnectionError, asyncio.CancelledError):
            pass  # the viewer went away
        return response


def _everyone(owner: str | None) -> bool:
    return True


async def _send(response: web.StreamResponse, items: list[tuple[str, str]]) -> None:
    text = "".join(f"event: {topic}\ndata: {data}\n\n" for topic, data in items)
    await response.write(text.encode())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{name}", static_file)
    app.router.add_get("/events", events)
