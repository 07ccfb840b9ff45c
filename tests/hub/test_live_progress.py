"""Live progress (redis_api/progress.py): every step reaches SSE clients in order, without a
Redis write per step; the job records its latest progress at a throttle and 100 % at once; a
client joining or reconnecting mid-job gets that latest progress; a client on another hub gets
the steps too."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from orchestrator.hub_client.client import HubEvent, parse_sse
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import get_job, recorded_progress, redis_commands, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import Progress

pytestmark = pytest.mark.redis


class LiveStream:
    """An SSE stream read as it comes: `next()` is the next event."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._lines: list[str] = []

    async def next(self, timeout_s: float = 5.0) -> HubEvent:
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if line or not self._lines:
                    if line:
                        self._lines.append(line)
                    continue
                events = list(parse_sse([*self._lines, ""]))
                self._lines = []
                if events:
                    return events[0]

    async def until(self, kind: str, timeout_s: float = 5.0) -> list[HubEvent]:
        """Events up to and including the first of `kind`."""
        seen: list[HubEvent] = []
        while not seen or seen[-1].kind != kind:
            seen.append(await self.next(timeout_s))
        return seen


@contextlib.asynccontextmanager
async def live(url: str, last_event_id: str = "") -> AsyncIterator[LiveStream]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200
        yield LiveStream(response)


def _step(event: HubEvent) -> float:
    assert event.kind == "progress", event
    return float(event.data["value"])  # type: ignore[index]


# Leases of 30 s: these workers send no heartbeats, and live steps do not renew a lease (only
# recorded ones and heartbeats do).


