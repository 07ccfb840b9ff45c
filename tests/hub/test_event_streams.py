"""SSE that scales: streams share the hub's one event reader, so hundreds of them leave the
Redis pool to submissions and workers; a cap answers 429; a left client ends its handler; a bad
Last-Event-ID is a 400 before the stream starts."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from redis_api.server import RunningHub
from tests.fixtures.http import sse_events
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually

pytestmark = pytest.mark.redis


async def _open_streams(
    http: aiohttp.ClientSession, hub: RunningHub, job_ids: list[str]
) -> list[aiohttp.ClientResponse]:
    async def one(job_id: str) -> aiohttp.ClientResponse:
        response = await http.get(f"{hub.url}/jobs/{job_id}/events")
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"event: status")
        return response

    return list(await asyncio.gather(*(one(j) for j in job_ids)))


async def _redis_clients(redis_url: str) -> tuple[int, int]:
    """(connected clients, clients blocked in a read) as Redis sees them."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        clients = await client.client_list()
        return len(clients), sum("b" in str(c.get("flags", "")) for c in clients)
    finally:
        await client.aclose()


async def test_many_streams_hold_no_pooled_connections(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(max_connections_per_ip=0)  # every stream comes from 127.0.0.1
    jobs = [await submit(hub.url) for _ in range(5)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        streams = await _open_streams(http, hub, [jobs[i % 5]["id"] for i in range(600)])
        # 600 streams wait on one blocked reader; the pool is not held by them (it held one
        # connection per stream before).
        connected, blocked = await _redis_clients(redis_url)
        assert blocked <= 1 and connected < 60, (connected, blocked)
        assert hub.hub.events.open_streams == 600
        # Submissions and workers are unaffected, and events still flow to every stream.
        worker = ProtocolWorker(hub.url)
        await worker.connect()
        statuses = await asyncio.gather(
            *(call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}) for _ in range(50))
        )
        assert [s for s, _ in statuses] == [201] * 50
        assigned = await worker.take_job()
        assert assigned.job_id == jobs[0]["id"]
        assert (await worker.complete(assigned)).ok

        async def until_done(response: aiohttp.ClientResponse) -> None:
            async for line in response.content:
                if line.startswith(b"event: done"):
                    return

        done_streams = [s for i, s in enumerate(streams) if i % 5 == 0]
        await asyncio.wait_for(asyncio.gather(*(until_done(s) for s in done_streams)), 10)
        for response in streams:
            response.close()
        await worker.close()
    # Every handler ends once its client has gone.
    await eventually(lambda: _count(hub), lambda n: n == 0, within=10)


async def _count(hub: RunningHub) -> int:
    return hub.hub.events.open_streams


async def test_stream_cap_answers_429(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_event_streams=3)
    job = await submit(hub.url)
    async with aiohttp.ClientSession() as http:
        streams = await _open_streams(http, hub, [job["id"]] * 3)
        async with http.get(f"{hub.url}/jobs/{job['id']}/events") as refused:
            assert refused.status == 429 and "Retry-After" in refused.headers
            assert "MAX_EVENT_STREAMS" in (await refused.json())["error"]
        streams[0].close()
        await eventually(lambda: _count(hub), lambda n: n == 2, within=5)
        async with http.get(f"{hub.url}/jobs/{job['id']}/events") as accepted:
            assert accepted.status == 200
        for response in streams[1:]:
            response.close()


async def test_bad_last_event_id_is_400_before_the_stream(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    job = await submit(hub.url)
    for bad in ("99999999999999999999-1", "1-99999999999999999999", "abc", "1-2-3", "-1"):
        status, reply = await call(
            hub.url, "GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": bad}
        )
        assert status == 400 and "Last-Event-ID" in reply["error"], (bad, reply)


async def test_resume_after_last_event_id_misses_nothing(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    job = await submit(hub.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assigned = await worker.take_job()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/jobs/{job['id']}/events") as first:
            ids = []
            async for line in first.content:
                if line.startswith(b"id: "):
                    ids.append(line[4:].strip().decode())
                if len(ids) == 2:  # queued, running
                    break
        assert (await worker.complete(assigned)).ok
        async with http.get(
            f"{hub.url}/jobs/{job['id']}/events", headers={"Last-Event-ID": ids[-1]}
        ) as resumed:
            kinds = []
            async for line in resumed.content:
                if line.startswith(b"event: "):
                    kinds.append(line[7:].strip().decode())
            assert kinds[-1] == "done" and "running" not in kinds
    assert (await get_job(hub.url, job["id"]))["status"] == "succeeded"
    await worker.close()


async def test_streams_opened_and_dropped_fast_leave_nothing(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(max_connections_per_ip=0)
    job = await submit(hub.url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for _ in range(5):
            responses = await _open_streams(http, hub, [job["id"]] * 60)
            for response in responses:
                response.close()
        # Dropped streams hold no Redis connection, not even for a while (each one stayed
        # blocked in its own read, on a pooled connection, after its client left).
        connected, blocked = await _redis_clients(redis_url)
        assert blocked <= 1 and connected < 60, (connected, blocked)
        status, _ = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW})
        assert status == 201
    await eventually(lambda: _count(hub), lambda n: n == 0, within=10)
    assert (await call(hub.url, "GET", "/health"))[0] == 200


async def test_a_queued_jobs_stream_follows_why_it_waits(
    hub_factory: HubFactory, http: aiohttp.ClientSession
) -> None:
    """The once-a-second tick pushes a changed waiting reason to the stream of a queued job; the
    job's own status events tell the stream when it leaves the queue and when it is back."""
    hub = await hub_factory()
    job = await submit(hub.url, constraints={"machine_id": "m9"})
    async with http.get(f"{hub.url}/jobs/{job['id']}/events") as response:
        events = sse_events(response)

        async def next_event() -> tuple[str, Any]:
            return await asyncio.wait_for(anext(events), 10)

        assert await next_event() == (
            "status",
            {"status": "queued", "waiting_reason": "no worker is connected"},
        )
        elsewhere = ProtocolWorker(hub.url, "m1-gpu0", "m1")
        await elsewhere.connect()  # a worker, but not on machine m9
        kind, data = await next_event()
        assert kind == "status" and data["status"] == "queued"
        assert data["waiting_reason"] not in (None, "no worker is connected")
        other_reason = data["waiting_reason"]

        fits = ProtocolWorker(hub.url, "m9-gpu0", "m9")
        await fits.connect()
        assigned = await fits.take_job()
        kind, data = await next_event()
        if data == {"status": "queued", "waiting_reason": None}:
            kind, data = await next_event()  # the tick saw m9 before the claim did
        assert (kind, data["status"]) == ("status", "assigned")
        assert (await fits.fail(assigned)).ok  # retried: back in the queue
        assert (await next_event())[1]["status"] == "queued"
        await fits.close()  # m9 is gone again: the stream says so, as before the claim
        assert await next_event() == (
            "status",
            {"status": "queued", "waiting_reason": other_reason},
        )
        await elsewhere.close()
