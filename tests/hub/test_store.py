"""The store on its own: scripts batched into pipelines stay atomic and correct, and survive
Redis losing its script cache."""

from __future__ import annotations

import asyncio
import json

import pytest

from redis_api.store import Claim, JobSpec, Store

pytestmark = pytest.mark.redis

SPEC = JobSpec(
    workflow_json=json.dumps({"1": {"class_type": "X"}}), priority=0, timeout_s=60, max_attempts=3
)


async def _register(store: Store, worker_id: str) -> None:
    gpu = {"index": 0, "uuid": f"GPU-{worker_id}", "name": "T", "vram_total_mb": 1000}
    await store.hello(worker_id, "s-" + worker_id, "hub", "m1", gpu, "t", None, 10_000)


async def test_concurrent_claims_give_each_job_to_one_worker(any_redis_url: str) -> None:
    store = Store.from_url(any_redis_url, "t:")
    try:
        ids = [f"job{i}" for i in range(200)]
        enqueued = await asyncio.gather(*(store.enqueue(i, SPEC) for i in ids))
        assert all(e.created for e in enqueued)
        workers = [f"w{i}" for i in range(20)]
        await asyncio.gather(*(_register(store, w) for w in workers))
        claimed: list[tuple[str, str]] = []

        async def drain(worker: str) -> None:
            while True:
                result = await store.claim(worker, 10_000)
                if not isinstance(result, Claim):
                    return
                claimed.append((worker, result.job_id))
                assert await store.complete(result.job_id, result.token, worker, [], 60_000) == ""

        await asyncio.gather(*(drain(w) for w in workers))
        assert sorted(job for _, job in claimed) == sorted(ids)  # each exactly once
        assert len({w for w, _ in claimed}) > 1  # claims really ran side by side
        counts = await store.counts()
        assert counts["succeeded"] == 200 and counts["queued"] == counts["running"] == 0
    finally:
        await store.close()


async def test_batched_calls_survive_a_flushed_script_cache(redis_url: str) -> None:
    store = Store.from_url(redis_url, "t:")
    try:
        await store.enqueue("first", SPEC)
        await store.redis.script_flush()
        results = await asyncio.gather(*(store.enqueue(f"j{i}", SPEC) for i in range(30)))
        assert [r.job_id for r in results] == [f"j{i}" for i in range(30)]
        await store.redis.script_flush()
        assert (await store.enqueue("last", SPEC)).created  # a lone call, too
        assert (await store.counts())["queued"] == 32
    finally:
        await store.close()


async def test_script_errors_reach_only_their_caller(redis_url: str) -> None:
    store = Store.from_url(redis_url, "t:")
    try:
        # A priority that is not a number makes the script fail (a stand-in for a bug).
        bad = JobSpec("{}", "high", 60, 3)  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            store.enqueue("ok1", SPEC),
            store.enqueue("bad", bad),
            store.enqueue("ok2", SPEC),
            return_exceptions=True,
        )
        assert [getattr(o, "job_id", None) for o in outcomes] == ["ok1", None, "ok2"]
        assert isinstance(outcomes[1], Exception)
    finally:
        await store.close()


async def test_a_retry_skips_the_worker_that_failed_it_while_another_idle_one_fits(
    redis_url: str,
) -> None:
    store = Store.from_url(redis_url, "t:")
    try:
        for worker in ("a", "b"):
            await _register(store, worker)
        assert not isinstance(await store.claim("b", 10_000), Claim)  # b waits idle
        await store.enqueue("j", SPEC)
        first = await store.claim("a", 10_000)
        assert isinstance(first, Claim)
        err = {"type": "x", "message": "y", "node_id": None}
        assert await store.fail("j", first.token, "a", err, True, 60_000) == ("", "queued", False)

        skipped = await store.claim("a", 10_000)  # b is idle and fits: a leaves it
        assert not isinstance(skipped, Claim) and not skipped.empty
        second = await store.claim("b", 10_000)
        assert isinstance(second, Claim) and second.job_id == "j" and second.attempt == 2

        assert await store.fail("j", second.token, "b", err, True, 60_000) == ("", "queued", False)
        await store.redis.zrem("t:idle", "a")  # a is busy elsewhere now: b is the only one
        third = await store.claim("b", 10_000)
        assert isinstance(third, Claim) and third.attempt == 3
    finally:
        await store.close()
