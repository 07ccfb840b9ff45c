"""Workers prove who they are: a credential per worker id, random fencing tokens, and a live
socket that a second one cannot displace. Registrations of workers that never did a job expire
within an hour."""

from __future__ import annotations

import itertools

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from redis_api.store import fencing_token
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import get_job, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.messages import JobAssigned, RunningJob

pytestmark = pytest.mark.redis

TOKEN = "fleet-secret-Hk4"


async def _refused(url: str, credential: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            url, additional_headers={"Authorization": f"Bearer {credential}"}, proxy=None
        ):
            pass
    return refused.value.response.status_code


async def test_one_workers_credential_cannot_act_as_another(hub_factory: HubFactory) -> None:
    hub = await hub_factory(worker_token=TOKEN)
    victim = ProtocolWorker(hub.url, worker_id="m1-gpu0", token=TOKEN)
    await victim.connect()
    job = await submit(hub.url)
    assigned = await victim.take_job()
    url = hub.ws_url + "/ws/worker/m1-gpu0"
    # The fleet token itself, another worker's credential, or a guess: refused before upgrade.
    assert await _refused(url, TOKEN) == 401
    assert await _refused(url, worker_credential(TOKEN, "m2-gpu0")) == 401
    assert await _refused(url, "wc1-" + "0" * 64) == 401
    # Even with the right credential, a live socket is not displaced.
    assert await _refused(url, worker_credential(TOKEN, "m1-gpu0")) == 409
    assert (await victim.complete(assigned)).ok
    assert (await get_job(hub.url, job["id"]))["status"] == "succeeded"
    await victim.close()


async def test_a_silent_socket_is_pinged_and_replaced(hub_factory: HubFactory) -> None:
    hub = await hub_factory(worker_token=TOKEN, lease_s=60.0, worker_ping_timeout_s=0.5)
    first = ProtocolWorker(hub.url, worker_id="m1-gpu0", token=TOKEN)
    await first.connect()
    job = await submit(hub.url)
    held = await first.take_job()
    # The first socket goes silent well within its lease (a half-open connection: it reads
    # nothing, so it answers no ping). The second is let in as soon as a ping goes unanswered,
    # not after the lease, and resumes the job.
    assert first.ws is not None
    first.ws.transport.pause_reading()
    second = ProtocolWorker(hub.url, worker_id="m1-gpu0", token=TOKEN)
    welcome = await second.connect(RunningJob(held.job_id, held.token))
    assert welcome.resumed
    assert (await second.complete(held)).ok
    assert (await get_job(hub.url, job["id"]))["status"] == "succeeded"
    await second.close()
    first.ws.transport.resume_reading()
    await first.close(bye=False)


async def test_fencing_tokens_are_random(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    tokens = []
    for _ in range(4):
        await submit(hub.url)
        assigned: JobAssigned = await worker.take_job()
        tokens.append(assigned.token)
        assert (await worker.complete(assigned)).ok
    gaps = {b - a for a, b in itertools.pairwise(tokens)}
    assert len(set(tokens)) == 4 and gaps != {1} and all(t >= 2**32 for t in tokens)
    assert all(0 < fencing_token() < 2**53 for _ in range(100))
    await worker.close()


async def test_idle_registrations_expire_within_an_hour(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory()
    idle = ProtocolWorker(hub.url, worker_id="made-up-1")
    await idle.connect()
    busy = ProtocolWorker(hub.url, worker_id="m1-gpu0")
    await busy.connect()
    await submit(hub.url)
    assert (await busy.complete(await busy.take_job())).ok
    await busy.close()
    await idle.close()
    client = redis.Redis.from_url(redis_url)
    try:
        assert 0 < client.pttl("wgpu:worker:made-up-1") <= 3_600_000
        assert client.pttl("wgpu:worker:m1-gpu0") > 3_600_000
    finally:
        client.close()
