"""What goes wrong on the way: cancels, cut sockets, silent workers, stale tokens, retries,
attempt caps, timeouts. Real hub, real Redis, protocol workers on real sockets."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import pytest

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, get_job, job_status, lease_left_s, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import (
    Ack,
    Cancel,
    Heartbeat,
    JobAssigned,
    Progress,
    Released,
    RunningJob,
)

pytestmark = pytest.mark.redis


async def test_cancel_queued_job(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    job = await submit(hub.url)
    status, cancelled = await call(hub.url, "DELETE", f"/jobs/{job['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    # The cancelled job was first in the queue: the first job the worker gets is the next one.
    later = await submit(hub.url)
    assert (await worker.take_job()).job_id == later["id"]
    status, again = await call(hub.url, "DELETE", f"/jobs/{job['id']}")
    assert status == 409 and "already ended cancelled" in again["error"]
    await worker.close()


async def test_cancel_running_job_interrupts_its_worker(
    hub_factory: HubFactory, any_redis_url: str
) -> None:
    hub = await hub_factory(redis_url=any_redis_url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    status, cancelled = await call(hub.url, "DELETE", f"/jobs/{job['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    cancel = await worker.expect(Cancel)
    assert (cancel.job_id, cancel.token) == (job["id"], assigned.token)
    # Whatever the worker says afterwards changes nothing: cancelled is final.
    ack = await worker.complete(assigned)
    assert not ack.ok and ack.reason == "already_finished"
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "cancelled" and final["outputs"] == []
    assert [h["outcome"] for h in final["history"]] == ["cancelled"]
    await worker.close()


async def test_cut_socket_requeues_to_another_worker_within_2s(
    hub_factory: HubFactory, any_redis_url: str
) -> None:
    hub = await hub_factory(
        redis_url=any_redis_url, lease_s=30, disconnect_grace_s=1.0, reap_interval_s=0.25
    )
    first = ProtocolWorker(hub.url, "m1-gpu0")
    await first.connect()
    job = await submit(hub.url)
    assigned = await first.take_job()
    second = ProtocolWorker(hub.url, "m1-gpu1")
    await second.connect()
    await second.ready()

    cut_at = time.monotonic()
    await first.cut()
    again = await second.expect(JobAssigned, within=2.0)
    assert time.monotonic() - cut_at < 2.0
    assert again.job_id == job["id"] and again.attempt == 2 and again.token != assigned.token
    assert (await second.complete(again)).ok
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "succeeded" and final["worker_id"] == "m1-gpu1"
    assert [h["outcome"] for h in final["history"]] == ["lease_expired", "succeeded"]
    # The reaper's error has the contract's shape (node_id too), as /openapi.json describes it.
    assert final["history"][0]["error"] == {
        "type": "lease_expired",
        "message": "the worker stopped renewing its lease",
        "node_id": None,
    }
    await second.close()


async def test_quick_reconnect_resumes_the_job(hub_factory: HubFactory, redis_url: str) -> None:
    hub = await hub_factory(lease_s=30, disconnect_grace_s=1.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    await worker.cut()
    welcome = await worker.connect(running=RunningJob(job["id"], assigned.token))
    assert welcome.resumed is True
    # The resume renewed the whole lease: the reaper has nothing to take back after the grace.
    left = await lease_left_s(redis_url, job["id"])
    assert left is not None and left > hub.config.lease_s - 5 > hub.config.disconnect_grace_s
    assert (await get_job(hub.url, job["id"]))["status"] == "assigned"
    assert (await worker.complete(assigned)).ok
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "succeeded" and final["attempts"] == 1
    # A hello naming a job the worker no longer holds is not resumed.
    await worker.close()
    welcome = await worker.connect(running=RunningJob(job["id"], assigned.token))
    assert welcome.resumed is False
    await worker.close()


async def test_silent_worker_loses_job_after_its_lease(hub_factory: HubFactory) -> None:
    hub = await hub_factory(lease_s=0.6, heartbeat_s=10)
    silent = ProtocolWorker(hub.url, "m1-gpu0")
    await silent.connect()
    job = await submit(hub.url)
    assigned = await silent.take_job()
    other = ProtocolWorker(hub.url, "m1-gpu1")
    await other.connect()
    await other.ready()
    again = await other.expect(JobAssigned, within=3.0)
    assert again.job_id == job["id"] and again.attempt == 2
    # The silent worker is told to stop; its late result is refused.
    cancel = await silent.expect(Cancel)
    assert cancel.token == assigned.token and cancel.reason == "lease_expired"
    ack = await silent.complete(assigned)
    assert not ack.ok and ack.reason == "stale_token"
    await silent.send(Progress(job["id"], assigned.token, "3", 1, 2))
    refused = await silent.expect(Ack, of="progress")
    assert not refused.ok and refused.reason == "stale_token"
    assert (await other.complete(again)).ok
    assert (await get_job(hub.url, job["id"]))["worker_id"] == "m1-gpu1"
    await silent.close()
    await other.close()


async def test_heartbeats_keep_the_lease(hub_factory: HubFactory, redis_url: str) -> None:
    hub = await hub_factory(lease_s=1.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()

    def lease() -> Awaitable[float | None]:
        return lease_left_s(redis_url, job["id"])

    for _ in range(3):  # three leases long: each heartbeat, sent late in the lease, renews it
        await eventually(lease, lambda left: left is not None and left < 0.5)
        await worker.send(Heartbeat(True, running=RunningJob(job["id"], assigned.token)))
        await eventually(lease, lambda left: left is not None and left > 0.5)
    assert (await get_job(hub.url, job["id"]))["status"] == "assigned"
    assert (await worker.complete(assigned)).ok
    assert (await get_job(hub.url, job["id"]))["attempts"] == 1
    await worker.close()


async def test_completion_is_recorded_once(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    assert (await worker.complete(assigned, {"a.png": ("image/png", b"first")})).ok
    second = await worker.complete(assigned, {"a.png": ("image/png", b"second")})
    assert not second.ok and second.reason == "already_finished"
    ack = await worker.fail(assigned)
    assert not ack.ok and ack.reason == "already_finished"
    wrong = await worker.complete(assigned, token=assigned.token + 1000)
    assert not wrong.ok and wrong.reason == "already_finished"
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "succeeded" and final["outputs"][0]["size"] == len(b"first")
    await worker.close()


async def test_stale_token_is_refused_while_running(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    ack = await worker.complete(assigned, {"x.png": ("image/png", b"x")}, token=assigned.token - 1)
    assert not ack.ok and ack.reason == "stale_token"
    assert (await get_job(hub.url, job["id"]))["status"] == "assigned"
    assert (await worker.complete(assigned)).ok


async def test_attempts_cap_ends_dead_with_history(
    hub_factory: HubFactory, any_redis_url: str
) -> None:
    hub = await hub_factory(redis_url=any_redis_url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=3)
    for attempt in (1, 2, 3):
        assigned = await worker.take_job()
        assert assigned.attempt == attempt
        assert (await worker.fail(assigned, message=f"boom {attempt}")).ok
    final = await job_status(hub.url, job["id"], "dead")
    assert final["attempts"] == 3 and final["error"]["message"] == "boom 3"
    assert [(h["attempt"], h["outcome"]) for h in final["history"]] == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]
    assert final["history"][0]["error"]["message"] == "boom 1"
    # A dead job is out of the queue: the next job the worker gets is a new one.
    later = await submit(hub.url)
    assert (await worker.take_job()).job_id == later["id"]
    await worker.close()


async def test_non_retryable_failure_fails_at_once(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=5)
    assigned = await worker.take_job()
    assert (await worker.fail(assigned, "validation_error", retryable=False)).ok
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "failed" and final["attempts"] == 1
    assert final["error"] == {"type": "validation_error", "message": "boom", "node_id": "3"}


async def test_retry_avoids_the_worker_that_failed_it(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    a = ProtocolWorker(hub.url, "m1-gpu0")
    b = ProtocolWorker(hub.url, "m1-gpu1")
    await a.connect()
    job = await submit(hub.url)
    first = await a.take_job()
    await b.connect()
    await b.ready()  # b waits idle
    assert (await a.fail(first)).ok
    retry = await b.expect(JobAssigned)
    assert retry.job_id == job["id"] and retry.attempt == 2
    await a.ready()

    async def states() -> dict[str, str]:
        _, listed = await call(hub.url, "GET", "/workers")
        return {w["id"]: w["status"] for w in listed["workers"]}

    await eventually(states, lambda s: s == {"m1-gpu0": "idle", "m1-gpu1": "busy"})
    assert (await b.fail(retry)).ok  # now a is the only idle worker: it gets the job
    third = await a.expect(JobAssigned)  # the first job a is given since it failed the job
    assert third.job_id == job["id"] and third.attempt == 3
    assert (await a.complete(third)).ok
    await a.close()
    await b.close()


async def test_only_worker_gets_its_failed_job_back(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assert (await worker.fail(await worker.take_job())).ok
    again = await worker.take_job()
    assert again.job_id == job["id"] and again.attempt == 2


async def test_release_requeues_without_counting(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=1)
    assigned = await worker.take_job()
    await worker.send(Released(job["id"], assigned.token, "shutting down"))
    ack = await worker.expect(Ack, of="released")
    assert ack.ok
    requeued = await get_job(hub.url, job["id"])
    assert requeued["status"] == "queued" and requeued["attempts"] == 0
    again = await worker.take_job()
    assert again.attempt == 1 and (await worker.complete(again)).ok


async def test_timeout_is_enforced(hub_factory: HubFactory) -> None:
    hub = await hub_factory(lease_s=30)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, timeout_s=0.3)
    assigned = await worker.take_job()
    cancel = await worker.expect(Cancel, within=3.0)
    assert cancel.job_id == job["id"] and cancel.reason == "timed_out"
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "timed_out" and final["error"]["type"] == "timeout"
    # In whole ms (the times are ms / 1000): a reaper waking exactly at the deadline ends it
    # 300 ms after the claim, which a float difference of epoch seconds may show as 0.29999995.
    assert round((final["finished_at"] - final["started_at"]) * 1000) >= 300
    ack = await worker.complete(assigned)
    assert not ack.ok and ack.reason == "already_finished"


async def test_worker_restart_without_its_job_requeues_it_at_once(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(lease_s=30, disconnect_grace_s=30)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    first = await worker.take_job()
    await worker.cut()
    await worker.connect()  # a restarted worker: no `running` in its hello
    again = await worker.take_job(within=3.0)
    assert again.job_id == job["id"] and again.token != first.token and again.attempt == 2


async def test_a_timeout_the_worker_notices_first_ends_the_same_way(
    hub_factory: HubFactory,
) -> None:
    """The worker's own deadline (error type `timeout`) and the hub's reaper end a job alike:
    `timed_out` with error.type `timeout`, not retried, whoever is first."""
    hub = await hub_factory(lease_s=30)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, timeout_s=60, max_attempts=3)
    assigned = await worker.take_job()
    ack = await worker.fail(assigned, "timeout", retryable=False)
    assert ack.ok
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "timed_out" and final["error"]["type"] == "timeout"
    assert final["attempts"] == 1
    assert [h["outcome"] for h in final["history"]] == ["timed_out"]
