"""`POST /jobs?wait=S`: the one-call form serverless users expect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.worker.harness import image_workflow, running_worker, worker_config


def sleep_workflow(seconds: float) -> dict[str, Any]:
    workflow = image_workflow()
    workflow["4"] = {"class_type": "WgpuSimSleep", "inputs": {"seconds": seconds, "steps": 4}}
    workflow["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    return workflow


async def test_wait_answers_with_the_finished_job_or_202_as_it_stands(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        async with http.post(f"{hub.url}/jobs?wait=20", json={"workflow": image_workflow()}) as r:
            done = await r.json()
        assert r.status == 200, done
        assert done["status"] == "succeeded" and len(done["outputs"]) == 1
        started = time.monotonic()
        body = {"workflow": sleep_workflow(3.0)}
        async with http.post(f"{hub.url}/jobs?wait=0.5", json=body) as r:
            pending = await r.json()
        waited = time.monotonic() - started
        assert r.status == 202, pending
        assert pending["status"] in ("queued", "running") and pending["finished_at"] is None
        assert 0.5 <= waited < 2.5
    for bad in ("301", "-1", "soon"):
        async with http.post(f"{hub.url}/jobs?wait={bad}", json=body) as r:
            answer = await r.json()
        assert r.status == 400 and "wait" in answer["error"]
