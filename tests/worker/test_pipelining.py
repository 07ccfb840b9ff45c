"""Pipelining end to end: the worker takes its next job, and ComfyUI starts it, while the
previous job's outputs are still being relayed; a job is `succeeded` only once its outputs are
stored. Real hub on real Redis, the worker (in process, or as a process that is killed), the
simulator; the simulator's `view_hook` holds a job's relay until the test lets it go."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfy_worker import worker as worker_module
from comfy_worker.hub_link import HubSession

from tests.fixtures.hub import HubFactory, HubProcess
from tests.fixtures.sim import SimFactory, free_port
from tests.hub.helpers import lease_left_s
from tests.polling import eventually
from tests.worker.harness import (
    DEADLINE_S,
    HubClient,
    running_worker,
    sim_json,
    worker_config,
)
from wgpu_protocol.messages import Completed, Message, Ready

pytestmark = pytest.mark.redis


def saving_workflow(prefix: str, sleep_s: float = 0.0) -> dict[str, Any]:
    """An image saved as `<prefix>_00001_.png`; with `sleep_s`, a node that runs that long
    (in steps, so an interrupt stops it) before the save."""
    workflow: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }
    if sleep_s:
        workflow["2"] = {
            "class_type": "WgpuSimSleep",
            "inputs": {"seconds": sleep_s, "steps": max(1, int(sleep_s * 10)), "image": ["1", 0]},
        }
        workflow["3"]["inputs"]["images"] = ["2", 0]
    return workflow


class RelayGate:
    """Holds the simulator's /view of files whose name starts with `prefix` until opened."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def hook(self, name: str) -> None:
        if name.startswith(self.prefix):
            self.reached.set()
            await self.opened.wait()


async def sim_entry(http: aiohttp.ClientSession, url: str, prefix: str) -> dict[str, Any] | None:
    """The simulator's history entry of the prompt that saves under `prefix`."""
    history = await sim_json(http, url, "/history")
    for entry in history.values():
        if entry["prompt"][2]["3"]["inputs"]["filename_prefix"] == prefix:
            return entry  # type: ignore[no-any-return]
    return None


def stamp(entry: dict[str, Any], kind: str) -> float:
    """When the simulator sent `kind` for the prompt (ms)."""
    return float(next(d["timestamp"] for k, d in entry["status"]["messages"] if k == kind))


