"""Client REST routes: jobs, outputs, events (SSE), workers, health, metrics."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web

from wgpu_protocol.rest import HELD_STATES, TERMINAL_STATES

from . import inputs
from .auth import ApiKey
from .errors import BadRequest, StoreUnavailable
from .event_fanout import SubscriberDropped, Subscription
from .jobs import job_view, parse_body, parse_job_list_query, parse_submit
from .metrics import AttemptHistograms, QueueGauges
from .progress import PROGRESS_KIND
from .runtime import CALLER, HUB_KEY, Hub
from .snapshots import (
    queue_summary,
    recent_jobs,
    waiting_reasons,
    worker_for,
    worker_states,
    worker_views,
)
from .store import StreamEntry
from .version import hub_version

SSE_QUEUED_BLOCK_MS = 1000  # while queued, why it waits is looked at again this often
QUEUED_EVENT = '{"status":"queued"}'
QUEUED_EVENT_ID = "0-1"
_EVENT_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_JOB_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
LIST_OVERSCAN = 10
MAX_LIST_SCAN = 10_000
MAX_JOBS_LISTED = 1000  # GET /jobs?limit=


CLOSE_AFTER = web.RequestKey("close_after", bool)  # the connection cannot be reused


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d))


def _hub(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


async def read_body(request: web.Request) -> bytes:
    """The body, bounded by client_max_size (413 above it); a body that cannot be decoded
    (a broken Content-Encoding) is a bad request, not an error of the hub."""
    try:
        async with asyncio.timeout(request.app[HUB_KEY].config.read_timeout_s):
            return await request.read()
    except web.HTTPException:
        raise
    except TimeoutError:
        request.content.feed_eof()
        request[CLOSE_AFTER] = True
        raise BadRequest("the body did not arrive within READ_TIMEOUT_S", "body") from None
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
    key = caller(request)
    found = [  # only the caller's own jobs (or all, for an admin key): ids of others stay unseen
        job_id
        for job_id, owner in await _hub(request).store.jobs_with_prefix(given)
        if key is None or key.may_see(owner or None)
    ]
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


def caller(request: web.Request) -> ApiKey | None:
    """The API key of this request; None when auth is off (then everything is visible)."""
    return request.get(CALLER)


def _owner(request: web.Request) -> str:
    key = caller(request)
    return key.name if key is not None else ""


def _visible(request: web.Request, fields: dict[str, str] | None) -> dict[str, str] | None:
    """The job if this caller may see it; another key's job is reported as not found."""
    key = caller(request)
    if fields is None or key is None or key.may_see(fields.get("owner") or None):
        return fields
    return None


async def _job_id(request: web.Request) -> str:
    """The route's job id, checked before it reaches Redis (a lone surrogate there would fail
    a whole batch), then resolved as job_id_of does."""
    if not _JOB_ID.fullmatch(request.match_info["job_id"]):
        raise web.HTTPNotFound(reason="no such job (job ids are 1-200 of [A-Za-z0-9_.:-])")
    return await job_id_of(request)


def _not_found(job_id: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(reason=f"no job {job_id!r}")


async def _submitted_body(request: web.Request, hub: Hub, owner: str) -> tuple[Any, dict[str, Any]]:
    """(job body, inputs from file parts). Multipart: a `job` part with the JSON body and one
    file part per input, streamed to storage as it comes (bounded by MAX_INPUT_BYTES, not by
    the body limit)."""
    if not request.content_type.startswith("multipart/"):
        return parse_body(await read_body(request)), {}
    body: Any = None
    files: dict[str, Any] = {}
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, aiohttp.BodyPartReader):
            raise BadRequest("nested multipart bodies are not accepted", "body")
        name = part.name or ""
        if name == "job":
            raw = await part.read(decode=False)
            if len(raw) > hub.config.max_body_bytes:
                raise BadRequest(f"the job part exceeds {hub.config.max_body_bytes} bytes", "job")
            body = parse_body(bytes(raw))
        elif part.filename is not None:
            if not inputs.input_name_ok(name):
                raise BadRequest(f"file part {name!r} needs a plain input name", "inputs")
            content_type = part.headers.get("Content-Type", "")
            filename = part.filename if inputs.input_name_ok(part.filename or "") else name
            files[name] = await inputs.store_input(
                hub, inputs.part_chunks(part), filename, content_type, owner
            )
        else:
            raise BadRequest(f"unexpected form field {name!r}: send 'job' and file parts", name)
    if body is None:
        raise BadRequest("a multipart job needs a 'job' part with the JSON body", "job")
    return body, files


