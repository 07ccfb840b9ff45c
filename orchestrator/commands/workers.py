"""`wgpu setup|start|stop|restart|status|logs [GPU_ID|all]`: one worker per GPU.

The words of the original, on the host, through the Docker Engine API (or local processes with
`--backend process`). Per-GPU failures are reported per GPU; the exit code says whether all,
some or none succeeded (orchestrator.console.ExitCode).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from orchestrator.backends.base import (
    DEFAULT_HUB_URL,
    DEFAULT_STOP_TIMEOUT_S,
    ROLE_WORKER,
    HubAddress,
    LogRequest,
    WorkerSettings,
    plan_slots,
)
from orchestrator.commands.common import (
    backend_session,
    parse_sim_models,
    report,
    report_managed,
    select,
    target_indices,
)
from orchestrator.commands.options import (
    ApiKeyOption,
    BackendKind,
    BackendOption,
    BaseDirOption,
    BaseImageOption,
    ComfyuiCmdOption,
    ComfyuiImageOption,
    CountOption,
    DockerHostOption,
    GpusOption,
    HubUrlOption,
    ImageOption,
    JsonOption,
    MachineIdOption,
    NetworkOption,
    PortBaseOption,
    RestartOption,
    RestartPolicy,
    ServiceKind,
    ServiceOption,
    SimModelsOption,
    SimulateOption,
    StopTimeoutOption,
    TargetArgument,
    WorkerSrcOption,
    WorkerTokenOption,
    default_machine_id,
)
from orchestrator.console import ExitCode, err, fail, out
from orchestrator.errors import ImageBuildError

# Heavy dependencies (docker, rich's renderables, NVML, the hub client) are imported inside the
# command that needs them, so `wgpu --help` and `wgpu status --json` start in tens of ms.
from orchestrator.rollout.worker_src import WorkerSource, resolve_worker_src
from wgpu_protocol.ports import COMFYUI_PORT_BASE

PREFIX_COLOURS = ("cyan", "yellow", "green", "magenta", "blue", "bright_red")


# --- commands -------------------------------------------------------------------------------


def setup(
    image: ImageOption = None,
    base_image: BaseImageOption = None,
    gpus_option: GpusOption = None,
    count: CountOption = None,
    simulate: SimulateOption = None,
    backend: BackendOption = BackendKind.DOCKER,
    docker_host: DockerHostOption = None,
    base_dir: BaseDirOption = None,
    worker_src: WorkerSrcOption = None,
) -> None:
    """Make sure the worker image exists (build it with progress), or the process layout.
    With --worker-src the image holds only the runtime: the worker comes from DIR."""
    from orchestrator.backends.docker_backend import DockerBackend
    from orchestrator.backends.process_backend import ProcessBackend
    from orchestrator.images import worker as worker_images

    source = resolve_src(worker_src)
    if source is not None:
        out.print(f"worker tree {source.path} is version {source.version}")
    if backend == BackendKind.PROCESS:
        if importlib.util.find_spec("comfy_worker") is None:
            fail(
                "comfy_worker is not importable: pip install comfyui-gpu-pool in this Python",
                ExitCode.FAILED,
            )
        selection = select(gpus_option, simulate, count)
        process = ProcessBackend(base_dir)
        for slot in selection.slots:
            process.files(slot.index).log_file(ROLE_WORKER).parent.mkdir(
                parents=True, exist_ok=True
            )
        out.print(f"process layout ready in {process.base_dir} for {len(selection.slots)} GPU(s)")
        return
    with backend_session(backend, docker_host) as session:
        assert isinstance(session, DockerBackend)
        client = session.client
        if image:
            if not worker_images.has_image(client, image):
                fail(
                    f"image {image} not found: build or load it, or omit --image",
                    ExitCode.NOT_FOUND,
                )
            out.print(f"worker image {image} is present")
            return
        target = worker_images.RUNTIME_TARGET if source is not None else None
        tag = default_image(base_image, source)
        if worker_images.has_image(client, tag):
            out.print(f"worker image {tag} is present")
            return
        build_with_progress(client, tag, base_image, target)


def resolve_src(worker_src: Path | None) -> WorkerSource | None:
    if worker_src is None:
        return None
    return resolve_worker_src(worker_src)


def default_image(base_image: str | None, source: WorkerSource | None) -> str:
    """The image `setup` builds: the runtime-only one when the worker comes from a tree."""
    from orchestrator.images import worker as worker_images

    if source is not None:
        return worker_images.runtime_image_tag(base_image)
    return worker_images.worker_image_tag(base_image)


def build_with_progress(
    client: Any, tag: str, base_image: str | None, target: str | None = None
) -> None:
    """Build the worker image with a spinner showing the build's latest output line."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from orchestrator.images import worker as worker_images

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err.console, transient=False) as progress:
        task = progress.add_task(f"building {tag}", total=None)

        def on_progress(line: str) -> None:
            if line.strip():
                progress.update(task, description=f"building {tag}: {line.strip()[:70]}")

        error: str | None = None
        try:
            worker_images.build_worker_image(
                client, tag, base_image=base_image, on_progress=on_progress, target=target
            )
        except ImageBuildError as exc:
            error = str(exc)
        else:
            progress.update(task, description=f"built {tag}")
    if error:  # after the progress display has closed, so the error is the last line
        fail(error, ExitCode.FAILED)


