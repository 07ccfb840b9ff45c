"""A `ContainerSpec` rendered to the Docker Engine API: the one way wgpu creates a container.

`wgpu start` (the docker backend) and `wgpu up` (the compose runner) both come here, through
docker-py's public low-level API (`APIClient.create_host_config` + `create_container`), which
takes everything a spec says, `stop_timeout` included.
"""

from __future__ import annotations

import contextlib
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig

from orchestrator.stack.spec import ContainerSpec, HealthCheck

NANOS = 1_000_000_000
# A container that keeps failing stops restarting after this many tries (restart: on-failure).
ON_FAILURE_RETRIES = 5


def restart_policy(name: str) -> dict[str, Any]:
    policy: dict[str, Any] = {"Name": name}
    if name == "on-failure":
        policy["MaximumRetryCount"] = ON_FAILURE_RETRIES
    return policy


def healthcheck(health: HealthCheck) -> dict[str, Any]:
    if health.disabled:
        return {"test": ["NONE"]}
    return {
        "test": list(health.test),
        "interval": int(health.interval_s * NANOS),
        "timeout": int(health.timeout_s * NANOS),
        "retries": health.retries,
        "start_period": int(health.start_period_s * NANOS),
    }


def create_args(
    api: docker.APIClient, spec: ContainerSpec, log_config: LogConfig | None = None
) -> dict[str, Any]:
    """The `create_container` arguments for `spec` (its host config built by `api`)."""
    device_requests = None
    if spec.gpu is not None:
        device_requests = [
            DeviceRequest(
                driver=spec.gpu.driver,
                device_ids=[spec.gpu.device_id],
                capabilities=[list(spec.gpu.capabilities)],
            )
        ]
    binds = [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts]
    host_config = api.create_host_config(
        network_mode=spec.network_mode,
        restart_policy=restart_policy(spec.restart) if spec.restart != "no" else None,
        device_requests=device_requests,
        binds=binds or None,
        log_config=log_config,
    )
    return {
        "image": spec.image,
        "name": spec.name,
        "command": list(spec.command) if spec.command is not None else None,
        "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
        "environment": dict(spec.env),
        "labels": dict(spec.labels),
        "volumes": [m.target for m in spec.mounts] or None,
        "healthcheck": healthcheck(spec.health) if spec.health is not None else None,
        "stop_signal": "SIGTERM",
        "stop_timeout": spec.stop_timeout_s,
        "host_config": host_config,
        "detach": True,
    }


def create_container(
    client: docker.DockerClient, spec: ContainerSpec, log_config: LogConfig | None = None
) -> Container:
    """Create (not start) the container `spec` describes. The model holds its id and name only
    (no inspect round trip: starting or removing it needs no more; `reload()` fetches the rest)."""
    created = client.api.create_container(**create_args(client.api, spec, log_config))
    return client.containers.prepare_model({"Id": created["Id"], "Name": f"/{spec.name}"})


# What dockerd says when a container asks for a GPU and no NVIDIA runtime is installed.
NVIDIA_REFUSAL = 'could not select device driver "nvidia"'
NVIDIA_HINT = (
    "Docker cannot give containers a GPU: install the NVIDIA Container Toolkit "
    "(nvidia-container-toolkit) and restart dockerd, or use --simulate N / --backend process"
)


def error_text(exc: BaseException) -> str:
    """One line of a docker error for the user: the NVIDIA hint, or its explanation."""
    if NVIDIA_REFUSAL in str(exc):
        return NVIDIA_HINT
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def start_container(container: Container) -> str | None:
    """Start it; on refusal remove it (no Created container left behind) and say why."""
    try:
        container.start()
    except docker.errors.APIError as exc:
        # The daemon refuses at start, not create (no NVIDIA runtime, a port taken).
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
        return error_text(exc)
    return None
