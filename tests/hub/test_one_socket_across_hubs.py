"""One live socket per worker id across hubs: two real hub processes (`python -m redis_api`) on
one Redis. A second socket for a worker id whose socket is live on the other hub is refused; a
silent one is pinged by the hub that holds it and closed, and the worker then gets in (keeping
its job) long before the lease would have run out; a killed hub's sockets block nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.fixtures.hub import HubProcess
from tests.fixtures.sim import free_port
from tests.hub.helpers import get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import ErrorReply, Hello, RunningJob, Welcome

pytestmark = pytest.mark.redis

TOKEN = "fleet-secret-Qv2"
LEASE_S = 60.0  # far longer than any wait here: nothing below waits for a lease to run out


@pytest.fixture
async def two_hubs(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[HubProcess, HubProcess]]:
    hubs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        hub = HubProcess(redis_url, free_port(), folder, lease_s=LEASE_S)
        hub.env.update(WORKER_TOKEN=TOKEN, WORKER_PING_TIMEOUT_S="0.5", LOG_LEVEL="INFO")
        await hub.start()
        hubs.append(hub)
    yield hubs[0], hubs[1]
    for hub in hubs:
        hub.kill()


def _worker(hub: HubProcess) -> ProtocolWorker:
    return ProtocolWorker(hub.url, worker_id="m1-gpu0", token=TOKEN)


async def _refused_hello(worker: ProtocolWorker) -> ErrorReply:
    """Open a socket and say hello; the hub answers `error` and closes the socket."""
    await worker.open()
    await worker.send(Hello(worker.worker_id, worker.machine_id, worker.gpu, "test", None))
    reply = await worker.recv()
    assert isinstance(reply, ErrorReply), reply
    await worker.close(bye=False)
    return reply


async def _connected_on(redis_url: str, worker_id: str) -> dict[bytes, bytes]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await client.hgetall(f"wgpu:worker:{worker_id}")  # type: ignore[no-any-return]
    finally:
        await client.aclose()


async def test_a_live_socket_on_another_hub_keeps_its_worker_id(
    two_hubs: tuple[HubProcess, HubProcess],
) -> None:
    hub_a, hub_b = two_hubs
    holder = _worker(hub_a)
    await holder.connect()
    # The same worker id with the right credential, on the other hub: refused at hello.
    reply = await _refused_hello(_worker(hub_b))
    assert reply.code == "worker_connected"
    # The live socket lost nothing: it takes and completes a job submitted to the other hub.
    job = await submit(hub_b.url)
    assigned = await holder.take_job()
    assert assigned.job_id == job["id"]
    assert (await holder.complete(assigned)).ok
    assert (await get_job(hub_b.url, job["id"]))["status"] == "succeeded"
    await holder.close()


async def test_a_silent_socket_on_another_hub_is_pinged_closed_and_replaced(
    two_hubs: tuple[HubProcess, HubProcess], redis_url: str
) -> None:
    hub_a, hub_b = two_hubs
    silent = _worker(hub_a)
    await silent.connect()
    job = await submit(hub_a.url)
    held = await silent.take_job()
    session = (await _connected_on(redis_url, "m1-gpu0"))[b"session"]
    # Half-open: the socket on hub A reads nothing any more, so it answers no ping.
    assert silent.ws is not None
    silent.ws.transport.pause_reading()
    # The worker comes back through hub B: refused while hub A checks its socket ...
    assert (await _refused_hello(_worker(hub_b))).code == "worker_connected"
    # ... which hub A closes when its ping goes unanswered (the record says so: disconnected).
    record = await eventually(
        lambda: _connected_on(redis_url, "m1-gpu0"),
        lambda r: r.get(b"connected") == b"0",
        within=15.0,
    )
    assert record[b"session"] == session
    back = _worker(hub_b)
    welcome = await back.connect(RunningJob(held.job_id, held.token))
    assert isinstance(welcome, Welcome) and welcome.resumed  # its job kept, not lost
    assert (await back.complete(held)).ok
    assert (await get_job(hub_a.url, job["id"]))["status"] == "succeeded"
    await back.close()
    silent.ws.transport.resume_reading()
    await silent.close(bye=False)


async def test_a_killed_hubs_socket_blocks_nobody(
    two_hubs: tuple[HubProcess, HubProcess],
) -> None:
    hub_a, hub_b = two_hubs
    gone = _worker(hub_a)
    await gone.connect()
    hub_a.kill()  # its sockets die with it; Redis still says "connected" (no disconnect ran)
    back = _worker(hub_b)
    assert isinstance(await back.connect(), Welcome)  # no hub holds the old socket: let in
    await back.close()
    await gone.close(bye=False)
