"""The Docker fixture gives a real engine: GPU pinning without a GPU, the base image, cleanup."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.types import DeviceRequest

from orchestrator.images.base import BASE_IMAGE_TAG
from orchestrator.stack.local_redis import free_port
from tests.fixtures.docker import (
    DockerDaemon,
    _remove_stale_pidfile,
    labelled_containers,
    main_daemon_layout,
    reap_orphan_extra_daemons,
    remove_labelled_containers,
    stop_extra_daemons,
)

pytestmark = pytest.mark.docker


def _run_to_exit(container: Container, timeout_s: float = 30) -> tuple[int, str]:
    result = container.wait(timeout=timeout_s)
    return int(result["StatusCode"]), container.logs().decode()


def test_nvidia_device_request_pins_gpu_1(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    container = docker_client.containers.run(
        base_image,
        ["sh", "-c", 'echo "visible=$NVIDIA_VISIBLE_DEVICES"'],
        device_requests=[DeviceRequest(driver="nvidia", device_ids=["1"], capabilities=[["gpu"]])],
        network_mode="host",
        labels={"wgpu.test": "1"},
        detach=True,
    )
    status, logs = _run_to_exit(container)
    assert status == 0, logs
    assert logs.strip() == "visible=1"


def test_base_image_has_python_pip_venv_and_ca_bundle(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    assert base_image == BASE_IMAGE_TAG
    script = (
        "import os, ssl, sys, venv, pip; "
        "cert = os.environ['PIP_CERT']; "
        "print(sys.version_info[:2] == (3, 11), os.path.getsize(cert) > 0, "
        "ssl.create_default_context(cafile=cert).cert_store_stats()['x509_ca'] > 0)"
    )
    output = docker_client.containers.run(
        base_image,
        ["python3", "-c", script],
        network_mode="host",
        labels={"wgpu.test": "1"},
        remove=True,
    )
    assert output.decode().split() == ["True", "True", "True"]


def test_host_networking_reaches_loopback(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    # A server inside the container on 127.0.0.1 answers the host: traffic never leaves loopback.
    port = free_port()
    container = docker_client.containers.run(
        base_image,
        ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        network_mode="host",
        labels={"wgpu.test": "1"},
        detach=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                assert reply.status == 200
                break
        except OSError:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            assert time.monotonic() < deadline, "the server in the container never answered"
            time.sleep(0.05)


def test_cleanup_removes_labelled_containers_only(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    def create(labels: dict[str, str]) -> Container:
        return docker_client.containers.create(
            base_image, ["sleep", "60"], network_mode="host", labels=labels
        )

    managed = create({"wgpu.managed": "true"})
    tested = create({"wgpu.test": "1"})
    unlabelled = create({"something.else": "1"})
    try:
        ids = {c.id for c in labelled_containers(docker_client)}
        assert {managed.id, tested.id} <= ids
        assert unlabelled.id not in ids
        removed = remove_labelled_containers(docker_client, keep=lambda c: c.id not in ids)
        assert set(removed) == {managed.id, tested.id} & ids
        remaining = {c.id for c in docker_client.containers.list(all=True)}
        assert managed.id not in remaining and tested.id not in remaining
        assert unlabelled.id in remaining
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            unlabelled.remove(force=True)


@pytest.mark.slow
def test_extra_dockerd_is_separate_has_the_base_image_and_stops(
    extra_dockerd: Callable[[str], DockerDaemon], docker_daemon: DockerDaemon
) -> None:
    daemon = extra_dockerd("fleet-b")
    assert daemon.host != docker_daemon.host
    with contextlib.closing(daemon.client()) as client:
        assert client.info()["DockerRootDir"] == str(daemon.data_root)
        output = client.containers.run(
            BASE_IMAGE_TAG,
            ["python3", "-c", "print('from-b')"],
            network_mode="host",
            labels={"wgpu.test": "1"},
            remove=True,
        )
        assert output.decode().strip() == "from-b"
    process = daemon.process
    assert process is not None and daemon.data_root is not None

    stop_extra_daemons()  # what session end does

    assert process.poll() is not None
    assert not daemon.answers()
    assert not daemon.data_root.exists()
    assert not Path(daemon.host.removeprefix("unix://")).parent.exists()
    assert docker_daemon.answers()  # the shared daemon is never stopped


@pytest.mark.slow
def test_extra_dockerd_of_a_crashed_session_is_reaped(docker_daemon: DockerDaemon) -> None:
    # A session that dies without its session end leaves its extra daemon running.
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from tests.fixtures.docker import start_extra_dockerd as s; "
            "d = s('orphan', load_base_image=False); "
            "print(d.process.pid, d.pidfile.parent, d.data_root, flush=True); "
            "os._exit(0)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == 0, crashed.stderr
    pid, state_dir, data_root = crashed.stdout.split()
    assert Path(f"/proc/{pid}").exists()

    reaped = reap_orphan_extra_daemons()

    assert Path(state_dir) in reaped
    assert not Path(state_dir).exists() and not Path(data_root).exists()
    assert (
        not Path(f"/proc/{pid}/cmdline").exists()
        or b"dockerd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    assert docker_daemon.answers()


def test_a_pidfile_left_by_a_killed_daemon_is_removed_before_a_start(
    tmp_path: Path, docker_daemon: DockerDaemon
) -> None:
    """dockerd refuses to start while its pidfile exists; a SIGKILLed daemon leaves one."""
    pidfile = tmp_path / "docker.pid"
    pidfile.write_text(str(os.getpid()))  # a live process, but not dockerd: a reused pid
    _remove_stale_pidfile(pidfile)
    assert not pidfile.exists()

    running = main_daemon_layout().pidfile
    assert running is not None and running.exists()  # the fixture's daemon is up
    live = tmp_path / "live.pid"
    live.write_text(running.read_text())
    _remove_stale_pidfile(live)
    assert live.exists()
