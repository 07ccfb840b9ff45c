"""Orchestrator: `wgpu start all --simulate 8` against a sequential `docker run` loop creating the
same containers, and one full `wgpu status` refresh for 8 slots. Needs a Docker Engine (the test
daemon at unix:///run/wgpu-test/docker.sock, or $WGPU_TEST_DOCKER_HOST); without one it prints
why and skips. `python -m bench.orchestrator_bench [--quick] [--slots 8]`."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from bench import procs
from bench.hub_system import HubProcess
from bench.report import Table, emit
from bench.stats import percentile
from orchestrator.backends.common import port_answers
from orchestrator.backends.docker_backend import READY_PORT_POLL_S

DOCKER_HOST = os.environ.get("WGPU_TEST_DOCKER_HOST", "unix:///run/wgpu-test/docker.sock")
MACHINE_ID = "wgpubench"


def _docker_client() -> Any:
    import docker

    client = docker.DockerClient(base_url=DOCKER_HOST, timeout=120)
    client.ping()
    return client


def _ours(client: Any) -> list[Any]:
    return list(
        client.containers.list(all=True, filters={"label": f"wgpu.machine_id={MACHINE_ID}"})
    )


def _bench_containers(client: Any) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": "wgpu.bench=1"}))


def _remove(containers: list[Any]) -> None:
    import docker.errors

    for container_id in {c.id for c in containers}:
        with contextlib.suppress(docker.errors.NotFound):
            containers[0].client.api.remove_container(container_id, force=True)


def docker_run_args(container: Any) -> list[str]:
    """The `docker run` a person would type for the same container."""
    attrs = container.attrs
    config, host = attrs["Config"], attrs["HostConfig"]
    args = ["docker", "-H", DOCKER_HOST, "run", "-d", "--name", container.name + "-loop"]
    args += ["--network", host.get("NetworkMode") or "host"]
    for key, value in (config.get("Labels") or {}).items():
        if key != "wgpu.managed":  # keep the loop's containers out of wgpu's view
            args += ["--label", f"{key}={value}"]
    args += ["--label", "wgpu.test=1", "--label", "wgpu.bench=1"]
    for item in config.get("Env") or []:
        args += ["-e", item]
    for request in host.get("DeviceRequests") or []:
        ids = ",".join(request.get("DeviceIDs") or [])
        args += ["--gpus", f"device={ids}" if ids else "all"]
    if config.get("Entrypoint"):
        args += ["--entrypoint", config["Entrypoint"][0]]
        command = list(config["Entrypoint"][1:]) + list(config.get("Cmd") or [])
    else:
        command = list(config.get("Cmd") or [])
    return [*args, config["Image"], *command]


def _wgpu(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 300
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    result = subprocess.run(
        procs.module_cmd("orchestrator", *args),
        capture_output=True,
        text=True,
        env=procs.child_env(env),
        cwd=procs.REPO_ROOT,
        timeout=timeout_s,
    )
    return time.perf_counter() - t0, result


def _status_samples(hub_url: str, common: list[str], quick: bool) -> dict[str, Any]:
    status_s, refresh_ms = [], []
    raw: dict[str, Any] = {}
    for _ in range(3 if quick else 5):
        elapsed, result = _wgpu("status", "--json", "--hub-url", hub_url, *common)
        if result.returncode == 0:
            status_s.append(elapsed)
            with_elapsed = json.loads(result.stdout or "{}")
            if isinstance(with_elapsed, dict) and "elapsed_ms" in with_elapsed:
                refresh_ms.append(float(with_elapsed["elapsed_ms"]))
        else:
            raw["status_error"] = result.stderr[-800:]
    raw["status_cli_s"], raw["status_refresh_ms"] = status_s, refresh_ms
    return raw


def _loop_plan(created: list[Any], port_base: int) -> list[tuple[list[str], int | None]]:
    """`docker run` per container, each slot's ComfyUI first, with the port it answers on."""

    def key(container: Any) -> tuple[int, bool]:
        labels = container.labels
        return int(labels.get("wgpu.gpu_index", "0")), labels.get("wgpu.role") != "comfyui"

    plan = []
    for container in sorted(created, key=key):
        index, is_worker = key(container)
        plan.append((docker_run_args(container), None if is_worker else port_base + index))
    return plan


def _run_loop(plan: list[tuple[list[str], int | None]], wait_for_comfyui: bool) -> float:
    """The loop a person would type; with `wait_for_comfyui`, the work `wgpu start` does."""
    t0 = time.perf_counter()
    for cmd, port in plan:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        if wait_for_comfyui and port is not None:
            # The same probe, at the same interval, as `wgpu start` uses: equal work.
            answers = functools.partial(port_answers, port)
            procs.wait_until(answers, 120, READY_PORT_POLL_S, f"port {port}")
    return time.perf_counter() - t0


def _engine_floor(client: Any, created: list[Any]) -> float:
    """The engine alone: the same containers created and started all at once (a docker-py
    thread each, no CLI, no waiting for ComfyUI): what no client can go below."""

    def create_and_start(container: Any) -> None:
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        labels = {k: v for k, v in (config.get("Labels") or {}).items() if k != "wgpu.managed"}
        made = client.api.create_container(
            image=config["Image"],
            name=f"{container.name}-floor",
            command=config.get("Cmd"),
            entrypoint=config.get("Entrypoint"),
            environment=config.get("Env"),
            labels={**labels, "wgpu.test": "1", "wgpu.bench": "1"},
            host_config=client.api.create_host_config(
                network_mode=host.get("NetworkMode") or "host"
            ),
        )
        client.api.start(made["Id"])

    threads = [threading.Thread(target=create_and_start, args=(c,)) for c in created]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t0


