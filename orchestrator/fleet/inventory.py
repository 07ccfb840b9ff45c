"""Scripted scale-up across machines: an inventory of Docker engines, all feeding one hub.

Inventory (TOML):

    [defaults]                       # every key here is a fallback for each host
    hub_url = "http://10.0.0.5:8001" # the one hub every worker connects to
    image = "wgpu-local/comfy-worker:abc"
    gpus = "all"                     # or a list: [0, 1] / ["GPU-..."]
    [[hosts]]
    machine_id = "box-a"             # unique: worker ids are {machine_id}-gpu{N}
    docker_host = "ssh://root@box-a" # ssh://, tcp://, unix:// or a docker context name
    labels = { rack = "r1" }

`fleet up` starts every host's workers in parallel; a host that fails is reported and the others
go on. `fleet status` reads each engine and the hub's /workers (GPU figures come from worker
heartbeats: NVML only sees its own machine).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.backends.base import (
    DEFAULT_HUB_URL,
    DEFAULT_STOP_TIMEOUT_S,
    ActionResult,
    HubAddress,
    ServiceRecord,
    WorkerSettings,
    plan_slots,
)
from orchestrator.backends.common import fan_out
from orchestrator.backends.docker_backend import DockerBackend
from orchestrator.errors import BackendError, HubError, InventoryError, SlotError
from orchestrator.gpus.nvml import GpuDevice
from orchestrator.gpus.slots import Slot, select_slots, simulated_slots
from orchestrator.hub_client.client import HubClient
from orchestrator.images.worker import has_image
from wgpu_protocol.ports import COMFYUI_PORT_BASE
from wgpu_protocol.rest import WorkerJson

_MACHINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HOST_KEYS = {
    "machine_id",
    "docker_host",
    "gpus",
    "simulate",
    "image",
    "comfyui_image",
    "hub_url",
    "worker_token",
    "port_base",
    "network",
    "labels",
}
DEFAULT_KEYS = HOST_KEYS - {"machine_id"}
# Lists the GPUs NVML sees inside a container given every GPU of its machine.
_GPU_PROBE = (
    "import json, pynvml as n; n.nvmlInit(); "
    "print(json.dumps([{'index': i, 'uuid': n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(i))}"
    " for i in range(n.nvmlDeviceGetCount())]))"
)


@dataclass(frozen=True)
class HostSpec:
    machine_id: str
    docker_host: str | None = None
    gpus: str | tuple[str, ...] = "all"
    simulate: int = 0  # N simulated slots instead of GPUs (demos, tests)
    image: str | None = None
    comfyui_image: str | None = None
    hub_url: str = DEFAULT_HUB_URL
    worker_token: str | None = field(default=None, repr=False)
    port_base: int = COMFYUI_PORT_BASE
    network: str = "host"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    source: str
    hosts: list[HostSpec]

    @property
    def hub_urls(self) -> list[str]:
        return sorted({host.hub_url for host in self.hosts})


def _check_value(key: str, value: Any, where: str) -> Any:
    if key == "gpus":
        if value == "all":
            return "all"
        if isinstance(value, list) and value and all(isinstance(v, int | str) for v in value):
            tokens = tuple(str(v) for v in value)
            if len(set(tokens)) != len(tokens):
                raise InventoryError(f"{where}: gpus names a GPU twice")
            return tokens
        raise InventoryError(f'{where}: gpus must be "all" or a list like [0, 1]')
    if key in ("simulate", "port_base"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InventoryError(f"{where}: {key} must be a whole number >= 0")
        return value
    if key == "labels":
        if not isinstance(value, dict) or not all(
            isinstance(v, str | int | float | bool) for v in value.values()
        ):
            raise InventoryError(f"{where}: labels must be a table of simple values")
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: {key} must be a non-empty string")
    if key == "hub_url" and not value.startswith(("http://", "https://", "ws://", "wss://")):
        raise InventoryError(f"{where}: hub_url must start with http:// or https://")
    return value


def parse_inventory(text: str, source: str = "inventory") -> Inventory:
    """An Inventory from TOML text; every host's missing keys come from [defaults]."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{source} is not valid TOML: {exc}") from None
    unknown_top = set(data) - {"defaults", "hosts"}
    if unknown_top:
        raise InventoryError(f"{source}: unknown table(s) {', '.join(sorted(unknown_top))}")
    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise InventoryError(f"{source}: [defaults] must be a table")
    defaults = _checked_table(defaults_raw, DEFAULT_KEYS, f"{source} [defaults]")
    hosts_raw = data.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise InventoryError(f"{source}: no [[hosts]]: add one entry per machine")
    hosts: list[HostSpec] = []
    seen: set[str] = set()
    for number, raw in enumerate(hosts_raw, start=1):
        where = f"{source} host #{number}"
        if not isinstance(raw, dict):
            raise InventoryError(f"{where}: each [[hosts]] entry must be a table")
        machine_id = raw.get("machine_id")
        if not isinstance(machine_id, str) or not _MACHINE_ID.match(machine_id):
            raise InventoryError(f"{where}: machine_id must be letters, digits, . _ - (a name)")
        where = f"{source} host {machine_id}"
        if machine_id in seen:
            raise InventoryError(f"{where}: machine_id is used twice; each must be unique")
        seen.add(machine_id)
        values = {**defaults, **_checked_table(raw, HOST_KEYS, where)}
        if "labels" in defaults and "labels" in raw:
            values["labels"] = {**defaults["labels"], **values["labels"]}
        if values.get("simulate") and values.get("gpus", "all") != "all":
            raise InventoryError(f"{where}: use either gpus or simulate, not both")
        hosts.append(HostSpec(**values))
    return Inventory(source, hosts)


