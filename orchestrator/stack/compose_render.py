"""Render the one-host stack as a compose file: Redis, the hub, and per GPU a ComfyUI + worker.

`render_stack(options)` builds the compose document as plain data (pure); `to_yaml` writes it.
The same document drives `wgpu up` on a Docker engine (orchestrator.stack.compose_runner), so the
compose file and `wgpu up` cannot drift apart: same names, labels, healthchecks and pinning.

Every image is `${ENV_VAR:-default}` so the stack runs offline from locally built images.
Host networking everywhere: Redis, the hub and each ComfyUI answer on the host's addresses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.backends.base import (
    ROLE_COMFYUI,
    ROLE_WORKER,
    HubAddress,
    WorkerSettings,
    comfyui_port,
    plan_slots,
)
from orchestrator.errors import ComposeError
from orchestrator.gpus.slots import Slot, simulated_slots
from orchestrator.stack.defaults import DEFAULT_COMFYUI_IMAGE as DEFAULT_COMFYUI_IMAGE
from orchestrator.stack.defaults import DEFAULT_HUB_IMAGE as DEFAULT_HUB_IMAGE
from orchestrator.stack.defaults import DEFAULT_HUB_PORT as DEFAULT_HUB_PORT
from orchestrator.stack.defaults import DEFAULT_REDIS_IMAGE as DEFAULT_REDIS_IMAGE
from orchestrator.stack.defaults import DEFAULT_REDIS_PORT as DEFAULT_REDIS_PORT
from orchestrator.stack.defaults import DEFAULT_WORKER_IMAGE as DEFAULT_WORKER_IMAGE
from orchestrator.stack.spec import (
    LABEL_CONFIG_HASH,
    LABEL_GPU_INDEX,
    LABEL_MACHINE,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SIMULATED,
    WORKER_HEALTH_TEST,
    ContainerSpec,
    HealthCheck,
    Mount,
    container_name,
    slot_containers,
)
from wgpu_protocol.ports import COMFYUI_PORT_BASE

ROLE_HUB = "hub"
ROLE_REDIS = "redis"
PROJECT_NAME = "wgpu"
REDIS_CONTAINER = "wgpu-redis"
HUB_CONTAINER = "wgpu-hub"
DEFAULT_VOLUME = "wgpu-redis-data"
DEFAULT_OUTPUTS_VOLUME = "wgpu-hub-outputs"
HUB_OUTPUTS_DIR = "/var/lib/wgpu/outputs"

IMAGE_ENV = {
    ROLE_REDIS: "WGPU_REDIS_IMAGE",
    ROLE_HUB: "WGPU_HUB_IMAGE",
    ROLE_WORKER: "WGPU_WORKER_IMAGE",
    ROLE_COMFYUI: "COMFYUI_IMAGE",
}

# `$$` first: compose reads it as a literal `$` (the Redis service's sh script needs some).
_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@dataclass(frozen=True)
class StackOptions:
    """What decides the stack. `gpus`: the slots to pin (from `gpus.slots.select_slots`)."""

    gpus: tuple[Slot, ...] = ()
    simulate: int = 0
    num_gpus: int = 0  # NUM_GPUS for the workers; 0: as many as slots
    machine_id: str = "${MACHINE_ID:-local}"
    redis_port: int = DEFAULT_REDIS_PORT
    hub_port: int = DEFAULT_HUB_PORT
    hub_bind: str = "0.0.0.0"  # the fleet's workers on other machines reach the hub
    port_base: int = COMFYUI_PORT_BASE
    redis_image: str = DEFAULT_REDIS_IMAGE
    hub_image: str = DEFAULT_HUB_IMAGE
    worker_image: str = DEFAULT_WORKER_IMAGE
    comfyui_image: str = DEFAULT_COMFYUI_IMAGE
    volume: str = DEFAULT_VOLUME
    outputs_volume: str = DEFAULT_OUTPUTS_VOLUME
    worker_token: str | None = None
    health_interval_s: float = 5.0
    sim_node_time_s: float | None = None  # the simulator's seconds per node (demos, tests)
    # Per simulated slot, its simulator's --models values (`wgpu up --sim-models`).
    sim_models: tuple[tuple[int, tuple[str, ...]], ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)
    # Prepended to container names: lets tests run beside a real stack on one engine.
    name_prefix: str = ""

    def slots(self) -> list[Slot]:
        if self.simulate and self.gpus:
            raise ComposeError("use either --gpus or --simulate, not both")
        if self.simulate:
            return simulated_slots(self.simulate).slots
        if not self.gpus:
            raise ComposeError("no GPUs to render: pass --gpus, --count N or --simulate N")
        if len({s.index for s in self.gpus}) != len(self.gpus):
            named = ",".join(s.device_id for s in self.gpus)
            raise ComposeError(f"GPU list {named} names a GPU twice")
        return list(self.gpus)


def env_image(role: str, default: str) -> str:
    return f"${{{IMAGE_ENV[role]}:-{default}}}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _health(test: tuple[str, ...], options: StackOptions, start_period_s: float) -> HealthCheck:
    return HealthCheck(test, options.health_interval_s, 5.0, 5, start_period_s)


def _http_probe(python: str, url: str) -> tuple[str, ...]:
    code = f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"
    return ("CMD", python, "-c", code)


def _stack_labels(role: str, options: StackOptions) -> dict[str, str]:
    return {
        LABEL_MANAGED: "true",
        LABEL_ROLE: role,
        LABEL_MACHINE: options.machine_id,
        LABEL_SIMULATED: "true" if options.simulate else "false",
    }


def redis_server_args(port: str, *, bind: str, maxmemory: str) -> list[str]:
    """The Redis of every rendered stack: AOF on (accepted jobs survive a crash), noeviction
    (Redis never drops a job for memory) and a maxmemory, so the queue, not the OOM killer,
    hits the limit. Compose and Kubernetes rendering both start Redis with these arguments."""
    return [
        "redis-server",
        *("--port", port, "--bind", bind),
        *("--appendonly", "yes", "--appendfsync", "everysec"),
        *("--maxmemory-policy", "noeviction", "--maxmemory", maxmemory),
        *("--dir", "/data"),
    ]


def _redis_script(port: str) -> str:
    # `$$` is a literal `$` for compose (it interpolates `${...}` itself); maxmemory is
    # REDIS_MAXMEMORY, else half of the host's memory read when the container starts.
    maxmemory = '"$${REDIS_MAXMEMORY:-$$((kb * 512))}"'
    args = " ".join(redis_server_args(port, bind="127.0.0.1", maxmemory=maxmemory))
    return (
        'while read key value unit; do [ "$$key" = MemTotal: ] && kb=$$value; done'
        f" < /proc/meminfo; exec {args}"
    )


def _redis_spec(options: StackOptions) -> ContainerSpec:
    port = str(options.redis_port)
    return ContainerSpec(
        name=options.name_prefix + REDIS_CONTAINER,
        role=ROLE_REDIS,
        image=env_image(ROLE_REDIS, options.redis_image),
        # AOF on: accepted jobs survive a crash; noeviction: Redis never drops a job for memory;
        # maxmemory: REDIS_MAXMEMORY at `up` time, else half of the host's memory (read from
        # /proc/meminfo when the container starts), so that the queue, not the OOM killer,
        # hits the limit.
        command=("sh", "-c", _redis_script(port)),
        env={"REDIS_MAXMEMORY": "${REDIS_MAXMEMORY:-}"},
        mounts=(Mount("redis-data", "/data"),),
        health=_health(("CMD", "redis-cli", "-p", port, "ping"), options, 5),
        labels=_stack_labels(ROLE_REDIS, options),
    )


def _hub_spec(options: StackOptions) -> ContainerSpec:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{options.redis_port}/0",
        "REDIS_API_HOST_BIND": options.hub_bind,
        "REDIS_API_PORT": str(options.hub_port),
        "OUTPUTS_DIR": HUB_OUTPUTS_DIR,
    }
    if options.worker_token:
        env["WORKER_TOKEN"] = options.worker_token
    health_url = f"http://127.0.0.1:{options.hub_port}/health"
    return ContainerSpec(
        name=options.name_prefix + HUB_CONTAINER,
        role=ROLE_HUB,
        image=env_image(ROLE_HUB, options.hub_image),
        env=env,
        mounts=(Mount("hub-outputs", HUB_OUTPUTS_DIR),),
        health=_health(_http_probe("python3", health_url), options, 10),
        labels=_stack_labels(ROLE_HUB, options),
    )


def comfyui_service_name(index: int) -> str:
    return container_name(ROLE_COMFYUI, index)


def worker_service_name(index: int) -> str:
    return container_name(ROLE_WORKER, index)


def _slot_specs(slot: Slot, options: StackOptions, num_gpus: int) -> list[ContainerSpec]:
    """The slot's ComfyUI and worker: the same description `wgpu start` runs, with the stack's
    images, health checks and (for a real GPU) the ComfyUI image's own port argument."""
    settings = WorkerSettings(
        machine_id=options.machine_id,
        hub=HubAddress(f"http://127.0.0.1:{options.hub_port}"),
        image=env_image(ROLE_WORKER, options.worker_image),
        comfyui_image=env_image(ROLE_COMFYUI, options.comfyui_image),
        worker_token=options.worker_token,
        port_base=options.port_base,
        sim_models=options.sim_models,
    )
    (plan,) = plan_slots([slot], settings, num_gpus)
    port = comfyui_port(slot, options.port_base)
    probe_url = f"http://127.0.0.1:{port}/system_stats"
    if slot.simulated:
        comfyui_health = _health(_http_probe("python", probe_url), options, 5)
    else:
        # ComfyUI's first start installs and loads models: give it time before counting failures.
        comfyui_health = _health(_http_probe("python3", probe_url), options, 300)
    specs = slot_containers(
        plan,
        worker_health=_health(WORKER_HEALTH_TEST, options, 10),
        comfyui_health=comfyui_health,
        name_prefix=options.name_prefix,
    )
    extra = options.extra_labels
    adjusted = []
    for spec in specs:
        changes: dict[str, Any] = {"labels": {**spec.labels, **extra}}
        if spec.role == ROLE_COMFYUI and slot.simulated and options.sim_node_time_s is not None:
            changes["command"] = (
                *(spec.command or ()),
                "--node-time",
                f"{options.sim_node_time_s:g}",
            )
        elif spec.role == ROLE_COMFYUI and not slot.simulated:
            # The default image (comfyui-boot) appends CLI_ARGS to ComfyUI's command line.
            changes["env"] = {
                "CLI_ARGS": f"--listen 127.0.0.1 --port {port}",
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            }
        adjusted.append(dataclasses.replace(spec, **changes))
    return adjusted