async def submit(request: web.Request) -> web.Response:
    hub = _hub(request)
    owner = _owner(request)
    hub.limiter.check(owner)
    wait_s = _wait_seconds(request)
    body, files = await _submitted_body(request, hub, owner)
    spec = parse_submit(body, hub.config)
    if isinstance(body, dict) and (body.get("inputs") is not None or files):
        resolved = await inputs.resolve_inputs(
            hub, body.get("inputs"), body.get("workflow"), files, owner
        )
        spec = replace(spec, extras={**(spec.extras or {}), "inputs": resolved})
    idempotency_key = spec.idempotency_key
    if owner:
        # Idempotency keys are per API key: one key cannot find another's job by guessing.
        scoped = f"{owner}:{idempotency_key}" if idempotency_key else ""
        spec = replace(spec, owner=owner, idempotency_key=scoped)
    result = await hub.store.enqueue(uuid.uuid4().hex, spec, hub.queue_limits)
    if result.created:
        hub.dispatcher.work_enqueued()
    if wait_s and result.created:
        if spec.webhook_events:
            await hub.store.set_webhook_events(result.job_id, spec.webhook_events)
        return await _wait_for_end(hub, result.job_id, wait_s)
    if spec.webhook_events and result.created:
        await hub.store.set_webhook_events(result.job_id, spec.webhook_events)
    if not result.created:
        fields = _visible(request, await hub.store.get_job(result.job_id))
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
        "idempotency_key": idempotency_key,
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


MAX_WAIT_S = 300.0


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait_s = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds up to {MAX_WAIT_S:g}", "wait") from None
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise BadRequest(f"wait must be from 0 to {MAX_WAIT_S:g} seconds", "wait")
    return wait_s


