"""The rendered compose stack, run for real on the Docker fixture with local images.

No `docker compose` plugin is needed: the stack goes up through the Engine API from the very
document `wgpu compose render` writes (orchestrator.stack.compose_runner, what `wgpu up`
runs). Where a compose CLI is installed, the file also goes up through it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import ImageBuildError
from orchestrator.gpus.slots import Slot
from orchestrator.hub_client.client import HubClient
from orchestrator.hub_client.job_watch import load_workflow
from orchestrator.images.base import DEFAULT_CACHE_DIR, file_lock
from orchestrator.stack.compose_render import StackOptions, render_stack, to_yaml
from orchestrator.stack.compose_runner import ComposeRunner
from orchestrator.stack.images import HUB_RECIPE, REDIS_RECIPE, ensure_image
from orchestrator.stack.lifecycle import free_port_block
from tests.fixtures.services import service_missing
from tests.orchestrator.stack.helpers import compose_cli
from tests.paths import REPO

QUICK = REPO / "examples" / "quick.json"


@pytest.fixture(scope="session")
def stack_images(
    docker_client: docker.DockerClient, base_image: str, worker_image: str
) -> dict[str, str]:
    """env var -> local image: the worker image and hub + Redis images made from the base."""
    try:
        with file_lock(DEFAULT_CACHE_DIR / "stack-images.lock"):
            hub = ensure_image(docker_client, HUB_RECIPE, base_image)
            redis = ensure_image(docker_client, REDIS_RECIPE, base_image)
    except ImageBuildError as exc:
        pytest.fail(f"stack images: {exc}", pytrace=False)
    return {"WGPU_WORKER_IMAGE": worker_image, "WGPU_HUB_IMAGE": hub, "WGPU_REDIS_IMAGE": redis}


@pytest.fixture
def options() -> StackOptions:
    base = free_port_block(4)
    tag = uuid.uuid4().hex[:8]
    return StackOptions(
        simulate=2,
        machine_id=f"compose-{tag}",
        redis_port=base,
        hub_port=base + 1,
        hub_bind="127.0.0.1",
        port_base=base + 2,
        volume=f"wgpu-test-redis-{tag}",
        outputs_volume=f"wgpu-test-outputs-{tag}",
        health_interval_s=0.5,
        sim_node_time_s=0.02,
        name_prefix=f"t{tag}-",
    )


@pytest.fixture
def volumes_cleanup(docker_client: docker.DockerClient, options: StackOptions) -> Iterator[None]:
    yield
    for name in (options.volume, options.outputs_volume):
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(name).remove(force=True)


def containers_of(client: docker.DockerClient, machine_id: str) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={"label": f"wgpu.machine_id={machine_id}"})
    return {c.labels["wgpu.role"] + c.labels.get("wgpu.gpu_index", ""): c for c in found}


def run_quick_job(hub_url: str) -> dict[str, Any]:
    hub = HubClient(hub_url)
    job = hub.submit(load_workflow(QUICK))
    deadline = time.monotonic() + 60
    while job["status"] not in ("succeeded", "failed", "dead", "cancelled", "timed_out"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = hub.get_job(job["id"])
    return job


def test_rendered_stack_runs_on_docker_and_comes_down(
    docker_client: docker.DockerClient,
    stack_images: dict[str, str],
    options: StackOptions,
    volumes_cleanup: None,
) -> None:
    document = render_stack(options)
    events: list[tuple[str, str]] = []
    runner = ComposeRunner(
        docker_client, env=stack_images, on_event=lambda s, e: events.append((s, e))
    )
    results = runner.up(document)
    assert [r for r in results if not r.ok] == [], results
    # depends_on service_healthy: the hub was healthy before any worker was created.
    order = [service for service, event in events if event in ("creating", "healthy")]
    assert order.index("hub") < order.index("comfy-worker-gpu0")
    assert ("redis", "healthy") in events and events.index(("redis", "healthy")) < events.index(
        ("hub", "creating")
    )
    containers = containers_of(docker_client, options.machine_id)
    assert set(containers) == {"redis", "hub", "comfyui0", "comfyui1", "worker0", "worker1"}
    for key, container in containers.items():
        container.reload()
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["State"]["Health"]["Status"] == "healthy", key
        assert not container.attrs["HostConfig"].get("DeviceRequests")  # simulated: no GPU
    worker = containers["worker1"]
    assert worker.name == f"{options.name_prefix}comfy-worker-gpu1"
    assert worker.image.tags[0] == stack_images["WGPU_WORKER_IMAGE"]
    env = dict(line.split("=", 1) for line in worker.attrs["Config"]["Env"])
    assert env["GPU_ID"] == "1" and env["EXECUTION_SERVICE_PORT"] == str(options.port_base + 1)
    redis_cmd = " ".join(containers["redis"].attrs["Config"]["Cmd"])
    assert "--appendonly yes" in redis_cmd and "noeviction" in redis_cmd

    hub_url = f"http://127.0.0.1:{options.hub_port}"
    workers = HubClient(hub_url).get_workers()
    assert {w["id"] for w in workers if w["connected"]} == {
        f"{options.machine_id}-gpu0",
        f"{options.machine_id}-gpu1",
    }
    job = run_quick_job(hub_url)
    assert job["status"] == "succeeded" and job["outputs"], job

    # A second `up` keeps what runs unchanged (same config hash).
    again = runner.up(document)
    assert {r.outcome for r in again} == {"kept"}

    removed = runner.down(labels={"wgpu.machine_id": options.machine_id})
    prefix = options.name_prefix
    # Workers first (they hand jobs back while ComfyUI and the hub still answer), Redis last.
    assert set(removed[:2]) == {f"{prefix}comfy-worker-gpu0", f"{prefix}comfy-worker-gpu1"}
    assert set(removed[2:4]) == {f"{prefix}comfyui-gpu0", f"{prefix}comfyui-gpu1"}
    assert removed[4:] == [f"{prefix}wgpu-hub", f"{prefix}wgpu-redis"]
    assert containers_of(docker_client, options.machine_id) == {}
    assert docker_client.volumes.get(options.volume)  # Redis' data is kept by default


def test_redis_data_survives_down_and_up_then_volumes_removes_it(
    docker_client: docker.DockerClient,
    stack_images: dict[str, str],
    options: StackOptions,
    volumes_cleanup: None,
) -> None:
    # Only Redis and the hub: enough to see a job survive in the AOF across a full down/up.
    small = StackOptions(**{**options.__dict__, "simulate": 1})
    document = render_stack(small)
    document["services"] = {k: document["services"][k] for k in ("redis", "hub")}
    runner = ComposeRunner(docker_client, env=stack_images)
    assert all(r.ok for r in runner.up(document))
    hub_url = f"http://127.0.0.1:{small.hub_port}"
    job = HubClient(hub_url).submit(load_workflow(QUICK))
    runner.down(labels={"wgpu.machine_id": small.machine_id})
    assert all(r.ok for r in runner.up(document))
    assert HubClient(hub_url).get_job(job["id"])["status"] == "queued"
    runner.down(labels={"wgpu.machine_id": small.machine_id}, volumes=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(small.volume)


def test_wgpu_up_and_down_on_docker(
    docker_daemon: Any,
    docker_client: docker.DockerClient,
    stack_images: dict[str, str],
    options: StackOptions,
    volumes_cleanup: None,
) -> None:
    env = {
        **stack_images,
        "WGPU_NAME_PREFIX": options.name_prefix,
        "COLUMNS": "200",
    }
    args = [
        "--docker-host",
        docker_daemon.host,
        "--machine-id",
        options.machine_id,
    ]
    up = CliRunner().invoke(
        app,
        [
            "up",
            "--simulate",
            "1",
            "--backend",
            "docker",
            *args,
            "--hub-port",
            str(options.hub_port),
            "--hub-bind",
            "127.0.0.1",
            "--redis-port",
            str(options.redis_port),
            "--port-base",
            str(options.port_base),
            "--health-interval",
            "0.5",
        ],
        env=env,
        catch_exceptions=False,
    )
    try:
        assert up.exit_code == 0, up.output + up.stderr
        assert f"hub: http://127.0.0.1:{options.hub_port}" in up.stdout
        assert set(containers_of(docker_client, options.machine_id)) == {
            "redis",
            "hub",
            "comfyui0",
            "worker0",
        }
        assert run_quick_job(f"http://127.0.0.1:{options.hub_port}")["status"] == "succeeded"
        # The same containers `wgpu status` reads: one slot, worker running.
        status = CliRunner().invoke(app, ["status", "--json", *args], catch_exceptions=False)
        assert status.exit_code == 0, status.output
    finally:
        down = CliRunner().invoke(
            app, ["down", "--backend", "docker", *args, "--volumes"], catch_exceptions=False
        )
    assert down.exit_code == 0, down.output
    assert "removed 4" in down.stdout
    assert containers_of(docker_client, options.machine_id) == {}


def test_compose_cli_runs_the_file_when_installed(
    docker_daemon: Any,
    docker_client: docker.DockerClient,
    stack_images: dict[str, str],
    options: StackOptions,
    volumes_cleanup: None,
    tmp_path: Path,
) -> None:
    """`docker compose up` on the rendered file, where a compose CLI exists on this machine."""
    cli = compose_cli()
    if cli is None:
        service_missing("docker compose CLI", "install docker-compose (apt) or the compose plugin")
    path = tmp_path / "docker-compose.yml"
    path.write_text(to_yaml(render_stack(options)))
    env = {**os.environ, **stack_images, "DOCKER_HOST": docker_daemon.host}
    project = ["-p", f"wgpu{options.machine_id.replace('-', '')}", "-f", str(path)]
    try:
        up = subprocess.run(
            [*cli, *project, "up", "-d"], env=env, capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stderr
        assert run_quick_job(f"http://127.0.0.1:{options.hub_port}")["status"] == "succeeded"
    finally:
        subprocess.run(
            [*cli, *project, "down", "-v"], env=env, capture_output=True, timeout=120, check=False
        )
    assert containers_of(docker_client, options.machine_id) == {}


def test_gpu_services_are_pinned_through_the_engine(
    docker_client: docker.DockerClient, stack_images: dict[str, str], options: StackOptions
) -> None:
    """The rendered device reservation reaches the daemon: the container sees only its GPU."""
    pinned = StackOptions(**{**options.__dict__, "simulate": 0, "gpus": (Slot(0), Slot(1))})
    service = render_stack(pinned)["services"]["comfy-worker-gpu1"]
    # The worker itself needs a hub; what is checked here is the pinning, so just print env.
    service = {k: v for k, v in service.items() if k not in ("depends_on", "healthcheck")}
    service["entrypoint"] = ["sh", "-c", "env; sleep 60"]
    runner = ComposeRunner(docker_client, env=stack_images)
    (result,) = runner.up({"services": {"comfy-worker-gpu1": service}})
    assert result.ok, result
    container = docker_client.containers.get(result.container)
    (request,) = container.attrs["HostConfig"]["DeviceRequests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == ["1"]
    assert request["Capabilities"] == [["gpu"]]

    def env_shown() -> str:
        return str(container.logs().decode())

    deadline = time.monotonic() + 20
    while "NVIDIA_VISIBLE_DEVICES" not in env_shown():
        assert time.monotonic() < deadline, env_shown()
        time.sleep(0.1)
    assert "NVIDIA_VISIBLE_DEVICES=1" in env_shown().splitlines()
    runner.down(labels={"wgpu.machine_id": options.machine_id})
