"""`wgpu ... --backend process`: one local worker process per GPU in the original layout."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from orchestrator.console import ExitCode
from orchestrator.hub_client.client import AsyncHubClient
from orchestrator.processes import start_ticks
from tests.fixtures.hub import HubFactory
from tests.orchestrator.backends.helpers import FollowedCommand, close_hub, wait_for, wgpu

# A stand-in worker: prints its environment and idles; SIGTERM ends it at once (exit 0).
WORKER_SCRIPT = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(0)))
for key in sorted(os.environ):
    print(f"{key}={os.environ[key]}", flush=True)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""
# One that ignores SIGTERM: stop must kill it after the grace period.
STUBBORN_SCRIPT = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def alive(pid: int) -> bool:
    return start_ticks(pid) is not None


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "workers"


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "fake_comfy_worker.py"
    script.write_text(WORKER_SCRIPT)
    return {"WGPU_WORKER_CMD": f"{sys.executable} {script}"}


@pytest.fixture(autouse=True)
def stop_everything(base: Path, worker_env: dict[str, str]) -> Iterator[None]:
    yield
    wgpu("stop", "--backend", "process", "--base-dir", str(base), "-t", "1")


def pid_of(base: Path, index: int, role: str = "worker") -> int:
    return int((base / f"worker_gpu{index}" / f"{role}.pid").read_text())


def log_of(base: Path, index: int) -> str:
    return (base / f"worker_gpu{index}" / "logs" / "output.log").read_text()


def printed_ready(base: Path, index: int) -> bool:
    return "ready" in log_of(base, index)


def start(base: Path, env: dict[str, str], *extra: str) -> str:
    result = wgpu(
        "start",
        *extra,
        "--backend",
        "process",
        "--base-dir",
        str(base),
        "--machine-id",
        "pod",
        "--hub-url",
        "http://127.0.0.1:18001",
        env=env,
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def status(base: Path) -> dict[int, dict[str, object]]:
    result = wgpu(
        "status",
        "--json",
        "--backend",
        "process",
        "--base-dir",
        str(base),
        "--hub-url",
        "http://127.0.0.1:1",
    )
    assert result.exit_code == 0, result.output
    return {slot["index"]: slot for slot in json.loads(result.stdout)["slots"]}


def test_start_pins_each_process_to_its_gpu(base: Path, worker_env: dict[str, str]) -> None:
    out = start(base, worker_env, "--gpus", "0,1")
    assert out.count("started") == 2
    for index in (0, 1):
        assert alive(pid_of(base, index))
        wait_for(partial(printed_ready, base, index), what=f"worker {index} to print")
        env = dict(line.split("=", 1) for line in log_of(base, index).splitlines() if "=" in line)
        assert env["CUDA_VISIBLE_DEVICES"] == str(index)
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert env["GPU_ID"] == str(index)
        assert env["EXECUTION_SERVICE_PORT"] == str(8188 + index)
        assert (env["MACHINE_ID"], env["REDIS_API_PORT"]) == ("pod", "18001")
        # Its own health file: workers on one host must not share /tmp's default.
        assert env["HEALTH_FILE"] == str((base / f"worker_gpu{index}" / "health.json").resolve())
    # In its own session: it outlives the CLI and `stop` can signal its whole group.
    assert os.getsid(pid_of(base, 0)) == pid_of(base, 0)


def test_second_start_keeps_the_same_processes(base: Path, worker_env: dict[str, str]) -> None:
    start(base, worker_env, "--gpus", "0,1")
    pids = [pid_of(base, 0), pid_of(base, 1)]
    out = start(base, worker_env, "--gpus", "0,1")
    assert out.count("already running") == 2
    assert [pid_of(base, 0), pid_of(base, 1)] == pids
    # A changed hub address restarts that GPU's worker with the new env.
    result = wgpu(
        "start",
        "1",
        "--gpus",
        "0,1",
        "--backend",
        "process",
        "--base-dir",
        str(base),
        "--machine-id",
        "pod",
        "--hub-url",
        "http://127.0.0.1:18002",
        env=worker_env,
    )
    assert "gpu1 worker: recreated" in result.stdout
    assert pid_of(base, 1) != pids[1] and not alive(pids[1])
    assert pid_of(base, 0) == pids[0]


def test_stop_touches_only_that_gpu(base: Path, worker_env: dict[str, str]) -> None:
    start(base, worker_env, "--gpus", "0,1")
    first, second = pid_of(base, 0), pid_of(base, 1)
    wait_for(lambda: "ready" in log_of(base, 0), what="worker 0 to start")
    result = wgpu("stop", "0", "--backend", "process", "--base-dir", str(base), "-t", "5")
    assert result.exit_code == 0, result.output
    assert "gpu0 worker: stopped" in result.stdout
    assert not alive(first) and alive(second)
    assert "bye" in log_of(base, 0)  # it got SIGTERM, not a kill
    assert not (base / "worker_gpu0" / "worker.pid").exists()
    slots = status(base)
    assert slots[0]["worker"]["state"] == "exited"  # type: ignore[index]
    assert slots[1]["worker"]["state"] == "running"  # type: ignore[index]
    # --gpus names GPUs for stop as it does for start (README: options everywhere).
    by_option = wgpu("stop", "--gpus", "1", "--backend", "process", "--base-dir", str(base))
    assert by_option.exit_code == 0, by_option.output
    assert "gpu1 worker: stopped" in by_option.stdout and "gpu0" not in by_option.stdout
    assert not alive(second)


def test_stop_kills_a_worker_that_ignores_sigterm(base: Path, tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_SCRIPT)
    start(base, {"WGPU_WORKER_CMD": f"{sys.executable} {script}"}, "--gpus", "0")
    pid = pid_of(base, 0)
    wait_for(lambda: "ready" in log_of(base, 0), what="the stubborn worker to start")
    result = wgpu("stop", "0", "--backend", "process", "--base-dir", str(base), "-t", "0.3")
    assert result.exit_code == 0, result.output
    assert not alive(pid)


def test_restart_runs_it_again_as_configured(base: Path, worker_env: dict[str, str]) -> None:
    start(base, worker_env, "--gpus", "0,1")
    old = pid_of(base, 1)
    wait_for(lambda: "ready" in log_of(base, 1), what="worker 1 to start")
    result = wgpu("restart", "1", "--backend", "process", "--base-dir", str(base), "-t", "5")
    assert result.exit_code == 0, result.output
    assert "gpu1 worker: restarted" in result.stdout
    new = pid_of(base, 1)
    assert new != old and alive(new) and not alive(old)
    wait_for(lambda: log_of(base, 1).count("ready") == 2, what="the restarted worker")
    assert "GPU_ID=1" in log_of(base, 1).split("bye")[-1]


def test_logs_of_processes(base: Path, worker_env: dict[str, str]) -> None:
    start(base, worker_env, "--gpus", "0,1")
    for index in (0, 1):
        wait_for(partial(printed_ready, base, index), what=f"worker {index}")
    single = wgpu("logs", "0", "--tail", "1", "--backend", "process", "--base-dir", str(base))
    assert single.stdout.splitlines() == ["ready"]
    both = wgpu("logs", "--backend", "process", "--base-dir", str(base))
    assert "gpu0 | GPU_ID=0" in both.stdout.splitlines()
    assert "gpu1 | GPU_ID=1" in both.stdout.splitlines()


def test_stale_pid_of_a_process_that_is_gone(base: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    slot = base / "worker_gpu3"
    slot.mkdir(parents=True)
    (slot / "worker.pid").write_text(f"{gone.pid}\n")
    assert status(base)[3]["worker"]["state"] == "stale"  # type: ignore[index]
    result = wgpu("stop", "3", "--backend", "process", "--base-dir", str(base))
    assert result.exit_code == 0, result.output
    assert "stale PID file removed" in result.stdout
    assert not (slot / "worker.pid").exists()


def test_stale_pid_reused_by_another_program_is_left_alone(base: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        # Case 1: our metadata recorded another start time for this PID.
        reused = base / "worker_gpu4"
        reused.mkdir(parents=True)
        (reused / "worker.pid").write_text(f"{other.pid}\n")
        ticks = start_ticks(other.pid)
        assert ticks is not None
        meta = {"pid": other.pid, "start_ticks": ticks - 1, "command": ["x"], "env": {}}
        (reused / "worker.json").write_text(json.dumps(meta))
        # Case 2: an original-layout PID file alone, pointing at a program that is no worker.
        bare = base / "worker_gpu5"
        bare.mkdir(parents=True)
        (bare / "worker.pid").write_text(f"{other.pid}\n")
        slots = status(base)
        assert slots[4]["worker"]["state"] == "stale"  # type: ignore[index]
        assert slots[5]["worker"]["state"] == "stale"  # type: ignore[index]
        result = wgpu("stop", "all", "--backend", "process", "--base-dir", str(base), "-t", "1")
        assert result.exit_code == 0, result.output
        assert other.poll() is None  # the other program was not signalled
        assert not (reused / "worker.pid").exists() and not (bare / "worker.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_unknown_gpu_is_not_found(base: Path) -> None:
    result = wgpu("stop", "9", "--backend", "process", "--base-dir", str(base))
    assert result.exit_code == ExitCode.NOT_FOUND
    bad = wgpu("stop", "nine", "--backend", "process", "--base-dir", str(base))
    assert bad.exit_code == ExitCode.USAGE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_simulate_runs_simulator_and_real_worker_joining_the_hub(
    base: Path, hub_factory: HubFactory
) -> None:
    hub = await hub_factory()
    port = free_port()
    common = ("--backend", "process", "--base-dir", str(base))
    started = await asyncio.to_thread(
        wgpu,
        "start",
        "--simulate",
        "1",
        "--port-base",
        str(port),
        "--hub-url",
        hub.url,
        "--machine-id",
        "pod",
        *common,
    )
    assert started.exit_code == 0, started.output
    assert "gpu0 comfyui: started" in started.stdout and "gpu0 worker: started" in started.stdout
    slot = base / "worker_gpu0"
    assert (slot / "comfyui.pid").exists() and (slot / "logs" / "comfyui.log").exists()
    async with AsyncHubClient(hub.url) as api:
        deadline = time.monotonic() + 20
        while not [w for w in await api.get_workers() if w["id"] == "pod-gpu0" and w["connected"]]:
            assert time.monotonic() < deadline, log_of(base, 0)
            await asyncio.sleep(0.1)
    health = slot / "health.json"  # the real worker writes its own, not /tmp's shared one
    wait_for(health.exists, what="the worker's health file")
    assert json.loads(health.read_text())["worker_id"] == "pod-gpu0"
    result = await asyncio.to_thread(wgpu, "status", "--json", "--hub-url", hub.url, *common)
    [row] = json.loads(result.stdout)["slots"]
    assert row["comfyui"]["state"] == "running" and row["hub_connected"] is True
    stopped = await asyncio.to_thread(wgpu, "stop", "-t", "10", *common)
    assert stopped.exit_code == 0, stopped.output
    assert "gpu0 worker: stopped" in stopped.stdout and "gpu0 comfyui: stopped" in stopped.stdout
    assert not (slot / "comfyui.pid").exists() and not (slot / "worker.pid").exists()
    await close_hub(hub)


def test_logs_follow_of_processes(base: Path, worker_env: dict[str, str]) -> None:
    start(base, worker_env, "--gpus", "0,1")
    common = ("--backend", "process", "--base-dir", str(base))
    for index in (0, 1):
        wait_for(partial(printed_ready, base, index), what=f"worker {index}")
    follow = FollowedCommand("logs", "all", "-f", "--tail", "1", *common)
    try:
        for index in (0, 1):  # the follower is following once it has printed the tails
            follow.wait_for_line(f"gpu{index} | ready")
        assert wgpu("stop", "0", "-t", "5", *common).exit_code == 0
        follow.wait_for_line("gpu0 | bye")
        assert not any(line.startswith("gpu1 | bye") for line in follow.lines)
    finally:
        follow.close()


def test_comfyui_cmd_runs_a_pinned_comfyui_process(base: Path, worker_env: dict[str, str]) -> None:
    port = free_port()
    out = start(
        base,
        worker_env,
        "--gpus",
        "3",
        "--port-base",
        str(port - 3),
        "--comfyui-cmd",
        f"{sys.executable} -m comfyui_sim --host 127.0.0.1 --port {{port}}",
    )
    assert "gpu3 comfyui: started" in out and "gpu3 worker: started" in out
    comfyui_pid = pid_of(base, 3, "comfyui")
    environ = Path(f"/proc/{comfyui_pid}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=3" in environ and b"CUDA_DEVICE_ORDER=PCI_BUS_ID" in environ
    wait_for(partial(printed_ready, base, 3), what="worker 3")
    assert f"EXECUTION_SERVICE_PORT={port}" in log_of(base, 3)


def test_selection_errors_have_their_exit_codes(base: Path) -> None:
    common = ("--backend", "process", "--base-dir", str(base))
    both = wgpu("start", "--gpus", "0", "--simulate", "2", *common)
    assert both.exit_code == ExitCode.USAGE and "either --gpus or --simulate" in both.stderr
    unmanaged = wgpu("start", "5", "--simulate", "2", *common)
    assert unmanaged.exit_code == ExitCode.NOT_FOUND and "GPU 5 is not managed" in unmanaged.stderr
    assert not base.exists()  # nothing was started
