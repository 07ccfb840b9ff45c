"""Backpressure and memory: queue limits (whole queue and per key) and a per-key rate answered
429 with Retry-After; under Redis OOM the hub says so and the queue still drains; a hung Redis
costs a request ~redis_timeout_s, not 20 s; slow and greedy clients are cut off."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
from websockets.exceptions import InvalidStatus

from orchestrator.stack.local_redis import LocalRedis
from redis_api.server import RunningHub
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, job_status, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually

pytestmark = pytest.mark.redis

TOKEN = "wt-backpressure"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis of this test's own: it gets a memory limit or is stopped (SIGSTOP)."""
    server = LocalRedis(tmp_path / "own-redis").start()
    yield server
    pid = server.pid
    if pid is not None:
        os.kill(pid, signal.SIGCONT)
    server.stop()


async def test_queue_limits_answer_429(hub_factory: HubFactory) -> None:
    hub = await hub_factory(
        max_queued_jobs=6,
        max_queued_jobs_per_key=3,
        api_keys=("a:key-a", "b:key-b"),
        worker_token=TOKEN,
    )
    headers_a, headers_b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    body = {"workflow": WORKFLOW}
    for _ in range(3):
        assert (await call(hub.url, "POST", "/jobs", body, headers_a))[0] == 201
    status, reply = await call(hub.url, "POST", "/jobs", body, headers_a)
    assert status == 429 and "MAX_QUEUED_JOBS_PER_KEY" in reply["error"]
    for _ in range(3):
        assert (await call(hub.url, "POST", "/jobs", body, headers_b))[0] == 201
    async with (
        aiohttp.ClientSession() as http,
        http.post(hub.url + "/jobs", json=body, headers=headers_b) as response,
    ):
        assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    # A claimed job leaves the queue: there is room again.
    worker = ProtocolWorker(hub.url, token=TOKEN)
    await worker.connect()
    assigned = await worker.take_job()
    # Fair share decides whose job ran: that key has room again (the whole queue too).
    _, taken = await call(hub.url, "GET", f"/jobs/{assigned.job_id}", headers=headers_a)
    freed = headers_a if taken.get("owner") == "a" else headers_b
    assert (await call(hub.url, "POST", "/jobs", body, freed))[0] == 201
    assert (await worker.complete(assigned)).ok
    await worker.close()


async def test_queued_bytes_limit(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_queued_bytes=3000)
    big = {"1": {"class_type": "X", "inputs": {"text": "x" * 1200}}}
    assert (await call(hub.url, "POST", "/jobs", {"workflow": big}))[0] == 201
    assert (await call(hub.url, "POST", "/jobs", {"workflow": big}))[0] == 201
    status, reply = await call(hub.url, "POST", "/jobs", {"workflow": big})
    assert status == 429 and "MAX_QUEUED_BYTES" in reply["error"]
    assert (await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}))[0] == 201


async def test_rate_limit_per_key(hub_factory: HubFactory) -> None:
    hub = await hub_factory(rate_limit_per_key=2.0, api_keys=("a:key-a",), worker_token=TOKEN)
    statuses = [
        (await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, {"X-API-Key": "key-a"}))[0]
        for _ in range(6)
    ]
    assert statuses[:2] == [201, 201] and 429 in statuses


def _fill_until_oom(client: redis.Redis) -> None:
    """Redis over its maxmemory (noeviction): 2 MB of other data, then a limit below it."""
    blob = b"x" * 16 * 1024
    for i in range(128):
        client.set(f"junk:{i}", blob)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 512 * 1024)
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        client.set("one-more", blob)


