"""`assigned` while a job waits in its ComfyUI's queue, `running` from ComfyUI's
`execution_start` for its prompt: the worker (in process) against a real hub and the simulator,
whose WgpuSimBusy node ignores interrupts as a long node in stock ComfyUI does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfy_worker import job_runner

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.polling import eventually
from tests.worker.harness import HubClient, image_workflow, running_worker, sim_json, worker_config

pytestmark = pytest.mark.redis


def busy_workflow(seconds: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "WgpuSimBusy", "inputs": {"seconds": seconds}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


async def occupy(http: aiohttp.ClientSession, sim_url: str, seconds: float) -> str:
    """Another client's long prompt, running in the simulator: ours must queue behind it."""
    body = {"prompt": busy_workflow(seconds), "client_id": "someone-else"}
    async with http.post(f"{sim_url}/prompt", json=body) as r:
        prompt_id = str((await r.json())["prompt_id"])
    await running_in_comfyui(http, sim_url, prompt_id)
    return prompt_id


async def queue_ids(http: aiohttp.ClientSession, sim_url: str) -> tuple[list[str], list[str]]:
    queue = await sim_json(http, sim_url, "/queue")
    return [q[1] for q in queue["queue_running"]], [q[1] for q in queue["queue_pending"]]


def _width(graph: Any) -> Any:
    return graph.get("1", {}).get("inputs", {}).get("width") if isinstance(graph, dict) else None


async def running_in_comfyui(http: aiohttp.ClientSession, sim_url: str, prompt_id: str) -> None:
    await eventually(
        lambda: queue_ids(http, sim_url),
        lambda ids: prompt_id in ids[0],
        within=10.0,
        what=f"prompt {prompt_id} running in ComfyUI",
    )


async def waiting_in_comfyui(
    http: aiohttp.ClientSession, client: HubClient, sim_url: str, job_id: str, width: int = 64
) -> dict[str, Any]:
    """The job once its prompt (told by the image `width` of its graph) waits in ComfyUI's
    queue: pending, not running."""
    await eventually(
        lambda: sim_json(http, sim_url, "/queue"),
        lambda queue: any(_width(entry[2]) == width for entry in queue["queue_pending"]),
        within=10.0,
        what="the job's prompt pending in ComfyUI's queue",
    )
    return await client.job(job_id)


async def prompt_ended_at(http: aiohttp.ClientSession, sim_url: str, width: int | None) -> float:
    """When (unix seconds, ComfyUI's message timestamps) the prompt whose graph has this image
    width (None: the busy prompt) ended."""
    history = await sim_json(http, sim_url, "/history")
    (entry,) = [e for e in history.values() if _width(e["prompt"][2]) == width]
    return max(data["timestamp"] for _, data in entry["status"]["messages"]) / 1000


def statuses(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    seen = [data["status"] for kind, data in events if kind == "status"]
    return [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]


async def test_after_an_unhonoured_cancel_the_next_job_is_assigned_until_it_executes(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's case: a cancel ComfyUI cannot honour (a long node without callbacks); the
    worker gives up waiting and takes the next job, which then waits in ComfyUI's queue."""
    monkeypatch.setattr(job_runner, "INTERRUPT_WAIT_S", 0.3)  # instead of 10 s
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        stuck = await client.submit(busy_workflow(3.0))
        await client.wait_for(stuck, {"running"})
        assert (await client.cancel(stuck))["status"] == "cancelled"
        following = await client.submit(image_workflow())
        stream = asyncio.create_task(client.events(following))
        waiting = await waiting_in_comfyui(http, client, sim.url, following)
        running_ids, _ = await queue_ids(http, sim.url)
        assert running_ids, "the cancelled prompt ended before the check: make it longer"
        # Read while the cancelled prompt still ran: the next job is assigned, not running.
        assert waiting["status"] == "assigned" and waiting["running_at"] is None, waiting
        done = await client.wait_for(following)
        events = await asyncio.wait_for(stream, 15)
        busy_ended = await prompt_ended_at(http, sim.url, None)
    assert done["status"] == "succeeded" and done["running_at"] > done["started_at"]
    # Claimed while the cancelled prompt still ran, running only once ComfyUI started it.
    assert done["started_at"] < busy_ended <= done["running_at"] + 0.05, (done, busy_ended)
    assert statuses(events) == ["queued", "assigned", "running", "succeeded"], events
    running = next(d for k, d in events if k == "status" and d["status"] == "running")
    assert running["prompt_id"] and running["worker_id"] == done["worker_id"]


async def test_a_job_waiting_in_comfyuis_queue_shows_assigned_in_json_sse_and_workers(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        await client.wait_worker("idle")
        other = await occupy(http, sim.url, 2.0)
        job_id = await client.submit(image_workflow())
        stream = asyncio.create_task(client.events(job_id))
        waiting = await waiting_in_comfyui(http, client, sim.url, job_id)
        (tile,) = await client.workers()
        still_busy = other in (await queue_ids(http, sim.url))[0]
        assert still_busy, "the other prompt ended before the check: make it longer"
        assert waiting["status"] == "assigned"
        assert tile["current_job"] == job_id and tile["current_job_status"] == "assigned"
        done = await client.wait_for(job_id)
        events = await asyncio.wait_for(stream, 15)
        busy_ended = await prompt_ended_at(http, sim.url, None)
    assert done["status"] == "succeeded" and len(done["outputs"]) == 1
    assert done["started_at"] < busy_ended <= done["running_at"] + 0.05, (done, busy_ended)
    assert statuses(events) == ["queued", "assigned", "running", "succeeded"]


async def test_cancel_and_timeout_of_an_assigned_job_never_run_it(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Both end the job while its prompt waits in ComfyUI's queue: the worker deletes the
    pending prompt (it never runs) and is free for the next job."""
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        await client.wait_worker("idle")
        await occupy(http, sim.url, 3.0)
        cancelled = await client.submit(image_workflow())
        assert (await waiting_in_comfyui(http, client, sim.url, cancelled))["status"] == "assigned"
        assert (await client.cancel(cancelled))["status"] == "cancelled"
        timed = await client.submit(image_workflow(72), timeout_s=0.5)
        assert (await waiting_in_comfyui(http, client, sim.url, timed, 72))["status"] == "assigned"
        ended = await client.wait_for(timed)
        assert ended["status"] == "timed_out" and ended["error"]["type"] == "timeout"
        assert ended["running_at"] is None
        after = await client.submit(image_workflow())
        assert (await client.wait_for(after))["status"] == "succeeded"
        history = await sim_json(http, sim.url, "/history")
    # Only the other client's prompt and the last job ran: the two ended ones never did.
    assert len(history) == 2, list(history)
    final = await client.job(cancelled)
    assert final["status"] == "cancelled" and final["running_at"] is None
