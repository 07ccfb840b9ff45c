"""The worker image: built through the Docker fixture, and a container from it completes a job
against a hub and a simulator on loopback (host network)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from orchestrator.images.worker import context_files, worker_image_tag
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.worker.harness import HubClient, image_workflow

pytestmark = pytest.mark.docker


def test_the_tag_follows_the_context_files(tmp_path: Path) -> None:
    for top in ("wgpu_protocol", "comfyui_sim", "worker_image/comfy_worker"):
        (tmp_path / top).mkdir(parents=True)
        (tmp_path / top / "__init__.py").write_text("")
    (tmp_path / "worker_image" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "worker_image" / "comfy_worker" / "__pycache__").mkdir()
    (tmp_path / "worker_image" / "comfy_worker" / "__pycache__" / "x.pyc").write_bytes(b"1")
    (tmp_path / "tests").mkdir()  # outside the context: never hashed, never sent
    (tmp_path / "tests" / "t.py").write_text("")
    first = worker_image_tag(root=tmp_path)
    assert first == worker_image_tag(root=tmp_path)
    assert all(
        "__pycache__" not in str(p) and p.parts[0] != "tests" for p in context_files(tmp_path)
    )
    (tmp_path / "tests" / "t.py").write_text("changed")
    assert worker_image_tag(root=tmp_path) == first
    (tmp_path / "wgpu_protocol" / "__init__.py").write_text("changed = True\n")
    assert worker_image_tag(root=tmp_path) != first
    assert worker_image_tag(base_image="other:1", root=tmp_path) != worker_image_tag(root=tmp_path)


def test_image_is_non_root_with_healthcheck_and_labels(
    docker_client: docker.DockerClient, worker_image: str
) -> None:
    config = docker_client.images.get(worker_image).attrs["Config"]
    assert config["User"] and not config["User"].startswith(("0", "root"))
    assert config["Entrypoint"] == ["comfy-worker"]
    assert config["Healthcheck"]["Test"] == ["CMD", "comfy-worker", "healthcheck"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"]
    assert labels["org.opencontainers.image.version"]
    assert labels["wgpu.context_hash"]


async def test_container_on_host_network_completes_a_job(
    docker_client: docker.DockerClient,
    worker_image: str,
    hub_factory: HubFactory,
    sim_factory: SimFactory,
) -> None:
    hub = await hub_factory(lease_s=10.0)
    sim = await sim_factory()
    container = docker_client.containers.run(
        worker_image,
        detach=True,
        network_mode="host",
        labels={"wgpu.test": "1"},
        environment={
            "HUB_URL": hub.url,
            "EXECUTION_SERVICE_PORT": str(sim.port),
            "MACHINE_ID": "container",
            "GPU_ID": "0",
            "WORKER_GRACE_S": "5",
        },
    )
    async with aiohttp.ClientSession() as http:
        client = HubClient(http, hub.url)
        job_id = await client.submit(image_workflow())
        try:
            job = await client.wait_for(job_id, timeout_s=30)
        except AssertionError:
            raise AssertionError(container.logs().decode(errors="replace")[-3000:]) from None
        assert job["status"] == "succeeded", job
        assert job["worker_id"] == "container-gpu0"
        data, content_type = await client.output(job_id, job["outputs"][0]["name"])
        assert data.startswith(b"\x89PNG") and content_type == "image/png"
    # The health check (what Docker's HEALTHCHECK runs) sees hub and ComfyUI up.
    exit_code, output = await asyncio.to_thread(container.exec_run, ["comfy-worker", "healthcheck"])
    assert exit_code == 0, output
    # `docker stop` sends SIGTERM: a clean exit 0, well within the stop timeout.
    started = time.monotonic()
    await asyncio.to_thread(container.stop, timeout=20)
    result: dict[str, Any] = await asyncio.to_thread(container.wait, timeout=30)
    assert result["StatusCode"] == 0
    assert time.monotonic() - started < 10
    logs = container.logs().decode(errors="replace")
    assert "worker container-gpu0 stopped" in logs