def compose_service(spec: ContainerSpec) -> dict[str, Any]:
    """One compose service for `spec` (no `depends_on`: that is the stack's, not the spec's)."""
    service: dict[str, Any] = {
        "image": spec.image,
        "container_name": spec.name,
        "network_mode": spec.network_mode,
        "restart": spec.restart,
    }
    if spec.entrypoint is not None:
        # Compose appends `command` to `entrypoint`; one list says the same, plainly.
        service["entrypoint"] = [*spec.entrypoint, *(spec.command or ())]
    elif spec.command is not None:
        service["command"] = list(spec.command)
    if spec.env:
        service["environment"] = dict(spec.env)
    if spec.mounts:
        service["volumes"] = [
            f"{m.source}:{m.target}" + (":ro" if m.read_only else "") for m in spec.mounts
        ]
    if spec.stop_timeout_s is not None:
        service["stop_grace_period"] = f"{spec.stop_timeout_s}s"  # past the worker's own grace
    if spec.health is not None:
        health = spec.health
        service["healthcheck"] = (
            {"test": ["NONE"]}
            if health.disabled
            else {
                "test": list(health.test),
                "interval": _seconds(health.interval_s),
                "timeout": _seconds(health.timeout_s),
                "retries": health.retries,
                "start_period": _seconds(health.start_period_s),
            }
        )
    if spec.gpu is not None:
        device = {
            "driver": spec.gpu.driver,
            "device_ids": [spec.gpu.device_id],
            "capabilities": list(spec.gpu.capabilities),
        }
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    service["labels"] = dict(spec.labels)
    return service


