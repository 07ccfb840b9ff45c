"""The worker, in process, against a real hub (on real Redis) and the ComfyUI simulator.

Each test drives the system from the outside: jobs go in through the hub's REST API and the
test waits for what a client would see. Timings are shortened through configuration.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp

from redis_api.tasks import stop_tasks
from tests.fixtures.hub import HubFactory, HubProcess
from tests.fixtures.sim import SimFactory, free_port
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


async def test_success_downloads_every_output(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)) as worker:
        job_id = await client.submit(image_workflow(width=80))
        job = await client.wait_for(job_id)
        assert job["status"] == "succeeded", job
        assert job["worker_id"] == "test-gpu0"
        assert job["attempts"] == 1
        assert len(job["outputs"]) == 1
        output = job["outputs"][0]
        data, content_type = await client.output(job_id, output["name"])
        assert data.startswith(b"\x89PNG") and content_type == "image/png"
        assert output["size"] == len(data)
        # The bytes are the very file ComfyUI wrote (read back through its own /view).
        history = await sim_json(http, sim.url, "/history")
        (entry,) = history.values()
        image = entry["outputs"]["3"]["images"][0]
        params = {"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"}
        async with http.get(sim.url + "/view", params=params) as r:
            assert await r.read() == data
        # Then the worker is idle and takes the next job.
        second = await client.wait_for(await client.submit(image_workflow(width=32)))
        assert second["status"] == "succeeded"
        await acks_reach(worker, 2)


async def test_progress_reaches_the_hub_in_order(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory(node_time_s=0.05)
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job_id = await client.submit(image_workflow())
        # Followed live: progress is live state, not stored history (redis_api/progress.py).
        events = await client.events(job_id)
        assert (await client.wait_for(job_id))["status"] == "succeeded"
    progress = [data for kind, data in events if kind == "progress"]
    assert len(progress) >= 2
    values = [p["value"] for p in progress]
    assert values == sorted(values)
    assert progress[-1]["max"] == 3 and progress[-1]["value"] == 3
    assert events[-1][0] == "done"


async def test_progress_within_a_long_node_is_throttled(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    workflow = image_workflow()
    # 400 progress events in 0.5 s from ComfyUI; at most ~20 a second may reach the hub.
    workflow["2"] = {
        "class_type": "WgpuSimSleep",
        "inputs": {"seconds": 0.5, "steps": 400, "image": ["1", 0]},
    }
    config = worker_config(hub.url, sim.url, tmp_path, progress_interval_s=0.05)
    async with running_worker(config):
        job_id = await client.submit(workflow)
        events = await client.events(job_id)  # live: progress is not stored history
        job = await client.wait_for(job_id)
        assert job["status"] == "succeeded"
    values = [data["value"] for kind, data in events if kind == "progress"]
    ran_s = job["finished_at"] - job["started_at"]
    assert 3 <= len(values) <= ran_s / 0.05 + 4  # one per interval, plus the edges
    assert len(values) < 100  # far fewer than the 400 steps ComfyUI reported
    assert values == sorted(values)
    # Steps inside node 2 show as a fraction of it; it weighs its 400 steps (node 1 weighs 1).
    assert any(1 < v < 401 for v in values)


async def test_validation_error_fails_at_once_naming_node_and_input(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    workflow = image_workflow()
    del workflow["1"]["inputs"]["width"]
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job = await client.wait_for(await client.submit(workflow, max_attempts=3))
    assert job["status"] == "failed"
    assert job["attempts"] == 1  # not retried: the workflow itself is wrong
    error = job["error"]
    assert error["type"] == "validation_error"
    assert error["node_id"] == "1"
    assert "node 1 (EmptyImage)" in error["message"] and "'width'" in error["message"]


async def test_execution_error_reports_node_type_and_message(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job = await client.wait_for(await client.submit(fault_workflow("execution_error")))
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    error = job["error"]
    assert error["type"] == "execution_error"
    assert error["node_id"] == "4"
    assert "WgpuSimFault" in error["message"] and "injected" in error["message"]


async def test_out_of_memory_is_its_own_error_type(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job = await client.wait_for(await client.submit(fault_workflow("oom"), max_attempts=2))
        # Retryable: the hub ran it again (on the only worker) before giving up.
        assert job["status"] == "dead"
        assert job["attempts"] == 2
        assert job["error"]["type"] == "out_of_memory"
        assert job["error"]["node_id"] == "4"
        assert [h["error"]["type"] for h in job["history"]] == ["out_of_memory"] * 2
        # And the worker still works afterwards.
        after = await client.wait_for(await client.submit(image_workflow()))
        assert after["status"] == "succeeded"


async def test_cancel_interrupts_the_prompt_in_comfyui(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)) as worker:
        job_id = await client.submit(fault_workflow("hang"))
        await client.wait_for(job_id, {"running"})
        await until(lambda: _sim_busy(http, sim.url), "the prompt to run in ComfyUI")
        await client.cancel(job_id)
        assert (await client.wait_for(job_id))["status"] == "cancelled"
        # The hanging prompt was interrupted in ComfyUI: it ends there as interrupted.
        entry = await until(lambda: only_history(http, sim.url), "the prompt to end")
        kinds = [kind for kind, _ in entry["status"]["messages"]]
        assert "execution_interrupted" in kinds
        assert "execution_success" not in kinds
        # The worker is free again.
        after = await client.wait_for(await client.submit(image_workflow()))
        assert after["status"] == "succeeded"
        await acks_reach(worker, 1)


async def test_comfyui_down_at_start_then_up(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    port = free_port()
    client = HubClient(http, hub.url)
    config = worker_config(hub.url, f"http://127.0.0.1:{port}", tmp_path)
    async with running_worker(config):
        worker_row = await client.wait_worker("unavailable")
        assert worker_row["id"] == "test-gpu0"
        job_id = await client.submit(image_workflow())
        # No ComfyUI: the job is not taken, across heartbeats that say ComfyUI is down.
        submitted_at = time.time()

        async def heartbeats_since_submit() -> dict[str, Any] | None:
            row = (await client.workers())[0]
            return row if (row["last_heartbeat"] or 0) > submitted_at + 0.6 else None

        row = await until(heartbeats_since_submit, "heartbeats while ComfyUI is down")
        assert row["status"] == "unavailable" and row["comfyui_ok"] is False
        assert (await client.job(job_id))["status"] == "queued"
        await sim_factory(port=port)
        job = await client.wait_for(job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1


async def test_silent_websocket_is_caught_by_the_watchdog(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path, watchdog_s=0.5)):
        started = time.monotonic()
        job = await client.wait_for(await client.submit(fault_workflow("silent_ws")))
        elapsed = time.monotonic() - started
    assert job["status"] == "succeeded"
    assert [o["name"] for o in job["outputs"]] == ["test_00001_.png"]
    assert elapsed < 5.0  # found by polling /history, not by some long timeout


async def test_hub_killed_mid_job_and_restarted_result_arrives_once(
    redis_url: str, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim = await sim_factory(node_time_s=0.3)  # about 1 s per job: time to kill the hub
    hub = HubProcess(redis_url, free_port(), tmp_path)
    await hub.start()
    client = HubClient(http, hub.url)
    try:
        async with running_worker(worker_config(hub.url, sim.url, tmp_path)) as worker:
            job_id = await client.submit(image_workflow())
            await client.wait_for(job_id, {"running"})
            hub.kill()
            # The run ends in ComfyUI while no hub is there: the result waits in the worker.
            await until(lambda: only_history(http, sim.url), "the run to finish")
            assert worker.results_recorded == 0
            await hub.start()
            job = await client.wait_for(job_id)
            await acks_reach(worker, 1)
            events = await client.events(job_id)
            data, _ = await client.output(job_id, job["outputs"][0]["name"])
    finally:
        hub.kill()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1 and len(job["history"]) == 1
    assert len(job["outputs"]) == 1
    assert data.startswith(b"\x89PNG")
    assert [kind for kind, _ in events].count("done") == 1
    assert len(await sim_json(http, sim.url, "/history")) == 1  # ComfyUI ran it once


async def test_job_given_away_while_cut_off_is_stopped_and_not_reported(
    redis_url: str,
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim = await sim_factory()
    hub = HubProcess(redis_url, free_port(), tmp_path, lease_s=1.0)
    other_hub = await hub_factory()  # same Redis: its reaper requeues the expired lease
    await hub.start()
    client = HubClient(http, other_hub.url)
    try:
        async with running_worker(worker_config(hub.url, sim.url, tmp_path)) as worker:
            job_id = await client.submit(fault_workflow("hang"))
            await client.wait_for(job_id, {"running"})
            first_prompt = await until(lambda: _running_prompt(http, sim.url), "the prompt")
            hub.kill()
            await client.wait_for(job_id, {"queued"})  # lease expired: given away
            await hub.start()
            # The worker learns it no longer owns the job: it stops that prompt in ComfyUI...
            history = await until(lambda: _history_of(http, sim.url, first_prompt), "interrupt")
            assert "execution_interrupted" in [kind for kind, _ in history["status"]["messages"]]
            # ...reports nothing about it, and takes the job again as a new attempt.
            job = await client.wait_for(job_id, {"running"})
            assert job["attempts"] == 2
            assert [h["outcome"] for h in job["history"]] == ["lease_expired"]
            assert worker.results_recorded == 0
            await client.cancel(job_id)
    finally:
        hub.kill()


async def test_the_worker_enforces_the_timeout_itself_and_stops_the_prompt(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The worker's own deadline: with the hub's reaper (its timeout path, tested in
    tests/hub/test_failures.py) stopped, the worker interrupts the prompt at timeout_s and
    fails the job, not retryable, with error type `timeout`: one outcome for this path."""
    hub = await hub_factory(reap_interval_s=3600)
    # The reaper wakes for the job's deadline whatever its interval: no reaper at all here.
    await stop_tasks([t for t in hub.hub._tasks if t.get_name() == "hub-maintenance"])
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job_id = await client.submit(fault_workflow("hang"), timeout_s=1.0, max_attempts=3)
        job = await client.wait_for(job_id)
        # One outcome, whether the worker's deadline or the hub's reaper noticed first.
        assert job["status"] == "timed_out" and job["attempts"] == 1, job
        assert job["error"]["type"] == "timeout" and "timeout of 1 s" in job["error"]["message"]
        entry = await until(lambda: only_history(http, sim.url), "the prompt to be stopped")
        assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]
        after = await client.wait_for(await client.submit(image_workflow()))
        assert after["status"] == "succeeded"


