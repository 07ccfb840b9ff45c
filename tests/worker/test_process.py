"""The worker as a real process: SIGTERM mid-job, ComfyUI dying mid-job, supervised ComfyUI."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory, SimProcessFactory, free_port
from tests.worker.harness import (
    HubClient,
    acks_reach,
    fault_workflow,
    image_workflow,
    only_history,
    running_worker,
    sim_json,
    until,
    worker_config,
)


async def test_sigterm_mid_job_finishes_it_takes_nothing_new_and_exits_0(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    worker_process: Any,
    http: aiohttp.ClientSession,
) -> None:
    hub = await hub_factory()
    sim = await sim_factory(node_time_s=0.3)  # about 1 s per job
    client = HubClient(http, hub.url)
    worker = worker_process(hub.url, sim.port, WORKER_GRACE_S="20")
    first = await client.submit(image_workflow())
    await client.wait_for(first, {"running"})
    second = await client.submit(image_workflow(width=32))
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    job = await client.job(first)
    assert job["status"] == "succeeded" and len(job["outputs"]) == 1
    assert (await client.job(second))["status"] == "queued"  # no new work after SIGTERM
    rows = await client.workers()
    assert rows[0]["id"] == "proc-gpu0" and rows[0]["status"] in ("offline", "unavailable")


async def test_sigterm_past_the_grace_period_hands_the_job_back(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    worker_process: Any,
    http: aiohttp.ClientSession,
) -> None:
    # A lease that a loaded machine cannot run out before the release: the release is what
    # this test checks, not the reaper.
    hub = await hub_factory(lease_s=30.0)
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    worker = worker_process(hub.url, sim.port, WORKER_GRACE_S="0.3")
    job_id = await client.submit(fault_workflow("hang"))
    await client.wait_for(job_id, {"running"})
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    # Handed back, to run elsewhere (recorded once the hub read the worker's last frames).
    job = await client.wait_for(job_id, {"queued"})
    assert job["attempts"] == 0  # a release does not count as a failed attempt
    assert [h["outcome"] for h in job["history"]] == ["released"]
    # It was stopped in ComfyUI, not left running there.
    entry = await until(lambda: only_history(http, sim.url), "the prompt to be interrupted")
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]


async def test_comfyui_killed_mid_job_fails_retryable_then_recovers(
    hub_factory: HubFactory,
    sim_process_factory: SimProcessFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    hub = await hub_factory(lease_s=10.0)
    comfy = await sim_process_factory(node_time_s=0.3)
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, comfy.url, tmp_path)) as worker:
        job_id = await client.submit(image_workflow(), max_attempts=3)
        await client.wait_for(job_id, {"running"})
        await until(lambda: _busy(http, comfy.url), "the prompt to run in ComfyUI")
        comfy.kill()
        # The worker reports the crash; the hub requeues the job; nobody takes it meanwhile.
        failed = await until(lambda: _first_attempt_done(client, job_id), "the attempt to end")
        assert failed["error"]["type"] == "comfyui_crashed"
        assert (await client.job(job_id))["status"] == "queued"
        await client.wait_worker("unavailable")
        await comfy.start()  # ComfyUI comes back on the same port
        job = await client.wait_for(job_id)
        assert job["status"] == "succeeded"
        assert job["attempts"] == 2
        await acks_reach(worker, 2)  # the crash report and the success


async def test_supervised_comfyui_is_started_restarted_and_stopped(
    hub_factory: HubFactory,
    worker_process: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    hub = await hub_factory(lease_s=10.0)
    port = free_port()
    comfy_url = f"http://127.0.0.1:{port}"
    command = (
        f"exec {sys.executable} -m comfyui_sim --port $EXECUTION_SERVICE_PORT --node-time 0.05 "
        f"--output-dir {tmp_path / 'out'} --temp-dir {tmp_path / 'temp'} "
        f"--input-dir {tmp_path / 'in'}"
    )
    worker = worker_process(hub.url, port, COMFYUI_CMD=command, WORKER_GRACE_S="5")
    client = HubClient(http, hub.url)
    job = await client.wait_for(await client.submit(image_workflow()), timeout_s=30)
    assert job["status"] == "succeeded"
    # Make the child die mid-job (the simulator exits on its `crash` fault).
    async with http.post(f"{comfy_url}/wgpu-sim/faults", json={"next": "crash"}) as r:
        assert r.status == 200
    crashed = await client.wait_for(await client.submit(image_workflow(width=40)), timeout_s=30)
    assert crashed["status"] == "succeeded"  # restarted by the worker, run again
    assert crashed["attempts"] == 2
    assert crashed["history"][0]["error"]["type"] == "comfyui_crashed"
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    log = worker.log_text()
    assert "comfyui: wgpu-sim: ComfyUI API on" in log  # the child's output, prefixed
    assert "ComfyUI exited" in log
    with pytest.raises(aiohttp.ClientConnectionError):  # stopped with the worker
        await sim_json(http, comfy_url, "/system_stats")


async def _busy(http: aiohttp.ClientSession, url: str) -> bool:
    return bool((await sim_json(http, url, "/queue"))["queue_running"])


async def _first_attempt_done(client: HubClient, job_id: str) -> dict[str, Any] | None:
    history = (await client.job(job_id))["history"]
    return history[0] if history else None