def _depends_on(*names: str) -> dict[str, Any]:
    return {name: {"condition": "service_healthy"} for name in names}


def config_hash(service: dict[str, Any]) -> str:
    """A hash of a service's definition (labels aside): it changes when a recreate is due."""
    definition = {key: value for key, value in service.items() if key != "labels"}
    payload = json.dumps(definition, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stack_specs(options: StackOptions) -> dict[str, ContainerSpec]:
    """Every container of the stack by service name (redis, hub, then per slot its ComfyUI and
    worker): what `render_stack` writes as compose and `wgpu k8s render` as Kubernetes."""
    slots = options.slots()
    specs = {"redis": _redis_spec(options), "hub": _hub_spec(options)}
    num_gpus = options.num_gpus or max(s.index for s in slots) + 1
    for slot in slots:
        comfyui_spec, worker_spec = _slot_specs(slot, options, num_gpus)
        specs[comfyui_service_name(slot.index)] = comfyui_spec
        specs[worker_service_name(slot.index)] = worker_spec
    return specs


def render_stack(options: StackOptions) -> dict[str, Any]:
    """The compose document (plain dicts and lists) for the options' GPUs or simulated slots."""
    services: dict[str, Any] = {}
    for name, spec in stack_specs(options).items():
        service = compose_service(spec)
        if name == "hub":
            service["depends_on"] = _depends_on("redis")
        elif spec.role == ROLE_WORKER:
            comfyui = comfyui_service_name(int(spec.labels[LABEL_GPU_INDEX]))
            service["depends_on"] = _depends_on("hub", comfyui)
        services[name] = service
    for service in services.values():
        service["labels"][LABEL_CONFIG_HASH] = config_hash(service)
    # No top-level `name`: docker-compose 1.x refuses it; `-p wgpu` names the project.
    return {
        "services": services,
        "volumes": {
            "redis-data": {"name": options.volume, "labels": {LABEL_MANAGED: "true"}},
            "hub-outputs": {"name": options.outputs_volume, "labels": {LABEL_MANAGED: "true"}},
        },
    }


# --- validation -----------------------------------------------------------------------------


def validate(document: dict[str, Any]) -> list[str]:
    """Problems with a rendered document under the compose rules this stack relies on."""
    problems: list[str] = []
    services = document.get("services")
    if not isinstance(services, dict) or not services:
        return ["no services"]
    volumes = document.get("volumes") or {}
    names: set[str] = set()
    for name, service in services.items():
        problems += [f"{name}: {p}" for p in _validate_service(service, services, volumes)]
        container = service.get("container_name")
        if container in names:
            problems.append(f"{name}: container_name {container} is used twice")
        names.add(container)
    problems += _cycles(services)
    return problems


_SERVICE_KEYS = {
    "image",
    "container_name",
    "network_mode",
    "restart",
    "command",
    "entrypoint",
    "environment",
    "volumes",
    "healthcheck",
    "depends_on",
    "labels",
    "deploy",
    "stop_grace_period",
}
_DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)$")


