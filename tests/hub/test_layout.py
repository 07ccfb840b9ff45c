"""What a queued job costs in Redis: its hash (compact encoding) and its workflow key, and no
events stream until it is claimed; SSE still opens with its `queued` status."""

from __future__ import annotations

import json

import aiohttp
import pytest
import redis

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, get_job, submit

pytestmark = pytest.mark.redis


async def test_a_queued_job_is_a_compact_hash_and_its_workflow(
    hub_factory: HubFactory, any_redis_url: str
) -> None:
    hub = await hub_factory(redis_url=any_redis_url)
    client = redis.Redis.from_url(any_redis_url, decode_responses=True)
    try:
        job = await submit(hub.url, constraints={"gpu": "0"})
        prefix = hub.config.key_prefix
        keys = sorted(k for k in client.keys(prefix + "*") if job["id"] in k)
        assert keys == [f"{prefix}job:{job['id']}", f"{prefix}wf:{job['id']}"]
        assert client.object("encoding", f"{prefix}job:{job['id']}") == "listpack"
        assert json.loads(client.get(f"{prefix}wf:{job['id']}")) == WORKFLOW
        assert (await get_job(hub.url, job["id"]))["workflow"] == WORKFLOW

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{hub.url}/jobs/{job['id']}/events") as response,
        ):
            first = (await response.content.readuntil(b"\n\n")).decode()
        # No worker is connected: the opening event says why the job waits.
        assert first == (
            'event: status\ndata: {"status": "queued", "waiting_reason": "no worker is connected"}'
            "\nid: 0-1\n\n"
        )
    finally:
        client.close()
