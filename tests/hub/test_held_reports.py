"""ComfyUI's execution start of a socket's own job is held back like `started`'s prompt id
(issue #16): recorded by the job's next fenced script, or alone after RUNNING_HOLD_S, dated when
the worker said it either way."""

from __future__ import annotations

import time

import pytest

from redis_api import worker_ws
from redis_api.worker_ws import RUNNING_HOLD_S
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import (
    get_job,
    job_status,
    recorded_progress,
    redis_commands,
    submit,
    worker_field,
)
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import ExecutionStarted, Progress

pytestmark = pytest.mark.redis


async def test_execution_start_goes_with_the_completion(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(lease_s=30.0)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    async with redis_commands(redis_url) as commands:
        heard = time.time()
        await worker.send(ExecutionStarted(job["id"], taken.token, "prompt-1"))
        ack = await worker.complete(taken)
    assert ack.ok
    done = await get_job(hub.url, job["id"])
    # running was recorded (dated when heard, not at the completion) by the completion's script:
    # no script of its own.
    assert done["status"] == "succeeded" and done["running_at"] is not None
    assert heard - 0.5 <= done["running_at"] <= done["finished_at"]
    scripts = [c for c in commands if c.startswith("EVALSHA") and job["id"] in c]
    assert len(scripts) == 1, scripts
    await worker.close()


async def test_execution_start_alone_is_recorded_after_the_hold(hub_factory: HubFactory) -> None:
    hub = await hub_factory(lease_s=30.0, progress_persist_s=60.0)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    heard = time.time()
    await worker.send(ExecutionStarted(job["id"], taken.token, "prompt-1"))
    running = await eventually(
        lambda: get_job(hub.url, job["id"]), lambda j: j["status"] == "running", within=5
    )
    assert heard - 0.5 <= running["running_at"] <= heard + RUNNING_HOLD_S + 5
    await worker.complete(taken)
    await worker.close()


async def test_execution_start_goes_with_the_first_recorded_step(
    hub_factory: HubFactory, redis_url: str
) -> None:
    hub = await hub_factory(lease_s=30.0, progress_persist_s=60.0)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    async with redis_commands(redis_url) as commands:
        await worker.send(ExecutionStarted(job["id"], taken.token, "prompt-1"))
        await worker.send(Progress(job["id"], taken.token, "5", 1, 10))
        running = await eventually(
            lambda: get_job(hub.url, job["id"]), lambda j: j["progress"] is not None
        )
    assert running["status"] == "running"
    assert recorded_progress(commands, job["id"]) == 1
    assert not [c for c in commands if c.startswith("EVALSHA") and " held " in c]
    await worker.complete(taken)
    await worker.close()


async def test_a_held_execution_start_dies_with_its_socket(
    hub_factory: HubFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that closes with an execution start still held leaves nothing behind that
    records it later (the worker says it again if it comes back)."""
    # Long enough that the socket is surely cut before its hold ends, even under load.
    monkeypatch.setattr(worker_ws, "RUNNING_HOLD_S", 2.0)
    hub = await hub_factory(lease_s=30.0, disconnect_grace_s=30.0, progress_persist_s=60.0)
    lost = ProtocolWorker(hub.url, "m1-gpu0", execution_started=True)
    control = ProtocolWorker(hub.url, "m1-gpu1", execution_started=True)
    await lost.connect()
    held = await submit(hub.url)
    taken = await lost.take_job()
    async with redis_commands(redis_url) as commands:
        await lost.send(ExecutionStarted(held["id"], taken.token, "prompt-1"))
        assert lost.ws is not None
        await (await lost.ws.ping())  # the hub handled the frame before the ping
        await lost.cut()
        await eventually(lambda: worker_field(redis_url, "m1-gpu0", "connected"), "0".__eq__)
        # A control job held after it on an open socket: once that one's hold has recorded
        # it, any timer left behind by the lost socket (due earlier) has fired too.
        await control.connect()
        other = await submit(hub.url)
        other_taken = await control.take_job()
        await control.send(ExecutionStarted(other["id"], other_taken.token, "prompt-2"))
        await job_status(hub.url, other["id"], "running", within=10)
    job = await get_job(hub.url, held["id"])
    assert job["status"] == "assigned" and job["running_at"] is None, job
    assert not [c for c in commands if f" held {held['id']} " in c]
    await control.complete(other_taken)
    await control.close()
