"""Bring a rendered compose document up (or down) through the Docker Engine API.

This is what `wgpu up` does on a Docker host, and what the compose stack test runs where the
`docker compose` plugin is not installed: the same services, names, labels, healthchecks, device
reservations and `depends_on: service_healthy` order as the compose file, without the plugin.
Services start in waves (each wave only after every service it depends on is healthy).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from orchestrator.backends.common import fan_out
from orchestrator.backends.engine import create_container, error_text, start_container
from orchestrator.errors import ComposeError
from orchestrator.stack.compose_render import interpolate_all, start_order
from orchestrator.stack.spec import (
    LABEL_CONFIG_HASH,
    LABEL_MANAGED,
    LABEL_ROLE,
    NO_HEALTH_CHECK,
    ContainerSpec,
    GpuRequest,
    HealthCheck,
    Mount,
)

EventCallback = Callable[[str, str], None]  # (service, state): creating|started|healthy|...
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Stop order for `down`: workers hand their jobs back while ComfyUI and the hub still answer.
DOWN_ORDER = ("worker", "comfyui", "hub", "redis")


@dataclass(frozen=True)
class ServiceResult:
    service: str
    container: str
    outcome: str  # started | kept | recreated | failed
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


def duration_s(text: str) -> float:
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ComposeError(f"{text!r} is not a duration like 5s or 1m")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _health(health: Mapping[str, Any]) -> HealthCheck:
    test = tuple(health["test"])
    if test == ("NONE",):
        return NO_HEALTH_CHECK
    return HealthCheck(
        test,
        interval_s=duration_s(health.get("interval", "30s")),
        timeout_s=duration_s(health.get("timeout", "30s")),
        retries=int(health.get("retries", 3)),
        start_period_s=duration_s(health.get("start_period", "0s")),
    )


def _gpu(service: Mapping[str, Any]) -> GpuRequest | None:
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    if not devices:
        return None
    if len(devices) > 1 or len(devices[0].get("device_ids") or []) != 1:
        raise ComposeError("a wgpu service reserves exactly one GPU by device id")
    device = devices[0]
    return GpuRequest(
        device["device_ids"][0],
        driver=device.get("driver", "nvidia"),
        capabilities=tuple(device.get("capabilities", ["gpu"])),
    )


def spec_of(service: Mapping[str, Any], volume_names: Mapping[str, str]) -> ContainerSpec:
    """The container an (interpolated) compose service of the rendered stack describes."""
    mounts = []
    for mount in service.get("volumes", []):
        source, target, *mode = str(mount).split(":")
        mounts.append(Mount(volume_names.get(source, source), target, mode == ["ro"]))
    grace = service.get("stop_grace_period")
    labels = dict(service.get("labels", {}))
    return ContainerSpec(
        name=service["container_name"],
        role=labels.get(LABEL_ROLE, ""),
        image=service["image"],
        env=dict(service.get("environment", {})),
        labels=labels,
        # The rendered stack puts a whole command line in `entrypoint`.
        entrypoint=tuple(service["entrypoint"]) if "entrypoint" in service else None,
        command=tuple(service["command"]) if "command" in service else None,
        gpu=_gpu(service),
        mounts=tuple(mounts),
        health=_health(service["healthcheck"]) if "healthcheck" in service else None,
        stop_timeout_s=int(duration_s(grace)) if grace else None,
        restart=service.get("restart", "no"),
        network_mode=service.get("network_mode", "host"),
    )


def health_deadline_s(service: Mapping[str, Any]) -> float:
    """How long a service may take to become healthy: its start period plus its retries."""
    health = service.get("healthcheck")
    if not health:
        return 30.0
    interval = duration_s(health.get("interval", "30s"))
    start = duration_s(health.get("start_period", "0s"))
    return start + interval * (int(health.get("retries", 3)) + 2) + 10.0


class ComposeRunner:
    """`up(document)` / `down(...)` on one engine. `env` fills `${VAR:-default}`."""

    def __init__(
        self,
        client: docker.DockerClient,
        env: Mapping[str, str] | None = None,
        on_event: EventCallback | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.client = client
        self.env = dict(env or {})
        self.on_event = on_event or (lambda service, state: None)
        self.poll_s = poll_s

    def resolve(self, document: Mapping[str, Any]) -> dict[str, Any]:
        resolved: dict[str, Any] = interpolate_all(dict(document), self.env)
        return resolved

    def up(self, document: Mapping[str, Any]) -> list[ServiceResult]:
        """Start every service, wave by wave; stop at the first wave with a failure."""
        doc = self.resolve(document)
        services: dict[str, Any] = doc["services"]
        volume_names = {
            key: (v or {}).get("name", key) for key, v in doc.get("volumes", {}).items()
        }
        self._ensure_volumes(doc.get("volumes", {}))
        results: list[ServiceResult] = []
        for wave in start_order(services):
            wave_results = fan_out(
                lambda name: self._up_one(name, services[name], volume_names), wave
            )
            results.extend(wave_results)
            if not all(r.ok for r in wave_results):
                break
        return results

    def _ensure_volumes(self, volumes: Mapping[str, Any]) -> None:
        for key, spec in volumes.items():
            spec = spec or {}
            name = spec.get("name", key)
            try:
                self.client.volumes.get(name)
            except docker.errors.NotFound:
                self.client.volumes.create(name=name, labels=spec.get("labels") or {})

    def _up_one(
        self, name: str, service: Mapping[str, Any], volume_names: Mapping[str, str]
    ) -> ServiceResult:
        spec = spec_of(service, volume_names)
        container_name = spec.name
        wanted_hash = spec.labels.get(LABEL_CONFIG_HASH)
        outcome = "started"
        try:
            existing = self.client.containers.get(container_name)
        except docker.errors.NotFound:
            existing = None
        try:
            if existing is not None:
                same = wanted_hash and existing.labels.get(LABEL_CONFIG_HASH) == wanted_hash
                if same and existing.status == "running":
                    self.on_event(name, "running")
                    return self._wait_healthy(name, service, existing, "kept")
                existing.remove(force=True)
                outcome = "recreated"
            self.on_event(name, "creating")
            container = create_container(self.client, spec)
        except docker.errors.ImageNotFound:
            return self._failed(name, container_name, f"image {spec.image} not found")
        except docker.errors.APIError as exc:
            return self._failed(name, container_name, error_text(exc))
        refused = start_container(container)
        if refused is not None:
            return self._failed(name, container_name, refused)
        self.on_event(name, "started")
        return self._wait_healthy(name, service, container, outcome)

    def _failed(self, name: str, container: str, detail: str) -> ServiceResult:
        self.on_event(name, "failed")
        return ServiceResult(name, container, "failed", detail)

    def _wait_healthy(
        self, name: str, service: Mapping[str, Any], container: Container, outcome: str
    ) -> ServiceResult:
        if "healthcheck" not in service:
            return ServiceResult(name, container.name or "", outcome)
        deadline = time.monotonic() + health_deadline_s(service)
        while time.monotonic() < deadline:
            try:
                container.reload()
            except docker.errors.NotFound:
                return self._failed(name, container.name or "", "removed while starting")
            state = container.attrs.get("State", {})
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                self.on_event(name, "healthy")
                return ServiceResult(name, container.name or "", outcome)
            if state.get("Status") in ("exited", "dead") or health == "unhealthy":
                why = "exited" if state.get("Status") in ("exited", "dead") else "unhealthy"
                return self._failed(name, container.name or "", f"{why}: {_last_log(container)}")
            time.sleep(self.poll_s)
        detail = f"not healthy within {health_deadline_s(service):.0f}s: {_last_log(container)}"
        return self._failed(name, container.name or "", detail)

    def down(self, labels: Mapping[str, str] | None = None, volumes: bool = False) -> list[str]:
        """Remove every wgpu-managed container (matching `labels`), workers first.

        With `volumes`, also the named volumes they mounted (Redis' data, the hub's outputs).
        Returns the removed container names.
        """
        filters = [f"{LABEL_MANAGED}=true", *(f"{k}={v}" for k, v in (labels or {}).items())]
        found = self.client.containers.list(all=True, filters={"label": filters})
        by_role: dict[str, list[Container]] = {}
        for container in found:
            by_role.setdefault(container.labels.get(LABEL_ROLE, ""), []).append(container)
        removed: list[str] = []
        mounted: set[str] = set()
        for role in (*DOWN_ORDER, *(r for r in by_role if r not in DOWN_ORDER)):
            group = by_role.get(role, [])
            for container in group:
                mounted.update(
                    m["Name"]
                    for m in container.attrs.get("Mounts", [])
                    if m.get("Type") == "volume"
                )

            def remove(container: Container) -> str:
                self.on_event(container.name or "", "stopping")
                with contextlib.suppress(docker.errors.APIError):
                    container.stop(timeout=30)
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
                self.on_event(container.name or "", "removed")
                return container.name or ""

            removed.extend(fan_out(remove, group))
        if volumes:
            for name in sorted(mounted):
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.volumes.get(name).remove(force=True)
        return removed


def _last_log(container: Container) -> str:
    try:
        lines = container.logs(tail=3).decode(errors="replace").strip().splitlines()
    except docker.errors.APIError:
        return "no log"
    return lines[-1][:200] if lines else "no output"
