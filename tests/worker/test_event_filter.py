"""The worker's ComfyUI event socket hands a job only the events of its own prompt.

Another client of the same ComfyUI, or a prompt the worker itself gave up on, shares the
socket's client id and so its events: they must not reach this job (they would end it early or
move its progress). Real simulator, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiohttp
from comfy_worker.comfy_client import ComfyClient, ComfyEvents
from comfy_worker.job_runner import END_EVENTS

from comfyui_sim.server import RunningSim


def _workflow(width: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "wgpu/filter"},
        },
    }


def _is_last(kind: str, data: dict[str, Any]) -> bool:
    """ComfyUI ends a run with `executing` for node null, after its end event."""
    return kind == "executing" and data.get("node") is None


async def _until_end(queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    async with asyncio.timeout(10):
        while not seen or not _is_last(*seen[-1]):
            seen.append(await queue.get())
    return seen


async def test_only_the_subscribed_prompts_events_arrive(sim: RunningSim) -> None:
    async with aiohttp.ClientSession() as http:
        client = ComfyClient(http, sim.url)
        events = ComfyEvents(http, sim.url, client_id=uuid.uuid4().hex)
        reader = asyncio.create_task(events.run())
        try:
            assert await events.wait_connected(5.0)
            mine, other = uuid.uuid4().hex, uuid.uuid4().hex
            queue = events.subscribe(mine)
            # The other prompt runs first on the same socket; a witness subscription proves its
            # events were delivered (to it) before ours even started.
            witness = events.subscribe(other)
            await client.submit(_workflow(16), events.client_id, other)
            await client.submit(_workflow(24), events.client_id, mine)
            theirs = await _until_end(witness)
            ours = await _until_end(queue)
            assert [k for k, _ in theirs if k in END_EVENTS] == ["execution_success"]
            assert [k for k, _ in ours if k in END_EVENTS] == ["execution_success"]
            assert {data.get("prompt_id") for _, data in ours} == {mine}
            assert {data.get("prompt_id") for _, data in theirs} == {other}
            assert queue.empty()

            # Unsubscribed (a prompt given up on): its events go nowhere, not to the next job.
            events.unsubscribe(other)
            stale = uuid.uuid4().hex
            await client.submit(_workflow(16), events.client_id, stale)
            latest = uuid.uuid4().hex
            queue = events.subscribe(latest)
            await client.submit(_workflow(24), events.client_id, latest)
            ours = await _until_end(queue)
            assert {data.get("prompt_id") for _, data in ours} == {latest}
            assert [k for k, _ in ours].count("execution_start") == 1
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
