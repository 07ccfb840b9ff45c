"""The worker in process against a real hub and the ComfyUI simulator, as the worker tests
(and the scheduling and dashboard tests) drive it: its config, running it, and the hub's REST API
as a client sees it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from comfy_worker import Worker, WorkerConfig

from comfyui_sim.png import decode_png
from tests.fixtures.http import sse_events
from tests.fixtures.sim_traffic import RECORDED
from tests.polling import eventually

DEADLINE_S = 15.0

# The input-file workflow (LoadImage -> ImageInvert -> SaveImage) and its recorded PNGs: the
# input, and what real ComfyUI made of it. Used by the worker's and the dashboard's tests.
PNG = (RECORDED / "upload_image_in.png").read_bytes()  # real, with PNG row filters
REAL_INVERTED = decode_png((RECORDED / "upload_image_uploaded_00001_.png").read_bytes())


def invert_workflow(name: str = "in.png") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }


TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "dead"}


def image_workflow(width: int = 64) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 48, "batch_size": 1, "color": 16744448},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "wgpu/test"},
        },
    }


def blob_workflow(size_bytes: int, prefix: str) -> dict[str, Any]:
    """One output of `size_bytes` bytes (the simulator's WgpuSimBlob), named `prefix`*.bin."""
    return {
        "1": {
            "class_type": "WgpuSimBlob",
            "inputs": {"size_bytes": size_bytes, "filename_prefix": prefix, "extension": "bin"},
        }
    }


def fault_workflow(mode: str, after_s: float = 0.0) -> dict[str, Any]:
    workflow = image_workflow()
    workflow["4"] = {
        "class_type": "WgpuSimFault",
        "inputs": {"mode": mode, "after_s": after_s, "image": ["2", 0]},
    }
    return workflow


def worker_config(hub_url: str, comfy_url: str, tmp_path: Path, **overrides: Any) -> WorkerConfig:
    settings: dict[str, Any] = {
        "machine_id": "test",
        "gpu_id": 0,
        "hub_url": "ws" + hub_url.removeprefix("http"),
        "comfyui_url": comfy_url,
        "health_file": tmp_path / "worker-health.json",
        "watchdog_s": 0.5,
        "comfyui_check_s": 0.1,
        "comfyui_lost_s": 0.5,
        "reconnect_max_s": 0.3,
        "ack_timeout_s": 5.0,
        "grace_s": 5.0,
        "progress_interval_s": 0.01,
    }
    settings.update(overrides)
    return WorkerConfig(**settings)


@contextlib.asynccontextmanager
async def running_worker(config: WorkerConfig) -> AsyncIterator[Worker]:
    worker = Worker(config)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), config.grace_s + 5)
        except TimeoutError:
            task.cancel()
            raise


class HubClient:
    """The hub's REST API, as a client uses it."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def submit(self, workflow: dict[str, Any], **fields: Any) -> str:
        async with self.http.post(f"{self.url}/jobs", json={"workflow": workflow, **fields}) as r:
            body = await r.json()
            assert r.status == 201, body
            return str(body["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/jobs/{job_id}") as r:
            assert r.status == 200
            return await r.json()  # type: ignore[no-any-return]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        async with self.http.delete(f"{self.url}/jobs/{job_id}") as r:
            return await r.json()  # type: ignore[no-any-return]

    async def output(self, job_id: str, name: str) -> tuple[bytes, str]:
        async with self.http.get(f"{self.url}/jobs/{job_id}/outputs/{name}") as r:
            assert r.status == 200
            return await r.read(), r.content_type

    async def events(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The job's whole SSE stream, up to and including `done`."""
        async with self.http.get(f"{self.url}/jobs/{job_id}/events") as r:
            return [event async for event in sse_events(r)]

    async def workers(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/workers") as r:
            return (await r.json())["workers"]  # type: ignore[no-any-return]

    async def wait_for(
        self, job_id: str, statuses: set[str] | None = None, timeout_s: float = DEADLINE_S
    ) -> dict[str, Any]:
        """Poll until the job is in one of `statuses` (default: any terminal one)."""
        wanted = statuses or TERMINAL
        return await eventually(
            lambda: self.job(job_id),
            lambda job: job["status"] in wanted,
            timeout_s,
            0.05,
            f"job {job_id} in {sorted(wanted)}",
        )

    async def wait_worker(self, status: str, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        workers = await eventually(
            self.workers,
            lambda found: bool(found) and found[0]["status"] == status,
            timeout_s,
            0.05,
            f"a worker {status!r}",
        )
        return workers[0]


async def sim_json(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with http.get(url + path) as r:
        return await r.json()


async def until(probe: Any, what: str, timeout_s: float = DEADLINE_S) -> Any:
    return await eventually(probe, bool, timeout_s, 0.05, what)


async def only_history(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    history = await sim_json(http, url, "/history")
    return next(iter(history.values())) if history else None


async def acks_reach(worker: Worker, count: int) -> None:
    """The hub's acks arrive just after the job shows as finished: wait for them, then check
    that no more came than expected."""

    async def reached() -> bool:
        return worker.results_recorded >= count

    await until(reached, f"{count} acked result(s)")
    assert worker.results_recorded == count
