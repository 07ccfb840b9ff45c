"""Hubs share nothing but Redis: two hubs serve one queue; Redis restarts (AOF) lose no job;
a hub rides out a Redis outage."""

from __future__ import annotations

import pytest
import redis

from orchestrator.stack.local_redis import LocalRedis
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, get_job, lease_left_s, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import Cancel, JobAssigned, RunningJob

pytestmark = pytest.mark.redis


async def test_two_hubs_serve_one_queue(hub_factory: HubFactory, any_redis_url: str) -> None:
    hub_a = await hub_factory(redis_url=any_redis_url)
    hub_b = await hub_factory(redis_url=any_redis_url)
    worker = ProtocolWorker(hub_b.url, "m2-gpu0", "m2")
    await worker.connect()
    await worker.ready()  # waits idle on hub B

    job = await submit(hub_a.url)  # submitted to hub A
    assigned = await worker.expect(JobAssigned, within=2.0)
    assert assigned.job_id == job["id"]
    assert (await worker.complete(assigned, {"o.png": ("image/png", b"png")})).ok
    seen_by_a = await get_job(hub_a.url, job["id"])
    assert seen_by_a["status"] == "succeeded" and seen_by_a["worker_id"] == "m2-gpu0"

    # A cancel sent to hub A reaches the worker on hub B.
    running = await submit(hub_a.url)
    second = await worker.take_job()
    assert second.job_id == running["id"]
    status, cancelled = await call(hub_a.url, "DELETE", f"/jobs/{running['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    cancel = await worker.expect(Cancel, within=2.0)
    assert (cancel.job_id, cancel.token) == (second.job_id, second.token)

    status, workers = await call(hub_a.url, "GET", "/workers")
    assert [w["id"] for w in workers["workers"]] == ["m2-gpu0"]
    await worker.close()


async def test_each_job_goes_to_exactly_one_worker_across_hubs(hub_factory: HubFactory) -> None:
    hubs = [await hub_factory(), await hub_factory()]
    workers = [ProtocolWorker(hubs[i % 2].url, f"m1-gpu{i}") for i in range(4)]
    for worker in workers:
        await worker.connect()
        await worker.ready()
    jobs = {(await submit(hubs[i % 2].url))["id"] for i in range(4)}
    got = [await w.expect(JobAssigned, within=3.0) for w in workers]
    assert {g.job_id for g in got} == jobs  # four jobs, four workers
    # No job claimed twice: each was claimed once (one attempt), by the worker that got it.
    status, listed = await call(hubs[0].url, "GET", "/jobs?status=assigned")
    assert status == 200
    assert sorted((j["id"], j["worker_id"], j["attempts"]) for j in listed["jobs"]) == sorted(
        (g.job_id, w.worker_id, 1) for g, w in zip(got, workers, strict=True)
    )
    for worker in workers:
        await worker.close()


async def test_aof_redis_restart_loses_no_accepted_job(
    hub_factory: HubFactory, redis_aof: LocalRedis
) -> None:
    client = redis.Redis.from_url(redis_aof.url)
    client.config_set("appendfsync", "always")  # so even SIGKILL keeps every accepted job
    client.close()
    hub = await hub_factory(redis_url=redis_aof.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    queued = [await submit(hub.url, priority=p) for p in (1, 2)]
    running = await submit(hub.url, priority=3)
    assigned = await worker.take_job()
    assert assigned.job_id == running["id"]

    redis_aof.restart(hard=True)

    jobs = {j["id"]: j for j in (await call(hub.url, "GET", "/jobs"))[1]["jobs"]}
    assert jobs[queued[0]["id"]]["status"] == "queued"
    assert jobs[queued[1]["id"]]["status"] == "queued"
    assert jobs[running["id"]]["status"] == "assigned"
    # The worker kept its socket to the hub through the restart and finishes its job.
    assert (await worker.complete(assigned)).ok
    second = await worker.take_job()
    assert second.job_id == queued[1]["id"]
    await worker.close()


async def test_hub_rides_out_a_redis_outage(hub_factory: HubFactory, redis_aof: LocalRedis) -> None:
    hub = await hub_factory(redis_url=redis_aof.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    await worker.ready()

    redis_aof.kill()
    status, health = await call(hub.url, "GET", "/health")
    assert status == 503 and health["redis"] == "unavailable"
    status, reply = await call(hub.url, "POST", "/jobs", {"workflow": {"1": {"class_type": "X"}}})
    assert status == 503 and "Redis" in reply["error"] and "retry" in reply["error"]
    status, reply = await call(hub.url, "GET", "/jobs")
    assert status == 503

    redis_aof.start()
    await eventually(lambda: call(hub.url, "GET", "/health"), lambda r: r[0] == 200)
    job = await eventually(
        lambda: call(hub.url, "POST", "/jobs", {"workflow": {"1": {"class_type": "X"}}}),
        lambda r: r[0] == 201,
    )
    # The idle worker, connected all along, gets the job once Redis is back.
    assigned = await worker.expect(JobAssigned, within=3.0)
    assert assigned.job_id == job[1]["id"]
    assert (await worker.complete(assigned)).ok
    await worker.close()


async def test_hub_shutdown_keeps_leases_for_resume_elsewhere(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub_a = await hub_factory(lease_s=10, disconnect_grace_s=0.1)
    hub_b = await hub_factory(lease_s=10, disconnect_grace_s=0.1)
    worker = ProtocolWorker(hub_a.url)
    await worker.connect()
    job = await submit(hub_a.url)
    assigned = await worker.take_job()

    await hub_a.close()  # a deploy: the hub goes away, the worker does not
    # The lease is left alone (not cut to the 0.1 s disconnect grace): hub B has nothing to reap.
    left = await lease_left_s(redis_url, job["id"])
    assert left is not None and left > hub_b.config.lease_s - 5 > hub_b.config.disconnect_grace_s
    assert (await get_job(hub_b.url, job["id"]))["status"] == "assigned"

    worker.ws_url = worker.ws_url.replace(
        hub_a.url.removeprefix("http"), hub_b.url.removeprefix("http")
    )
    welcome = await worker.connect(running=RunningJob(job["id"], assigned.token))
    assert welcome.resumed is True
    assert (await worker.complete(assigned)).ok
    assert (await get_job(hub_b.url, job["id"]))["attempts"] == 1
    await worker.close()
