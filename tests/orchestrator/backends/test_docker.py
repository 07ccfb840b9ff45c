"""`wgpu start|stop|restart|status|logs` on a real Docker Engine with the no-op NVIDIA hook.

These tests get their own extra dockerd (tests.fixtures.docker.start_extra_dockerd): container
names like comfy-worker-gpu0 are fixed by design, so sharing the main test daemon with other
sessions that start workers would make them collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import docker
import docker.errors
import pytest
from comfy_worker.config import WorkerConfig

from orchestrator.backends.docker_backend import parse_docker_time
from orchestrator.backends.engine import NVIDIA_HINT
from orchestrator.console import ExitCode
from orchestrator.errors import BaseImageError
from orchestrator.hub_client.client import AsyncHubClient
from orchestrator.images import worker as worker_images
from orchestrator.images.base import ensure_base_image
from tests.fixtures import docker as docker_fixtures
from tests.fixtures.hub import HubFactory
from tests.fixtures.services import service_missing
from tests.orchestrator.backends.helpers import (
    FollowedCommand,
    build_sleeper_image,
    close_hub,
    wait_for,
    wgpu,
    wgpu_json,
)

pytestmark = pytest.mark.docker

SLEEPER = "wgpu-test/orch-sleeper:1"
SLEEPER_RETAGGED = "wgpu-test/orch-sleeper:2"
HUB_URL = "http://127.0.0.1:18001"


@pytest.fixture(scope="module")
def orch_daemon() -> docker_fixtures.DockerDaemon:
    try:
        daemon = docker_fixtures.start_extra_dockerd("orch")
    except (docker_fixtures.DockerUnavailable, BaseImageError) as exc:
        service_missing("extra Docker Engine", str(exc))
    with contextlib.closing(daemon.client()) as client:
        build_sleeper_image(client, ensure_base_image(client), SLEEPER)
        client.images.get(SLEEPER).tag(SLEEPER_RETAGGED)
    return daemon


@pytest.fixture
def client(orch_daemon: docker_fixtures.DockerDaemon) -> Iterator[docker.DockerClient]:
    client = orch_daemon.client()
    docker_fixtures.remove_labelled_containers(client)
    yield client
    docker_fixtures.remove_labelled_containers(client)
    client.close()


@pytest.fixture
def host(orch_daemon: docker_fixtures.DockerDaemon, client: docker.DockerClient) -> str:
    return orch_daemon.host


def start_three(host: str, image: str = SLEEPER, target: str = "all") -> str:
    result = wgpu(
        "start",
        target,
        "--gpus",
        "0,1,2",
        "--image",
        image,
        "--hub-url",
        HUB_URL,
        "--machine-id",
        "box1",
        "--docker-host",
        host,
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def workers(client: docker.DockerClient) -> dict[str, docker.models.containers.Container]:
    found = client.containers.list(all=True, filters={"label": "wgpu.role=worker"})
    return {c.name: c for c in found}


def env_of(container: docker.models.containers.Container) -> dict[str, str]:
    """The environment its main process really has. (`docker exec env` would not do: dockerd's
    nvidia driver adds NVIDIA_VISIBLE_DEVICES to the OCI spec of the container's process only.)"""
    code, output = container.exec_run(["cat", "/proc/1/environ"])
    assert code == 0
    return dict(item.split("=", 1) for item in output.decode().split("\0") if "=" in item)


def test_start_three_gpus_pins_each_to_its_own_gpu(host: str, client: docker.DockerClient) -> None:
    out = start_three(host)
    assert out.count("started") == 3
    found = workers(client)
    assert sorted(found) == ["comfy-worker-gpu0", "comfy-worker-gpu1", "comfy-worker-gpu2"]
    hashes = set()
    for index in range(3):
        container = found[f"comfy-worker-gpu{index}"]
        assert container.status == "running"
        env = env_of(container)
        assert env["NVIDIA_VISIBLE_DEVICES"] == str(index)  # set by dockerd's nvidia driver
        assert env["GPU_ID"] == str(index)
        assert env["EXECUTION_SERVICE_PORT"] == str(8188 + index)
        assert (env["REDIS_API_HOST"], env["REDIS_API_PORT"]) == ("127.0.0.1", "18001")
        assert (env["MACHINE_ID"], env["NUM_GPUS"]) == ("box1", "3")
        assert "WORKER_TOKEN" not in env
        labels = container.labels
        assert labels["wgpu.managed"] == "true"
        assert labels["wgpu.role"] == "worker"
        assert labels["wgpu.machine_id"] == "box1"
        assert labels["wgpu.gpu_index"] == str(index)
        assert labels["wgpu.simulated"] == "false"
        hashes.add(labels["wgpu.config_hash"])
        host_config = container.attrs["HostConfig"]
        [request] = host_config["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == [str(index)]
        assert request["Capabilities"] == [["gpu"]]
        assert host_config["NetworkMode"] == "host"
        assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
        assert host_config["LogConfig"]["Type"] == "json-file"
        assert host_config["LogConfig"]["Config"]["max-size"] == "10m"
        # `docker stop` (by hand, or a daemon shutdown) waits past the grace that the worker
        # reads from the same environment: a stop never kills a job inside it.
        assert container.attrs["Config"]["StopTimeout"] > WorkerConfig.from_env(env).grace_s
    assert len(hashes) == 3  # each GPU's env differs


def test_second_start_changes_nothing(host: str, client: docker.DockerClient) -> None:
    start_three(host)
    before = {name: c.id for name, c in workers(client).items()}
    out = start_three(host)
    assert out.count("already running") == 3
    assert {name: c.id for name, c in workers(client).items()} == before


def test_stop_one_leaves_the_others_running(host: str, client: docker.DockerClient) -> None:
    start_three(host)
    result = wgpu("stop", "1", "--timeout", "5", "--docker-host", host)
    assert result.exit_code == 0, result.output
    assert "gpu1 worker: stopped" in result.stdout
    states = {name: c.status for name, c in workers(client).items()}
    assert states == {
        "comfy-worker-gpu0": "running",
        "comfy-worker-gpu1": "exited",
        "comfy-worker-gpu2": "running",
    }
    # Graceful: the worker got SIGTERM and exited on its own (the sleeper says bye, exit 0).
    stopped = workers(client)["comfy-worker-gpu1"]
    assert stopped.attrs["State"]["ExitCode"] == 0
    assert b"bye" in stopped.logs()
    # A stopped worker with the same config is started again, in the same container.
    out = start_three(host)
    assert "gpu1 worker: started" in out and out.count("already running") == 2
    assert workers(client)["comfy-worker-gpu1"].id == stopped.id


def test_stop_of_an_unknown_gpu_is_not_found(host: str, client: docker.DockerClient) -> None:
    start_three(host, target="0")
    result = wgpu("stop", "7", "--docker-host", host)
    assert result.exit_code == ExitCode.NOT_FOUND
    assert workers(client)["comfy-worker-gpu0"].status == "running"


def test_restart_restarts_in_place(host: str, client: docker.DockerClient) -> None:
    start_three(host)
    before = workers(client)
    result = wgpu("restart", "2", "--timeout", "5", "--docker-host", host)
    assert result.exit_code == 0, result.output
    assert "gpu2 worker: restarted" in result.stdout
    after = workers(client)
    assert after["comfy-worker-gpu2"].id == before["comfy-worker-gpu2"].id
    assert (
        after["comfy-worker-gpu2"].attrs["State"]["StartedAt"]
        != (before["comfy-worker-gpu2"].attrs["State"]["StartedAt"])
    )
    assert (
        after["comfy-worker-gpu0"].attrs["State"]["StartedAt"]
        == (before["comfy-worker-gpu0"].attrs["State"]["StartedAt"])
    )


def test_changed_image_recreates_only_that_worker(host: str, client: docker.DockerClient) -> None:
    start_three(host)
    before = {name: c.id for name, c in workers(client).items()}
    out = start_three(host, image=SLEEPER_RETAGGED, target="1")
    assert "gpu1 worker: recreated" in out
    after = workers(client)
    assert after["comfy-worker-gpu1"].id != before["comfy-worker-gpu1"]
    assert after["comfy-worker-gpu1"].attrs["Config"]["Image"] == SLEEPER_RETAGGED
    assert after["comfy-worker-gpu0"].id == before["comfy-worker-gpu0"]
    # A changed hub address is a changed config too.
    result = wgpu(
        "start",
        "0",
        "--gpus",
        "0,1,2",
        "--image",
        SLEEPER,
        "--hub-url",
        "http://127.0.0.1:18002",
        "--machine-id",
        "box1",
        "--docker-host",
        host,
    )
    assert "gpu0 worker: recreated" in result.stdout
    assert env_of(workers(client)["comfy-worker-gpu0"])["REDIS_API_PORT"] == "18002"
    # So is a changed restart policy.
    result = wgpu(
        "start",
        "2",
        "--gpus",
        "0,1,2",
        "--image",
        SLEEPER,
        "--hub-url",
        HUB_URL,
        "--machine-id",
        "box1",
        "--restart",
        "on-failure",
        "--docker-host",
        host,
    )
    assert "gpu2 worker: recreated" in result.stdout
    policy = workers(client)["comfy-worker-gpu2"].attrs["HostConfig"]["RestartPolicy"]
    assert (policy["Name"], policy["MaximumRetryCount"]) == ("on-failure", 5)


def printed_ready(container: docker.models.containers.Container) -> bool:
    return b"ready" in container.logs()


def test_logs_single_and_interleaved(host: str, client: docker.DockerClient) -> None:
    start_three(host)
    for container in workers(client).values():
        wait_for(partial(printed_ready, container), what=f"{container.name} to print")
    single = wgpu("logs", "1", "--docker-host", host)
    assert single.exit_code == 0, single.output
    assert "GPU_ID=1" in single.stdout and "GPU_ID=0" not in single.stdout
    assert "| " not in single.stdout.splitlines()[0]
    tail = wgpu("logs", "1", "--tail", "1", "--docker-host", host)
    assert tail.stdout.strip().splitlines() == ["ready"]
    both = wgpu("logs", "all", "--docker-host", host)
    lines = both.stdout.splitlines()
    for index in range(3):
        assert f"gpu{index} | GPU_ID={index}" in lines
        assert f"gpu{index} | ready" in lines
    assert all(line.startswith(("gpu0 | ", "gpu1 | ", "gpu2 | ")) for line in lines)
    future = wgpu("logs", "all", "--since", "2099-01-01T00:00:00Z", "--docker-host", host)
    assert future.exit_code == 0 and future.stdout.strip() == ""


def test_status_json_rebuilds_the_picture_from_labels(
    host: str, client: docker.DockerClient
) -> None:
    start_three(host)
    wgpu("stop", "2", "--timeout", "5", "--docker-host", host)
    snapshot = wgpu_json("status", "--docker-host", host, "--hub-url", HUB_URL)
    assert snapshot["backend"] == "docker"
    slots = {slot["index"]: slot for slot in snapshot["slots"]}
    assert sorted(slots) == [0, 1, 2]
    assert slots[0]["worker"]["state"] == "running"
    assert slots[0]["worker"]["uptime_s"] >= 0
    assert slots[2]["worker"]["state"] == "exited"
    assert slots[2]["worker"]["exit_code"] == 0
    assert slots[0]["comfyui"] is None
    assert snapshot["hub_error"]  # nothing listens on the hub port: hub columns blank
    assert slots[0]["hub_connected"] is None
    table = wgpu("status", "--docker-host", host, "--hub-url", HUB_URL)
    assert table.exit_code == 0
    assert "gpu2" in table.stdout and "exit 0" in table.stdout


def test_simulate_starts_without_device_requests(host: str, client: docker.DockerClient) -> None:
    # With the sleeper as "ComfyUI" nothing answers on the port: a short wait, then a clear error.
    result = wgpu(
        "start",
        "--simulate",
        "1",
        "--image",
        SLEEPER,
        "--port-base",
        "1",
        "--docker-host",
        host,
        env={"WGPU_TEST": "1"},
    )
    # The simulator command is the image's python -m comfyui_sim, which the sleeper lacks.
    assert result.exit_code == ExitCode.FAILED
    comfyui = client.containers.get("comfyui-gpu0")
    assert comfyui.attrs["HostConfig"]["DeviceRequests"] is None
    assert comfyui.labels["wgpu.simulated"] == "true"
    config = comfyui.attrs["Config"]
    assert config["Entrypoint"] == ["python3"] and config["Cmd"][:2] == ["-m", "comfyui_sim"]
    assert "gpu0 worker: failed" in result.stdout  # not started without its ComfyUI


def test_refused_nvidia_driver_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A daemon started without nvidia-container-runtime-hook on its PATH refuses GPU requests
    # the way a host without the NVIDIA Container Toolkit does.
    monkeypatch.setattr(docker_fixtures, "_hook_dir", lambda: tmp_path)
    try:
        daemon = docker_fixtures.start_extra_dockerd("nohook")
    except (docker_fixtures.DockerUnavailable, BaseImageError) as exc:
        service_missing("extra Docker Engine", str(exc))
    with contextlib.closing(daemon.client()) as client:
        image = ensure_base_image(client)
        result = wgpu("start", "--gpus", "0,1", "--image", image, "--docker-host", daemon.host)
        assert result.exit_code == ExitCode.FAILED
        assert NVIDIA_HINT in result.stderr.replace("\n", " ")
        assert result.stderr.count("NVIDIA Container Toolkit") == 1
        assert client.containers.list(all=True) == []


def test_unreachable_engine_exits_unreachable(tmp_path: Path) -> None:
    result = wgpu("status", "--docker-host", f"unix://{tmp_path}/nothing.sock")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "cannot reach the Docker engine" in result.stderr


# --- the real worker image, with the simulator as each GPU's ComfyUI, joining a real hub --------


def free_port_pair() -> int:
    """A port P with P and P+1 free on 127.0.0.1 (ComfyUI of slots 0 and 1 on host network)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65000 and port_free(port) and port_free(port + 1):
            return port
    raise AssertionError("no two consecutive free ports")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def load_into(client: docker.DockerClient, source: docker.DockerClient, tag: str) -> None:
    """Copy an image from the main test daemon (where the worker_image fixture builds it)."""
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        for _ in client.api.load_image(source.images.get(tag).save(named=True)):
            pass


async def test_worker_image_with_simulators_joins_the_hub(
    host: str,
    client: docker.DockerClient,
    docker_client: docker.DockerClient,
    worker_image: str,
    hub_factory: HubFactory,
) -> None:
    await asyncio.to_thread(load_into, client, docker_client, worker_image)
    hub = await hub_factory()
    port_base = free_port_pair()
    common = ("--docker-host", host, "--hub-url", hub.url)
    started = await asyncio.to_thread(
        wgpu,
        "start",
        "--simulate",
        "2",
        "--image",
        worker_image,
        "--port-base",
        str(port_base),
        "--machine-id",
        "e2e",
        *common,
    )
    assert started.exit_code == 0, started.output
    assert started.stdout.count("comfyui: started") == 2
    assert started.stdout.count("worker: started") == 2
    sims = {c.name: c for c in client.containers.list(filters={"label": "wgpu.role=comfyui"})}
    assert sorted(sims) == ["comfyui-gpu0", "comfyui-gpu1"]
    assert all(c.attrs["HostConfig"]["DeviceRequests"] is None for c in sims.values())

    async with AsyncHubClient(hub.url) as api:

        async def connected() -> set[str]:
            return {w["id"] for w in await api.get_workers() if w["connected"]}

        deadline = time.monotonic() + 30
        while await connected() != {"e2e-gpu0", "e2e-gpu1"}:
            assert time.monotonic() < deadline, "the workers did not join the hub"
            await asyncio.sleep(0.1)

    result = await asyncio.to_thread(wgpu, "status", "--json", *common)
    slots = {slot["index"]: slot for slot in json.loads(result.stdout)["slots"]}
    for index in (0, 1):
        assert slots[index]["simulated"] is True
        assert slots[index]["worker"]["state"] == "running"
        assert slots[index]["comfyui"]["state"] == "running"
        assert slots[index]["hub_connected"] is True
    sim_logs = await asyncio.to_thread(
        wgpu, "logs", "1", "--service", "comfyui", "--docker-host", host
    )
    assert sim_logs.exit_code == 0 and str(port_base + 1) in sim_logs.stdout

    stopped = await asyncio.to_thread(wgpu, "stop", "all", "-t", "10", "--docker-host", host)
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout.count("stopped") == 4
    assert client.containers.list(filters={"label": "wgpu.managed=true"}) == []
    await close_hub(hub)


def test_setup_with_an_image(host: str) -> None:
    present = wgpu("setup", "--image", SLEEPER, "--docker-host", host)
    assert present.exit_code == 0 and f"worker image {SLEEPER} is present" in present.stdout
    missing = wgpu("setup", "--image", "wgpu-test/none:0", "--docker-host", host)
    assert missing.exit_code == ExitCode.NOT_FOUND
    assert "wgpu-test/none:0 not found" in missing.stderr


def test_setup_finds_an_existing_worker_image(host: str, client: docker.DockerClient) -> None:
    # Tagged as the image `setup` would build for this base, so it must not build anything.
    base = ensure_base_image(client)
    tag = worker_images.worker_image_tag(base)
    client.images.get(SLEEPER).tag(tag)
    try:
        result = wgpu("setup", "--base-image", base, "--docker-host", host)
        assert result.exit_code == 0, result.output
        assert f"worker image {tag} is present" in result.stdout
    finally:
        client.images.remove(tag)


def test_setup_reports_a_failed_build(host: str) -> None:
    result = wgpu("setup", "--base-image", "wgpu-test/no-such-base:0", "--docker-host", host)
    assert result.exit_code == ExitCode.FAILED
    assert "error:" in result.stderr and "failed" in result.stderr


def test_logs_follow_interleaves_new_lines(host: str, client: docker.DockerClient) -> None:
    start_three(host)
    follow = FollowedCommand("logs", "all", "-f", "--tail", "1", "--docker-host", host)
    try:
        for index in range(3):
            follow.wait_for_line(f"gpu{index} | ready")
        assert wgpu("stop", "1", "-t", "5", "--docker-host", host).exit_code == 0
        follow.wait_for_line("gpu1 | bye")
        assert follow.process.poll() is None  # still following the other two
    finally:
        follow.close()


async def test_comfyui_image_beside_each_pinned_worker(
    host: str,
    client: docker.DockerClient,
    docker_client: docker.DockerClient,
    worker_image: str,
    hub_factory: HubFactory,
) -> None:
    # The worker image holds the simulator, so it stands in for a ComfyUI image here.
    await asyncio.to_thread(load_into, client, docker_client, worker_image)
    hub = await hub_factory()
    port_base = free_port_pair()
    started = await asyncio.to_thread(
        wgpu,
        "start",
        "--gpus",
        "0,1",
        "--image",
        worker_image,
        "--comfyui-image",
        worker_image,
        "--comfyui-cmd",
        "python3 -m comfyui_sim --host 127.0.0.1 --port {port}",
        "--port-base",
        str(port_base),
        "--machine-id",
        "pinned",
        "--hub-url",
        hub.url,
        "--docker-host",
        host,
    )
    assert started.exit_code == 0, started.output
    for index in (0, 1):
        comfyui = client.containers.get(f"comfyui-gpu{index}")
        worker = client.containers.get(f"comfy-worker-gpu{index}")
        assert env_of(comfyui)["NVIDIA_VISIBLE_DEVICES"] == str(index)
        assert comfyui.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [str(index)]
        assert comfyui.labels["wgpu.role"] == "comfyui"
        assert port_base + index == int(env_of(worker)["EXECUTION_SERVICE_PORT"])
        # ComfyUI first: the worker was created only after its ComfyUI answered.
        comfyui_started = parse_docker_time(comfyui.attrs["State"]["StartedAt"])
        worker_created = parse_docker_time(worker.attrs["Created"])
        assert comfyui_started is not None and worker_created is not None
        assert comfyui_started < worker_created
    async with AsyncHubClient(hub.url) as api:
        deadline = time.monotonic() + 30
        wanted = {"pinned-gpu0", "pinned-gpu1"}
        while {w["id"] for w in await api.get_workers() if w["connected"]} != wanted:
            assert time.monotonic() < deadline, "the workers did not join the hub"
            await asyncio.sleep(0.1)
    stopped = await asyncio.to_thread(wgpu, "stop", "0", "-t", "10", "--docker-host", host)
    assert "gpu0 worker: stopped" in stopped.stdout and "gpu0 comfyui: stopped" in stopped.stdout
    running = {c.name for c in client.containers.list(filters={"label": "wgpu.managed=true"})}
    assert running == {"comfyui-gpu1", "comfy-worker-gpu1"}
    await asyncio.to_thread(wgpu, "stop", "all", "-t", "10", "--docker-host", host)
    await close_hub(hub)


def test_a_foreign_container_with_the_name_is_left_alone(
    host: str, client: docker.DockerClient
) -> None:
    foreign = client.containers.create(
        SLEEPER, name="comfy-worker-gpu0", labels={"wgpu.test": "1"}, network_mode="host"
    )
    result = wgpu("start", "--gpus", "0,1", "--image", SLEEPER, "--docker-host", host)
    assert result.exit_code == ExitCode.PARTIAL
    assert "wgpu did not create" in result.stdout
    assert client.containers.get("comfy-worker-gpu0").id == foreign.id
    assert workers(client)["comfy-worker-gpu1"].status == "running"


def test_an_image_rebuilt_under_the_same_tag_recreates(
    host: str, client: docker.DockerClient
) -> None:
    rolling = "wgpu-test/orch-sleeper:rolling"
    client.images.get(SLEEPER).tag(rolling)
    start_three(host, image=rolling, target="0")
    before = workers(client)["comfy-worker-gpu0"].id
    base = ensure_base_image(client)
    build_sleeper_image(client, base, rolling, extra_label=str(time.time()))
    out = start_three(host, image=rolling, target="0")
    assert "gpu0 worker: recreated" in out
    assert workers(client)["comfy-worker-gpu0"].id != before
