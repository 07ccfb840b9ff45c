"""`wgpu compose render --gpus 0,2 | --count N | --simulate N [-o FILE]`: the compose file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.commands.common import select
from orchestrator.commands.options import CountOption, GpusOption, SimulateOption
from orchestrator.console import ExitCode, err, fail, out
from orchestrator.stack.defaults import (
    DEFAULT_COMFYUI_IMAGE,
    DEFAULT_HUB_IMAGE,
    DEFAULT_HUB_PORT,
    DEFAULT_REDIS_IMAGE,
    DEFAULT_REDIS_PORT,
    DEFAULT_WORKER_IMAGE,
)
from wgpu_protocol.ports import COMFYUI_PORT_BASE

compose_app = typer.Typer(help="The one-host stack as a docker compose file.", no_args_is_help=True)


@compose_app.command("render")
def render(
    gpus_option: GpusOption = None,
    count: CountOption = None,
    simulate: SimulateOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
    machine_id: str = typer.Option("${MACHINE_ID:-local}", "--machine-id"),
    hub_port: int = typer.Option(DEFAULT_HUB_PORT, "--hub-port"),
    redis_port: int = typer.Option(DEFAULT_REDIS_PORT, "--redis-port"),
    port_base: int = typer.Option(COMFYUI_PORT_BASE, "--port-base", help="ComfyUI N: base+N."),
    worker_image: str = typer.Option(DEFAULT_WORKER_IMAGE, "--worker-image"),
    hub_image: str = typer.Option(DEFAULT_HUB_IMAGE, "--hub-image"),
    redis_image: str = typer.Option(DEFAULT_REDIS_IMAGE, "--redis-image"),
    comfyui_image: str = typer.Option(DEFAULT_COMFYUI_IMAGE, "--comfyui-image"),
    health_interval: float = typer.Option(5.0, "--health-interval", min=0.5),
) -> None:
    """Render Redis + hub + per GPU ComfyUI and worker (images overridable by env vars)."""
    from orchestrator.stack.compose_render import (
        HEADER,
        StackOptions,
        render_stack,
        to_yaml,
        validate,
    )

    if gpus_option is None and count is None and simulate is None:
        fail("pass one of --gpus 0,2, --count N and --simulate N", ExitCode.USAGE)
    selection = select(gpus_option, simulate, count)
    options = StackOptions(
        gpus=() if simulate else tuple(selection.slots),
        simulate=simulate or 0,
        num_gpus=selection.num_gpus,
        machine_id=machine_id,
        hub_port=hub_port,
        redis_port=redis_port,
        port_base=port_base,
        worker_image=worker_image,
        hub_image=hub_image,
        redis_image=redis_image,
        comfyui_image=comfyui_image,
        health_interval_s=health_interval,
    )
    document = render_stack(options)
    problems = validate(document)
    if problems:  # a bug here, not the user's: say exactly what
        fail(f"the rendered file is invalid: {'; '.join(problems)}", ExitCode.FAILED)
    text = to_yaml(document, HEADER)
    if output is None:
        out.file.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    services = len(document["services"])
    err.print(f"wrote {output} ({services} services)")


def register(app: typer.Typer) -> None:
    """Add `compose render` to `app`."""
    app.add_typer(compose_app, name="compose")
