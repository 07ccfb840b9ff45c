"""`wgpu update --worker-src` on the test Docker Engine (with its no-op nvidia hook, so each
GPU's containers are pinned through real device requests): 4 GPUs, each a ComfyUI simulator
container beside a worker container that runs from a worker tree mounted read-only into a
runtime-only image, under a steady load of 2 s jobs."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
from comfy_worker.version import tree_version

from orchestrator.console import ExitCode
from orchestrator.images import worker as worker_images
from orchestrator.rollout.worker_src import MOUNT_POINT
from orchestrator.stack.lifecycle import free_port_block
from tests.fixtures.docker import DockerDaemon
from tests.fixtures.hub import HubFactory
from tests.orchestrator.backends.helpers import wgpu
from tests.orchestrator.rollout.load import SteadyLoad, worker_tree, workers
from tests.polling import eventually

pytestmark = pytest.mark.docker

GPUS = 4
NAMES = {f"dock-gpu{i}" for i in range(GPUS)}


@pytest.fixture
def trees() -> Any:
    # Not under pytest's tmp_path: its root is private to root, and the tree must be readable
    # by the image's unprivileged user through the bind mount.
    with tempfile.TemporaryDirectory(prefix="wgpu-trees-") as top:
        Path(top).chmod(0o755)
        yield Path(top)


@pytest.fixture
async def fleet(
    trees: Path,
    docker_daemon: DockerDaemon,
    docker_client: docker.DockerClient,
    base_image: str,
    worker_image: str,
    hub_factory: HubFactory,
) -> AsyncIterator[dict[str, Any]]:
    hub = await hub_factory(lease_s=10.0, heartbeat_s=1.0)
    old = worker_tree(trees / "old", marker="old")
    engine = ["--docker-host", docker_daemon.host]
    setup = await asyncio.to_thread(
        wgpu, "setup", "--worker-src", str(old), "--base-image", base_image, *engine
    )
    assert setup.exit_code == 0, setup.output
    comfyui = "python3 -m comfyui_sim --host 127.0.0.1 --port {port}"
    started = await asyncio.to_thread(
        wgpu, "start", "--gpus", "0,1,2,3", "--worker-src", str(old), "--base-image", base_image,
        "--comfyui-image", worker_image, "--comfyui-cmd", comfyui, "--hub-url", hub.url,
        "--machine-id", "dock", "--port-base", str(free_port_block(GPUS)), *engine,
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    yield {"hub_url": hub.url, "engine": engine, "old": old, "trees": trees}
    await asyncio.to_thread(wgpu, "stop", "all", "-t", "10", *engine)


def test_setup_with_a_worker_tree_builds_an_image_without_the_worker(
    docker_client: docker.DockerClient, base_image: str, fleet: dict[str, Any]
) -> None:
    runtime = worker_images.runtime_image_tag(base_image)
    worker = docker_client.containers.get("comfy-worker-gpu2")
    assert worker.attrs["Config"]["Image"] == runtime
    [mount] = worker.attrs["Mounts"]
    assert mount["Destination"] == MOUNT_POINT and mount["RW"] is False
    assert mount["Source"] == str(fleet["old"])
    code, _ = worker.exec_run(["python3", "-c", "import os; os.stat('/opt/wgpu/comfy_worker')"])
    assert code != 0  # the image holds the runtime only
    requests = worker.attrs["HostConfig"]["DeviceRequests"]
    assert requests[0]["Driver"] == "nvidia" and requests[0]["DeviceIDs"] == ["2"]


async def test_update_all_moves_every_worker_to_the_new_tree_under_load(
    docker_client: docker.DockerClient, fleet: dict[str, Any]
) -> None:
    hub_url = fleet["hub_url"]
    load = SteadyLoad(hub_url, NAMES)
    await load.start()
    await load.wait_all_busy()
    entries = [w for w in await workers(hub_url) if w["id"] in NAMES]
    assert {w["version"] for w in entries} == {tree_version(fleet["old"])}
    comfyui_before = {c.name: c.id for c in docker_client.containers.list() if "comfyui" in c.name}

    new = worker_tree(fleet["trees"] / "new", marker="new")
    load.sampling = True
    result = await asyncio.to_thread(
        wgpu, "update", "all", "--worker-src", str(new), "--ready-timeout", "60", "--json",
        *fleet["engine"],
    )  # fmt: skip
    load.sampling = False
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)["results"]
    assert [r["outcome"] for r in outcomes] == ["updated"] * GPUS, outcomes
    entries = [w for w in await workers(hub_url) if w["id"] in NAMES]
    assert {w["version"] for w in entries} == {tree_version(new)}
    assert all(w["connected"] and w["drain"] is None for w in entries)
    # Only the workers were replaced: each ComfyUI kept running (its models stay loaded).
    comfyui_after = {c.name: c.id for c in docker_client.containers.list() if "comfyui" in c.name}
    assert comfyui_after == comfyui_before
    assert not [c.name for c in docker_client.containers.list(all=True) if c.name.endswith("-prev")]
    done = await load.check()
    seconds = [r["seconds"] for r in outcomes]
    print(f"docker update: {done}; seconds per GPU {seconds}")  # numbers for the report
    assert done.statuses == {"succeeded": done.jobs}  # 0 lost, 0 failed
    assert done.attempts == {1: done.jobs} and done.histories == {1: done.jobs}  # 0 run twice
    assert done.samples > 20 and done.min_busy >= GPUS - 1


async def test_a_broken_version_rolls_one_gpu_back_and_a_drain_outlives_a_restart(
    docker_client: docker.DockerClient, fleet: dict[str, Any]
) -> None:
    hub_url = fleet["hub_url"]
    load = SteadyLoad(hub_url, NAMES)
    await load.start()
    await load.wait_all_busy()
    broken = worker_tree(fleet["trees"] / "broken", broken=True)
    result = await asyncio.to_thread(
        wgpu, "update", "all", "--worker-src", str(broken), "--ready-timeout", "6", "--json",
        *fleet["engine"],
    )  # fmt: skip
    assert result.exit_code == ExitCode.PARTIAL, result.output
    outcomes = json.loads(result.stdout)["results"]
    assert [r["outcome"] for r in outcomes] == ["rolled back", "skipped", "skipped", "skipped"]
    assert "not ready within 6s" in outcomes[0]["detail"]
    await load.wait_all_busy()  # the rolled-back GPU is back in service with the others
    entries = [w for w in await workers(hub_url) if w["id"] in NAMES]
    assert {w["version"] for w in entries} == {tree_version(fleet["old"])}

    # A drain holds across the worker's container restart (a reconnect), until resumed.
    hub_args = ["--hub-url", hub_url, "--machine-id", "dock"]
    assert (await asyncio.to_thread(wgpu, "drain", "3", *hub_args)).exit_code == 0

    async def gpu3() -> dict[str, Any]:
        return next(w for w in await workers(hub_url) if w["id"] == "dock-gpu3")

    await eventually(gpu3, lambda w: (w["drain"] or {}).get("state") == "drained", within=20)
    worker = docker_client.containers.get("comfy-worker-gpu3")
    await asyncio.to_thread(worker.restart, timeout=10)
    await eventually(gpu3, lambda w: w["connected"] and w["status"] == "idle", within=30)
    for _ in range(5):  # jobs are queued, yet it takes none
        entry = await gpu3()
        assert entry["status"] == "idle" and entry["drain"]["state"] == "drained"
        await asyncio.sleep(0.2)
    assert (await asyncio.to_thread(wgpu, "resume", "3", *hub_args)).exit_code == 0
    await load.wait_all_busy()
    done = await load.check()
    assert done.statuses == {"succeeded": done.jobs}
