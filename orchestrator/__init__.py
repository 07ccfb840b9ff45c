"""wgpu: the host CLI that runs one pinned ComfyUI worker per GPU, and the library under it.

The rooms: `commands/` (the CLI), `gpus/` (NVML, GPU selection), `backends/` (docker, process),
`stack/` (compose, `wgpu up`, the container spec), `images/`, `hub_client/`, `fleet/`,
`rollout/`, `k8s/`; errors in `errors`. Names load on first use, so `wgpu --help` pays only
for what it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.backends.base import WorkerSettings, plan_slots
    from orchestrator.backends.docker_backend import DockerBackend
    from orchestrator.backends.process_backend import ProcessBackend
    from orchestrator.errors import ExitCode, WgpuError
    from orchestrator.gpus.slots import Selection, Slot, select_slots
    from orchestrator.hub_client.client import AsyncHubClient, HubClient
    from orchestrator.stack.spec import ContainerSpec, slot_containers

    __version__: str  # the installed distribution's version, read on first use

DISTRIBUTION = "comfyui-gpu-pool"  # on PyPI; `wgpu` there is the WebGPU binding

_HOME = {
    "WorkerSettings": "orchestrator.backends.base",
    "plan_slots": "orchestrator.backends.base",
    "DockerBackend": "orchestrator.backends.docker_backend",
    "ProcessBackend": "orchestrator.backends.process_backend",
    "ExitCode": "orchestrator.errors",
    "WgpuError": "orchestrator.errors",
    "Selection": "orchestrator.gpus.slots",
    "Slot": "orchestrator.gpus.slots",
    "select_slots": "orchestrator.gpus.slots",
    "AsyncHubClient": "orchestrator.hub_client.client",
    "HubClient": "orchestrator.hub_client.client",
    "ContainerSpec": "orchestrator.stack.spec",
    "slot_containers": "orchestrator.stack.spec",
}
__all__ = [
    "DISTRIBUTION",
    "AsyncHubClient",
    "ContainerSpec",
    "DockerBackend",
    "ExitCode",
    "HubClient",
    "ProcessBackend",
    "Selection",
    "Slot",
    "WgpuError",
    "WorkerSettings",
    "__version__",
    "plan_slots",
    "select_slots",
    "slot_containers",
]


def _installed_version() -> str:
    # importlib.metadata costs ~40 ms of imports (email, zipfile): only `wgpu --version` pays.
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        version = _installed_version()
        globals()["__version__"] = version
        return version
    if name not in _HOME:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
