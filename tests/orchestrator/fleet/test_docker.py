"""`wgpu fleet` on two real Docker daemons standing for two machines, both feeding one real hub.

A third host points at an engine that does not exist: it is reported and the others go on.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from typer.testing import CliRunner, Result

from orchestrator.cli import app
from orchestrator.hub_client.client import HubClient
from orchestrator.hub_client.job_watch import load_workflow
from orchestrator.stack.lifecycle import free_port_block
from tests.fixtures.docker import DockerDaemon
from tests.paths import REPO
from tests.polling import eventually_blocking

QUICK = REPO / "examples" / "quick.json"


def fleet(*args: str) -> Result:
    return CliRunner().invoke(app, ["fleet", *args], env={"COLUMNS": "250"}, catch_exceptions=False)


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    return eventually_blocking(predicate, bool, timeout_s, 0.1, what)


def managed(daemon: DockerDaemon) -> list[Any]:
    client = daemon.client()
    try:
        return list(client.containers.list(all=True, filters={"label": "wgpu.managed=true"}))
    finally:
        client.close()


async def test_two_engines_feed_one_hub_and_a_dead_host_is_reported(
    hub_factory: Any,
    extra_dockerd: Callable[[str], DockerDaemon],
    docker_daemon: DockerDaemon,
    docker_client: docker.DockerClient,
    worker_image: str,
    tmp_path: Path,
) -> None:
    hub = await hub_factory()
    engine_a = await asyncio.to_thread(extra_dockerd, "fleet-a")
    engine_b = await asyncio.to_thread(extra_dockerd, "fleet-b")
    tag = uuid.uuid4().hex[:6]
    port_base = free_port_block(2)
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(
        f"""
[defaults]
hub_url = "{hub.url}"
image = "{worker_image}"
simulate = 1
labels = {{ suite = "fleet" }}

[[hosts]]
machine_id = "a-{tag}"
docker_host = "{engine_a.host}"
port_base = {port_base}

[[hosts]]
machine_id = "b-{tag}"
docker_host = "{engine_b.host}"
port_base = {port_base + 1}

[[hosts]]
machine_id = "dead-{tag}"
docker_host = "unix:///run/wgpu-test/no-such-engine.sock"
"""
    )
    up = await asyncio.to_thread(
        fleet, "up", "-i", str(inventory), "--ship-image", docker_daemon.host, "--json"
    )
    assert up.exit_code == 5, up.output  # PARTIAL: two hosts up, one failed
    hosts = {h["machine_id"]: h for h in json.loads(up.stdout)["hosts"]}
    assert hosts[f"a-{tag}"]["ok"] and hosts[f"b-{tag}"]["ok"]
    assert not hosts[f"dead-{tag}"]["ok"]
    assert "cannot reach the Docker engine" in hosts[f"dead-{tag}"]["detail"]

    # Each engine runs its own pair, with its machine id and the one hub's address.
    for engine, machine in ((engine_a, f"a-{tag}"), (engine_b, f"b-{tag}")):
        containers = {c.name: c for c in managed(engine)}
        assert set(containers) == {"comfyui-gpu0", "comfy-worker-gpu0"}
        worker = containers["comfy-worker-gpu0"]
        env = dict(line.split("=", 1) for line in worker.attrs["Config"]["Env"])
        assert env["MACHINE_ID"] == machine
        assert env["REDIS_API_PORT"] == str(hub.port)
        assert env["WGPU_LABELS"] == "suite=fleet"

    client = HubClient(hub.url)
    wanted = {f"a-{tag}-gpu0", f"b-{tag}-gpu0"}

    def connected() -> bool:
        return wanted <= {w["id"] for w in client.get_workers() if w["connected"]}

    await asyncio.to_thread(wait_for, connected, "both machines' workers to connect")

    # One job pinned to each machine: both engines do real work for the one hub.
    workflow = load_workflow(QUICK)

    def submit(machine: str) -> str:
        return str(client.submit(workflow, constraints={"machine_id": machine})["id"])

    jobs = {m: await asyncio.to_thread(submit, m) for m in (f"a-{tag}", f"b-{tag}")}

    def all_done() -> dict[str, Any] | None:
        found = {m: client.get_job(j) for m, j in jobs.items()}
        return found if all(j["status"] == "succeeded" for j in found.values()) else None

    finished = await asyncio.to_thread(wait_for, all_done, "the pinned jobs")
    for machine, job in finished.items():
        assert job["worker_id"] == f"{machine}-gpu0" and job["outputs"]

    status = await asyncio.to_thread(fleet, "status", "-i", str(inventory), "--json")
    assert status.exit_code == 5, status.output
    by_machine = {h["machine_id"]: h for h in json.loads(status.stdout)["hosts"]}
    for machine in (f"a-{tag}", f"b-{tag}"):
        host = by_machine[machine]
        assert host["reachable"]
        assert sorted(c["state"] for c in host["containers"]) == ["running", "running"]
        (worker,) = host["workers"]
        assert worker["connected"] and worker["jobs_done"] == 1
    assert not by_machine[f"dead-{tag}"]["reachable"]
    table = await asyncio.to_thread(fleet, "status", "-i", str(inventory))
    assert f"a-{tag}" in table.stdout and "unreachable" in table.stdout
    assert "1/1" in table.stdout  # workers connected on each reachable host

    down = await asyncio.to_thread(fleet, "down", "-i", str(inventory), "-t", "5", "--json")
    assert down.exit_code == 5, down.output
    assert managed(engine_a) == [] and managed(engine_b) == []


def test_all_gpus_on_a_host_without_any_is_that_hosts_failure(
    docker_daemon: DockerDaemon, worker_image: str, tmp_path: Path
) -> None:
    """gpus = "all" asks the machine itself (NVML in a container given every GPU): here none."""
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(
        f"""
[[hosts]]
machine_id = "nogpu-{uuid.uuid4().hex[:6]}"
docker_host = "{docker_daemon.host}"
image = "{worker_image}"
gpus = "all"
hub_url = "http://127.0.0.1:9"
"""
    )
    up = fleet("up", "-i", str(inventory), "--json")
    assert up.exit_code == 1, up.output  # FAILED: the only host failed
    (host,) = json.loads(up.stdout)["hosts"]
    assert "cannot list its GPUs" in host["detail"] and "gpus = [0, 1]" in host["detail"]
    assert [
        c for c in managed(docker_daemon) if c.labels.get("wgpu.machine_id", "").startswith("nogpu")
    ] == []
