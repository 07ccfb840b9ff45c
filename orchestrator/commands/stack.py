"""`wgpu up`, `wgpu down`, `wgpu demo`: the whole one-host stack in one command."""

from __future__ import annotations

import contextlib
import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.commands.common import parse_sim_models, select
from orchestrator.commands.options import (
    ComfyuiCmdOption,
    CountOption,
    DockerHostOption,
    GpusOption,
    MachineIdOption,
    SimModels,
    SimModelsOption,
    WorkerSrcOption,
    default_machine_id,
)
from orchestrator.console import ExitCode, err, fail, out, warn
from orchestrator.gpus.slots import Selection, Slot, simulated_slots
from orchestrator.stack.defaults import DEFAULT_HUB_PORT, DEFAULT_REDIS_IMAGE, DEFAULT_REDIS_PORT
from wgpu_protocol.ports import COMFYUI_PORT_BASE

if TYPE_CHECKING:  # docker-py, Rich's progress and the stack load when a command runs
    from rich.progress import Progress, TaskID

DEFAULT_SIMULATED_SLOTS = 2


class StackBackend(enum.StrEnum):
    AUTO = "auto"
    DOCKER = "docker"
    PROCESS = "process"


BackendChoice = Annotated[
    StackBackend,
    typer.Option("--backend", envvar="WGPU_BACKEND", help="auto: Docker when it answers."),
]
DEFAULT_DEMO_OUT = Path("wgpu-demo-output")
StateDirOption = typer.Option(
    None, "--state-dir", envvar="WGPU_STATE_DIR", help="Process mode: PIDs, logs, Redis data."
)


