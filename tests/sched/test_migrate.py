"""Jobs queued by an older hub (before pools: one `queue` sorted set, git 933b293^) run after a
hub of today starts on the same Redis. The old layout is written here as enqueue.lua wrote it
then; the hub, workers and simulators are real."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bench.sched import txt2img
from redis_api.config import HubConfig
from redis_api.migrate import migrate_old_jobs
from redis_api.store import Store
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.sched.fleet import ENDED, fleet
from tests.worker.harness import HubClient

pytestmark = pytest.mark.redis

OLD_BAND = 1099511627776  # 2^40: the score unit of the old queue


async def old_enqueue(
    r: aioredis.Redis,
    prefix: str,
    job_id: str,
    workflow: dict[str, Any],
    priority: int = 0,
    constraints: dict[str, Any] | None = None,
) -> None:
    """What the old enqueue.lua (git show 7cfcef1:redis_api/lua/enqueue.lua) stored."""
    c = constraints or {}
    seq = await r.incr(prefix + "seq")
    score = (1000 - priority) * OLD_BAND + seq
    now = int(time.time() * 1000)
    await r.hset(
        f"{prefix}job:{job_id}",
        mapping={
            "id": job_id, "status": "queued", "priority": priority, "timeout_s": 60,
            "max_attempts": 3, "attempts": 0, "score": score,
            "constraints": json.dumps(c) if c else "", "c_machine": c.get("machine_id", ""),
            "c_gpu": "", "c_vram": "", "idempotency_key": "", "webhook_url": "",
            "created_ms": now, "enqueued_ms": now, "token": 0, "worker_id": "",
            "avoid_worker": "",
        },
    )  # fmt: skip
    await r.set(f"{prefix}wf:{job_id}", json.dumps(workflow))
    await r.zadd(prefix + "queue", {job_id: score})


async def test_jobs_an_older_hub_queued_run_after_a_hub_start(
    hub_factory: HubFactory, sim_factory: SimFactory, tmp_path: Path, redis_url: str
) -> None:
    prefix = "wgpu:"
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await old_enqueue(r, prefix, "old-a", txt2img("a.safetensors"))
        await old_enqueue(
            r, prefix, "old-b", txt2img("b.safetensors"), constraints={"machine_id": "m"}
        )
        await old_enqueue(r, prefix, "old-urgent", txt2img("a.safetensors", seed=2), priority=5)
        await old_enqueue(r, prefix, "old-missing", txt2img("nobody-has.safetensors"))
        await old_enqueue(r, prefix, "old-elsewhere", txt2img("a.safetensors"),
                          constraints={"machine_id": "offline"})  # fmt: skip
        # And one an old worker was running when everything stopped: its lease ran out.
        await old_enqueue(r, prefix, "old-running", txt2img("b.safetensors", seed=3),
                          constraints={"machine_id": "m"})  # fmt: skip
        await r.zrem(prefix + "queue", "old-running")
        await r.hset(
            prefix + "job:old-running",
            mapping={"status": "running", "worker_id": "gone-gpu0", "token": 5, "attempts": 1},
        )
        await r.zadd(prefix + "running", {"old-running": 0})
        hub = await hub_factory(key_prefix=prefix)
        assert hub.config.key_prefix == prefix
        sim = await sim_factory(models={"checkpoints": ["a.safetensors", "b.safetensors"]})
        async with aiohttp.ClientSession() as http, fleet(hub, [sim], tmp_path, busy_ok=True):
            client = HubClient(http, hub.url)
            done = {
                job_id: await client.wait_for(job_id, ENDED)
                for job_id in ("old-a", "old-b", "old-urgent", "old-running")
            }
            assert all(job["status"] == "succeeded" for job in done.values()), done
            # Today's placement applies to them: requirements read from the workflow, priority
            # kept, constraints kept, a job nobody can take says why.
            assert done["old-b"]["requires"] == {"checkpoints": ["b.safetensors"]}
            # The running one was requeued by the reaper into its pool, then ran again.
            assert done["old-running"]["requires"] == {"checkpoints": ["b.safetensors"]}
            assert [h["outcome"] for h in done["old-running"]["history"]] == [
                "lease_expired",
                "succeeded",
            ]
            assert done["old-urgent"]["started_at"] <= done["old-a"]["started_at"]
            missing = await client.job("old-missing")
            assert missing["status"] == "queued"
            assert missing["waiting_reason"] == (
                "no connected worker has checkpoints/nobody-has.safetensors"
            )
            elsewhere = await client.job("old-elsewhere")
            assert elsewhere["status"] == "queued"
            assert elsewhere["waiting_reason"] == "no connected worker matches machine_id=offline"
            # Running it again (another hub starting on the same Redis) moves nothing twice.
            assert await migrate_old_jobs(hub.hub.store, hub.config) == (0, 0)
            assert set(await r.zrange(prefix + "queue", 0, -1)) == {"old-missing", "old-elsewhere"}
            lanes = [key async for key in r.scan_iter(prefix + "lane:*")]
            in_lanes = [job_id for key in lanes for job_id in await r.zrange(key, 0, -1)]
            assert sorted(in_lanes) == ["old-elsewhere", "old-missing"]
    finally:
        await r.aclose()


async def test_hubs_migrating_at_once_move_each_old_job_once(redis_url: str) -> None:
    prefix = "mig:"
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = Store.from_url(redis_url, prefix)
    try:
        for i in range(50):
            await old_enqueue(r, prefix, f"old{i:02}", txt2img("a.safetensors", seed=i),
                              priority=i % 3)  # fmt: skip
        config = HubConfig(key_prefix=prefix)
        results = await asyncio.gather(*(migrate_old_jobs(store, config) for _ in range(3)))
        assert sum(moved for moved, _ in results) == 50
        (lane,) = [key async for key in r.scan_iter(prefix + "lane:*")]
        order = await r.zrange(lane, 0, -1)
        assert sorted(order) == [f"old{i:02}" for i in range(50)]
        # Priority first, then the old queue's order within a priority.
        by_priority = sorted(range(50), key=lambda i: (-(i % 3), i))
        assert order == [f"old{i:02}" for i in by_priority]
        assert await r.zcard(prefix + "queue") == 50
        assert await migrate_old_jobs(store, config) == (0, 0)
    finally:
        await store.close()
        await r.aclose()
