"""Typer options shared by the worker commands (and any command that manages workers).

Use them as parameter types: `def start(gpus: GpusOption = None, ...)`.
"""

from __future__ import annotations

import enum
import socket
from pathlib import Path
from typing import Annotated

import typer


class BackendKind(enum.StrEnum):
    DOCKER = "docker"
    PROCESS = "process"


class RestartPolicy(enum.StrEnum):
    UNLESS_STOPPED = "unless-stopped"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    NO = "no"


class ServiceKind(enum.StrEnum):
    WORKER = "worker"
    COMFYUI = "comfyui"


def default_machine_id() -> str:
    return socket.gethostname() or "localhost"


TargetArgument = Annotated[
    str, typer.Argument(metavar="[GPU_ID|all]", help="A GPU index, or all (the default).")
]
GpusOption = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        envvar="WGPU_GPUS",
        help="GPUs by NVML index or UUID, comma separated: --gpus 4 is GPU 4 "
        "(default: every GPU NVML sees; --count N for the first N).",
    ),
]
CountOption = Annotated[
    int | None,
    typer.Option(
        "--count",
        min=1,
        envvar="WGPU_COUNT",
        help="The first N GPUs NVML sees (instead of naming them with --gpus).",
    ),
]
SimulateOption = Annotated[
    int | None,
    typer.Option(
        "--simulate",
        min=1,
        envvar="WGPU_SIMULATE",
        help="N slots without any GPU, each with the ComfyUI simulator (demos, CPU, tests).",
    ),
]
ImageOption = Annotated[
    str | None,
    typer.Option("--image", envvar="WGPU_IMAGE", help="Worker image (default: the built one)."),
]
ComfyuiImageOption = Annotated[
    str | None,
    typer.Option(
        "--comfyui-image",
        envvar="WGPU_COMFYUI_IMAGE",
        help="Also run comfyui-gpu{N} from this image, pinned to the same GPU, on 8188+N.",
    ),
]
HubUrlOption = Annotated[
    str,
    typer.Option("--hub-url", envvar="WGPU_HUB_URL", help="The hub the workers connect to."),
]
MachineIdOption = Annotated[
    str | None,
    typer.Option(
        "--machine-id",
        envvar="MACHINE_ID",
        help="This machine's id in worker ids (default: the host name).",
    ),
]
DockerHostOption = Annotated[
    str | None,
    typer.Option(
        "--docker-host",
        help="Docker engine: unix://, tcp:// or ssh:// (default: DOCKER_HOST or docker context).",
    ),
]
BackendOption = Annotated[
    BackendKind,
    typer.Option(
        "--backend", envvar="WGPU_BACKEND", help="Run workers as containers or processes."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
BaseDirOption = Annotated[
    Path | None,
    typer.Option(
        "--base-dir",
        envvar="WGPU_BASE_DIR",
        help="Process backend: where worker_gpu{N}/ live (default ~/.wgpu or ./wgpu-workers).",
    ),
]
WorkerTokenOption = Annotated[
    str | None,
    typer.Option("--worker-token", envvar="WORKER_TOKEN", help="Token workers show the hub."),
]
PortBaseOption = Annotated[
    int, typer.Option("--port-base", help="ComfyUI of GPU N listens on PORT_BASE+N.")
]
NetworkOption = Annotated[
    str, typer.Option("--network", help="Docker network mode of the containers (default host).")
]
StopTimeoutOption = Annotated[
    float,
    typer.Option("--timeout", "-t", min=0, help="Seconds between SIGTERM and kill."),
]
ServiceOption = Annotated[
    ServiceKind, typer.Option("--service", help="Whose logs: the worker or its ComfyUI.")
]

ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="WGPU_API_KEY", help="Key for the hub's REST API."),
]
BaseImageOption = Annotated[
    str | None,
    typer.Option(
        "--base-image",
        envvar="WGPU_BASE_IMAGE",
        help="Base of the worker image `setup` builds (its tag depends on it; start finds it).",
    ),
]
ComfyuiCmdOption = Annotated[
    str | None,
    typer.Option(
        "--comfyui-cmd",
        envvar="WGPU_COMFYUI_CMD",
        help="ComfyUI's command line ({port}, {gpu} filled in): the --comfyui-image command, "
        "or with --backend process a ComfyUI process per GPU.",
    ),
]
RestartOption = Annotated[
    RestartPolicy,
    typer.Option("--restart", help="Docker restart policy of the containers."),
]

WorkerSrcOption = Annotated[
    Path | None,
    typer.Option(
        "--worker-src",
        envvar="WGPU_WORKER_SRC",
        help="Run the worker from this checkout (worker_image/comfy_worker, wgpu_protocol), "
        "mounted read-only into each worker container; the image then needs only the runtime.",
    ),
]

# Per simulated slot, its simulator's model files (parsed by parse_sim_models).
SimModelsOption = Annotated[
    str | None,
    typer.Option(
        "--sim-models",
        help='With --simulate: model files per simulated slot, "0:checkpoints=a.safetensors;'
        '1:checkpoints=b.safetensors" (folders as ComfyUI names them).',
    ),
]
SimModels = tuple[tuple[int, tuple[str, ...]], ...]
