"""Promises of docs/architecture.md and the README that mutation testing found unguarded:
every report is fenced by its token, a retried job keeps its place in the queue, a finished
job is final, and every client route needs a key when keys are on. Real hub, real Redis."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import pytest
from aiohttp import web

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, get_job, job_status, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import (
    Ack,
    Cancel,
    Completed,
    Failed,
    GpuInfo,
    Heartbeat,
    JobAssigned,
    JobError,
    OutputFrame,
    OutputRef,
    Progress,
    Released,
    RunningJob,
    Started,
    encode_output_frame,
)
from wgpu_protocol.output_chunks import OutputChunk, encode_chunk

pytestmark = pytest.mark.redis


async def _second_attempt(hub_url: str, worker: ProtocolWorker) -> tuple[JobAssigned, JobAssigned]:
    """A job that failed once on `worker` and was given to it again: (attempt 1, attempt 2)."""
    await submit(hub_url, max_attempts=3)
    first = await worker.take_job()
    assert (await worker.fail(first)).ok
    second = await worker.take_job()
    assert (second.job_id, second.attempt) == (first.job_id, 2) and second.token != first.token
    return first, second


async def test_started_and_progress_with_an_earlier_attempts_token_are_refused(
    hub_factory: HubFactory,
) -> None:
    """Fencing: a report under attempt 1's token after the job went to attempt 2 changes
    nothing, even from the same worker (only the token tells the attempts apart)."""
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await _second_attempt(hub.url, worker)

    await worker.send(Started(first.job_id, first.token, "stale-prompt"))
    refused = await worker.expect(Ack, of="started", job_id=first.job_id)
    assert (refused.ok, refused.reason, refused.token) == (False, "stale_token", first.token)
    await worker.send(Progress(first.job_id, first.token, "3", 1, 2))
    refused = await worker.expect(Ack, of="progress", job_id=first.job_id)
    assert (refused.ok, refused.reason, refused.token) == (False, "stale_token", first.token)

    job = await get_job(hub.url, first.job_id)
    assert job["status"] == "assigned" and job["attempts"] == 2 and job["progress"] is None
    # The current attempt reports normally; its result is the one recorded.
    await worker.send(Progress(second.job_id, second.token, "3", 1, 4))
    assert (await worker.complete(second)).ok
    done = await get_job(hub.url, first.job_id)
    assert done["status"] == "succeeded" and [h["outcome"] for h in done["history"]] == [
        "failed",
        "succeeded",
    ]
    await worker.close()


async def test_heartbeat_with_an_earlier_attempts_token_is_told_to_stop(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await _second_attempt(hub.url, worker)
    await worker.send(Heartbeat(True, running=RunningJob(first.job_id, first.token)))
    cancel = await worker.expect(Cancel, job_id=first.job_id)
    assert (cancel.token, cancel.reason) == (first.token, "stale_token")
    assert (await worker.complete(second)).ok
    await worker.close()


async def test_complete_fail_and_release_with_an_earlier_attempts_token_are_refused(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await _second_attempt(hub.url, worker)
    late = await worker.complete(first)  # no outputs: only the script's own check can refuse
    assert (late.ok, late.reason) == (False, "stale_token")
    await worker.send(Failed(first.job_id, first.token, JobError("execution_error", "late")))
    refused = await worker.expect(Ack, of="failed", job_id=first.job_id)
    assert (refused.ok, refused.reason) == (False, "stale_token")
    await worker.send(Released(first.job_id, first.token, "late"))
    refused = await worker.expect(Ack, of="released", job_id=first.job_id)
    assert (refused.ok, refused.reason) == (False, "stale_token")
    job = await get_job(hub.url, first.job_id)
    assert (job["status"], job["attempts"], len(job["history"])) == ("assigned", 2, 1)
    assert (await worker.complete(second)).ok
    await worker.close()


@pytest.mark.parametrize("how", ["failed", "released"])
async def test_a_retried_job_keeps_its_place_ahead_of_later_submissions(
    hub_factory: HubFactory, how: str
) -> None:
    """'Puts a job back in its place in the queue: retries keep their turn': higher priority
    first, then the original submission order, whatever happened to the job meanwhile."""
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    early = await submit(hub.url, priority=0)
    taken = await worker.take_job()
    assert taken.job_id == early["id"]
    later = [(await submit(hub.url, priority=0))["id"] for _ in range(2)]
    urgent = (await submit(hub.url, priority=5))["id"]
    if how == "failed":
        assert (await worker.fail(taken)).ok
    else:
        await worker.send(Released(taken.job_id, taken.token, "shutting down"))
        assert (await worker.expect(Ack, of="released")).ok
    expected = [urgent, early["id"], *later]

    status, listed = await call(hub.url, "GET", "/jobs?status=queued")
    assert status == 200 and [j["id"] for j in listed["jobs"]] == expected
    assert await worker.complete_each(len(expected)) == expected
    await worker.close()


async def _finished(hub_url: str, worker: ProtocolWorker, status: str) -> dict[str, object]:
    job = await submit(hub_url, max_attempts=1)
    assigned = await worker.take_job()
    if status == "succeeded":
        assert (await worker.complete(assigned, {"a.png": ("image/png", b"png")})).ok
    else:  # failed: not retryable; dead: retryable, out of attempts
        assert (await worker.fail(assigned, retryable=status == "dead")).ok
    return await job_status(hub_url, job["id"], status)


@pytest.mark.parametrize("status", ["succeeded", "failed", "dead"])
async def test_cancelling_a_finished_job_is_409_and_changes_nothing(
    hub_factory: HubFactory, status: str
) -> None:
    """Terminal states are final: DELETE on a finished job answers 409 with the job as it is."""
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    before = await _finished(hub.url, worker, status)
    code, reply = await call(hub.url, "DELETE", f"/jobs/{before['id']}")
    assert code == 409 and f"already ended {status}" in reply["error"]
    assert reply["job"]["status"] == status
    assert await get_job(hub.url, str(before["id"])) == before
    await worker.close()


# Paths the architecture leaves open: probes, and workers (who have their own token).
# The probes, the worker socket and input route (they take WORKER_TOKEN, tested with them) and
# the dashboard's static page (it holds no data: its feed and every call it makes need the key).
OPEN_PREFIXES = ("/health", "/metrics", "/ws/", "/worker/", "/dashboard/", "/openapi.json")
OPEN_EXACT = ("/",)


def _client_routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        open_path = path in OPEN_EXACT or path.startswith(OPEN_PREFIXES)
        if route.method not in ("HEAD", "*") and not open_path:
            routes.append((route.method, path))
    return routes


async def test_every_client_route_refuses_a_missing_or_wrong_key(hub_factory: HubFactory) -> None:
    """With API_KEYS set, every route but the probes answers 401 without a valid key, DELETE
    included, before it does anything; the same request with a key is let through."""
    key = "ak-only-7Qx"
    hub = await hub_factory(api_keys=(key,), worker_token="wt-guarantees")  # both, or no start
    status, job = await call(
        hub.url, "POST", "/jobs", {"workflow": {"1": {"class_type": "X"}}}, {"X-API-Key": key}
    )
    assert status == 201
    routes = _client_routes(hub.runner.app)
    methods = {method for method, _ in routes}
    assert {"GET", "POST", "DELETE"} <= methods and len(routes) >= 7, routes

    def concrete(path: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: job["id"] if m[1] == "job_id" else "x.png", path)

    for method, path in routes:
        url = concrete(path)
        body = {"workflow": {"1": {"class_type": "X"}}} if method == "POST" else None
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": key + "x"}):
            status, reply = await call(hub.url, method, url, body, headers)
            assert status == 401, (method, url, headers, status, reply)
            assert "API key" in reply["error"]
    # Nothing was done without a key: the one job is still queued, and it is still alone.
    status, listed = await call(hub.url, "GET", "/jobs", headers={"X-API-Key": key})
    assert status == 200 and [(j["id"], j["status"]) for j in listed["jobs"]] == [
        (job["id"], "queued")
    ]
    for method, path in routes:
        if method == "GET" and "events" not in path:
            status, _ = await call(hub.url, method, concrete(path), None, {"X-API-Key": key})
            assert status != 401, (method, path)
    status, _ = await call(hub.url, "DELETE", f"/jobs/{job['id']}", None, {"X-API-Key": key})
    assert status == 200


async def test_the_job_list_limit_is_bounded(hub_factory: HubFactory) -> None:
    """'limits on everything that grows': GET /jobs takes a limit from 1 to 1000."""
    hub = await hub_factory()
    for limit in ("0", "1001", "-5", "many"):
        status, reply = await call(hub.url, "GET", f"/jobs?limit={limit}")
        assert status == 400 and "limit" in reply["error"], (limit, reply)
    first, second = await submit(hub.url), await submit(hub.url)
    for limit, expected in (("1", [first["id"]]), ("1000", [first["id"], second["id"]])):
        status, listed = await call(hub.url, "GET", f"/jobs?status=queued&limit={limit}")
        assert status == 200 and [j["id"] for j in listed["jobs"]] == expected


async def test_a_machine_constraint_alone_keeps_a_job_off_other_machines(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    elsewhere = ProtocolWorker(hub.url, "m1-gpu0", "m1", GpuInfo(0, "GPU-m1", "H100", 81_000))
    await elsewhere.connect()
    pinned = await submit(hub.url, constraints={"machine_id": "m2"})
    free = await submit(hub.url)
    # The idle worker on m1 fits in every other way; its first job is the unpinned one.
    assert (await elsewhere.take_job()).job_id == free["id"]
    target = ProtocolWorker(hub.url, "m2-gpu0", "m2")
    await target.connect()
    assert (await target.take_job()).job_id == pinned["id"]
    await elsewhere.close()
    await target.close()


async def test_work_is_pushed_to_idle_workers_on_every_hub_without_polling(
    hub_factory: HubFactory,
) -> None:
    """Workers get pushed work: with the hubs' periodic safety-net claim an hour away, a job
    submitted to either hub still reaches the idle worker at once."""
    hubs = [await hub_factory(reap_interval_s=3600), await hub_factory(reap_interval_s=3600)]
    worker = ProtocolWorker(hubs[1].url)
    await worker.connect()
    await worker.ready()

    async def idle() -> list[str]:
        _, listed = await call(hubs[0].url, "GET", "/workers")
        return [w["status"] for w in listed["workers"]]

    for hub in hubs:
        await eventually(idle, lambda states: states == ["idle"])
        job = await submit(hub.url)
        assigned = await worker.expect(JobAssigned, within=5.0)
        assert assigned.job_id == job["id"] and (await worker.complete(assigned)).ok
        await worker.ready()
    await worker.close()


async def test_an_output_whose_bytes_differ_from_its_announced_sha256_never_succeeds(
    hub_factory: HubFactory,
) -> None:
    """'succeeded only when every output ComfyUI produced is stored and described': an output
    stored with other bytes than the worker hashed is a storage error, retried, not a success."""
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=2)
    assigned = await worker.take_job()
    stored = b"what arrived"
    await worker.send_raw(
        encode_output_frame(OutputFrame(job["id"], assigned.token, "a.png", "image/png", stored))
    )
    announced = hashlib.sha256(b"what the worker read").hexdigest()
    ref = OutputRef("a.png", "image/png", len(stored), announced)
    await worker.send(Completed(job["id"], assigned.token, (ref,)))
    ack = await worker.expect(Ack, job_id=job["id"], of="completed")
    assert (ack.ok, ack.reason) == (False, "storage_error")
    view = await job_status(hub.url, job["id"], "queued")
    assert view["outputs"] == [] and view["history"][-1]["error"]["type"] == "storage_error"
    assert announced in view["history"][-1]["error"]["message"]
    await worker.close()


@pytest.mark.parametrize("chunks", [1, 2])
async def test_a_chunked_output_whose_bytes_differ_from_its_own_sha256_is_not_stored(
    hub_factory: HubFactory, chunks: int
) -> None:
    """An output in one chunk (stored with one write) or in several (written through as they
    come) is kept only when its bytes match the size and sha256 of its last chunk."""
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=2)
    assigned = await worker.take_job()
    pieces = [b"what arrived, part %d" % i for i in range(chunks)]
    announced = hashlib.sha256(b"what the worker read").hexdigest()
    offset = 0
    for i, piece in enumerate(pieces):
        last = i == chunks - 1
        total = offset + len(piece)
        chunk = OutputChunk(job["id"], assigned.token, "a.png", "image/png", offset, piece)
        if last:
            chunk = replace(chunk, last=True, size=total, sha256=announced)
        await worker.send_raw(encode_chunk(chunk))
        offset = total
    ref = OutputRef("a.png", "image/png", offset, announced)
    await worker.send(Completed(job["id"], assigned.token, (ref,)))
    # The attempt ended at the last chunk already: the result comes too late.
    assert not (await worker.expect(Ack, job_id=job["id"], of="completed")).ok
    view = await job_status(hub.url, job["id"], "queued")
    error = view["history"][-1]["error"]
    assert view["outputs"] == [] and error["type"] == "storage_error"
    assert announced in error["message"]
    await worker.close()


async def test_the_whole_queue_stops_at_max_queued_jobs(hub_factory: HubFactory) -> None:
    """'limits on everything that grows': the queue itself, whoever submits (no keys here)."""
    hub = await hub_factory(max_queued_jobs=2)
    for _ in range(2):
        await submit(hub.url)
    status, reply = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW})
    assert status == 429 and "MAX_QUEUED_JOBS" in reply["error"], reply
    _, listed = await call(hub.url, "GET", "/jobs?status=queued")
    assert len(listed["jobs"]) == 2  # the refused one was not queued
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assigned = await worker.take_job()  # a claimed job leaves the queue: room for one more
    await submit(hub.url)
    assert (await worker.complete(assigned)).ok
    await worker.close()