async def _wait_for_end(hub: Hub, job_id: str, wait_s: float) -> web.Response:
    """`POST /jobs?wait=S`: the finished job (200) if it ends within S seconds, else the job
    as it stands (202). Waits on the hub's one event reader (event_fanout), not by polling."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    # Subscribed before the first look, so an end between the look and the wait is seen.
    async with hub.events.subscribe(hub.store.events_key(job_id), "0") as sub:
        while True:
            fields = await hub.store.get_job(job_id)
            if fields is None:
                raise web.HTTPServiceUnavailable(reason="the job expired meanwhile; submit again")
            if fields.get("status") in TERMINAL_STATES:
                return _json(job_view(fields), 200)
            if deadline - loop.time() <= 0:
                return _json(job_view(fields), 202)
            try:
                # Only its `done` event ends a job (lua/common.lua finish): the job is read
                # again then, not at each step on the way; and every 5 s as a safety net.
                while (remaining := deadline - loop.time()) > 0:
                    batch = await sub.next(min(remaining, 5.0))
                    if not batch or any(entry.kind == "done" for entry in batch):
                        break
            except SubscriberDropped:
                continue  # fell behind: the next look at the job decides


async def get_job(request: web.Request) -> web.Response:
    hub = _hub(request)
    job_id = await _job_id(request)
    fields = _visible(request, await hub.store.get_job_with_workflow(job_id))
    if fields is None:
        raise _not_found(job_id)
    reasons = await _reasons(hub, [fields])
    return _json(job_view(fields, True, reasons.get(fields.get("pool", ""))))


async def list_jobs(request: web.Request) -> web.Response:
    status, limit = parse_job_list_query(request.query, MAX_JOBS_LISTED)
    hub = _hub(request)
    key = caller(request)
    if key is None or key.admin:
        return _json({"jobs": await recent_jobs(hub.store, hub.config, status, limit)})
    # Jobs are indexed by state, not by key: look further and keep this key's own.
    scan = min(limit * LIST_OVERSCAN, MAX_LIST_SCAN)
    views = await recent_jobs(hub.store, hub.config, status, scan)
    return _json({"jobs": [v for v in views if key.may_see(v["owner"])][:limit]})


async def cancel_job(request: web.Request) -> web.Response:
    job_id = await _job_id(request)
    store = _hub(request).store
    if caller(request) is not None and _visible(request, await store.get_job(job_id)) is None:
        raise _not_found(job_id)
    result = await store.cancel(job_id, _hub(request).config.ttl_ms)
    if result.outcome == "unknown_job":
        raise _not_found(job_id)
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
    job_id, name = await _job_id(request), request.match_info["name"]
    fields = _visible(request, await hub.store.get_job(job_id))
    if fields is None:
        raise _not_found(job_id)
    outputs = json.loads(fields.get("outputs") or "[]")
    match = next((o for o in outputs if o.get("name") == name), None)
    if match is None:
        raise web.HTTPNotFound(reason=f"job {job_id} has no output {name!r}")
    presign = getattr(hub.storage, "presigned_url", None)
    if hub.config.output_redirect == "presigned" and presign is not None:
        raise web.HTTPTemporaryRedirect(await presign(job_id, name))
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
    response = web.StreamResponse(headers=output_headers(name, match.get("content_type")))
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


# Served as themselves; anything else (text/html above all: it would run in the hub's origin)
# is served as application/octet-stream.
SERVED_TYPES = re.compile(
    r"(image/(png|jpeg|webp|gif|avif|bmp|tiff)|video/(mp4|webm|quicktime|x-matroska)"
    r"|audio/(mpeg|wav|x-wav|ogg|flac|webm|mp4)|model/(gltf-binary|gltf\+json|obj|stl)"
    r"|application/(octet-stream|json|x-safetensors|zip))"
)


def output_headers(name: str, content_type: Any) -> dict[str, str]:
    served = str(content_type or "")
    if not SERVED_TYPES.fullmatch(served):
        served = "application/octet-stream"
    return {
        "Content-Type": served,
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def _last_event_id(request: web.Request) -> str:
    """The validated resume point (400 before any of the stream is sent)."""
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    match = _EVENT_ID.fullmatch(last)
    if match is None or any(int(part) >= 2**64 for part in match.groups(default="0")):
        raise BadRequest(
            "Last-Event-ID must be a stream id like 1700000000000-0 (two integers below 2**64)",
            "Last-Event-ID",
        )
    return last


async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one job; resumes after `Last-Event-ID`; ends after `done`.

    Waiting is done by the hub's one event reader (event_fanout.py), never by a pooled Redis
    connection per stream; the handler ends when its client goes away."""
    hub = _hub(request)
    job_id = await _job_id(request)
    last = _last_event_id(request)
    # Read before subscribing: its progress is no newer than any live step that follows.
    fields = _visible(request, await hub.store.get_job(job_id))
    if fields is None:
        raise _not_found(job_id)
    latest = fields.get("progress") if fields.get("status") in HELD_STATES else None
    pool = fields.get("pool", "")  # a job keeps its pool: its waiting reason is that pool's
    key = hub.store.events_key(job_id)
    start = QUEUED_EVENT_ID if last == "0" else last
    async with hub.events.subscribe(key, start) as sub:
        # Subscribed first, then what is stored already: nothing falls in between. Read before
        # the 200, so that a Redis error is still a 503.
        backlog = await hub.store.read_stream(key, start)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        sent = start
        # A job read as not queued needs no look at why it waits: were it queued again since,
        # its own status event says so and the tick follows from there.
        reason = await _queued_reason(hub, job_id) if fields.get("status") == "queued" else None
        # The fan-out's tick (one task for every stream) notices a client gone and, while the
        # job is queued, a change of why it waits (_reason_tick): a stream that waits costs no
        # timer and no Redis call of its own.
        transport = request.transport
        sub.alive = lambda: transport is not None and not transport.is_closing()
        sub.watch = _ReasonWatch(pool, reason) if reason is not None else None
        hub.events.on_tick = functools.partial(_reason_tick, hub)
        try:
            await response.prepare(request)
            if last == "0":
                # Every job was queued first; that event is not stored (see lua/enqueue.lua).
                # Its id sorts before any stored one, so a client resuming from it misses nothing.
                opening = QUEUED_EVENT if not reason else _queued_event(reason)
                await _send(response, "status", opening, QUEUED_EVENT_ID)
            batch = backlog
            if latest:
                # Live progress is not stored in the stream: a client joining mid-job gets
                # the job's latest (recorded at a throttle, progress.py) after its history.
                batch = [*backlog, StreamEntry("", PROGRESS_KIND, latest)]
            quiet = 0  # keep-alives sent so far
            while True:
                for entry in batch:
                    if entry.kind == REASON_KIND:
                        if sub.watch is None:
                            continue  # the job left the queue after the tick looked
                        # Not stored in the stream: it describes the queue, not the job's history.
                        await _write(response, f"event: status\ndata: {entry.data}\n\n".encode())
                        continue
                    if not entry.id:
                        # Live progress (progress.py): no id, so a client resuming with
                        # Last-Event-ID resumes after the last stored event.
                        await _write(
                            response, f"event: {entry.kind}\ndata: {entry.data}\n\n".encode()
                        )
                        continue
                    if not _after(entry.id, sent):
                        continue  # the reader and the backlog may both have it
                    data = entry.data
                    if entry.kind == "done":
                        fields = await hub.store.get_job(job_id)
                        if fields is not None:
                            data = json.dumps(job_view(fields))
                    await _send(response, entry.kind, data, entry.id)
                    sent = entry.id
                    if entry.kind == "status":
                        # Its own status events tell the stream whether its job still waits
                        # (the tick reads no job for it).
                        sub.watch = _ReasonWatch(pool, "") if _queued(data) else None
                    if entry.kind == "done":
                        return response
                if _after(sent, sub.last_id):
                    sub.last_id = sent
                # A random share of the interval: streams opened together (a thousand at
                # once) do not all wake, check and write at the same moment.
                batch = await sub.next(SSE_KEEPALIVE_S * random.uniform(0.5, 1.0))
                if not batch:
                    quiet += 1
                    # A job ends with `done` on its stream; whether it still exists is only a
                    # safety net, looked at every few keep-alives (a Redis call per stream
                    # and keep-alive was most of what a thousand idle streams cost).
                    if quiet % SSE_EXISTS_EVERY == 0 and not await hub.store.job_exists(job_id):
                        return response  # expired: nothing more will come
                    await _write(response, b": keep-alive\n\n")
        except (ConnectionResetError, ConnectionError, TimeoutError, SubscriberDropped):
            return response  # the client went away, or is too slow: it resumes later
        except StoreUnavailable as exc:
            # Headers are sent: end the stream; the client resumes with Last-Event-ID.
            hub.redis_failed(exc)
            return response