async def test_the_next_job_runs_while_the_previous_relays_and_succeeds_only_once_stored(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = RelayGate("first")
    hub = await hub_factory()
    sim = await sim_factory(view_hook=gate.hook)
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        first = await client.submit(saving_workflow("wgpu/first"))
        second = await client.submit(saving_workflow("wgpu/second"))
        await asyncio.wait_for(gate.reached.wait(), 15)  # the first job's relay has begun
        # ComfyUI runs the second job to its end while the first job's output is held.
        entry = await eventually(
            lambda: sim_entry(http, sim.url, "wgpu/second"), within=15, what="the second run"
        )
        held = await client.job(first)
        assert held["status"] == "running" and held["outputs"] == [], held
        assert (await client.job(second))["status"] == "running"
        gate.opened.set()
        done = await client.wait_for(first)
        assert done["status"] == "succeeded", done
        [output] = done["outputs"]
        data, _ = await client.output(first, output["name"])
        assert len(data) == output["size"] > 0
        assert stamp(entry, "execution_start") < done["finished_at"] * 1000
        later = await client.wait_for(second)
        assert later["status"] == "succeeded" and len(later["outputs"]) == 1, later
        # The second job was relayed after the first: its own ack came later.
        assert later["finished_at"] >= done["finished_at"]


async def test_a_worker_relaying_outputs_is_not_drained_until_the_relay_is_recorded(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """What `wgpu update` waits for before it stops the worker: `drained` only once no job is
    held, not while the last job's outputs are still on their way (that would cut the relay)."""
    gate = RelayGate("first")
    hub = await hub_factory()
    sim = await sim_factory(view_hook=gate.hook)
    client = HubClient(http, hub.url)
    try:
        async with running_worker(worker_config(hub.url, sim.url, tmp_path)) as worker:
            first = await client.submit(saving_workflow("wgpu/first"))
            await asyncio.wait_for(gate.reached.wait(), 15)  # its relay has begun
            # The worker said `ready {relaying}`: ComfyUI is free, the job still its own.
            entry = await eventually(
                client.workers,
                lambda found: found[0].get("relaying_job") == first,
                within=15,
                what="the relaying job in /workers",
            )
            assert entry[0]["current_job"] is None, entry
            async with http.post(
                f"{hub.url}/workers/{worker.config.worker_id}/drain", json={}
            ) as r:
                answer = await r.json()
            assert answer["drain"]["state"] == "draining", answer
            assert answer["relaying_job"] == first, answer
            [entry] = await client.workers()
            assert entry["drain"]["state"] == "draining", entry
            gate.opened.set()
            done = await client.wait_for(first)
            assert done["status"] == "succeeded" and len(done["outputs"]) == 1, done
            [entry] = await client.workers()
            assert entry["drain"]["state"] == "drained" and entry["relaying_job"] is None, entry
    finally:
        gate.opened.set()


async def test_a_storage_failure_while_relaying_fails_that_job_alone(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = RelayGate("first")
    outputs = tmp_path / "hub-outputs"
    hub = await hub_factory(outputs_dir=str(outputs))
    sim = await sim_factory(view_hook=gate.hook)
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        first = await client.submit(saving_workflow("wgpu/first"), max_attempts=1)
        second = await client.submit(saving_workflow("wgpu/second"))
        await asyncio.wait_for(gate.reached.wait(), 15)
        await eventually(
            lambda: sim_entry(http, sim.url, "wgpu/second"), within=15, what="the second run"
        )
        # A file where the first job's directory should go: its write fails with a real OSError.
        (outputs / first).write_bytes(b"in the way")
        gate.opened.set()
        failed = await client.wait_for(first)
        assert failed["status"] == "dead" and failed["outputs"] == [], failed
        assert failed["history"][-1]["error"]["type"] == "storage_error"
        done = await client.wait_for(second)
        assert done["status"] == "succeeded" and len(done["outputs"]) == 1, done
        assert done["attempts"] == 1 and done["history"][0]["outcome"] == "succeeded"


async def test_a_job_cancelled_while_relaying_stops_its_relay_and_the_next_job_goes_on(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = RelayGate("first")
    hub = await hub_factory()
    sim = await sim_factory(view_hook=gate.hook)
    client = HubClient(http, hub.url)
    try:
        async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
            first = await client.submit(saving_workflow("wgpu/first"))
            second = await client.submit(saving_workflow("wgpu/second"))
            await asyncio.wait_for(gate.reached.wait(), 15)
            assert (await client.cancel(first))["status"] == "cancelled"
            # The first job's output is still held in ComfyUI's /view, yet the second job's
            # relay does not wait for it: the worker dropped the cancelled job's relay.
            done = await client.wait_for(second)
            assert done["status"] == "succeeded" and len(done["outputs"]) == 1, done
            cancelled = await client.job(first)
            assert cancelled["status"] == "cancelled" and cancelled["outputs"] == []
    finally:
        gate.opened.set()


async def test_a_worker_killed_while_relaying_one_job_and_running_another_loses_neither(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    worker_process: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    gate = RelayGate("first")
    hub = await hub_factory()
    sim = await sim_factory(view_hook=gate.hook)
    client = HubClient(http, hub.url)
    process = worker_process(hub.url, sim.port)
    first = await client.submit(saving_workflow("wgpu/first"))
    second = await client.submit(saving_workflow("wgpu/second", sleep_s=1.0))
    await asyncio.wait_for(gate.reached.wait(), 15)

    async def second_running() -> bool:
        queue = await sim_json(http, sim.url, "/queue")
        return bool(queue["queue_running"])  # the first prompt is over: this is the second

    await eventually(second_running, within=15, what="the second job running in ComfyUI")
    process.signal(signal.SIGKILL)
    assert await process.exit_code() == -signal.SIGKILL
    for job_id in (first, second):
        requeued = await client.wait_for(job_id, {"queued", "dead", "failed", "succeeded"})
        assert requeued["status"] == "queued", requeued
        assert requeued["history"][-1]["outcome"] == "lease_expired"
        assert requeued["outputs"] == []
    # A worker started afterwards runs both to the end, outputs and all.
    gate.opened.set()
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        for job_id in (first, second):
            done = await client.wait_for(job_id, timeout_s=30)
            assert done["status"] == "succeeded" and len(done["outputs"]) == 1, done


async def test_a_hub_lost_while_relaying_one_job_and_running_another_resumes_both_once(
    redis_url: str, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = RelayGate("first")
    sim = await sim_factory(view_hook=gate.hook)
    hub = HubProcess(redis_url, free_port(), tmp_path)
    await hub.start()
    client = HubClient(http, hub.url)
    try:
        async with running_worker(worker_config(hub.url, sim.url, tmp_path)) as worker:
            first = await client.submit(saving_workflow("wgpu/first"))
            second = await client.submit(saving_workflow("wgpu/second", sleep_s=1.0))
            await asyncio.wait_for(gate.reached.wait(), 15)
            # The worker holds the second job once its prompt is in ComfyUI (the hub's status
            # alone says it was claimed, maybe not yet delivered).
            await eventually(
                lambda: sim_json(http, sim.url, "/queue"),
                lambda q: any(
                    "wgpu/second" in json.dumps(entry[2])
                    for entry in q["queue_running"] + q["queue_pending"]
                ),
                within=DEADLINE_S,
            )
            before = worker.hub_link.session
            hub.kill()
            await hub.start()
            await eventually(
                lambda: _session(worker),
                lambda now: now is not None and now is not before,
                within=DEADLINE_S,
            )
            # The hello named both jobs and the hub kept both leases (a job it did not name
            # would have lost its lease at once; the HubProcess lease outlasts a slow restart,
            # so neither expired while no hub ran)...
            for job_id in (first, second):
                assert (await lease_left_s(redis_url, job_id) or 0.0) > 1.0
            # ...so the first job's output is relayed again from its start on the new socket
            # while the second runs on.
            gate.opened.set()
            jobs = [await client.wait_for(job_id, timeout_s=30) for job_id in (first, second)]
            await eventually(lambda: _recorded(worker), lambda n: n >= 2, within=15)
    finally:
        hub.kill()
    for job in jobs:
        assert job["status"] == "succeeded" and len(job["outputs"]) == 1, job
        assert job["attempts"] == 1 and len(job["history"]) == 1, job
    assert len(await sim_json(http, sim.url, "/history")) == 2  # ComfyUI ran each once


async def _recorded(worker: Any) -> int:
    return int(worker.results_recorded)


async def _session(worker: Any) -> object:
    return worker.hub_link.session


async def test_a_quick_relay_goes_out_with_its_result_which_asks_for_the_next_job(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relay that ends within PIPELINE_AFTER_S costs no `ready {relaying}` (and no claim for
    it): its `completed` carries `ready_next`. (A slow one says `ready` first: see above.)"""
    monkeypatch.setattr(worker_module, "PIPELINE_AFTER_S", 30.0)  # every relay here is quick
    sent: list[Message] = []
    real_send = HubSession.send

    async def recorded(session: HubSession, message: Message) -> bool:
        sent.append(message)
        return await real_send(session, message)

    monkeypatch.setattr(HubSession, "send", recorded)
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        for prefix in ("wgpu/one", "wgpu/two"):
            job = await client.wait_for(await client.submit(saving_workflow(prefix)))
            assert job["status"] == "succeeded" and len(job["outputs"]) == 1, job
    assert not [m for m in sent if isinstance(m, Ready) and m.relaying is not None]
    completed = [m for m in sent if isinstance(m, Completed)]
    assert len(completed) == 2 and all(m.ready_next for m in completed), completed


async def test_a_large_output_asks_for_the_next_job_as_its_relay_begins(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An output of PIPELINE_AFTER_BYTES or more (its size known from /view before its bytes)
    has the next job asked for before its first chunk, without waiting PIPELINE_AFTER_S: the
    GPU does not idle for the timer ahead of a relay that takes longer anyway."""
    monkeypatch.setattr(worker_module, "PIPELINE_AFTER_S", 30.0)  # the timer never fires here
    monkeypatch.setattr(worker_module, "PIPELINE_AFTER_BYTES", 1)  # every output is large here
    order: list[str] = []
    asked = asyncio.Event()
    real_send, real_send_bytes = HubSession.send, HubSession.send_bytes

    async def recorded(session: HubSession, message: Message) -> bool:
        if isinstance(message, Ready) and message.relaying is not None:
            order.append(f"ready relaying {message.relaying.job_id}")
            asked.set()
        elif isinstance(message, Completed):
            order.append(f"completed ready_next={message.ready_next}")
        return await real_send(session, message)

    async def chunk(session: HubSession, frame: bytes) -> bool:
        # A relay this small would end before the worker could ask: hold each chunk until
        # it has asked (or long enough to show it never does).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asked.wait(), 5.0)
        order.append("chunk")
        return await real_send_bytes(session, frame)

    monkeypatch.setattr(HubSession, "send", recorded)
    monkeypatch.setattr(HubSession, "send_bytes", chunk)
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job_id = await client.submit(saving_workflow("wgpu/large"))
        job = await client.wait_for(job_id)
        assert job["status"] == "succeeded" and len(job["outputs"]) == 1, job
    assert order == [f"ready relaying {job_id}", "chunk", "completed ready_next=False"], order