def _checked_table(raw: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = set(raw) - allowed
    if unknown:
        raise InventoryError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    return {key: _check_value(key, value, where) for key, value in raw.items()}


def load_inventory(path: Path) -> Inventory:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_inventory(text, str(path))


def resolve_docker_host(value: str | None) -> str | None:
    """ssh://, tcp://, unix:// as given; any other word is a docker context's name."""
    if value is None or "://" in value:
        return value
    from docker.context import ContextAPI

    context = ContextAPI.get_context(value)
    if context is None:
        raise BackendError(f"no docker context named {value!r}: see `docker context ls`")
    host = getattr(context, "Host", None)
    return str(host) if host else None


# --- operations -----------------------------------------------------------------------------


@dataclass
class HostResult:
    machine_id: str
    docker_host: str | None
    ok: bool
    detail: str = ""
    actions: list[ActionResult] = field(default_factory=list)


Connector = Callable[[HostSpec], DockerBackend]


def connect(host: HostSpec) -> DockerBackend:
    return DockerBackend.connect(
        resolve_docker_host(host.docker_host),
        machine_id=host.machine_id,
        network_mode=host.network,
    )


def discover_remote_gpus(backend: DockerBackend, image: str) -> list[GpuDevice]:
    """The machine's GPUs as NVML sees them, from a throwaway container given all of them."""
    import docker.errors
    from docker.types import DeviceRequest

    try:
        output = backend.client.containers.run(
            image,
            entrypoint=["python", "-c", _GPU_PROBE],
            command=[],
            device_requests=[DeviceRequest(count=-1, capabilities=[["gpu", "utility"]])],
            network_mode="none",
            labels={"wgpu.managed": "probe"},
            remove=True,
        )
        devices = json.loads(output)
    except (docker.errors.DockerException, ValueError) as exc:
        reason = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
        raise BackendError(
            f"cannot list its GPUs ({reason[-1] if reason else type(exc).__name__}): "
            "set gpus = [0, 1] for this host, or check its NVIDIA driver and toolkit"
        ) from None
    if not devices:
        raise BackendError("it has no NVIDIA GPU: set simulate = N for simulated slots")
    return [GpuDevice(int(d["index"]), str(d["uuid"]), str(d.get("name", "")), 0) for d in devices]


def host_slots(host: HostSpec, backend: DockerBackend, image: str) -> tuple[list[Slot], int]:
    if host.simulate:
        selection = simulated_slots(host.simulate)
        return selection.slots, selection.num_gpus
    # The one selection (gpus.slots): a GPU named by UUID keeps the index it has on that host,
    # so the host's GPUs are asked for unless every GPU is named by index.
    wanted = None if host.gpus == "all" else ",".join(host.gpus)
    by_index = wanted is not None and all(token.isdigit() for token in host.gpus)
    devices = [] if by_index else discover_remote_gpus(backend, image)
    try:
        selection = select_slots(wanted, None, devices)
    except SlotError as exc:
        raise BackendError(str(exc)) from None
    return selection.slots, selection.num_gpus


def ship_image(source: Any, target: Any, tag: str) -> None:
    """Copy `tag` from one engine to another (docker save | docker load), for hosts that
    cannot reach a registry."""
    stream = source.api.get_image(tag)
    target.api.load_image(stream)


def _host_image(host: HostSpec, default_image: str | None) -> str:
    image = host.image or default_image
    if not image:
        raise BackendError("no worker image: set image in the inventory or pass --image")
    return image


def up_host(
    host: HostSpec,
    default_image: str | None,
    ship_from: Any | None = None,
    connector: Connector = connect,
) -> HostResult:
    docker_host = host.docker_host
    try:
        backend = connector(host)
    except BackendError as exc:
        return HostResult(host.machine_id, docker_host, False, str(exc))
    try:
        image = _host_image(host, default_image)
        if ship_from is not None and not has_image(backend.client, image):
            ship_image(ship_from, backend.client, image)
        if not has_image(backend.client, image):
            raise BackendError(
                f"image {image} is not on this engine: build it there (`wgpu setup "
                f"--docker-host ...`) or pass --ship-image"
            )
        slots, num_gpus = host_slots(host, backend, image)
        settings = WorkerSettings(
            machine_id=host.machine_id,
            hub=HubAddress(host.hub_url),
            image=image,
            comfyui_image=host.comfyui_image,
            worker_token=host.worker_token,
            port_base=host.port_base,
            extra_env=tuple(sorted(_label_env(host.labels).items())),
        )
        actions = backend.start(plan_slots(slots, settings, num_gpus, python="python"))
    except BackendError as exc:
        return HostResult(host.machine_id, docker_host, False, str(exc))
    except Exception as exc:  # any engine failure stays this host's failure
        return HostResult(host.machine_id, docker_host, False, f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()
    failed = [a for a in actions if not a.ok]
    detail = "; ".join(f"gpu{a.index} {a.role}: {a.detail}" for a in failed)
    return HostResult(host.machine_id, docker_host, not failed, detail, actions)


def _label_env(labels: Mapping[str, str]) -> dict[str, str]:
    """Host labels travel to the worker as WGPU_LABELS (k=v,...) for its hello and logs."""
    if not labels:
        return {}
    return {"WGPU_LABELS": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}


def down_host(
    host: HostSpec, timeout_s: float = DEFAULT_STOP_TIMEOUT_S, connector: Connector = connect
) -> HostResult:
    try:
        backend = connector(host)
    except BackendError as exc:
        return HostResult(host.machine_id, host.docker_host, False, str(exc))
    try:
        actions = backend.stop(None, timeout_s)
        actions += backend.remove(None)
    except Exception as exc:  # any engine failure stays this host's failure
        return HostResult(host.machine_id, host.docker_host, False, f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()
    failed = [a for a in actions if not a.ok]
    detail = "; ".join(f"gpu{a.index} {a.role}: {a.detail}" for a in failed)
    return HostResult(host.machine_id, host.docker_host, not failed, detail, actions)


def fleet_up(
    inventory: Inventory,
    default_image: str | None = None,
    ship_from: Any | None = None,
    connector: Connector = connect,
) -> list[HostResult]:
    """Every host in parallel; one host's failure never stops the others."""
    return fan_out(lambda host: up_host(host, default_image, ship_from, connector), inventory.hosts)


def fleet_down(
    inventory: Inventory,
    timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    connector: Connector = connect,
) -> list[HostResult]:
    return fan_out(lambda host: down_host(host, timeout_s, connector), inventory.hosts)


# --- status ---------------------------------------------------------------------------------


@dataclass
class HostStatus:
    machine_id: str
    docker_host: str | None
    reachable: bool
    error: str | None = None
    containers: list[dict[str, Any]] = field(default_factory=list)
    workers: list[WorkerJson] = field(default_factory=list)  # the hub's view

    def to_json(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id,
            "docker_host": self.docker_host,
            "reachable": self.reachable,
            "error": self.error,
            "containers": self.containers,
            "workers": self.workers,
        }


@dataclass
class FleetStatus:
    hosts: list[HostStatus]
    hub_errors: dict[str, str]  # hub url -> why its columns are blank

    def to_json(self) -> dict[str, Any]:
        return {"hosts": [h.to_json() for h in self.hosts], "hub_errors": self.hub_errors}


def _container_json(record: ServiceRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "role": record.role,
        "gpu": record.index,
        "state": record.state,
        "health": record.health,
        "restarts": record.restarts,
    }


def _host_containers(host: HostSpec, connector: Connector) -> HostStatus:
    try:
        backend = connector(host)
    except BackendError as exc:
        return HostStatus(host.machine_id, host.docker_host, False, str(exc))
    try:
        records = backend.services()
    except Exception as exc:  # any engine failure only marks this host
        return HostStatus(host.machine_id, host.docker_host, False, f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()
    containers = [_container_json(r) for r in records]
    return HostStatus(host.machine_id, host.docker_host, True, containers=containers)


def _hub_workers(url: str) -> tuple[list[WorkerJson], str | None]:
    try:
        return HubClient(url, timeout_s=2.0).get_workers(), None
    except HubError as exc:
        return [], str(exc)


def fleet_status(inventory: Inventory, connector: Connector = connect) -> FleetStatus:
    """Every engine's containers and every hub's workers, gathered in parallel."""
    urls = inventory.hub_urls
    hub_results = fan_out(_hub_workers, urls)
    hosts = fan_out(lambda host: _host_containers(host, connector), inventory.hosts)
    workers_by_machine: dict[str, list[WorkerJson]] = {}
    errors = {}
    for url, (workers, error) in zip(urls, hub_results, strict=True):
        if error:
            errors[url] = error
        for worker in workers:
            workers_by_machine.setdefault(str(worker.get("machine_id")), []).append(worker)
    for status in hosts:
        status.workers = sorted(
            workers_by_machine.get(status.machine_id, []), key=lambda w: str(w.get("id"))
        )
    return FleetStatus(hosts, errors)


def iter_rows(status: FleetStatus) -> Iterator[dict[str, Any]]:
    """One row per host for the table: containers, workers and their GPU figures summed."""
    for host in status.hosts:
        running = sum(1 for c in host.containers if c["state"] == "running")
        connected = [w for w in host.workers if w.get("connected")]
        busy = sum(1 for w in connected if w.get("status") == "busy")
        util: list[float] = [
            float(stats["util_percent"])
            for stats in ((w.get("gpu_stats") or {}) for w in connected)
            if isinstance(stats.get("util_percent"), int | float)
        ]
        used = sum(int((w.get("gpu_stats") or {}).get("vram_used_mb") or 0) for w in connected)
        total = sum(
            int(
                (w.get("gpu_stats") or {}).get("vram_total_mb")
                or (w.get("gpu") or {}).get("vram_total_mb")
                or 0
            )
            for w in connected
        )
        yield {
            "machine_id": host.machine_id,
            "docker_host": host.docker_host or "(default)",
            "reachable": host.reachable,
            "error": host.error,
            "containers": f"{running}/{len(host.containers)}",
            "workers": f"{len(connected)}/{len(host.workers)}",
            "busy": busy,
            "util": round(sum(util) / len(util), 1) if util else None,
            "vram": (used, total) if total else None,
            "done": sum(int(w.get("jobs_done") or 0) for w in host.workers),
            "failed": sum(int(w.get("jobs_failed") or 0) for w in host.workers),
        }
