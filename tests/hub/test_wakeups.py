"""Wake-ups of idle workers: a job accepted by a hub goes to that hub's idle workers without
waiting for its work message to come back over pub/sub, and a claim that finds the queue empty
answers every wake-up heard before it was sent (no second pass for the same job), never one
heard after. Real hub, real Redis, protocol workers on real sockets; the work channel is cut
(the dispatcher drops its messages) so that only the wake-ups under test happen."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from redis_api.dispatch import Dispatcher
from redis_api.jobs import parse_submit
from redis_api.server import RunningHub
from redis_api.store import Claim, ClaimMiss
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import JobAssigned

pytestmark = pytest.mark.redis

# Long leases: the maintenance task's safety-net claim (every lease/4) stays out of the way.
QUIET = {"lease_s": 60.0}


def cut_work_channel(dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    heard = dispatcher._on_message

    def without_work(channel: str, data: str) -> None:
        if channel != dispatcher.store.work_channel:
            heard(channel, data)

    monkeypatch.setattr(dispatcher, "_on_message", without_work)


async def idle_workers(running: RunningHub, *names: str) -> list[ProtocolWorker]:
    """The workers, connected and waiting, once the hub listens on its channels (it claims once
    when it starts listening: that must not be what hands them a job)."""
    store = running.hub.store

    async def listeners() -> int:
        counts = await store.redis.pubsub_numsub(store.work_channel)
        return int(counts[0][1])

    await eventually(listeners, lambda n: n >= 1, what="the hub listening on the work channel")
    workers = [ProtocolWorker(running.url, worker_id=name) for name in names]
    for worker in workers:
        await worker.connect()
        await worker.ready()

    async def wanting() -> set[str]:
        return set(running.hub.dispatcher.wanting)

    await eventually(wanting, lambda ids: ids == set(names), what="every worker waiting")
    return workers


async def test_a_job_reaches_an_idle_worker_of_its_hub_without_the_work_message(
    hub_factory: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await hub_factory(**QUIET)
    cut_work_channel(running.hub.dispatcher, monkeypatch)
    (worker,) = await idle_workers(running, "m1-gpu0")
    job = await submit(running.url)
    assigned = await worker.expect(JobAssigned, within=3.0)
    assert assigned.job_id == job["id"]
    await worker.close()


async def test_an_empty_claim_answers_the_wake_ups_heard_before_it_not_after(
    hub_factory: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await hub_factory(**QUIET)
    hub = running.hub
    cut_work_channel(hub.dispatcher, monkeypatch)
    workers = await idle_workers(running, "m1-gpu0", "m1-gpu1")
    real_claim = hub.store.claim
    claims: list[tuple[str, str]] = []  # (worker, what the claim found)
    during_claim: list[Any] = []  # what to do while the next claim is in flight, once

    async def claim(worker_id: str, *args: Any, **kwargs: Any) -> Claim | ClaimMiss:
        act = during_claim.pop(0) if during_claim else None
        if act == "wake before":
            hub.dispatcher.wake()  # heard before the next claim is sent
        result = await real_claim(worker_id, *args, **kwargs)
        claims.append((worker_id, "job" if isinstance(result, Claim) else "empty"))
        if act == "enqueue and wake":
            # A job queued after this claim ran, its work message heard while the answer
            # travels: the empty answer does not cover it, the hub claims again.
            spec = parse_submit({"workflow": WORKFLOW}, hub.config)
            await hub.store.enqueue(uuid.uuid4().hex, spec)
            hub.dispatcher.wake()
        return result

    monkeypatch.setattr(hub.store, "claim", claim)

    # One job, two idle workers: the POST's own wake-up claims it for the first (the order
    # they said ready), then finds the queue empty for the other. A wake-up heard while the
    # first claim was in flight (as the job's work message would be) is answered by that
    # empty claim: the pass ends there, no third claim.
    first, second = workers
    during_claim.append("wake before")
    job = await submit(running.url)
    assert (await first.expect(JobAssigned, within=3.0)).job_id == job["id"]
    await wake_loop_done(hub.dispatcher)
    assert claims == [(first.worker_id, "job"), (second.worker_id, "empty")]

    # The other worker still waits; a wake-up finds the queue empty, but a job is queued and
    # its wake-up heard while that empty answer is on its way: the hub claims again.
    claims.clear()
    during_claim.append("enqueue and wake")
    hub.dispatcher.wake()
    late = await second.expect(JobAssigned, within=3.0)
    assert late.job_id != job["id"]
    await wake_loop_done(hub.dispatcher)
    assert claims == [(second.worker_id, "empty"), (second.worker_id, "job")]
    for worker in workers:
        await worker.close()


async def wake_loop_done(dispatcher: Dispatcher) -> None:
    task = dispatcher._wake_task
    if task is not None:
        await task