def start(
    target: TargetArgument = "all",
    gpus_option: GpusOption = None,
    count: CountOption = None,
    simulate: SimulateOption = None,
    image: ImageOption = None,
    comfyui_image: ComfyuiImageOption = None,
    comfyui_cmd: ComfyuiCmdOption = None,
    base_image: BaseImageOption = None,
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    machine_id: MachineIdOption = None,
    docker_host: DockerHostOption = None,
    backend: BackendOption = BackendKind.DOCKER,
    base_dir: BaseDirOption = None,
    worker_token: WorkerTokenOption = None,
    port_base: PortBaseOption = COMFYUI_PORT_BASE,
    network: NetworkOption = "host",
    restart_policy: RestartOption = RestartPolicy.UNLESS_STOPPED,
    worker_src: WorkerSrcOption = None,
    sim_models: SimModelsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start each GPU's worker (and its ComfyUI); running ones with the same config are kept."""

    source = resolve_src(worker_src)
    indices = target_indices(target)
    selection = select(gpus_option, simulate, count)
    slots = [s for s in selection.slots if indices is None or s.index in indices]
    if not slots:
        known = ", ".join(str(s.index) for s in selection.slots)
        fail(
            f"GPU {target} is not managed here (GPUs: {known}): pick one of those",
            ExitCode.NOT_FOUND,
        )
    is_docker = backend == BackendKind.DOCKER
    settings = WorkerSettings(
        machine_id=machine_id or default_machine_id(),
        hub=HubAddress(hub_url),
        image=(image or default_image(base_image, source)) if is_docker else "",
        comfyui_image=comfyui_image,
        comfyui_cmd=comfyui_cmd,
        worker_token=worker_token,
        port_base=port_base,
        worker_src=source,
        sim_models=parse_sim_models(sim_models, simulate),
    )
    python = "python3" if is_docker else sys.executable
    plans = plan_slots(slots, settings, selection.num_gpus, python=python, containers=is_docker)
    with backend_session(
        backend, docker_host, base_dir, network=network, restart_policy=str(restart_policy)
    ) as session:
        results = session.start(plans)
    report(results, as_json)


def _stop_or_restart(action: str, doc: str, none_managed: str) -> Callable[..., None]:
    """`wgpu stop` and `wgpu restart`: the same options, the same report; only the
    backend's action differs."""

    def command(
        target: TargetArgument = "all",
        gpus_option: GpusOption = None,
        timeout: StopTimeoutOption = DEFAULT_STOP_TIMEOUT_S,
        machine_id: MachineIdOption = None,
        docker_host: DockerHostOption = None,
        backend: BackendOption = BackendKind.DOCKER,
        base_dir: BaseDirOption = None,
        as_json: JsonOption = False,
    ) -> None:
        indices = target_indices(target, gpus_option)
        with backend_session(backend, docker_host, base_dir, machine_id) as session:
            act = session.stop if action == "stop" else session.restart
            results = act(indices, timeout)
        report_managed(results, as_json, none_managed=none_managed)

    command.__name__ = command.__qualname__ = action
    command.__doc__ = doc
    return command


stop = _stop_or_restart(
    "stop",
    "Stop a GPU's worker (and its ComfyUI) gracefully: SIGTERM, --timeout grace, then kill.",
    none_managed="no managed workers",
)
restart = _stop_or_restart(
    "restart",
    "Restart a GPU's ComfyUI and worker as they were configured (start creates new ones).",
    none_managed="no managed workers: use start",
)


def status(
    target: TargetArgument = "all",
    gpus_option: GpusOption = None,
    watch_mode: bool = typer.Option(False, "--watch", "-w", help="Refresh in place until Ctrl-C."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between refreshes."),
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    machine_id: MachineIdOption = None,
    docker_host: DockerHostOption = None,
    backend: BackendOption = BackendKind.DOCKER,
    base_dir: BaseDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """One table: GPU stats, worker and ComfyUI state, and what the hub says of each worker."""
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.gpus import nvml
    from orchestrator.hub_client.client import HubClient
    from orchestrator.status_view import collect_snapshot, render_table, watch

    inventory = nvml.discover()
    indices = target_indices(target, gpus_option, inventory)
    hub = HubClient(hub_url, api_key=api_key, timeout_s=0.5)
    with (
        backend_session(backend, docker_host, base_dir, machine_id) as session,
        nvml.GpuMonitor() as monitor,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):

        def collect() -> Any:
            return collect_snapshot(
                session,
                monitor,
                inventory.gpus,
                hub,
                machine_id=machine_id,
                only=indices,
                pool=pool,
            )

        if as_json:
            typer.echo(json.dumps(collect().to_json()))
            return
        if watch_mode:
            with contextlib.suppress(KeyboardInterrupt):
                watch(collect, out.console, interval_s=interval)
            return
        out.print(render_table(collect()))


def logs(
    target: TargetArgument = "all",
    gpus_option: GpusOption = None,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int | None = typer.Option(None, "--tail", "-n", min=0, help="Only the last N lines."),
    since: str | None = typer.Option(None, "--since", help="Only lines since 10m, 2h, a time."),
    service: ServiceOption = ServiceKind.WORKER,
    machine_id: MachineIdOption = None,
    docker_host: DockerHostOption = None,
    backend: BackendOption = BackendKind.DOCKER,
    base_dir: BaseDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """A GPU's worker (or --service comfyui) log; `all` interleaves them with a gpuN | prefix."""
    from rich.text import Text

    indices = target_indices(target, gpus_option)
    request = LogRequest(indices, str(service), tail=tail, since=since, follow=follow)
    many = indices is None
    with backend_session(backend, docker_host, base_dir, machine_id) as session:
        try:
            lines = session.logs(request)
            for line in lines:
                if as_json:
                    record = {
                        "gpu": line.index,
                        "service": line.role,
                        "time": line.timestamp,
                        "line": line.text,
                    }
                    typer.echo(json.dumps(record))
                elif many:
                    prefix = Text(
                        f"gpu{line.index} | ",
                        style=PREFIX_COLOURS[line.index % len(PREFIX_COLOURS)],
                    )
                    out.print(prefix + Text(line.text), soft_wrap=True)
                else:
                    out.print(Text(line.text), soft_wrap=True)
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    """Add setup, start, stop, restart, status and logs to `app`."""
    for command in (setup, start, stop, restart, status, logs):
        app.command(command.__name__)(command)
