"""`wgpu compose render --gpus N | --simulate N [-o FILE]`: write the one-host compose file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.console import ExitCode, err, fail, out
from orchestrator.stack.compose_render import (
    DEFAULT_COMFYUI_IMAGE,
    DEFAULT_HUB_IMAGE,
    DEFAULT_HUB_PORT,
    DEFAULT_REDIS_IMAGE,
    DEFAULT_REDIS_PORT,
    DEFAULT_WORKER_IMAGE,
    HEADER,
    ComposeError,
    StackOptions,
    parse_gpus,
    render_stack,
    to_yaml,
    validate,
)
from wgpu_protocol.ports import COMFYUI_PORT_BASE

compose_app = typer.Typer(help="The one-host stack as a docker compose file.", no_args_is_help=True)


@compose_app.command("render")
def render(
    gpus: str | None = typer.Option(
        None, "--gpus", help="A GPU count (0..N-1) or a list of indices/UUIDs, e.g. 0,2."
    ),
    simulate: int | None = typer.Option(
        None, "--simulate", min=1, help="N simulated slots (the ComfyUI simulator, no GPU)."
    ),
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
    if (gpus is None) == (simulate is None):
        fail("pass exactly one of --gpus N and --simulate N", ExitCode.USAGE)
    try:
        options = StackOptions(
            gpus=parse_gpus(gpus) if gpus else (),
            simulate=simulate or 0,
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
    except ComposeError as exc:
        fail(str(exc), ExitCode.USAGE)
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
