"""Client REST routes: jobs, outputs, events (SSE), workers, health, metrics."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import aiohttp.http_exceptions
from aiohttp import web

from wgpu_protocol.rest import JOB_STATES, TERMINAL_STATES

from .errors import BadRequest, StoreUnavailable
from .jobs import job_view, parse_body, parse_submit
from .runtime import HUB_KEY, Hub
from .snapshots import recent_jobs, waiting_reasons, worker_views
from .version import hub_version

SSE_BLOCK_MS = 5000  # below the Redis socket timeout
SSE_QUEUED_BLOCK_MS = 1000
QUEUED_EVENT = '{"status":"queued"}'
QUEUED_EVENT_ID = "0-1"
_EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


CLOSE_AFTER = web.RequestKey("close_after", bool)  # the connection cannot be reused


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d))


def _hub(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


async def read_body(request: web.Request) -> bytes:
    """The body, bounded by client_max_size (413 above it); a body that cannot be decoded
    (a broken Content-Encoding) is a bad request, not an error of the hub."""
    try:
        return await request.read()
    except web.HTTPException:
        raise
    except (web.RequestPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
        # Nothing more of this body can be read: end it, so that the server does not try to
        # drain the rest after the answer, and close the connection after the 400.
        request.content.feed_eof()
        request[CLOSE_AFTER] = True
        raise BadRequest(f"the body cannot be read: {type(exc).__name__}", "body") from None


JOB_ID_LENGTH = 32  # uuid4 hex
_HEX = re.compile(r"^[0-9a-f]{1,32}$")


async def job_id_of(request: web.Request) -> str:
    """The job id of the route, where a unique prefix stands for the whole id (as docker takes
    container ids): `wgpu jobs` prints 12 characters, and any of them work."""
    given = request.match_info["job_id"]
    if len(given) == JOB_ID_LENGTH or not _HEX.match(given):
        return given
    found = await _hub(request).store.jobs_with_prefix(given)
    if not found:
        raise web.HTTPNotFound(reason=f"no job {given!r}")
    if len(found) > 1:
        shown = ", ".join(job_id[:12] for job_id in found[:2])
        raise BadRequest(
            f"job id prefix {given!r} is ambiguous: it matches {shown}"
            f"{' and more' if len(found) > 2 else ''}; give more characters",
            "job_id",
        )
    return found[0]


async def submit(request: web.Request) -> web.Response:
    hub = _hub(request)
    spec = parse_submit(parse_body(await read_body(request)), hub.config)
    result = await hub.store.enqueue(uuid.uuid4().hex, spec)
    if spec.webhook_events and result.created:
        await hub.store.set_webhook_events(result.job_id, spec.webhook_events)
    if not result.created:
        fields = await hub.store.get_job(result.job_id)
        if fields is None:  # expired between the two calls
            raise web.HTTPServiceUnavailable(reason="the job expired meanwhile; submit again")
        return _json(job_view(fields), 200)
    # Built here rather than read back: saves a round trip on the hot path.
    fields = {
        "id": result.job_id,
        "status": "queued",
        "priority": str(spec.priority),
        "timeout_s": str(spec.timeout_s),
        "max_attempts": str(spec.max_attempts),
        "attempts": "0",
        "created_ms": str(result.created_ms),
        "constraints": json.dumps(spec.constraints) if spec.constraints else "",
        "idempotency_key": spec.idempotency_key,
        "webhook_url": spec.webhook_url,
        "wh_events": ",".join(spec.webhook_events),
        "requires": json.dumps(spec.requires) if spec.requires else "",
        "owner": spec.owner,
        "sched_ms": str(int(spec.schedule_timeout_s * 1000)),
        "queue_ms": str(int(spec.queue_timeout_s * 1000)) if spec.queue_timeout_s else "",
    }
    return _json(job_view(fields), 201)


async def _reasons(hub: Hub, rows: list[dict[str, str]]) -> dict[str, str]:
    return await waiting_reasons(hub.store, hub.config, rows)


async def get_job(request: web.Request) -> web.Response:
    hub = _hub(request)
    job_id = await job_id_of(request)
    fields = await hub.store.get_job_with_workflow(job_id)
    if fields is None:
        raise web.HTTPNotFound(reason=f"no job {job_id!r}")
    reasons = await _reasons(hub, [fields])
    return _json(job_view(fields, True, reasons.get(fields.get("pool", ""))))


async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in JOB_STATES:
        raise BadRequest(f"status must be one of {', '.join(JOB_STATES)}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be from 1 to 1000")
    hub = _hub(request)
    return _json({"jobs": await recent_jobs(hub.store, hub.config, status, limit)})


async def cancel_job(request: web.Request) -> web.Response:
    job_id = await job_id_of(request)
    store = _hub(request).store
    result = await store.cancel(job_id, _hub(request).config.ttl_ms)
    if result.outcome == "unknown_job":
        raise web.HTTPNotFound(reason=f"no job {job_id!r}")
    fields = await store.get_job(job_id)
    view = job_view(fields) if fields else None
    if result.outcome in TERMINAL_STATES:
        return _json(
            {
                "error": f"job {job_id} already ended {result.outcome}; nothing to cancel",
                "job": view,
            },
            409,
        )
    return _json(view)


async def get_output(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    job_id, name = await job_id_of(request), request.match_info["name"]
    fields = await hub.store.get_job(job_id)
    if fields is None:
        raise web.HTTPNotFound(reason=f"no job {job_id!r}")
    outputs = json.loads(fields.get("outputs") or "[]")
    match = next((o for o in outputs if o.get("name") == name), None)
    if match is None:
        raise web.HTTPNotFound(reason=f"job {job_id} has no output {name!r}")
    content_type = str(match.get("content_type") or "application/octet-stream")
    chunks = hub.storage.read_chunks(job_id, name)
    try:
        first = await anext(chunks)
    except FileNotFoundError:
        raise web.HTTPNotFound(
            reason=f"output {name!r} of job {job_id} is no longer stored"
        ) from None
    except StopAsyncIteration:
        first = b""
    # Streamed in chunks: memory stays bounded whatever the output's size.
    response = web.StreamResponse(headers={"Content-Type": content_type})
    size = match.get("size")
    if isinstance(size, int):
        response.content_length = size
    if match.get("sha256"):
        response.headers["X-Content-SHA256"] = str(match["sha256"])
    await response.prepare(request)
    try:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await response.write_eof()
    return response


async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one job; resumes after `Last-Event-ID`; ends after `done`."""
    hub = _hub(request)
    job_id = await job_id_of(request)
    if await hub.store.get_job(job_id) is None:
        raise web.HTTPNotFound(reason=f"no job {job_id!r}")
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    if not _EVENT_ID.match(last):
        raise BadRequest("Last-Event-ID must be a stream id like 1700000000000-0")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    events = await hub.store.read_events(job_id, last, None)
    reason = await _queued_reason(hub, job_id)
    try:
        if last == "0":
            # Every job was queued first; that event is not stored (see lua/enqueue.lua). Its
            # id sorts before any stored one, so a client resuming from it misses nothing.
            opening = QUEUED_EVENT if not reason else _queued_event(reason)
            await response.write(
                f"event: status\ndata: {opening}\nid: {QUEUED_EVENT_ID}\n\n".encode()
            )
            last = QUEUED_EVENT_ID
        while True:
            for event_id, kind, data in events:
                if kind == "done":
                    fields = await hub.store.get_job(job_id)
                    if fields is not None:
                        data = json.dumps(job_view(fields))
                await response.write(f"event: {kind}\ndata: {data}\nid: {event_id}\n\n".encode())
                last = event_id
                if kind == "done":
                    return response
            # While the job is queued, look again every second for a change of why it waits.
            block = SSE_QUEUED_BLOCK_MS if reason is not None else SSE_BLOCK_MS
            events = await hub.store.read_events(job_id, last, block)
            if not events:
                if await hub.store.get_job(job_id) is None:
                    return response  # expired: nothing more will come
                now_reason = await _queued_reason(hub, job_id)
                if now_reason is not None and now_reason != reason:
                    # Not stored in the stream: it describes the queue, not the job's history.
                    await response.write(
                        f"event: status\ndata: {_queued_event(now_reason)}\n\n".encode()
                    )
                else:
                    await response.write(b": keep-alive\n\n")
                reason = now_reason
    except (ConnectionResetError, ConnectionError):
        return response  # the client went away
    except StoreUnavailable as exc:
        # Headers are sent: end the stream; the client resumes with Last-Event-ID.
        hub.redis_failed(exc)
        return response


