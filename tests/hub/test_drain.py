"""Drain and resume (POST /workers/{id}/drain|resume): a drained worker gets no new job, its
current job finishes (or past the timeout goes back to the queue without counting an attempt),
and the drain holds across reconnects because it lives in Redis. Real hub, real Redis, protocol
workers on real sockets."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, get_job, submit, worker_field
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import Ack, Cancel, Completed, JobAssigned

pytestmark = pytest.mark.redis


async def worker_entry(hub_url: str, worker_id: str) -> dict[str, Any]:
    status, body = await call(hub_url, "GET", "/workers")
    assert status == 200, body
    return next(w for w in body["workers"] if w["id"] == worker_id)


async def drain(hub_url: str, worker_id: str, **body: Any) -> dict[str, Any]:
    status, answer = await call(hub_url, "POST", f"/workers/{worker_id}/drain", body)
    assert status == 200, answer
    return dict(answer)


async def resume(hub_url: str, worker_id: str) -> dict[str, Any]:
    status, answer = await call(hub_url, "POST", f"/workers/{worker_id}/resume")
    assert status == 200, answer
    return dict(answer)


async def test_a_drained_idle_worker_gets_nothing_until_resumed(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    answer = await drain(hub.url, worker.worker_id)
    assert answer["drain"]["state"] == "drained" and answer["drain"]["deadline"] is None
    job = await submit(hub.url)
    await worker.ready()
    await worker.nothing_of(JobAssigned, 0.4)
    entry = await worker_entry(hub.url, worker.worker_id)
    assert entry["drain"]["state"] == "drained" and entry["status"] == "idle"
    assert (await get_job(hub.url, job["id"]))["status"] == "queued"

    assert (await resume(hub.url, worker.worker_id))["was_drained"] is True
    assigned = await worker.expect(JobAssigned)  # unasked: resume wakes its hub
    assert assigned.job_id == job["id"]
    assert (await worker_entry(hub.url, worker.worker_id))["drain"] is None
    await worker.close()


async def test_draining_lets_the_job_finish_then_takes_nothing(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    busy, other = ProtocolWorker(hub.url), ProtocolWorker(hub.url, worker_id="m1-gpu1")
    await busy.connect()
    first = await submit(hub.url)
    assigned = await busy.take_job()
    answer = await drain(hub.url, busy.worker_id)
    assert answer["drain"]["state"] == "draining" and answer["current_job"] == first["id"]
    assert (await worker_entry(hub.url, busy.worker_id))["drain"]["state"] == "draining"
    second = await submit(hub.url)

    # Completing with ready_next claims nothing for a drained worker: the ack comes alone.
    await busy.send(Completed(assigned.job_id, assigned.token, ready_next=True))
    assert (await busy.expect(Ack, job_id=first["id"])).ok
    await busy.nothing_of(JobAssigned, 0.3)
    assert (await get_job(hub.url, first["id"]))["status"] == "succeeded"
    assert (await worker_entry(hub.url, busy.worker_id))["drain"]["state"] == "drained"
    # The queue is served by the workers still in service.
    await other.connect()
    assert (await other.take_job()).job_id == second["id"]
    await busy.close()
    await other.close()


async def test_a_drain_survives_reconnects(hub_factory: HubFactory, redis_url: str) -> None:
    hub, second_hub = await hub_factory(), await hub_factory()
    worker = ProtocolWorker(hub.url)
    await drain(hub.url, worker.worker_id)  # before the worker ever connected
    job = await submit(hub.url)
    for url in (hub.url, second_hub.url, hub.url):  # cut, reconnect, also on another hub
        worker = ProtocolWorker(url)
        await worker.connect()
        await worker.ready()
        await worker.nothing_of(JobAssigned, 0.3)
        assert (await worker_entry(url, worker.worker_id))["drain"]["state"] == "drained"
        await worker.cut()
        # Until that hub has seen the cut, another hub rightly refuses a second socket for the
        # worker id (a real worker retries; this one waits for the cut to be recorded).
        await eventually(lambda: worker_field(redis_url, "m1-gpu0", "connected"), "0".__eq__)
    worker = ProtocolWorker(second_hub.url)
    await worker.connect()
    await worker.ready()
    await resume(hub.url, worker.worker_id)  # through the other hub: the drain is in Redis
    assert (await worker.expect(JobAssigned)).job_id == job["id"]
    await worker.close()


async def test_past_the_timeout_the_job_is_released_without_counting_an_attempt(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    slow, spare = ProtocolWorker(hub.url), ProtocolWorker(hub.url, worker_id="m1-gpu1")
    await slow.connect()
    job = await submit(hub.url, max_attempts=1)
    assigned = await slow.take_job()
    answer = await drain(hub.url, slow.worker_id, timeout_s=0.2)
    assert answer["drain"]["deadline"] is not None

    cancel = await slow.expect(Cancel, job_id=job["id"])
    assert cancel.reason == "drained" and cancel.token == assigned.token
    requeued = await get_job(hub.url, job["id"])
    assert requeued["status"] == "queued" and requeued["attempts"] == 0
    assert [h["outcome"] for h in requeued["history"]] == ["released"]
    entry = await worker_entry(hub.url, slow.worker_id)
    assert entry["drain"]["state"] == "drained" and entry["drain"]["deadline"] is None
    # Its one attempt is still there: another worker runs it to success.
    await spare.connect()
    again = await spare.take_job()
    assert again.job_id == job["id"] and again.attempt == 1
    assert (await spare.complete(again)).ok
    # The drained worker's late report is refused: the job ran to success once.
    late = await slow.complete(assigned)
    assert not late.ok
    done = await eventually(lambda: get_job(hub.url, job["id"]), lambda j: j["status"] != "running")
    assert done["status"] == "succeeded" and done["attempts"] == 1
    await slow.close()
    await spare.close()


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/workers/m1-gpu0/drain", {"timeout_s": -1}, "timeout_s"),
        ("/workers/m1-gpu0/drain", {"timeout_s": "soon"}, "timeout_s"),
        ("/workers/m1-gpu0/drain", {"timeout_s": True}, "timeout_s"),
        ("/workers/m1-gpu0/drain", {"wait": 1}, "wait"),
        ("/workers/m1-gpu0/drain", [1], "object"),
        ("/workers/bad%20id/drain", {}, "worker id"),
        ("/workers/bad%20id/resume", None, "worker id"),
    ],
)
async def test_bad_drain_requests_fail_alone_naming_the_field(
    hub_factory: HubFactory, redis_url: str, path: str, body: Any, names: str
) -> None:
    hub = await hub_factory()
    status, answer = await call(hub.url, "POST", path, body)
    assert status == 400 and names in answer["error"], answer
    status, listing = await call(hub.url, "GET", "/workers")
    assert status == 200 and listing["workers"] == []
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.hlen("wgpu:drains") == 0  # nothing was drained
    finally:
        await client.aclose()