SSE_KEEPALIVE_S = 15.0
SSE_EXISTS_EVERY = 4  # keep-alives between looks at whether the job still exists
SSE_WRITE_TIMEOUT_S = 30.0  # a client that reads nothing for this long is dropped
REASON_KIND = "_reason"  # an entry the tick pushes: a queued job's new waiting reason


@dataclass
class _ReasonWatch:
    pool: str
    reason: str | None


def _queued(status_event: str) -> bool:
    try:
        return bool(json.loads(status_event).get("status") == "queued")
    except (ValueError, AttributeError):
        return False


async def _reason_tick(hub: Hub, subs: list[Subscription]) -> None:
    """Once a second, for every stream of a queued job on this hub: why does it wait now?
    One reasons script for the pools of all those jobs and no read of the jobs themselves
    (each stream learns from its job's own status events that it left the queue), so the tick
    costs the same for ten streams as for a thousand."""
    watches = [(sub, sub.watch) for sub in subs if isinstance(sub.watch, _ReasonWatch)]
    pools = [watch.pool for _, watch in watches if watch.pool]
    reasons = await hub.store.waiting_reasons(pools, hub.config.stale_ms)
    for sub, watch in watches:
        now = reasons.get(watch.pool, "")
        if sub.watch is watch and now != watch.reason:
            watch.reason = now
            sub.push([StreamEntry("", REASON_KIND, _queued_event(now))])


