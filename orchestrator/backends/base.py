"""The Backend interface, and what every backend shares: the per-slot plan and its env.

A command builds one `SlotPlan` per GPU (pure: `plan_slots`) and hands the plans to a backend.
Backends report back with `ActionResult`s and describe what runs with `ServiceRecord`s, so the
CLI, status table and tests never see a container or a PID file.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import shlex
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from orchestrator.gpus.slots import Slot
from orchestrator.rollout.worker_src import MOUNT_POINT, WorkerSource
from wgpu_protocol import ports
from wgpu_protocol import worker_env as names
from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.ports import COMFYUI_PORT_BASE, worker_id

ROLE_WORKER = "worker"
ROLE_COMFYUI = "comfyui"
DEFAULT_HUB_URL = f"http://127.0.0.1:{ports.HUB_PORT}"
WORKER_GRACE_DEFAULT_S = names.DEFAULT_GRACE_S
# After its grace a worker still hands the job back (released + ack) and says bye: room for that.
STOP_MARGIN_S = 10.0
# SIGTERM to kill: longer than the worker's grace, so a job finishing in its grace is not killed.
DEFAULT_STOP_TIMEOUT_S = WORKER_GRACE_DEFAULT_S + STOP_MARGIN_S


class Outcome(enum.StrEnum):
    STARTED = "started"
    ALREADY_RUNNING = "already running"
    RECREATED = "recreated"
    RESTARTED = "restarted"
    STOPPED = "stopped"
    NOT_RUNNING = "not running"
    NOT_FOUND = "not found"
    FAILED = "failed"


@dataclass(frozen=True)
class ActionResult:
    index: int
    role: str
    outcome: Outcome
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome not in (Outcome.FAILED, Outcome.NOT_FOUND)


def unmanaged(
    indices: Sequence[int] | None, known: Collection[int], detail: str = "no such worker"
) -> list[ActionResult]:
    """A NOT_FOUND result for each GPU named (none: all) that the backend manages nothing on."""
    return [
        ActionResult(i, ROLE_WORKER, Outcome.NOT_FOUND, detail)
        for i in indices or []
        if i not in known
    ]


@dataclass(frozen=True)
class HubAddress:
    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme in ("https", "wss") else ports.HUB_PORT)

    @property
    def needs_full_url(self) -> bool:
        """REDIS_API_HOST/PORT cannot say TLS or a path prefix: then HUB_URL carries it."""
        parts = urlsplit(self.url)
        return parts.scheme in ("https", "wss") or parts.path not in ("", "/")


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the commands' options decide about the workers (not which GPUs)."""

    machine_id: str
    hub: HubAddress = HubAddress(DEFAULT_HUB_URL)
    image: str = ""  # docker backend: the worker image
    comfyui_image: str | None = None  # docker backend: run comfyui-gpu{N} from this image
    # ComfyUI's command line; {port} and {gpu} are filled in. Docker: replaces the image's
    # command. Process backend: runs ComfyUI as a process per GPU, pinned like the worker.
    comfyui_cmd: str | None = None
    worker_token: str | None = None
    port_base: int = COMFYUI_PORT_BASE
    extra_env: tuple[tuple[str, str], ...] = ()
    worker_src: WorkerSource | None = None  # run the worker from this tree, not the image's
    # Simulated slots: slot index -> the simulator's `--models` values (`wgpu start --simulate N
    # --sim-models "0:checkpoints=a.safetensors;1:checkpoints=b.safetensors"`).
    sim_models: tuple[tuple[int, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class ServicePlan:
    """One thing to run for a slot: its command (None = image default) and environment."""

    role: str
    env: dict[str, str]
    command: tuple[str, ...] | None = None
    image: str = ""
    port: int | None = None  # the port it answers on (ComfyUI), to wait for after start
    # (host path, container path), mounted read-only: the worker repository (--worker-src)
    mounts: tuple[tuple[str, str], ...] = ()

    def config_hash(self, extra: Sequence[str] = ()) -> str:
        """Changes whenever anything that needs a recreate changes (image, env, command...)."""
        body: dict[str, object] = {
            "role": self.role,
            "env": self.env,
            "command": self.command,
            "image": self.image,
            "extra": list(extra),
        }
        if self.mounts:  # only then: services without mounts keep the hash they had
            body["mounts"] = [list(mount) for mount in self.mounts]
        payload = json.dumps(body, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SlotPlan:
    slot: Slot
    machine_id: str
    worker: ServicePlan
    comfyui: ServicePlan | None = None  # started first, and waited on


def _service_json(service: ServicePlan) -> dict[str, object]:
    return {
        "role": service.role,
        "env": service.env,
        "command": list(service.command) if service.command is not None else None,
        "image": service.image,
        "port": service.port,
        "mounts": [list(mount) for mount in service.mounts],
    }


def _service_from(raw: dict[str, Any]) -> ServicePlan:
    command = raw.get("command")
    return ServicePlan(
        role=str(raw["role"]),
        env={str(k): str(v) for k, v in dict(raw.get("env") or {}).items()},
        command=tuple(str(part) for part in command) if command is not None else None,
        image=str(raw.get("image") or ""),
        port=int(raw["port"]) if raw.get("port") is not None else None,
        mounts=tuple((str(m[0]), str(m[1])) for m in raw.get("mounts") or ()),
    )


def slot_plan_json(plan: SlotPlan) -> str:
    """The plan a slot was started with, kept beside it (a container label, the process
    backend's meta file) so `wgpu update` can change one thing and keep the rest."""
    slot = plan.slot
    return json.dumps(
        {
            "slot": {
                "index": slot.index,
                "uuid": slot.uuid,
                "name": slot.name,
                "memory_total_mb": slot.memory_total_mb,
                "simulated": slot.simulated,
            },
            "machine_id": plan.machine_id,
            "worker": _service_json(plan.worker),
            "comfyui": _service_json(plan.comfyui) if plan.comfyui is not None else None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def slot_plan_from_json(text: str) -> SlotPlan:
    """The inverse of slot_plan_json; raises ValueError for anything else."""
    try:
        raw = json.loads(text)
        slot_raw = raw["slot"]
        slot = Slot(
            index=int(slot_raw["index"]),
            uuid=slot_raw.get("uuid"),
            name=str(slot_raw.get("name") or ""),
            memory_total_mb=slot_raw.get("memory_total_mb"),
            simulated=bool(slot_raw.get("simulated")),
        )
        comfyui = raw.get("comfyui")
        return SlotPlan(
            slot,
            str(raw["machine_id"]),
            _service_from(raw["worker"]),
            _service_from(comfyui) if comfyui else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a slot plan: {exc}") from None


def comfyui_port(slot: Slot, port_base: int = COMFYUI_PORT_BASE) -> int:
    return ports.comfyui_port(slot.index, port_base)


def worker_env(slot: Slot, settings: WorkerSettings, num_gpus: int) -> dict[str, str]:
    """The worker's environment, as the original: one worker per GPU, ComfyUI on 8188+N."""
    env = names.worker_environment(
        machine_id=settings.machine_id,
        gpu_id=slot.index,
        num_gpus=num_gpus,
        hub_host=settings.hub.host,
        hub_port=settings.hub.port,
        hub_url=settings.hub.url if settings.hub.needs_full_url else None,
        comfyui_port_base=settings.port_base,
        worker_token=settings.worker_token,
    )
    if names.WORKER_TOKEN in env and "$" not in settings.machine_id:
        # A worker gets its own credential, not the fleet secret: a machine's containers then
        # cannot act as another machine's workers (wgpu_protocol.credentials). Where the id is
        # only known at `up` time (a compose/k8s placeholder), the worker derives it itself.
        token = env.pop(names.WORKER_TOKEN)
        own_id = worker_id(settings.machine_id, slot.index)
        env[names.WORKER_CREDENTIAL] = worker_credential(token, own_id)
    env.update(dict(settings.extra_env))
    return env


def worker_stop_timeout_s(env: Mapping[str, str]) -> int:
    """Whole seconds a stop waits before it kills this worker: its grace plus the margin."""
    try:
        grace = float(env.get(names.GRACE_S, WORKER_GRACE_DEFAULT_S))
    except ValueError:
        grace = WORKER_GRACE_DEFAULT_S  # the worker refuses to start with it anyway
    if not 0 < grace < float("inf"):
        grace = WORKER_GRACE_DEFAULT_S
    return math.ceil(grace + STOP_MARGIN_S)


def simulator_command(
    port: int, python: str = "python", models: Sequence[str] = ()
) -> tuple[str, ...]:
    command = (python, "-m", "comfyui_sim", "--host", "127.0.0.1", "--port", str(port))
    return command + tuple(arg for spec in models for arg in ("--models", spec))


def plan_slots(
    slots: Sequence[Slot],
    settings: WorkerSettings,
    num_gpus: int,
    python: str = "python",
    containers: bool = True,
) -> list[SlotPlan]:
    """One plan per slot. Simulated slots get the simulator as their ComfyUI; others get
    `settings.comfyui_image` / `comfyui_cmd` when set, else none (the worker finds or
    supervises one itself, see COMFYUI_CMD). With `settings.worker_src` the worker (and a
    simulator, when the tree has one) imports from that tree: mounted at MOUNT_POINT in
    `containers`, else straight from its path."""
    plans = [_plan_slot(slot, settings, num_gpus, python) for slot in slots]
    src = settings.worker_src
    if src is None:
        return plans
    root = MOUNT_POINT if containers else str(src.path)
    mounts = ((str(src.path), MOUNT_POINT),) if containers else ()

    def from_src(service: ServicePlan) -> ServicePlan:
        return replace(service, env={**service.env, **src.env(root)}, mounts=mounts)

    return [
        replace(
            plan,
            worker=from_src(plan.worker),
            comfyui=from_src(plan.comfyui)
            if plan.comfyui is not None and plan.slot.simulated and src.has_simulator
            else plan.comfyui,
        )
        for plan in plans
    ]


def _plan_slot(slot: Slot, settings: WorkerSettings, num_gpus: int, python: str) -> SlotPlan:
    port = comfyui_port(slot, settings.port_base)
    comfyui: ServicePlan | None = None
    if slot.simulated:
        comfyui = ServicePlan(
            ROLE_COMFYUI,
            env={},
            command=simulator_command(port, python, dict(settings.sim_models).get(slot.index, ())),
            image=settings.image,
            port=port,
        )
    elif settings.comfyui_image or settings.comfyui_cmd:
        command = None
        if settings.comfyui_cmd:
            command = tuple(shlex.split(settings.comfyui_cmd.format(port=port, gpu=slot.index)))
        comfyui = ServicePlan(
            ROLE_COMFYUI,
            env={"PORT": str(port)},
            command=command,
            image=settings.comfyui_image or "",
            port=port,
        )
    worker = ServicePlan(
        ROLE_WORKER, env=worker_env(slot, settings, num_gpus), image=settings.image
    )
    return SlotPlan(slot, settings.machine_id, worker, comfyui)


@dataclass(frozen=True)
class ServiceRecord:
    """What a backend knows about one managed service, rebuilt from the daemon or PID files."""

    index: int
    role: str
    name: str  # container name or PID file path
    state: str  # running, exited, created, restarting, stale, absent ...
    machine_id: str = ""
    gpu_uuid: str | None = None
    simulated: bool = False
    started_at: float | None = None  # unix seconds
    restarts: int = 0
    health: str | None = None
    exit_code: int | None = None
    image: str | None = None
    ident: str = ""  # container id or PID
    plan_json: str = ""  # the worker's: slot_plan_json of the plan the slot was started with

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class LogLine:
    index: int
    role: str
    text: str
    timestamp: str = ""  # RFC 3339 when the backend knows it (used to interleave)


@dataclass
class LogRequest:
    indices: list[int] | None = None  # None = every managed slot
    role: str = ROLE_WORKER
    tail: int | None = None
    since: str | None = None  # docker: "10m", RFC 3339 or unix seconds
    follow: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """Where workers run. Every operation on several slots runs them in parallel."""

    name: str

    def start(self, plans: Sequence[SlotPlan]) -> list[ActionResult]:
        """Start each plan's ComfyUI (waited on), then its worker. Idempotent."""
        ...

    def stop(self, indices: Sequence[int] | None, timeout_s: float) -> list[ActionResult]:
        """SIGTERM, `timeout_s` grace, then kill; only the named slots (None = all)."""
        ...

    def restart(self, indices: Sequence[int] | None, timeout_s: float) -> list[ActionResult]:
        """Restart what exists, as it was configured."""
        ...

    def services(self) -> list[ServiceRecord]:
        """Every managed service, in one cheap call (the status refresh path)."""
        ...

    def logs(self, request: LogRequest) -> Iterator[LogLine]:
        """Log lines; interleaved across slots when several; endless with follow."""
        ...

    def close(self) -> None: ...
