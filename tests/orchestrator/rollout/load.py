"""A steady load on a real hub for rolling-update tests, and what it proves afterwards.

`SteadyLoad` keeps `depth` jobs of `job_s` seconds queued (submitting as they are taken) and
samples `/workers` every `sample_s`: how many of the fleet's workers were busy at each moment.
`check()` then waits for every job to end and returns the outcomes the tests assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.hub.helpers import call
from tests.paths import REPO
from tests.polling import eventually


def sleep_workflow(seconds: float, serial: int) -> dict[str, Any]:
    """A job of `seconds`; `serial` makes each prompt differ (ComfyUI caches repeats)."""
    image = {"width": 8, "height": 8, "batch_size": 1, "color": serial % 0xFFFFFF}
    return {
        "1": {"class_type": "EmptyImage", "inputs": image},
        "2": {
            "class_type": "WgpuSimSleep",
            "inputs": {"seconds": seconds, "steps": 4, "image": ["1", 0]},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "r"}},
    }


def worker_tree(target: Path, marker: str = "", broken: bool = False) -> Path:
    """A copy of this repository's worker layout; `marker` makes another version, `broken` one
    whose worker exits at start."""
    for part in ("wgpu_protocol", "comfyui_sim", "worker_image/comfy_worker"):
        shutil.copytree(
            REPO / part, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    main = target / "worker_image" / "comfy_worker" / "__main__.py"
    text = main.read_text()
    if marker:
        text += f"\n# version marker: {marker}\n"
    if broken:
        text = 'raise SystemExit("this worker version is broken on purpose")\n' + text
    main.write_text(text)
    for path in [target, *target.rglob("*")]:  # readable by the image's unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


async def workers(hub_url: str) -> list[dict[str, Any]]:
    status, body = await call(hub_url, "GET", "/workers")
    assert status == 200, body
    return list(body["workers"])


@dataclass
class LoadResult:
    statuses: Counter[str]
    attempts: Counter[int]  # attempts per succeeded job
    histories: Counter[int]  # history entries per job (1 = ran once)
    min_busy: int
    samples: int
    jobs: int


@dataclass
class SteadyLoad:
    hub_url: str
    fleet: set[str]
    job_s: float = 2.0
    depth: int = 6
    sample_s: float = 0.1
    job_ids: list[str] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    sampling: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._feed()), asyncio.create_task(self._sample())]

    async def _submit(self) -> None:
        workflow = sleep_workflow(self.job_s, len(self.job_ids) + 1)
        body = {"workflow": workflow, "max_attempts": 3}
        status, job = await call(self.hub_url, "POST", "/jobs", body)
        assert status == 201, job
        self.job_ids.append(job["id"])

    async def _feed(self) -> None:
        while True:
            status, listing = await call(self.hub_url, "GET", "/jobs?status=queued&limit=100")
            assert status == 200, listing
            for _ in range(self.depth - len(listing["jobs"])):
                await self._submit()
            await asyncio.sleep(0.2)

    async def _sample(self) -> None:
        while True:
            if self.sampling:
                found = [w for w in await workers(self.hub_url) if w["id"] in self.fleet]
                self.busy.append(sum(1 for w in found if w["status"] == "busy"))
            await asyncio.sleep(self.sample_s)

    async def wait_all_busy(self, within: float = 60.0) -> None:
        async def fleet_workers() -> list[dict[str, Any]]:
            return [w for w in await workers(self.hub_url) if w["id"] in self.fleet]

        await eventually(
            fleet_workers,
            lambda found: (
                len(found) == len(self.fleet) and all(w["status"] == "busy" for w in found)
            ),
            within,
            0.1,
            "the whole fleet busy",
        )

    async def stop_feeding(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self, within: float = 120.0) -> LoadResult:
        """Stop submitting, wait until every job ended, and count what happened."""
        await self.stop_feeding()

        async def every_job() -> list[dict[str, Any]]:
            return [await self._job(job_id) for job_id in self.job_ids]

        jobs = await eventually(
            every_job,
            lambda jobs: all(j["status"] not in ("queued", "running") for j in jobs),
            within,
            0.5,
            "every job ended",
        )
        return LoadResult(
            statuses=Counter(j["status"] for j in jobs),
            attempts=Counter(j["attempts"] for j in jobs if j["status"] == "succeeded"),
            histories=Counter(len(j["history"]) for j in jobs),
            min_busy=min(self.busy) if self.busy else -1,
            samples=len(self.busy),
            jobs=len(jobs),
        )

    async def _job(self, job_id: str) -> dict[str, Any]:
        status, job = await call(self.hub_url, "GET", f"/jobs/{job_id}")
        assert status == 200, job
        return dict(job)
