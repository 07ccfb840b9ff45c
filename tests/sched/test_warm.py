"""What is warm comes from the worker: after each job it reports the models it ran most recently
per loader kind (WARM_MODELS of them, as its ComfyUI keeps), and the hub places by that report.
Real hub, real Redis, real workers and simulators."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from comfyui_sim.server import RunningSim
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.sched.test_system import ENDED, eventually, fleet, txt2img
from tests.worker.harness import HubClient

pytestmark = pytest.mark.redis


async def sim_loaded(http: aiohttp.ClientSession, sim: RunningSim) -> dict[str, set[str]]:
    """What the simulator really holds in VRAM, per folder."""
    async with http.get(f"{sim.url}/wgpu-sim/models") as response:
        loaded = (await response.json())["loaded"]
    return {folder: set(files) for folder, files in loaded.items() if files}


async def test_the_warm_set_the_worker_reports_is_what_its_comfyui_holds(
    hub_factory: HubFactory, sim_factory: SimFactory, tmp_path: Path
) -> None:
    hub = await hub_factory()
    ckpts = ["a.safetensors", "b.safetensors", "c.safetensors"]
    sim = await sim_factory(models={"checkpoints": ckpts}, vram_models=2)
    async with aiohttp.ClientSession() as http, fleet(hub, [sim], tmp_path, warm_models=2):
        client = HubClient(http, hub.url)
        seen = []
        for i, ckpt in enumerate(
            ["a.safetensors", "b.safetensors", "c.safetensors", "a.safetensors"]
        ):
            job = await client.wait_for(await client.submit(txt2img(ckpt, seed=i)), ENDED)
            assert job["status"] == "succeeded", job
            (worker,) = await client.workers()
            reported = {folder: set(files) for folder, files in worker["warm"].items()}
            assert reported == await sim_loaded(http, sim)
            seen.append(reported["checkpoints"])
        # Two kept per kind, the least recently used evicted: the report follows the simulator.
        assert seen == [
            {"a.safetensors"},
            {"a.safetensors", "b.safetensors"},
            {"b.safetensors", "c.safetensors"},
            {"c.safetensors", "a.safetensors"},
        ]


async def test_a_restarted_comfyui_is_reported_cold(
    hub_factory: HubFactory, sim_factory: SimFactory, tmp_path: Path
) -> None:
    hub = await hub_factory()
    models = {"checkpoints": ["a.safetensors"]}
    sim = await sim_factory(models=models)
    async with aiohttp.ClientSession() as http, fleet(hub, [sim], tmp_path):
        client = HubClient(http, hub.url)
        job = await client.wait_for(await client.submit(txt2img("a.safetensors")), ENDED)
        assert job["status"] == "succeeded"
        assert (await client.workers())[0]["warm"] == {"checkpoints": ["a.safetensors"]}
        await sim.close()  # ComfyUI restarts: same port, nothing loaded
        await eventually(client.workers, lambda ws: ws[0]["status"] != "idle")
        restarted = await sim_factory(models=models, port=sim.port)
        await eventually(
            client.workers, lambda ws: ws[0]["status"] == "idle" and ws[0]["warm"] == {}
        )
        assert await sim_loaded(http, restarted) == {}
