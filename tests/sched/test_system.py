"""Model-aware scheduling end to end: a real hub on real Redis, real workers (in process) and
ComfyUI simulators with different model folders, driven through the REST API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from bench.sched import txt2img
from comfyui_sim.server import RunningSim
from orchestrator.cli import app
from redis_api.store import JobSpec, Store
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.polling import eventually
from tests.sched.fleet import ENDED, SETTLE_S, fleet
from tests.worker.harness import HubClient
from wgpu_protocol import models

pytestmark = pytest.mark.redis


async def sim_loads(http: aiohttp.ClientSession, sim: RunningSim) -> int:
    async with http.get(f"{sim.url}/wgpu-sim/models") as response:
        return int((await response.json())["loads"])


async def test_jobs_go_to_the_gpu_that_has_their_checkpoint(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim_a = await sim_factory(models={"checkpoints": ["a.safetensors"]})
    sim_b = await sim_factory(models={"checkpoints": ["b.safetensors"]})
    client = HubClient(http, hub.url)
    async with fleet(hub, [sim_a, sim_b], tmp_path):
        ids = [
            (ckpt, await client.submit(txt2img(ckpt, seed=i)))
            for i, ckpt in enumerate(["a.safetensors", "b.safetensors"] * 4)
        ]
        for ckpt, job_id in ids:
            job = await client.wait_for(job_id, ENDED)
            assert job["status"] == "succeeded", job
            assert job["requires"] == {"checkpoints": [ckpt]}
            assert job["worker_id"] == ("m-gpu0" if ckpt == "a.safetensors" else "m-gpu1")
            assert [h["outcome"] for h in job["history"]] == ["succeeded"]  # no failed attempt
        workers = {w["id"]: w for w in await client.workers()}
        assert workers["m-gpu0"]["models"]["checkpoints"] == ["a.safetensors"]
        assert workers["m-gpu1"]["warm"] == {"checkpoints": ["b.safetensors"]}


async def test_a_model_added_to_a_simulator_is_used_without_a_restart(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory(models={"checkpoints": ["a.safetensors"]})
    client = HubClient(http, hub.url)
    async with fleet(hub, [sim], tmp_path, model_scan_s=0.2):
        job_id = await client.submit(txt2img("new.safetensors"))
        job = await eventually(lambda: client.job(job_id), lambda j: j["waiting_reason"], SETTLE_S)
        assert job["status"] == "queued"
        assert job["waiting_reason"] == "no connected worker has checkpoints/new.safetensors"
        async with http.post(
            f"{sim.url}/wgpu-sim/models", json={"add": {"checkpoints": ["new.safetensors"]}}
        ) as response:
            assert response.status == 200
        job = await client.wait_for(job_id, ENDED)
        assert job["status"] == "succeeded" and job["worker_id"] == "m-gpu0"


async def test_a_job_no_worker_can_take_says_why_and_ends_unschedulable(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory(models={"checkpoints": ["a.safetensors"]})
    client = HubClient(http, hub.url)
    async with fleet(hub, [sim], tmp_path):
        job_id = await client.submit(
            txt2img("sdxl_base.safetensors"),
            requires={"loras": ["x.safetensors"]},
            schedule_timeout_s=1.5,
        )
        why = "no connected worker has checkpoints/sdxl_base.safetensors, loras/x.safetensors"
        # In the job's JSON, in `wgpu jobs` and on its event stream.
        job = await client.job(job_id)
        assert job["status"] == "queued" and job["waiting_reason"] == why
        assert job["requires"] == {
            "checkpoints": ["sdxl_base.safetensors"],
            "loras": ["x.safetensors"],
        }
        listed = await asyncio.to_thread(
            CliRunner().invoke, app, ["jobs", "--hub-url", hub.url, "--json"]
        )
        assert listed.exit_code == 0, listed.output
        assert json.loads(listed.output)["jobs"][0]["waiting_reason"] == why
        events = await client.events(job_id)
        assert events[0] == ("status", {"status": "queued", "waiting_reason": why})
        assert events[-1][0] == "done" and events[-1][1]["status"] == "unschedulable"
        job = await client.job(job_id)
        assert job["error"]["type"] == "unschedulable"
        assert job["error"]["message"].startswith(why)


async def test_a_job_not_started_within_its_queue_timeout_expires(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    busy = {
        "1": {"class_type": "WgpuSimSleep", "inputs": {"seconds": 3.0, "steps": 3}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}},
    }
    async with fleet(hub, [sim], tmp_path):
        long_job = await client.submit(busy)
        await client.wait_for(long_job, {"running"})
        waiting = await client.submit(
            txt2img("v1-5-pruned-emaonly.safetensors"), queue_timeout_s=0.5
        )
        job = await client.wait_for(waiting, ENDED)
        assert job["status"] == "expired" and job["attempts"] == 0
        assert job["queue_timeout_s"] == 0.5
        assert (await client.wait_for(long_job, ENDED))["status"] == "succeeded"


async def test_affinity_sends_each_job_to_the_gpu_that_has_its_model_loaded(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory(affinity_wait_ms=2000)
    both = {"checkpoints": ["a.safetensors", "b.safetensors"]}
    sims = [await sim_factory(models=both), await sim_factory(models=both)]
    client = HubClient(http, hub.url)
    async with fleet(hub, sims, tmp_path):
        # Warm GPU 0 with a and GPU 1 with b.
        for gpu, ckpt in ((0, "a.safetensors"), (1, "b.safetensors")):
            job_id = await client.submit(txt2img(ckpt), constraints={"gpu": gpu})
            assert (await client.wait_for(job_id, ENDED))["status"] == "succeeded"
        assert [await sim_loads(http, s) for s in sims] == [1, 1]
        # Both GPUs idle: each unpinned job goes where its model is loaded, no reload.
        for i, ckpt in enumerate(["b.safetensors", "a.safetensors"] * 3):
            job = await client.wait_for(await client.submit(txt2img(ckpt, seed=10 + i)), ENDED)
            assert job["worker_id"] == ("m-gpu0" if ckpt == "a.safetensors" else "m-gpu1")
        assert [await sim_loads(http, s) for s in sims] == [1, 1]


async def test_a_job_whose_model_nobody_has_loaded_does_not_starve(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory(affinity_wait_ms=2000)
    sim = await sim_factory(
        models={"checkpoints": ["a.safetensors", "b.safetensors"]}, node_time_s=0.02
    )
    client = HubClient(http, hub.url)
    async with fleet(hub, [sim], tmp_path):
        # `a` is loaded and the GPU busy when a job for `b` and many for `a` arrive.
        first = await client.submit(txt2img("a.safetensors", steps=100))
        await client.wait_for(first, {"running"})
        cold = await client.submit(txt2img("b.safetensors", seed=99))
        warm = [await client.submit(txt2img("a.safetensors", seed=i)) for i in range(40)]
        assert (await client.job(cold))["status"] == "queued"
        cold_job = await client.wait_for(cold, ENDED, timeout_s=60)
        assert cold_job["status"] == "succeeded"
        ahead = 0
        for job_id in warm:
            job = await client.job(job_id)
            if job["started_at"] is not None and job["started_at"] < cold_job["started_at"]:
                ahead += 1
        # Warm jobs go first, but only for about affinity_wait_ms; then the older cold job runs.
        assert 0 < ahead < len(warm), ahead
        for job_id in warm:
            await client.wait_for(job_id, ENDED, timeout_s=60)


async def test_one_key_with_many_jobs_does_not_delay_another_keys_job(
    hub_factory: HubFactory, sim_factory: SimFactory, tmp_path: Path
) -> None:
    # Owners are API key names: alice and bob submit through REST with their own keys.
    hub = await hub_factory(api_keys=("alice:key-alice", "bob:key-bob"), worker_token="wt")
    sims = [await sim_factory(node_time_s=0.05), await sim_factory(node_time_s=0.05)]
    quick = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f"}},
    }
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": "key-alice"}) as alice_http,
        aiohttp.ClientSession(headers={"X-API-Key": "key-bob"}) as bob_http,
    ):
        alice, bob = HubClient(alice_http, hub.url), HubClient(bob_http, hub.url)
        alice_ids: list[str] = []
        for _batch in range(6):  # 300 jobs queued before any worker connects
            alice_ids += await asyncio.gather(*(alice.submit(quick) for _ in range(50)))
        async with fleet(hub, sims, tmp_path, api_key="key-alice", busy_ok=True, worker_token="wt"):
            bob_id = await bob.submit(quick)  # alice's backlog is being served
            bob_job = await bob.wait_for(bob_id, ENDED)
            assert bob_job["status"] == "succeeded"
            assert bob_job["owner"] == "bob"
            # bob cannot see alice's jobs (per-key visibility): the owner really came from the key
            async with bob_http.get(f"{hub.url}/jobs/{alice_ids[0]}") as response:
                assert response.status == 404
            started_between = started_after = 0
            for job_id in alice_ids:
                job = await alice.job(job_id)
                assert job["owner"] == "alice"
                started = job["started_at"]
                if started is None or started > bob_job["started_at"]:
                    started_after += 1
                elif started > bob_job["created_at"]:
                    started_between += 1
            # At most one job per GPU started between bob's submit and bob's start, while most
            # of alice's backlog was still waiting (FIFO would have run all of it first).
            assert started_between <= len(sims), started_between
            assert started_after >= 150, started_after


async def test_100000_blocked_jobs_do_not_delay_a_job_a_worker_can_take(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    redis_url: str,
) -> None:
    # How long it takes is the bench's business (bench/sched.py): here a loaded machine gets
    # a lease and a wait that it cannot run out.
    hub = await hub_factory(max_queued_jobs=200_000, lease_s=30.0)
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    store = Store.from_url(redis_url, hub.config.key_prefix)
    blocker_constraints = {"machine_id": "offline-machine"}
    blocker = JobSpec(
        json.dumps(txt2img("v1-5-pruned-emaonly.safetensors")),
        0,
        60,
        3,
        constraints=blocker_constraints,
        pool=models.pool_id({}, blocker_constraints),
        schedule_timeout_s=600,
    )
    try:
        await store.enqueue_many([(f"blocker{i}", blocker) for i in range(100_000)])
        async with fleet(hub, [sim], tmp_path):
            started = time.monotonic()
            job = await client.wait_for(
                await client.submit(txt2img("v1-5-pruned-emaonly.safetensors")), ENDED, 120.0
            )
            took = time.monotonic() - started
            assert job["status"] == "succeeded", job
            queued = await client.job("blocker99999")
            assert queued["status"] == "queued"
            assert (
                queued["waiting_reason"] == "no connected worker matches machine_id=offline-machine"
            )
        print(f"runnable job behind 100,000 blockers: {took:.2f}s")
    finally:
        await store.close()


async def test_a_worker_failing_five_in_a_row_is_quarantined_and_its_jobs_run_elsewhere(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    bad, good = await sim_factory(), await sim_factory()
    for _ in range(20):
        bad.inject_fault("execution_error")  # every prompt on GPU 0 fails (a broken node)
    client = HubClient(http, hub.url)
    async with fleet(hub, [bad, good], tmp_path):
        ids = [
            await client.submit(txt2img("v1-5-pruned-emaonly.safetensors", seed=i), max_attempts=1)
            for i in range(10)
        ]
        jobs = [await client.wait_for(job_id, {"succeeded"}, timeout_s=30) for job_id in ids]
        failed_on_bad = [j for j in jobs if any(h["worker_id"] == "m-gpu0" for h in j["history"])]
        assert len(failed_on_bad) == 5  # the five it failed, each with one more attempt
        for job in failed_on_bad:
            assert [h["outcome"] for h in job["history"]] == ["failed", "succeeded"]
            assert job["history"][1]["worker_id"] == "m-gpu1"
        workers = {w["id"]: w for w in await client.workers()}
        assert workers["m-gpu0"]["quarantined"]["reason"].startswith("5 jobs in a row failed here")
        status = await asyncio.to_thread(
            CliRunner().invoke, app, ["resume", "0", "--machine-id", "m", "--hub-url", hub.url]
        )
        assert status.exit_code == 0 and "ended its quarantine" in status.output, status.output
        workers = {w["id"]: w for w in await client.workers()}
        assert workers["m-gpu0"]["quarantined"] is None


async def test_wgpu_models_against_a_running_stack(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sims = [
        await sim_factory(models={"checkpoints": ["a.safetensors"], "loras": ["x.safetensors"]}),
        await sim_factory(models={"checkpoints": ["a.safetensors", "b.safetensors"]}),
    ]
    client = HubClient(http, hub.url)
    async with fleet(hub, sims, tmp_path):
        job = await client.submit(txt2img("b.safetensors"))
        await client.wait_for(job, ENDED)
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["models", "--hub-url", hub.url, "--json"]
        )
        assert result.exit_code == 0, result.output
        rows = {r["model"]: r for r in json.loads(result.output)["models"]}
        assert rows["checkpoints/a.safetensors"]["on_disk"] == ["m-gpu0", "m-gpu1"]
        assert rows["checkpoints/b.safetensors"] == {
            "model": "checkpoints/b.safetensors",
            "on_disk": ["m-gpu1"],
            "warm": ["m-gpu1"],
        }
        assert rows["loras/x.safetensors"]["on_disk"] == ["m-gpu0"]
        table = await asyncio.to_thread(CliRunner().invoke, app, ["models", "--hub-url", hub.url])
        assert table.exit_code == 0 and "checkpoints/b.safetensors" in table.output