async def test_every_step_arrives_live_in_order_with_few_redis_writes(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(progress_persist_s=60.0, lease_s=30.0)
    job = await submit(hub.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    url = f"{hub.url}/jobs/{job['id']}/events"
    async with live(url) as stream:
        assigned = await worker.take_job()
        await stream.until("status")  # queued
        opened = await stream.until("status")  # assigned (claimed)
        assert opened[-1].data["status"] == "assigned"  # type: ignore[index]
        # The first step is recorded at once (and Redis has the script loaded after it).
        await worker.send(Progress(job["id"], assigned.token, "5", 1, 20))
        assert _step(await stream.next()) == 1.0
        first = await eventually(
            lambda: get_job(hub.url, job["id"]), lambda j: j["progress"] is not None
        )
        assert first["progress"]["value"] == 1.0
        async with redis_commands(redis_url) as commands:
            for step in range(2, 21):
                await worker.send(Progress(job["id"], assigned.token, "5", step, 20))
            steps = [_step(await stream.next()) for _ in range(2, 21)]
            assert steps == [float(s) for s in range(2, 21)]
            recorded = await eventually(
                lambda: get_job(hub.url, job["id"]),
                lambda j: (j["progress"] or {}).get("value") == 20.0,
            )
        assert recorded["progress"]["percent"] == 100.0
        # Of the 19 steps that followed, only 100 % was recorded (the rest, within the
        # throttle's 60 s, are live only).
        assert recorded_progress(commands, job["id"]) == 1
        await worker.complete(assigned)
        rest = await stream.until("done")
        assert [e.kind for e in rest if e.kind == "progress"] == []
        assert rest[-1].data["status"] == "succeeded"  # type: ignore[index]
    # Not in the stored history: a stream read after the end has no progress.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = await client.xrange(f"{hub.config.key_prefix}events:{job['id']}")
    finally:
        await client.aclose()
    assert [f["k"] for _, f in stored if f["k"] == "progress"] == []
    await worker.close()


async def test_steps_held_back_are_recorded_when_the_interval_ends(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(progress_persist_s=0.3, lease_s=30.0)
    job = await submit(hub.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assigned = await worker.take_job()
    for step in (1, 2, 3):
        await worker.send(Progress(job["id"], assigned.token, "5", step, 10))
    first = await eventually(lambda: get_job(hub.url, job["id"]), lambda j: bool(j["progress"]))
    assert first["progress"]["value"] in (1.0, 3.0)
    # Step 3 was held back; it is recorded when the job's interval ends, with no further step.
    latest = await eventually(
        lambda: get_job(hub.url, job["id"]), lambda j: j["progress"]["value"] == 3.0
    )
    assert latest["status"] == "assigned"  # no execution_started from this worker
    await worker.complete(assigned)
    await worker.close()


async def test_a_client_reconnecting_mid_job_gets_the_latest_progress(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(progress_persist_s=60.0, lease_s=30.0)
    job = await submit(hub.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    url = f"{hub.url}/jobs/{job['id']}/events"
    async with live(url) as stream:
        assigned = await worker.take_job()
        await stream.until("status")
        running = await stream.until("status")
        last_id = running[-1].id or ""
        for step in (1, 2, 10):
            await worker.send(Progress(job["id"], assigned.token, "5", step, 10))
        assert [_step(await stream.next()) for _ in range(3)] == [1.0, 2.0, 10.0]
    await eventually(
        lambda: get_job(hub.url, job["id"]), lambda j: (j["progress"] or {}).get("value") == 10
    )
    # Resumed after the last stored event: the job's latest progress comes first, then the
    # steps that follow, live.
    async with live(url, last_id) as resumed:
        assert _step(await resumed.next()) == 10.0
        await worker.send(Progress(job["id"], assigned.token, "6", 10, 10))
        nxt = await resumed.next()
        assert nxt.data["node"] == "6"  # type: ignore[index]
        await worker.complete(assigned)
        assert (await resumed.until("done"))[-1].kind == "done"
    # A fresh client joining mid-job (after its history) also gets it.
    job2 = await submit(hub.url)
    assigned2 = await worker.take_job()
    await worker.send(Progress(job2["id"], assigned2.token, "5", 4, 8))
    await eventually(
        lambda: get_job(hub.url, job2["id"]), lambda j: (j["progress"] or {}).get("value") == 4
    )
    async with live(f"{hub.url}/jobs/{job2['id']}/events") as fresh:
        opening = await fresh.until("progress")
        assert [e.kind for e in opening] == ["status", "status", "progress"]
        assert json.loads(json.dumps(opening[-1].data))["percent"] == 50.0
    await worker.complete(assigned2)
    await worker.close()


async def test_a_client_on_another_hub_gets_the_steps(hub_factory: HubFactory) -> None:
    worker_hub = await hub_factory(progress_persist_s=60.0, lease_s=30.0)
    client_hub = await hub_factory(progress_persist_s=60.0, lease_s=30.0)
    job = await submit(worker_hub.url)
    worker = ProtocolWorker(worker_hub.url)
    await worker.connect()
    assigned = await worker.take_job()
    async with live(f"{client_hub.url}/jobs/{job['id']}/events") as stream:
        await stream.until("status")
        await stream.until("status")
        # The worker's hub publishes steps once it has heard that another hub serves streams
        # (each hub says so about once a second): send steps until the first arrives.
        arrived: HubEvent | None = None
        for step in range(1, 200):
            await worker.send(Progress(job["id"], assigned.token, "5", step, 1000))
            with contextlib.suppress(TimeoutError):
                arrived = await stream.next(timeout_s=0.05)
                break
        assert arrived is not None and arrived.kind == "progress"
        # From now on every step arrives, in order (late node-5 steps may still come first).
        for step in (1, 2, 3):
            await worker.send(Progress(job["id"], assigned.token, "6", step, 3))
        node6: list[float] = []
        while len(node6) < 3:
            event = await stream.next()
            if event.data["node"] == "6":  # type: ignore[index]
                node6.append(_step(event))
        assert node6 == [1.0, 2.0, 3.0]
        await worker.complete(assigned)
        assert (await stream.until("done"))[-1].kind == "done"
    await worker.close()