class StepProgress:
    """A spinner line per part on stderr, updated from any thread."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, part: str, state: str) -> None:
        style = "red" if state in ("failed", "unhealthy") else "green"
        text = f"{part}: [{style}]{state}[/]"
        if part not in self.tasks:
            self.tasks[part] = self.progress.add_task(text, total=None)
        self.progress.update(self.tasks[part], description=text)


def step_progress() -> Progress:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err.console
    )


def open_docker(docker_host: str | None, required: bool) -> Any | None:
    from orchestrator.backends.docker_backend import DockerBackend
    from orchestrator.errors import BackendUnreachable

    try:
        return DockerBackend.connect(docker_host).client
    except BackendUnreachable as exc:
        if required:
            fail(str(exc), ExitCode.UNREACHABLE)
        return None


def slot_selection(gpus_option: str | None, simulate: int | None, count: int | None) -> Selection:
    """--simulate, --gpus, --count, or every GPU NVML sees; no GPU at all -> simulated slots."""
    if simulate or gpus_option or count:
        return select(gpus_option, simulate, count)
    from orchestrator.gpus import nvml

    inventory = nvml.discover()
    if not inventory.gpus:
        why = f" ({inventory.error})" if inventory.error else ""
        warn(f"no NVIDIA GPU found{why}: running {DEFAULT_SIMULATED_SLOTS} simulated slots")
        return simulated_slots(DEFAULT_SIMULATED_SLOTS)
    return select(None, None, inventory=inventory)


def stack_images(client: Any, base_image: str | None, on_step: StepProgress) -> dict[str, str]:
    """env var -> image for the parts not named by env: built locally when missing."""
    from orchestrator.errors import ImageBuildError
    from orchestrator.images.worker import ensure_worker_image, has_image
    from orchestrator.stack.compose_render import IMAGE_ENV, ROLE_HUB, ROLE_REDIS
    from orchestrator.stack.images import HUB_RECIPE, REDIS_RECIPE, ensure_image

    images: dict[str, str] = {}

    def note(part: str) -> Any:
        return lambda line: on_step(part, f"building: {line[:60]}")

    try:
        if not os.environ.get(IMAGE_ENV["worker"]):
            on_step("worker image", "checking")
            images[IMAGE_ENV["worker"]] = ensure_worker_image(
                client, base_image, note("worker image")
            )
            on_step("worker image", images[IMAGE_ENV["worker"]])
        if not os.environ.get(IMAGE_ENV[ROLE_HUB]):
            on_step("hub image", "checking")
            images[IMAGE_ENV[ROLE_HUB]] = ensure_image(
                client, HUB_RECIPE, base_image, note("hub image")
            )
            on_step("hub image", images[IMAGE_ENV[ROLE_HUB]])
        if not os.environ.get(IMAGE_ENV[ROLE_REDIS]) and not has_image(client, DEFAULT_REDIS_IMAGE):
            on_step("redis image", "building locally")
            tag = ensure_image(client, REDIS_RECIPE, base_image, note("redis image"))
            images[IMAGE_ENV[ROLE_REDIS]] = tag
            on_step("redis image", tag)
    except ImageBuildError as exc:
        fail(f"{exc}: pass --base-image with a local image, or set the WGPU_*_IMAGE variables")
    return images


def up(
    simulate: int | None = typer.Option(None, "--simulate", min=1, help="N simulated slots."),
    gpus_option: GpusOption = None,
    count: CountOption = None,
    backend: BackendChoice = StackBackend.AUTO,
    docker_host: DockerHostOption = None,
    machine_id: MachineIdOption = None,
    hub_port: int = typer.Option(DEFAULT_HUB_PORT, "--hub-port"),
    hub_bind: str = typer.Option("0.0.0.0", "--hub-bind", help="Where the hub listens."),
    redis_port: int = typer.Option(DEFAULT_REDIS_PORT, "--redis-port"),
    port_base: int = typer.Option(COMFYUI_PORT_BASE, "--port-base", help="ComfyUI N: base+N."),
    base_image: str | None = typer.Option(
        None, "--base-image", envvar="WGPU_BASE_IMAGE", help="Build local images on this one."
    ),
    health_interval: float = typer.Option(5.0, "--health-interval", min=0.5),
    sim_node_time: float | None = typer.Option(None, "--sim-node-time", help="Seconds/node."),
    state_dir: Path | None = StateDirOption,
    name_prefix: Annotated[
        str, typer.Option("--name-prefix", envvar="WGPU_NAME_PREFIX", hidden=True)
    ] = "",
    comfyui_cmd: ComfyuiCmdOption = None,
    worker_src: WorkerSrcOption = None,
    sim_models_option: SimModelsOption = None,
) -> None:
    """Start Redis + hub + per GPU ComfyUI and worker (containers, or processes without Docker:
    there, real GPUs need --comfyui-cmd)."""

    from orchestrator.stack.compose_render import StackOptions
    from orchestrator.stack.lifecycle import docker_up

    selection = slot_selection(gpus_option, simulate, count)
    simulated = len(selection.slots) if selection.slots[0].simulated else 0
    sim_models = parse_sim_models(sim_models_option, simulated)
    client = None
    if backend != StackBackend.PROCESS:
        client = open_docker(docker_host, required=backend == StackBackend.DOCKER)
    if client is None:
        gpu_slots = () if simulated else tuple(selection.slots)
        if gpu_slots and not comfyui_cmd:
            fail(
                "without Docker, GPUs need a ComfyUI to run: pass --comfyui-cmd "
                '"python main.py --port {port}" (or --simulate N)',
                ExitCode.USAGE,
            )
        up_processes(
            simulated, machine_id, hub_port, hub_bind, port_base, sim_node_time, state_dir,
            gpu_slots=gpu_slots, comfyui_cmd=comfyui_cmd, worker_src=worker_src,
            sim_models=sim_models,
        )  # fmt: skip
        return
    options = StackOptions(
        gpus=() if simulated else tuple(selection.slots),
        simulate=simulated,
        num_gpus=selection.num_gpus,
        machine_id=machine_id or default_machine_id(),
        redis_port=redis_port,
        hub_port=hub_port,
        hub_bind=hub_bind,
        port_base=port_base,
        health_interval_s=health_interval,
        sim_node_time_s=sim_node_time,
        sim_models=sim_models,
        name_prefix=name_prefix,
    )
    options.slots()  # a bad selection fails here, before any image is built
    with step_progress() as progress:
        steps = StepProgress(progress)
        images = stack_images(client, base_image, steps)
        results = docker_up(client, options, images, on_event=steps)
    failed = [r for r in results if not r.ok]
    for result in failed:
        err.print(f"[red]x[/] {result.service}: {result.detail}", soft_wrap=True)
    if failed:
        fail(f"{len(failed)} service(s) did not become healthy: see `wgpu logs` or docker logs")
    out.print(f"hub: http://127.0.0.1:{hub_port}  ({len(results)} services healthy)")
    out.print(f"dashboard: http://127.0.0.1:{hub_port}/")


def up_processes(
    slots: int,
    machine_id: str | None,
    hub_port: int,
    hub_bind: str,
    port_base: int,
    sim_node_time: float | None,
    state_dir: Path | None,
    gpu_slots: tuple[Slot, ...] = (),
    comfyui_cmd: str | None = None,
    worker_src: Path | None = None,
    sim_models: SimModels = (),
) -> None:
    from orchestrator.commands.workers import resolve_src
    from orchestrator.errors import StackError
    from orchestrator.stack.lifecycle import (
        ProcessStack,
        ProcessStackConfig,
        default_state_dir,
        read_state,
        stop_process_stack,
    )

    directory = state_dir or default_state_dir()
    if read_state(directory) is not None:
        stop_process_stack(directory)  # a fresh start: like `docker compose up` recreating
    config = ProcessStackConfig(
        state_dir=directory,
        slots=slots,
        hub_port=hub_port,
        hub_host=hub_bind if hub_bind != "0.0.0.0" else "127.0.0.1",
        port_base=port_base,
        machine_id=machine_id or default_machine_id(),
        sim_node_time_s=sim_node_time,
        gpu_slots=gpu_slots,
        comfyui_cmd=comfyui_cmd if gpu_slots else None,
        worker_src=resolve_src(worker_src),
        sim_models=sim_models,
    )
    warn("no Docker engine: running the stack as local processes")
    with step_progress() as progress:
        stack = ProcessStack(config, on_step=StepProgress(progress))
        try:
            stack.start()
            stack.wait_workers()
        except StackError:
            stack.stop()
            raise
    out.print(f"hub: {config.hub_url}  (state in {directory}; stop with `wgpu down`)")
    out.print(f"dashboard: {config.hub_url}/")


def down(
    volumes: bool = typer.Option(False, "--volumes", help="Also delete Redis' data."),
    backend: BackendChoice = StackBackend.AUTO,
    docker_host: DockerHostOption = None,
    machine_id: Annotated[
        str | None,
        typer.Option("--machine-id", help="Only this machine id's containers (default: all)."),
    ] = None,
    state_dir: Path | None = StateDirOption,
) -> None:
    """Stop and remove the stack (Redis' data is kept unless --volumes)."""
    from orchestrator.stack.lifecycle import default_state_dir, docker_down, stop_process_stack

    removed: list[str] = []
    if backend != StackBackend.DOCKER:
        directory = state_dir or default_state_dir()
        removed += stop_process_stack(directory, remove_data=volumes)
    if backend != StackBackend.PROCESS:
        client = open_docker(docker_host, required=backend == StackBackend.DOCKER)
        if client is not None:
            with contextlib.closing(client):
                removed += docker_down(client, volumes=volumes, machine_id=machine_id)
    if not removed:
        out.print("nothing was running")
        return
    out.print(f"removed {len(removed)}: {', '.join(removed)}")


def demo(
    slots: int = typer.Option(2, "--slots", "-n", min=1, help="Simulated GPU slots."),
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Where the output images go.")
    ] = DEFAULT_DEMO_OUT,
    workflow: Annotated[
        list[Path] | None,
        typer.Option("--workflow", "-w", help="Workflow file (repeatable; default examples/)."),
    ] = None,
    count: int = typer.Option(1, "--count", min=1, help="Submissions per workflow."),
    node_time: float = typer.Option(0.05, "--node-time", min=0, help="Simulated s/node."),
    timeout: float = typer.Option(300.0, "--timeout", help="Give up on jobs after (s)."),
) -> None:
    """Run the real pipeline here with simulated GPUs: submit the examples, write their images."""
    from orchestrator.stack.demo import DemoOptions, run_demo

    options = DemoOptions(
        slots=slots,
        out_dir=out_dir,
        examples=workflow or None,
        count=count,
        node_time_s=node_time,
        timeout_s=timeout,
    )
    code = run_demo(options, out.console)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add up, down and demo to `app`."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("demo")(demo)