def _validate_service(
    service: dict[str, Any], services: dict[str, Any], volumes: dict[str, Any]
) -> list[str]:
    problems = [f"unknown key {key}" for key in service if key not in _SERVICE_KEYS]
    if not isinstance(service.get("image"), str) or not service["image"]:
        problems.append("no image")
    for key in ("environment", "labels"):
        value = service.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            problems.append(f"{key} must map names to strings")
    for key in ("command", "entrypoint"):
        if key in service and not all(isinstance(v, str) for v in service[key]):
            problems.append(f"{key} must be a list of strings")
    for mount in service.get("volumes", []):
        source = str(mount).split(":", 1)[0]
        if not source.startswith(("/", ".")) and source not in volumes:
            problems.append(f"volume {source} is not declared")
    health = service.get("healthcheck")
    if health is not None:
        test = health.get("test")
        if not (isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE")):
            problems.append("healthcheck test must be a list starting with CMD or CMD-SHELL")
        for key in ("interval", "timeout", "start_period"):
            if key in health and not _DURATION.match(str(health[key])):
                problems.append(f"healthcheck {key} {health[key]!r} is not a duration")
    for dependency, condition in (service.get("depends_on") or {}).items():
        if dependency not in services:
            problems.append(f"depends on unknown service {dependency}")
        elif condition.get("condition") == "service_healthy" and not services[dependency].get(
            "healthcheck"
        ):
            problems.append(f"waits for {dependency} to be healthy but it has no healthcheck")
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    for device in devices:
        if device.get("count") is not None and device.get("device_ids"):
            problems.append("a device reservation cannot set both count and device_ids")
        if not device.get("capabilities"):
            problems.append("a device reservation needs capabilities")
    return problems


def _cycles(services: dict[str, Any]) -> list[str]:
    try:
        start_order(services)
    except ComposeError as exc:
        return [str(exc)]
    return []


def start_order(services: dict[str, Any]) -> list[list[str]]:
    """Services in waves: each wave depends only on earlier waves (started together)."""
    remaining = {name: set((s.get("depends_on") or {}).keys()) for name, s in services.items()}
    waves: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        wave = sorted(name for name, deps in remaining.items() if deps <= done)
        if not wave:
            raise ComposeError(f"depends_on has a cycle among {', '.join(sorted(remaining))}")
        waves.append(wave)
        done.update(wave)
        for name in wave:
            del remaining[name]
    return waves


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR-default}` substitution; `$$` is `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found:
            return found
        return default if default is not None else ""

    return _INTERPOLATION.sub(replace, value)