@contextlib.contextmanager
def _engine_lock() -> Iterator[None]:
    """On a shared machine (WGPU_DOCKER_LOCK=/tmp/wgpu-docker.lock), hold the Docker Engine's
    lock while this benchmark uses it, and only then, as `flock` around a test run does."""
    path = os.environ.get("WGPU_DOCKER_LOCK", "")
    if not path:
        yield
        return
    with open(path, "a") as handle:
        print(f"orchestrator: waiting for {path} ...", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(quick: bool, slots: int = 8) -> tuple[list[Table], dict[str, Any]]:
    with _engine_lock():
        return _run(quick, slots)


def _run(quick: bool, slots: int) -> tuple[list[Table], dict[str, Any]]:
    table = Table(f"Orchestrator: {slots} simulated slots", ["measure", "ms", "ratio"])
    raw: dict[str, Any] = {}
    try:
        client = _docker_client()
    except Exception as exc:
        print(f"orchestrator: skipped, no Docker Engine at {DOCKER_HOST}: {exc}", flush=True)
        table.notes.append(f"skipped: no Docker Engine at {DOCKER_HOST}")
        return [table], {"skipped": str(exc)}
    from orchestrator.images.base import ensure_base_image
    from orchestrator.images.worker import ensure_worker_image

    print("orchestrator: making sure the worker image exists (not timed) ...", flush=True)
    image = ensure_worker_image(client, ensure_base_image(client))
    # Below the ephemeral range (32768-60999 here): a readiness probe of a port inside it can
    # connect to itself and keep that slot's simulator from binding (EADDRINUSE).
    port_base = random.randrange(20000, 32000 - slots)
    common = ["--docker-host", DOCKER_HOST, "--machine-id", MACHINE_ID]
    repeats = 2 if quick else 3
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as server:
        hub = HubProcess(server.url, tmp / "logs").start()
        try:
            _remove(_ours(client) + _bench_containers(client))
            start_args = ["start", "all", "--simulate", str(slots), "--image", image]
            start_args += ["--hub-url", hub.url, "--port-base", str(port_base), *common]
            samples: dict[str, list[float]] = {"wgpu": [], "loop": [], "loop_wait": [], "floor": []}
            raw["samples_s"] = samples  # filled as it goes: a failure keeps what was measured
            loop_cmds: list[tuple[list[str], int | None]] = []
            created: list[Any] = []
            for rep in range(repeats):  # alternated, so load from elsewhere falls on all three
                start_s, result = _wgpu(*start_args)
                if result.returncode != 0:
                    said = (result.stdout + result.stderr)[-800:]
                    raise RuntimeError(f"wgpu start failed ({result.returncode}): {said}")
                samples["wgpu"].append(start_s)
                if rep == 0:
                    created = _ours(client)
                    raw["containers"] = len(created)
                    raw.update(_status_samples(hub.url, common, quick))
                    loop_cmds = _loop_plan(created, port_base)
                _wgpu("stop", "all", "--timeout", "1", *common)
                _remove(_ours(client))
                samples["loop"].append(_run_loop(loop_cmds, wait_for_comfyui=False))
                _remove(_bench_containers(client))
                samples["loop_wait"].append(_run_loop(loop_cmds, wait_for_comfyui=True))
                _remove(_bench_containers(client))
                samples["floor"].append(_engine_floor(client, created))
                _remove(_bench_containers(client))
        except Exception as exc:
            table.notes.append(f"failed: {type(exc).__name__}: {exc}")
            raw["error"] = str(exc)
        finally:
            try:
                _remove(_ours(client) + _bench_containers(client))
            finally:
                hub.stop()
    samples = raw.get("samples_s", {})
    if samples.get("loop") and samples.get("loop_wait"):
        n = raw["containers"]
        med = {k: percentile(v, 50) for k, v in samples.items()}
        spread = {k: f" ({min(v) * 1000:,.0f}-{max(v) * 1000:,.0f})" for k, v in samples.items()}
        table.add(
            f"wgpu start all --simulate {slots} ({n} containers){spread['wgpu']}",
            med["wgpu"] * 1000,
            med["wgpu"] / med["loop"],
        )
        loop_label = f"sequential docker run loop ({n} containers){spread['loop']}"
        table.add(loop_label, med["loop"] * 1000, 1.0)
        table.add(
            f"the same loop, each worker after its ComfyUI answers{spread['loop_wait']}",
            med["loop_wait"] * 1000,
            med["loop_wait"] / med["loop"],
        )
        table.add(
            f"engine floor: the {n} created and started at once, no CLI{spread['floor']}",
            med["floor"] * 1000,
            med["floor"] / med["loop"],
        )
        raw["wgpu_start_s"], raw["docker_loop_s"] = med["wgpu"], med["loop"]
        raw["engine_floor_s"] = med["floor"]
    if raw.get("status_cli_s"):
        table.add(
            "wgpu status --json (whole CLI process, median)",
            percentile(raw["status_cli_s"], 50) * 1000,
            None,
        )
    if raw.get("status_refresh_ms"):
        table.add(
            "one status refresh (in-process, median)",
            percentile(raw["status_refresh_ms"], 50),
            None,
        )
    table.notes.append(f"median of {repeats} alternated runs (min-max ms in brackets)")
    table.notes.append("both sides include their CLI's process start; ratio = wgpu / docker loop")
    return [table], raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    tables, raw = run(args.quick, args.slots)
    emit("orchestrator", tables, raw)


if __name__ == "__main__":
    main()
