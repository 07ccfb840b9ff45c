"""The inventory reaches the hub only when it changed: the heartbeat carries its digest, and a
hub whose record differs asks for the full list again (`error` code `models_stale`)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from tests.sched.fleet import fleet
from tests.worker.harness import HubClient
from wgpu_protocol import models
from wgpu_protocol.messages import ErrorReply, Heartbeat, Models

pytestmark = pytest.mark.redis

INVENTORY = {"checkpoints": ["a.safetensors", "b.safetensors"]}


async def test_a_heartbeat_with_another_digest_makes_the_hub_ask_for_the_models(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    digest = models.digest(INVENTORY)
    await worker.send(Models(digest, INVENTORY, {"checkpoints": ["a.safetensors"]}))
    await worker.send(Heartbeat(True, models_digest=digest))
    async with aiohttp.ClientSession() as http:
        client = HubClient(http, hub.url)
        (seen,) = await eventually(client.workers, lambda ws: ws and ws[0]["models"] is not None)
        assert seen["models"] == INVENTORY and seen["models_digest"] == digest
        assert seen["warm"] == {"checkpoints": ["a.safetensors"]}
        # The same digest again: nothing to ask. Another one: the hub's record is stale.
        await worker.send(Heartbeat(True, models_digest=digest))
        await worker.nothing_of(ErrorReply, within=0.5)
        await worker.send(Heartbeat(True, models_digest="f" * 32))
        stale = await worker.expect(ErrorReply, code="models_stale")
        assert stale.message == "send your models again"
    await worker.close()


async def test_a_worker_sends_its_models_again_when_the_hub_lost_them(
    hub_factory: HubFactory, sim_factory: SimFactory, tmp_path: Path, redis_url: str
) -> None:
    hub = await hub_factory()
    sim = await sim_factory(models=INVENTORY)
    async with aiohttp.ClientSession() as http, fleet(hub, [sim], tmp_path, heartbeat_s=0.2):
        client = HubClient(http, hub.url)
        (before,) = await client.workers()
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            # Redis lost the worker's record of its models (say a restore from an old backup).
            prefix = hub.config.key_prefix
            await r.hdel(f"{prefix}worker:{before['id']}", "models_digest")
            await r.delete(f"{prefix}inv:{before['id']}")
        finally:
            await r.aclose()
        (after,) = await eventually(
            client.workers, lambda ws: ws[0]["models_digest"] == before["models_digest"]
        )
        assert after["models"] == before["models"]
        assert after["models"]["checkpoints"] == INVENTORY["checkpoints"]