def _queued_event(reason: str) -> str:
    return json.dumps({"status": "queued", "waiting_reason": reason or None})


async def _queued_reason(hub: Hub, job_id: str) -> str | None:
    """'' or why the job waits while it is queued; None once it is not queued."""
    fields = await hub.store.get_job(job_id)
    if fields is None or fields.get("status") != "queued":
        return None
    return (await _reasons(hub, [fields])).get(fields.get("pool", ""), "")


async def list_workers(request: web.Request) -> web.Response:
    hub = _hub(request)
    views = await worker_views(hub.store, hub.config)
    return _json({"workers": [view for view, _owner in views]})


async def health(request: web.Request) -> web.Response:
    hub = _hub(request)
    try:
        await hub.store.ping()
    except Exception as exc:  # any failure to reach Redis means "not healthy"
        hub.redis_failed(exc)
        return _json(
            {
                "status": "degraded",
                "redis": "unavailable",
                "error": f"Redis at {hub.redis_where} does not answer",
            },
            503,
        )
    hub.redis_ok()
    return _json(
        {
            "status": "ok",
            "redis": "ok",
            "hub_id": hub.hub_id,
            "version": hub_version(),
            "workers_connected": len(hub.dispatcher.sessions),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    hub = _hub(request)
    counts = await hub.store.counts()
    text = hub.metrics.render(counts, len(hub.dispatcher.sessions))
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type": "version=0.0.4"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/jobs", submit)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_delete("/jobs/{job_id}", cancel_job)
    app.router.add_get("/jobs/{job_id}/outputs/{name}", get_output)
    app.router.add_get("/jobs/{job_id}/events", job_events)
    app.router.add_get("/workers", list_workers)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
