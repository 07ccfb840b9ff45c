"""Model-aware placement in the store's scripts, driven directly: pools and lanes, routing by
inventory, no head-of-line blocking, fair share between owners, the per-owner cap, affinity and
quarantine. (End to end, with workers and simulators: tests/sched/test_system.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from redis_api.store import Claim, ClaimMiss, ClaimOptions, JobSpec, Store
from wgpu_protocol import models

pytestmark = pytest.mark.redis

WORKFLOW = json.dumps({"1": {"class_type": "X"}})
AFFINITY = ClaimOptions(affinity_ms=60_000, backlog=8)
DEFAULT = ClaimOptions()


def spec(
    requires: dict[str, list[str]] | None = None,
    constraints: dict[str, Any] | None = None,
    owner: str = "",
    priority: int = 0,
) -> JobSpec:
    req = requires or {}
    return JobSpec(
        workflow_json=WORKFLOW,
        priority=priority,
        timeout_s=60,
        max_attempts=3,
        constraints=constraints,
        requires=req,
        pool=models.pool_id(req, constraints),
        owner=owner,
        schedule_timeout_s=600,
    )


async def register(
    store: Store, worker: str, files: list[str] | None = None, machine: str = "m1"
) -> None:
    gpu = {"index": 0, "uuid": f"GPU-{worker}", "name": "T", "vram_total_mb": 1000}
    await store.hello(worker, "s-" + worker, "hub", machine, gpu, "t", None, 10_000, "boot1")
    if files is not None:
        inventory = models.unflatten(files)
        assert await store.set_models(worker, "s-" + worker, models.digest(inventory), files, [])


async def claim(store: Store, worker: str, options: ClaimOptions = DEFAULT) -> str | None:
    result = await store.claim(worker, 10_000, options)
    return result.job_id if isinstance(result, Claim) else None


async def finish(store: Store, worker: str, job_id: str, warm: list[str] | None = None) -> None:
    """Complete the job as the worker would; `warm`: what it reports loaded (None: unchanged)."""
    fields = await store.get_job(job_id)
    assert fields is not None
    assert await store.complete(job_id, int(fields["token"]), worker, [], 60_000, warm=warm) == ""


@pytest.fixture
async def store(redis_url: str) -> Store:
    return Store.from_url(redis_url, "s:")


async def test_a_job_goes_only_to_a_worker_that_has_its_files(store: Store) -> None:
    await register(store, "has-a", ["checkpoints/a.safetensors"])
    await register(store, "has-b", ["checkpoints/b.safetensors", "loras/x.safetensors"])
    await store.enqueue(
        "needs-b", spec({"checkpoints": ["b.safetensors"], "loras": ["x.safetensors"]})
    )
    await store.enqueue("needs-a", spec({"checkpoints": ["a.safetensors"]}))
    assert await claim(store, "has-a") == "needs-a"
    assert await claim(store, "has-a") is None
    assert await claim(store, "has-b") == "needs-b"


async def test_an_inventory_change_makes_a_worker_eligible(store: Store) -> None:
    await register(store, "w", ["checkpoints/a.safetensors"])
    await store.enqueue("j", spec({"checkpoints": ["new.safetensors"]}))
    reasons = await store.waiting_reasons(
        [models.pool_id({"checkpoints": ["new.safetensors"]}, None)], 60_000
    )
    assert list(reasons.values()) == ["no connected worker has checkpoints/new.safetensors"]
    assert await claim(store, "w") is None
    files = ["checkpoints/a.safetensors", "checkpoints/new.safetensors"]
    assert await store.set_models("w", "s-w", "d2", files, [])
    assert await claim(store, "w") == "j"


async def test_jobs_nobody_can_take_do_not_block_one_that_can_run(store: Store) -> None:
    await register(store, "w", [])
    blocker = spec(constraints={"machine_id": "offline-machine"})
    started = time.monotonic()
    await store.enqueue_many([(f"b{i}", blocker) for i in range(10_000)])
    enqueue_s = time.monotonic() - started
    await store.enqueue("runnable", spec())
    # A bounded scan of the queue's head would find only blockers; the pools make the claim
    # look at the heads of this worker's pools alone.
    assert await claim(store, "w") == "runnable"
    assert await store.redis.zcard("s:queue") == 10_000
    reason = await store.waiting_reasons([blocker.pool], 60_000)
    assert reason[blocker.pool] == "no connected worker matches machine_id=offline-machine"
    print(f"10,000 blockers enqueued in {enqueue_s:.1f}s (100,000: tests/sched/test_system.py)")


async def test_one_owner_with_many_jobs_does_not_delay_another_owners_job(store: Store) -> None:
    await register(store, "w", [])
    await store.enqueue_many([(f"a{i}", spec(owner="alice")) for i in range(1000)])
    assert await claim(store, "w") == "a0"
    await finish(store, "w", "a0")
    await store.enqueue("b0", spec(owner="bob"))
    # Round robin between owners with queued work: bob's one job is next (or right after
    # the alice job that shares its round).
    order = []
    for _ in range(3):
        job = await claim(store, "w")
        assert job is not None
        order.append(job)
        await finish(store, "w", job)
    assert "b0" in order[:2], order


async def test_priority_wins_over_fair_share(store: Store) -> None:
    await register(store, "w", [])
    await store.enqueue("low", spec(owner="bob"))
    await store.enqueue("high", spec(owner="alice", priority=5))
    assert await claim(store, "w") == "high"


async def test_max_running_per_owner(store: Store) -> None:
    for w in ("w1", "w2", "w3", "w4"):
        await register(store, w, [])
    capped = ClaimOptions(affinity_ms=1000, backlog=8, max_running_per_owner=2)
    await store.enqueue_many([(f"a{i}", spec(owner="alice")) for i in range(5)])
    await store.enqueue("b0", spec(owner="bob"))
    got = [await claim(store, w, capped) for w in ("w1", "w2", "w3", "w4")]
    # Rounds: a0 and b0 share the first; alice may hold only two GPUs at once.
    assert got == ["a0", "b0", "a1", None]
    await finish(store, "w1", "a0")
    assert await claim(store, "w4", capped) == "a2"


async def test_affinity_takes_the_job_whose_models_are_loaded(store: Store) -> None:
    files = ["checkpoints/a.safetensors", "checkpoints/b.safetensors"]
    await register(store, "w", files)
    need_a, need_b = (
        spec({"checkpoints": ["a.safetensors"]}),
        spec({"checkpoints": ["b.safetensors"]}),
    )
    await store.enqueue("a1", need_a)
    assert await claim(store, "w", AFFINITY) == "a1"  # nothing loaded anywhere: oldest first
    await finish(store, "w", "a1", warm=["checkpoints/a.safetensors"])
    await store.enqueue("b1", need_b)
    await store.enqueue("a2", need_a)
    # b1 is older, but `a` is loaded here and nobody waits long: a2 first.
    assert await claim(store, "w", AFFINITY) == "a2"
    await finish(store, "w", "a2")  # warm unchanged
    assert await claim(store, "w", AFFINITY) == "b1"
    # Without affinity, plain order.
    await finish(store, "w", "b1")
    await store.enqueue("a3", need_a)
    await store.enqueue("b2", need_b)
    assert await claim(store, "w", ClaimOptions(affinity_ms=-1)) == "a3"


async def test_warm_models_come_from_the_workers_report_not_from_the_claim(store: Store) -> None:
    files = ["checkpoints/a.safetensors", "checkpoints/b.safetensors"]
    await register(store, "w", files)
    need_a, need_b = (
        spec({"checkpoints": ["a.safetensors"]}),
        spec({"checkpoints": ["b.safetensors"]}),
    )
    await store.enqueue("a1", need_a)
    assert await claim(store, "w", AFFINITY) == "a1"
    await finish(store, "w", "a1")  # the worker said nothing about its models (say it failed early)
    assert (await store.worker_models(["w"]))["w"] == (set(files), set())
    await store.enqueue("b1", need_b)
    await store.enqueue("a2", need_a)
    assert await claim(store, "w", AFFINITY) == "b1"  # nothing reported warm: plain order
    await finish(store, "w", "b1", warm=["checkpoints/a.safetensors", "checkpoints/b.safetensors"])
    assert (await store.worker_models(["w"]))["w"] == (set(files), set(files))
    await store.enqueue("b2", need_b)
    assert await claim(store, "w", AFFINITY) == "a2"  # both loaded (WARM_MODELS=2): oldest


async def test_a_job_nobody_has_loaded_goes_to_the_gpu_whose_models_are_needed_least(
    store: Store,
) -> None:
    files = ["checkpoints/a.safetensors", "checkpoints/b.safetensors", "checkpoints/c.safetensors"]
    for worker, loaded in (
        ("holds-a", "checkpoints/a.safetensors"),
        ("holds-b", "checkpoints/b.safetensors"),
    ):
        await register(store, worker, files)
        inventory = models.unflatten(files)
        assert await store.set_models(
            worker, "s-" + worker, models.digest(inventory), files, [loaded]
        )
        assert await claim(store, worker, AFFINITY) is None  # both idle, nothing queued
    for i in range(5):  # many queued jobs need `a`...
        await store.enqueue(f"a{i}", spec({"checkpoints": ["a.safetensors"]}))
    # ... and a more urgent one needs `c`, which neither GPU has loaded.
    await store.enqueue("c", spec({"checkpoints": ["c.safetensors"]}, priority=5))
    # The GPU holding `a` asks first, but loading `c` there would evict what the queue needs:
    # it leaves the job to the GPU holding `b` (needed by nobody) and asks again soon.
    miss = await store.claim("holds-a", 10_000, AFFINITY)
    assert isinstance(miss, ClaimMiss) and 0 < miss.retry_ms <= AFFINITY.affinity_ms
    assert await claim(store, "holds-b", AFFINITY) == "c"
    assert await claim(store, "holds-a", AFFINITY) == "a0"


async def test_the_gpu_whose_models_are_needed_leaves_a_cold_job_only_for_a_while(
    store: Store,
) -> None:
    files = ["checkpoints/a.safetensors", "checkpoints/c.safetensors"]
    for worker, loaded in (("holds-a", ["checkpoints/a.safetensors"]), ("idle-cold", [])):
        await register(store, worker, files)
        inventory = models.unflatten(files)
        assert await store.set_models(
            worker, "s-" + worker, models.digest(inventory), files, loaded
        )
        assert await claim(store, worker, AFFINITY) is None
    options = ClaimOptions(affinity_ms=300, backlog=8)
    for i in range(3):
        await store.enqueue(f"a{i}", spec({"checkpoints": ["a.safetensors"]}))
    await store.enqueue("c", spec({"checkpoints": ["c.safetensors"]}, priority=5))
    asked = time.monotonic()
    # The other idle GPU never claims (its hub died, say): after affinity_ms the job is taken.
    got = None
    while got is None and time.monotonic() - asked < 3.0:
        got = await claim(store, "holds-a", options)
        await asyncio.sleep(0.02)  # poll
    assert got == "c"
    assert time.monotonic() - asked >= 0.25


async def test_a_cold_worker_waits_briefly_for_the_warm_one_then_takes_the_job(
    store: Store,
) -> None:
    files = ["checkpoints/a.safetensors"]
    await register(store, "warm", files)
    await register(store, "cold", files)
    need_a = spec({"checkpoints": ["a.safetensors"]})
    options = ClaimOptions(affinity_ms=300, backlog=8)
    await store.enqueue("a1", need_a)
    assert await claim(store, "warm", options) == "a1"
    await store.enqueue("a2", need_a)
    asked = time.monotonic()
    miss = await store.claim("cold", 10_000, options)
    assert isinstance(miss, ClaimMiss) and 0 < miss.retry_ms <= 300  # the warm GPU is busy
    # The wait is bounded: asking again, the cold worker gets the job once affinity_ms passed.
    got = None
    while got is None and time.monotonic() - asked < 3.0:
        await asyncio.sleep(0.02)  # poll
        got = await claim(store, "cold", options)
    waited = time.monotonic() - asked
    assert got == "a2"
    assert 0.25 <= waited < 3.0, waited


async def test_quarantine_after_k_failures_and_one_more_attempt_elsewhere(store: Store) -> None:
    await register(store, "bad", [])
    await register(store, "good", [])
    err = {"type": "execution_error", "message": "boom", "node_id": "1"}
    for i in range(3):
        await store.enqueue(f"j{i}", spec())
        result = await store.claim("bad", 10_000)
        assert isinstance(result, Claim)
        refused, status, quarantined = await store.fail(
            result.job_id, result.token, "bad", err, False, 60_000, "", True, 3
        )
        assert (refused, status) == ("", "failed")
        assert quarantined == (i == 2)
    assert isinstance(await store.claim("bad", 10_000), ClaimMiss)
    fields = await store.get_job("j0")
    assert fields is not None and fields["status"] == "queued"  # one more attempt
    again = {await claim(store, "good") for _ in range(3)}
    assert again == {"j0", "j1", "j2"}
    assert await store.resume("bad") == (False, True)
    await store.enqueue("after", spec())
    assert await claim(store, "bad") == "after"


async def test_a_success_between_failures_restarts_the_quarantine_count(store: Store) -> None:
    """Quarantine counts failures in a row: a success on the worker (with the next claim folded
    into its completion, as `completed.ready_next` does) forgets the ones before it."""
    await register(store, "w", [])
    err = {"type": "execution_error", "message": "boom", "node_id": "1"}

    async def fail_one(job_id: str) -> bool:
        await store.enqueue(job_id, spec())
        result = await store.claim("w", 10_000)
        assert isinstance(result, Claim) and result.job_id == job_id
        refused, _, quarantined = await store.fail(
            job_id, result.token, "w", err, False, 60_000, "", True, 2
        )
        assert refused == ""
        return quarantined

    assert not await fail_one("f1")
    await store.enqueue("ok", spec())
    await store.enqueue("f2", spec())
    first = await store.claim("w", 10_000)
    assert isinstance(first, Claim) and first.job_id == "ok"
    refused, claimed = await store.complete_and_claim(
        "ok", first.token, "w", [], 60_000, "", (10_000, DEFAULT)
    )
    assert refused == "" and isinstance(claimed, Claim) and claimed.job_id == "f2"
    refused, _, quarantined = await store.fail(
        "f2", claimed.token, "w", err, False, 60_000, "", True, 2
    )
    assert (refused, quarantined) == ("", False)  # 1 in a row, not 2
    assert await fail_one("f3")  # 2 in a row


async def test_a_worker_restart_ends_its_quarantine(store: Store) -> None:
    await register(store, "w", [])
    err = {"type": "comfyui_crashed", "message": "gone", "node_id": None}
    for i in range(2):
        await store.enqueue(f"j{i}", spec())
        result = await store.claim("w", 10_000)
        assert isinstance(result, Claim)
        await store.fail(result.job_id, result.token, "w", err, True, 60_000, "", True, 2)
    assert isinstance(await store.claim("w", 10_000), ClaimMiss)  # quarantined
    gpu = {"index": 0, "uuid": "GPU-w", "name": "T", "vram_total_mb": 1000}
    # The same process reconnecting stays quarantined; a new process (boot id) starts clean.
    await store.hello("w", "s-w2", "hub", "m1", gpu, "t", None, 10_000, "boot1")
    assert isinstance(await store.claim("w", 10_000), ClaimMiss)
    await store.hello("w", "s-w3", "hub", "m1", gpu, "t", None, 10_000, "boot2")
    assert await claim(store, "w") in {"j0", "j1"}


async def test_priority_wins_over_affinity(store: Store) -> None:
    files = ["checkpoints/a.safetensors", "checkpoints/b.safetensors"]
    await register(store, "w", files)
    inventory = models.unflatten(files)
    assert await store.set_models("w", "s-w", models.digest(inventory), files, files[:1])
    await store.enqueue("warm", spec({"checkpoints": ["a.safetensors"]}))
    await store.enqueue("urgent-cold", spec({"checkpoints": ["b.safetensors"]}, priority=1))
    assert await claim(store, "w", AFFINITY) == "urgent-cold"
