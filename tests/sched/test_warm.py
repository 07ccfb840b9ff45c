"""What is warm comes from the worker: after each job it reports the models it ran most recently
per loader kind (WARM_MODELS of them, as its ComfyUI keeps), and the hub places by that report.
Real hub, real Redis, real workers and simulators."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from bench.sched import txt2img
from comfyui_sim.server import RunningSim
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.polling import eventually
from tests.sched.fleet import ENDED, fleet
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


async def test_a_job_nobody_has_loaded_goes_to_the_gpu_whose_models_the_queue_needs_least(
    hub_factory: HubFactory, sim_factory: SimFactory, tmp_path: Path
) -> None:
    # alice may hold one GPU (MAX_RUNNING_PER_KEY=1): while her long job runs, her jobs for `a`
    # wait in the queue although GPU 0, which has `a` loaded, is idle.
    hub = await hub_factory(
        api_keys=("alice:key-alice", "bob:key-bob"), worker_token="wt", max_running_per_key=1
    )
    ckpts = {"checkpoints": ["a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors"]}
    sims = [await sim_factory(models=ckpts) for _ in range(3)]
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": "key-alice"}) as alice_http,
        aiohttp.ClientSession(headers={"X-API-Key": "key-bob"}) as bob_http,
        fleet(hub, sims, tmp_path, api_key="key-bob", worker_token="wt"),
    ):
        alice, bob = HubClient(alice_http, hub.url), HubClient(bob_http, hub.url)
        for gpu, ckpt in ((0, "a.safetensors"), (1, "b.safetensors")):
            warmed = await bob.submit(txt2img(ckpt), constraints={"gpu": gpu})
            assert (await bob.wait_for(warmed, ENDED))["status"] == "succeeded"
        long_job = await alice.submit(txt2img("d.safetensors", steps=2000), constraints={"gpu": 2})
        await alice.wait_for(long_job, {"assigned", "running"})
        waiting = [await alice.submit(txt2img("a.safetensors", seed=i)) for i in range(5)]
        workers = {w["id"]: w for w in await bob.workers()}
        assert workers["m-gpu0"]["warm"] == {"checkpoints": ["a.safetensors"]}
        assert workers["m-gpu1"]["warm"] == {"checkpoints": ["b.safetensors"]}
        assert workers["m-gpu0"]["status"] == workers["m-gpu1"]["status"] == "idle"
        assert [(await alice.job(j))["status"] for j in waiting] == ["queued"] * 5
        # Neither idle GPU has `c`: the one whose `b` nobody needs loads it, not GPU 0.
        cold = await bob.wait_for(await bob.submit(txt2img("c.safetensors")), ENDED)
        assert cold["status"] == "succeeded" and cold["worker_id"] == "m-gpu1", cold
        workers = {w["id"]: w for w in await bob.workers()}
        assert workers["m-gpu0"]["warm"] == {"checkpoints": ["a.safetensors"]}  # kept
        await alice.cancel(long_job)
        for job_id in waiting:  # then alice's jobs run where `a` is loaded
            job = await alice.wait_for(job_id, ENDED)
            assert job["status"] == "succeeded"