async def test_under_redis_oom_the_queue_drains(
    hub_factory: HubFactory, own_redis: LocalRedis
) -> None:
    hub = await hub_factory(redis_url=own_redis.url)
    worker = ProtocolWorker(hub.url, worker_id="m1-gpu0")
    await worker.connect()
    jobs = [await submit(hub.url) for _ in range(4)]
    first = await worker.take_job()
    client = redis.Redis.from_url(own_redis.url)
    try:
        _fill_until_oom(client)
        status, reply = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW})
        assert status == 503 and reply == {"error": "redis out of memory"}
        status, health = await call(hub.url, "GET", "/health")
        assert status == 503 and health["redis"] == "out of memory"
        # Hello, complete, claim, fail and cancel all still work: the queue drains.
        second = ProtocolWorker(hub.url, worker_id="m2-gpu0")
        await second.connect()
        assert (await worker.complete(first)).ok
        nxt = await worker.take_job()
        assert (await worker.fail(nxt, retryable=False)).ok
        status, cancelled = await call(hub.url, "DELETE", f"/jobs/{jobs[3]['id']}")
        assert status == 200 and cancelled["status"] == "cancelled"
        third = await second.take_job()
        assert (await second.complete(third)).ok
        assert (await job_status(hub.url, jobs[0]["id"], "succeeded"))["status"] == "succeeded"
        await second.close()
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    await worker.close()


async def test_hung_redis_answers_fast(hub_factory: HubFactory, own_redis: LocalRedis) -> None:
    hub = await hub_factory(redis_url=own_redis.url, redis_timeout_s=1.0)
    assert (await call(hub.url, "GET", "/health"))[0] == 200
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, reply = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW})
        assert status == 503 and "unavailable" in reply["error"]
        assert time.monotonic() - started < 3.0
        started = time.monotonic()
        status, _ = await call(hub.url, "GET", "/health")
        assert status == 503 and time.monotonic() - started < 2.0
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)

    async def healthy() -> int:
        return (await call(hub.url, "GET", "/health"))[0]

    await eventually(healthy, lambda status: status == 200, what="/health answering 200 again")
    assert (await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}))[0] == 201


async def test_slow_headers_and_bodies_are_cut_off(hub_factory: HubFactory) -> None:
    hub = await hub_factory(read_timeout_s=1.0)
    for request in (
        b"GET /health HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # body never finished
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        started = time.monotonic()
        writer.write(request)
        await writer.drain()
        while await asyncio.wait_for(reader.read(4096), 5.0):
            pass
        assert time.monotonic() - started < 3.0
        writer.close()
    assert (await call(hub.url, "GET", "/health"))[0] == 200


async def test_connections_per_ip_and_pending_sockets_are_capped(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_connections_per_ip=5, max_pending_sockets=2)
    job = await submit(hub.url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        streams = [await http.get(f"{hub.url}/jobs/{job['id']}/events") for _ in range(5)]
        assert [s.status for s in streams] == [200] * 5
        async with http.get(f"{hub.url}/jobs/{job['id']}") as refused:
            assert refused.status == 429
        for stream in streams:
            stream.close()
    await eventually(lambda: _open(hub), lambda n: n == 0)
    silent = [ProtocolWorker(hub.url, worker_id=f"s{i}") for i in range(2)]
    for worker in silent:
        await worker.open()  # never says hello
    await eventually(lambda: _pending(hub), lambda n: n == 2)
    with pytest.raises(InvalidStatus) as refused_ws:
        await ProtocolWorker(hub.url, worker_id="s9").open()
    assert refused_ws.value.response.status_code == 429
    for worker in silent:
        await worker.close(bye=False)
    await eventually(lambda: _pending(hub), lambda n: n == 0)
    late = ProtocolWorker(hub.url, worker_id="s9")
    assert (await late.connect()).worker_id == "s9"
    await late.close()


async def _open(hub: RunningHub) -> int:
    return sum(hub.hub.connections.open.values())


async def _pending(hub: RunningHub) -> int:
    return hub.hub.pending_sockets


async def test_an_oversize_frame_before_hello_is_refused_unbuffered(
    hub_factory: HubFactory,
) -> None:
    """A 32 MiB text frame (the protocol's text limit is 1 MiB) is refused from its header: the
    hub closes the socket with 1009 after reading a few bytes, and stays small."""
    hub = await hub_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    writer.write(
        f"GET /ws/worker/big-1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    # A masked text frame header announcing 32 MiB, then only 1 KiB of it.
    writer.write(bytes([0x81, 0xFF]) + (32 << 20).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 1024)
    await writer.drain()
    close = await asyncio.wait_for(reader.read(64), 5)
    assert close[:1] == b"\x88" and int.from_bytes(close[2:4], "big") == 1009, close
    writer.close()
    worker = ProtocolWorker(hub.url)
    assert (await worker.connect()).worker_id == "m1-gpu0"  # everyone else is unaffected
    await worker.close()