async def test_worker_token_is_sent_and_required(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory(worker_token="s3cret")
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    wrong = worker_config(hub.url, sim.url, tmp_path, worker_token="wrong", machine_id="bad")
    async with running_worker(wrong) as refused:

        async def attempted() -> bool:
            return refused.hub_link.attempts >= 3

        await until(attempted, "a few connection attempts")
        assert refused.hub_link.connections == 0 and await client.workers() == []
    right = worker_config(hub.url, sim.url, tmp_path, worker_token="s3cret")
    async with running_worker(right):
        job = await client.wait_for(await client.submit(image_workflow()))
        assert job["status"] == "succeeded" and job["worker_id"] == "test-gpu0"


async def _sim_busy(http: aiohttp.ClientSession, url: str) -> bool:
    queue = await sim_json(http, url, "/queue")
    return bool(queue["queue_running"])


async def _running_prompt(http: aiohttp.ClientSession, url: str) -> str | None:
    running = (await sim_json(http, url, "/queue"))["queue_running"]
    return str(running[0][1]) if running else None


async def _history_of(
    http: aiohttp.ClientSession, url: str, prompt_id: str
) -> dict[str, Any] | None:
    return (await sim_json(http, url, f"/history/{prompt_id}")).get(prompt_id)  # type: ignore[no-any-return]