async def _send(response: web.StreamResponse, kind: str, data: str, event_id: str) -> None:
    await _write(response, f"event: {kind}\ndata: {data}\nid: {event_id}\n\n".encode())


async def _write(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(SSE_WRITE_TIMEOUT_S):
        await response.write(data)


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _after(candidate: str, last: str) -> bool:
    return _id_key(candidate) > _id_key(last)


def _queued_event(reason: str) -> str:
    return json.dumps({"status": "queued", "waiting_reason": reason or None})


# Why a queued job waits, shared by every stream of that job on this hub for a second: many
# streams on one job cost one look a second, not one each.
_REASON_TTL_S = 1.0
_reason_cache: dict[tuple[str, str], tuple[float, str | None]] = {}


async def _queued_reason(hub: Hub, job_id: str) -> str | None:
    """'' or why the job waits while it is queued; None once it is not queued."""
    key = (hub.hub_id, job_id)
    now = time.monotonic()
    cached = _reason_cache.get(key)
    if cached is not None and now - cached[0] < _REASON_TTL_S:
        return cached[1]
    reason = await _look_up_reason(hub, job_id)
    if len(_reason_cache) > 10_000:
        _reason_cache.clear()
    _reason_cache[key] = (now, reason)
    return reason


async def _look_up_reason(hub: Hub, job_id: str) -> str | None:
    fields = await hub.store.get_job(job_id)
    if fields is None or fields.get("status") != "queued":
        return None
    return (await _reasons(hub, [fields])).get(fields.get("pool", ""), "")


async def list_workers(request: web.Request) -> web.Response:
    hub = _hub(request)
    views = await worker_views(hub.store, hub.config)
    key = caller(request)  # tenancy: another key's job is not named
    may_see = key.may_see if key is not None else (lambda owner: True)
    return _json({"workers": [worker_for(view, owners, may_see) for view, owners in views]})


HEALTH_TIMEOUT_S = 1.5  # /health answers within 2 s, even when Redis hangs
OOM_RECENT_S = 5.0


async def health(request: web.Request) -> web.Response:
    hub = _hub(request)
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            used, limit = await hub.store.memory()
    except (StoreUnavailable, TimeoutError) as exc:
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
    oom_at = hub.redis_oom_at
    if (limit and used >= limit) or (
        oom_at is not None and time.monotonic() - oom_at < OOM_RECENT_S
    ):
        return _json(
            {
                "status": "degraded",
                "redis": "out of memory",
                "error": "redis out of memory: raise maxmemory or let workers drain the queue",
                "redis_used_memory": used,
                "redis_maxmemory": limit,
            },
            503,
        )
    return _json(
        {
            "status": "ok",
            "redis": "ok",
            "hub_id": hub.hub_id,
            "version": hub_version(),
            "workers_connected": len(hub.dispatcher.sessions),
            "event_streams": hub.events.open_streams,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    hub = _hub(request)
    summary = await queue_summary(hub.store)
    queue = QueueGauges(
        summary["queued_by_priority"],
        summary["queued_by_tenant"],
        summary["queued_by_pool"],
        summary["queued_scanned"],
        worker_states(await worker_views(hub.store, hub.config)),
    )
    attempts = AttemptHistograms.from_fields(await hub.store.attempt_histograms())
    text = hub.metrics.render(summary["counts"], len(hub.dispatcher.sessions), queue, attempts)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type": "version=0.0.4"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/jobs", submit)
    app.router.add_post("/uploads", inputs.post_upload)
    app.router.add_get("/worker/inputs/{sha256}", inputs.get_worker_input)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_delete("/jobs/{job_id}", cancel_job)
    app.router.add_get("/jobs/{job_id}/outputs/{name}", get_output)
    app.router.add_get("/jobs/{job_id}/events", job_events)
    app.router.add_get("/workers", list_workers)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