def interpolate_all(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [interpolate_all(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate_all(item, env) for key, item in value.items()}
    return value


# --- YAML -----------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_./][A-Za-z0-9_./-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if (isinstance(item, dict) and item) or (
                isinstance(item, list) and item and not _flat(item)
            ):
                lines.append(f"{pad}{_scalar(key)}:")
                lines += _yaml_lines(item, indent + 1)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = _yaml_lines(item, indent + 1)
                lines.append(f"{pad}- {first.lstrip()}")
                lines += rest
            else:
                lines.append(f"{pad}- {_inline(item)}")
    return lines


def _flat(items: Sequence[Any]) -> bool:
    return all(not isinstance(item, dict | list) for item in items)


def _inline(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_inline(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def to_yaml(document: dict[str, Any], header: str = "") -> str:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + "\n".join(_yaml_lines(document, 0)) + "\n"


HEADER = """\
wgpu stack for one host: Redis (AOF, noeviction), the hub, per GPU a ComfyUI and its worker.
Written by `wgpu compose render`; run with `docker compose -p wgpu up -d`.
Images (set these to run offline from local images):
  WGPU_REDIS_IMAGE  (default redis:7)
  WGPU_HUB_IMAGE    (default wgpu-local/hub:latest; `wgpu up` builds wgpu-local/hub:<hash>)
  WGPU_WORKER_IMAGE (default wgpu-local/comfy-worker:latest; `wgpu setup` builds and prints one)
  COMFYUI_IMAGE     (default yanwk/comfyui-boot:cu124-slim; it reads CLI_ARGS)
MACHINE_ID names this host in worker ids (default local)."""
