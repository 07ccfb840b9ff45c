"""Drain and resume a worker (REST): the hub gives a drained worker no new job.

`POST /workers/{id}/drain` body `{"timeout_s"?: number}`: its current job finishes, and so does
the relay of a pipelined job's outputs (or, past `timeout_s`, both are released to the queue
without counting an attempt). `POST /workers/{id}/resume`
puts it back in service (and ends a quarantine). Drained state lives in Redis (store `drains`),
so it holds for a worker that is not connected yet and across reconnects, on every hub.
"""

from __future__ import annotations

import json

from aiohttp import web

from wgpu_protocol.messages import MAX_ID_LENGTH
from wgpu_protocol.rest import HELD_STATES, DrainAnswerJson, ResumeAnswerJson

from .errors import BadRequest
from .jobs import drain_view
from .runtime import HUB_KEY

MAX_DRAIN_TIMEOUT_S = 7 * 86400
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@")


def _worker_id(request: web.Request) -> str:
    worker_id = request.match_info["worker_id"]
    if not worker_id or len(worker_id) > MAX_ID_LENGTH or not set(worker_id) <= _ID_CHARS:
        raise BadRequest("worker id must be 1-200 of [A-Za-z0-9-_.:@]")
    return worker_id


def parse_drain(raw: bytes) -> float | None:
    """The drain body's timeout_s (None: no timeout). An empty body is `{}`."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - {"timeout_s"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}: only timeout_s is allowed")
    value = body.get("timeout_s")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_DRAIN_TIMEOUT_S
    ):
        raise BadRequest(f"timeout_s must be a number above 0 and at most {MAX_DRAIN_TIMEOUT_S}")
    return float(value)


async def _held_job(request: web.Request, worker_id: str, field: str) -> str | None:
    """The job the worker hash names in `field` (current_job, relay_job), if still its own."""
    store = request.app[HUB_KEY].store
    job_id = await store.redis.hget(store.key(f"worker:{worker_id}"), field)
    if not job_id:
        return None
    job = await store.get_job(job_id)
    if job is None or job.get("status") not in HELD_STATES or job.get("worker_id") != worker_id:
        return None
    return str(job_id)


async def drain(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    worker_id = _worker_id(request)
    timeout_s = parse_drain(await request.read())
    record = await hub.store.drain(worker_id, int(timeout_s * 1000) if timeout_s else 0)
    current = await _held_job(request, worker_id, "current_job")
    relaying = await _held_job(request, worker_id, "relay_job")
    body: DrainAnswerJson = {
        "worker_id": worker_id,
        "drain": drain_view(record, bool(current or relaying)),
        "current_job": current,
        "relaying_job": relaying,
    }
    return web.json_response(body)


async def resume(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    worker_id = _worker_id(request)
    was_drained, was_quarantined = await hub.store.resume(worker_id)
    body: ResumeAnswerJson = {
        "worker_id": worker_id,
        "drain": None,
        "was_drained": was_drained,
        "was_quarantined": was_quarantined,
    }
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/workers/{worker_id}/drain", drain)
    app.router.add_post("/workers/{worker_id}/resume", resume)
