"""Pipelining on the hub's side: a worker says `ready` naming the finished job whose outputs it
still relays; the hub gives it the next job without requeueing that one, renews both leases on
heartbeats, accepts the relayed job's `completed` afterwards, and after a lost socket requeues
(or resumes) each of the two. Real hub, real Redis, a protocol worker on a real socket."""

from __future__ import annotations

import pytest

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import get_job, job_status, lease_left_s, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import (
    Ack,
    Completed,
    Heartbeat,
    JobAssigned,
    OutputFrame,
    Ready,
    RunningJob,
    encode_output_frame,
)

pytestmark = pytest.mark.redis


def ref(job: JobAssigned) -> RunningJob:
    return RunningJob(job.job_id, job.token)


async def relaying_one_running_another(
    hub_url: str, worker: ProtocolWorker
) -> tuple[JobAssigned, JobAssigned]:
    await submit(hub_url)
    await submit(hub_url)
    first = await worker.take_job()
    await worker.send(Ready(relaying=ref(first)))
    second = await worker.expect(JobAssigned)
    assert second.job_id != first.job_id
    return first, second


async def test_the_next_job_comes_while_the_previous_relays_and_both_stay_the_workers(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(lease_s=30.0)
    worker = ProtocolWorker(hub.url)
    welcome = await worker.connect()
    assert welcome.pipelining is True
    first, second = await relaying_one_running_another(hub.url, worker)
    for job in (first, second):
        # Both keep their lease (a job a claim gives up gets a lease that ends now).
        assert (await lease_left_s(redis_url, job.job_id) or 0.0) > 20.0
        view = await get_job(hub.url, job.job_id)
        assert view["status"] == "assigned" and view["worker_id"] == worker.worker_id, view
        assert view["attempts"] == 1 and view["history"] == []  # nothing requeued
    # The relayed job's outputs and its `completed` are accepted after the next job was given.
    frame = OutputFrame(first.job_id, first.token, "a.png", "image/png", b"png bytes")
    await worker.send_raw(encode_output_frame(frame))
    await worker.send(Completed(first.job_id, first.token, (frame.ref,)))
    ack = await worker.expect(Ack, job_id=first.job_id, of="completed")
    assert ack.ok, ack
    done = await get_job(hub.url, first.job_id)
    assert done["status"] == "succeeded"
    assert [o["name"] for o in done["outputs"]] == ["a.png"]
    assert (await get_job(hub.url, second.job_id))["status"] == "assigned"
    # The second job is the worker's current one; finishing it works as ever.
    assert (await worker.complete(second)).ok
    assert (await get_job(hub.url, second.job_id))["status"] == "succeeded"
    await worker.close()


async def test_a_ready_that_does_not_name_the_held_job_gives_it_up(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    await worker.take_job()
    await worker.ready()  # holds nothing any more, by its own word: the job was lost with it
    view = await job_status(hub.url, job["id"], "queued")
    assert view["history"][-1]["outcome"] == "lease_expired"
    await worker.close()


async def test_heartbeats_renew_the_relaying_jobs_lease_too(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(lease_s=30.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await relaying_one_running_another(hub.url, worker)

    async def left() -> float:
        return await lease_left_s(redis_url, first.job_id) or 0.0

    # Redis' clock moves on, so an unrenewed lease only shrinks: growth proves the renewal.
    before = await eventually(left, lambda seconds: seconds < 29.9)

    async def renewed() -> float:
        await worker.send(Heartbeat(True, running=ref(second), relaying=ref(first)))
        return await left()

    await eventually(renewed, lambda seconds: seconds > before + 0.05)
    await worker.close()


async def test_a_lost_socket_requeues_both_jobs(hub_factory: HubFactory) -> None:
    hub = await hub_factory(lease_s=30.0)  # requeued by the disconnect's grace, not the lease
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await relaying_one_running_another(hub.url, worker)
    await worker.cut()
    for job in (first, second):
        view = await job_status(hub.url, job.job_id, "queued")
        assert view["history"][-1]["outcome"] == "lease_expired", view
        assert view["outputs"] == []


async def test_a_quick_reconnect_resumes_both_jobs(hub_factory: HubFactory) -> None:
    hub = await hub_factory(disconnect_grace_s=5.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await relaying_one_running_another(hub.url, worker)
    await worker.cut()
    welcome = await worker.connect(running=ref(second), relaying=ref(first))
    assert welcome.resumed and welcome.relaying_resumed
    assert (await worker.complete(first)).ok
    assert (await worker.complete(second)).ok
    for job in (first, second):
        view = await get_job(hub.url, job.job_id)
        assert view["status"] == "succeeded" and view["history"][0]["outcome"] == "succeeded"
    await worker.close()


async def test_a_reconnect_naming_only_the_running_job_loses_the_relaying_one(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(disconnect_grace_s=5.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first, second = await relaying_one_running_another(hub.url, worker)
    await worker.cut()
    welcome = await worker.connect(running=ref(second))
    assert welcome.resumed and not welcome.relaying_resumed
    view = await job_status(hub.url, first.job_id, "queued")
    assert view["history"][-1]["outcome"] == "lease_expired"
    assert (await get_job(hub.url, second.job_id))["status"] == "assigned"
    await worker.close()
