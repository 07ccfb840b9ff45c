"""The worker against a hub whose Redis goes away while a job finishes.

The hub answers the result with `error: unavailable`; the worker must resend it with a short
backoff, so the result is recorded soon after Redis returns, not after the ack timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import redis
from comfy_worker import Worker

from orchestrator.stack.local_redis import LocalRedis
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.worker.harness import (
    HubClient,
    acks_reach,
    image_workflow,
    only_history,
    running_worker,
    until,
    worker_config,
)

ACK_TIMEOUT_S = 120.0  # far beyond the test's deadlines: only the resend path can pass
RECORDED_WITHIN_S = 8.0


async def test_result_refused_while_redis_is_down_is_resent_soon_after_it_returns(
    hub_factory: HubFactory,
    redis_aof: LocalRedis,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(redis_aof.url)
    client.config_set("appendfsync", "always")  # SIGKILL must not lose the running job
    client.close()
    hub = await hub_factory(redis_url=redis_aof.url, lease_s=60.0)  # no lease expiry meanwhile
    sim = await sim_factory(node_time_s=0.3)  # about 1 s per job: time to kill Redis
    api = HubClient(http, hub.url)
    config = worker_config(hub.url, sim.url, tmp_path, ack_timeout_s=ACK_TIMEOUT_S)
    async with running_worker(config) as worker:
        job_id = await api.submit(image_workflow())
        await api.wait_for(job_id, {"running"})
        redis_aof.kill()
        await until(lambda: only_history(http, sim.url), "the run to finish in ComfyUI")
        await until(lambda: _resent(worker, 1), "a resend after the hub said unavailable")
        assert worker.results_recorded == 0

        redis_aof.start()
        back_at = time.monotonic()
        job = await api.wait_for(job_id, timeout_s=RECORDED_WITHIN_S)
        await acks_reach(worker, 1)
        recorded_after = time.monotonic() - back_at
    assert job["status"] == "succeeded"
    assert [o["name"] for o in job["outputs"]] == ["test_00001_.png"]
    assert job["attempts"] == 1
    assert recorded_after < RECORDED_WITHIN_S < ACK_TIMEOUT_S


async def _resent(worker: Worker, count: int) -> bool:
    return worker.results_resent >= count
