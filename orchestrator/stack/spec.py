"""What runs for a GPU slot, described once: the containers' image, env, labels, GPU request,
mounts, health check and stop timeout, as plain frozen data.

`slot_containers(plan)` describes a slot's ComfyUI (when it has one) and worker; renderers turn
a `ContainerSpec` into what a platform takes: `orchestrator.backends.engine.create_container`
(the Docker Engine API, for `wgpu start` and `wgpu up`), `orchestrator.stack.compose_render`
(compose YAML). A Kubernetes renderer reads the same specs. Pure: no I/O, no docker-py.

Names and labels are the contract `wgpu status`, `stop` and the docker test fixture rely on:
`comfy-worker-gpu{N}` / `comfyui-gpu{N}`, and the `wgpu.*` labels below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.backends.base import (
    ROLE_COMFYUI,
    ROLE_WORKER,
    ServicePlan,
    SlotPlan,
    worker_stop_timeout_s,
)

LABEL_MANAGED = "wgpu.managed"
LABEL_ROLE = "wgpu.role"
LABEL_MACHINE = "wgpu.machine_id"
LABEL_GPU_INDEX = "wgpu.gpu_index"
LABEL_GPU_UUID = "wgpu.gpu_uuid"
LABEL_CONFIG_HASH = "wgpu.config_hash"
LABEL_SIMULATED = "wgpu.simulated"

# The worker image's own check (Dockerfile HEALTHCHECK): its health file is fresh and says ok.
WORKER_HEALTH_TEST = ("CMD", "comfy-worker", "healthcheck")


def container_name(role: str, index: int) -> str:
    return f"comfy-worker-gpu{index}" if role == ROLE_WORKER else f"comfyui-gpu{index}"


@dataclass(frozen=True)
class HealthCheck:
    """A container health check; `test` as Docker takes it (("CMD", ...) or ("NONE",))."""

    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 5.0
    retries: int = 3
    start_period_s: float = 0.0

    @property
    def disabled(self) -> bool:
        return self.test == ("NONE",)


NO_HEALTH_CHECK = HealthCheck(("NONE",))


@dataclass(frozen=True)
class GpuRequest:
    """One GPU for the container: a device id as NVIDIA's runtime takes it (UUID or index)."""

    device_id: str
    driver: str = "nvidia"
    capabilities: tuple[str, ...] = ("gpu",)


@dataclass(frozen=True)
class Mount:
    """A named volume (`source` without a slash) or a host path, mounted at `target`."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_volume(self) -> bool:
        return not self.source.startswith(("/", "."))


@dataclass(frozen=True)
class ContainerSpec:
    """One container as wgpu runs it; what every renderer needs, nothing platform-specific."""

    name: str
    role: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None  # None: the image's
    command: tuple[str, ...] | None = None  # None: the image's
    gpu: GpuRequest | None = None
    mounts: tuple[Mount, ...] = ()
    health: HealthCheck | None = None  # None: the image's own check
    stop_timeout_s: int | None = None  # SIGTERM to SIGKILL; None: the platform's default
    restart: str = "unless-stopped"
    network_mode: str = "host"


def slot_labels(plan: SlotPlan, role: str) -> dict[str, str]:
    """The labels that make a slot's container findable: `wgpu status` rebuilds from them."""
    return {
        LABEL_MANAGED: "true",
        LABEL_ROLE: role,
        LABEL_MACHINE: plan.machine_id,
        LABEL_GPU_INDEX: str(plan.slot.index),
        LABEL_GPU_UUID: plan.slot.uuid or "",
        LABEL_SIMULATED: "true" if plan.slot.simulated else "false",
    }


def _service_spec(
    plan: SlotPlan,
    service: ServicePlan,
    *,
    network_mode: str,
    restart: str,
    health: HealthCheck | None,
    name_prefix: str,
) -> ContainerSpec:
    slot = plan.slot
    env = dict(service.env)
    if network_mode != "host" and service.role == ROLE_WORKER and plan.comfyui is not None:
        # Off the host network, 127.0.0.1 is the worker's own container: use ComfyUI's name.
        env["COMFYUI_HOST"] = name_prefix + container_name(ROLE_COMFYUI, slot.index)
    entrypoint = command = None
    if service.command:
        # The worker image's ENTRYPOINT is comfy-worker: a command replaces it whole.
        entrypoint, command = (service.command[0],), tuple(service.command[1:])
    return ContainerSpec(
        name=name_prefix + container_name(service.role, slot.index),
        role=service.role,
        image=service.image,
        env=env,
        labels=slot_labels(plan, service.role),
        entrypoint=entrypoint,
        command=command,
        gpu=None if slot.simulated else GpuRequest(slot.device_id),
        mounts=tuple(Mount(source, target, read_only=True) for source, target in service.mounts),
        health=health,
        # Also for a plain `docker stop` or a daemon shutdown: never kill a job in its grace.
        stop_timeout_s=worker_stop_timeout_s(env) if service.role == ROLE_WORKER else None,
        restart=restart,
        network_mode=network_mode,
    )


def slot_containers(
    plan: SlotPlan,
    *,
    network_mode: str = "host",
    restart: str = "unless-stopped",
    worker_health: HealthCheck | None = None,
    comfyui_health: HealthCheck | None = NO_HEALTH_CHECK,
    name_prefix: str = "",
) -> list[ContainerSpec]:
    """The slot's containers in start order: its ComfyUI (when it has one), then its worker.

    ComfyUI's health check defaults to none: the worker image's own check (run when the
    simulator uses that image) is about the worker, not about ComfyUI."""
    services = [(plan.comfyui, comfyui_health), (plan.worker, worker_health)]
    return [
        _service_spec(
            plan,
            service,
            network_mode=network_mode,
            restart=restart,
            health=health,
            name_prefix=name_prefix,
        )
        for service, health in services
        if service is not None
    ]


def spec_hash(spec: ContainerSpec, extra: tuple[str, ...] = ()) -> str:
    """Changes whenever the container must be recreated: anything in the spec but its labels,
    and `extra` (what the platform adds, e.g. the image id behind a tag)."""
    described = dataclasses.asdict(spec)
    described.pop("labels")
    payload = json.dumps({"spec": described, "extra": list(extra)}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
