"""The `wgpu` command line. Each command family lives in its own module under `commands/`."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from orchestrator.commands import (
    client,
    compose,
    count,
    fleet,
    hub,
    k8s,
    rollout,
    scheduling,
    sim,
    stack,
    workers,
)
from orchestrator.console import error_line
from orchestrator.errors import ExitCode, WgpuError


class WgpuGroup(TyperGroup):
    """The one place a command's error becomes a message and an exit code: any WgpuError a
    command lets through prints `error: <its one line>` and exits with its `exit_code`; so does
    a docker-py error (the engine said no), as UNREACHABLE."""

    def invoke(self, ctx: Any) -> Any:  # click's Context (typer vendors click)
        try:
            return super().invoke(ctx)
        except WgpuError as exc:
            error_line(str(exc))
            raise typer.Exit(int(exc.exit_code)) from None
        except Exception as exc:
            if not _is_docker_error(exc):
                raise
            error_line(f"Docker engine error: {exc}")
            raise typer.Exit(int(ExitCode.UNREACHABLE)) from None


def _is_docker_error(exc: BaseException) -> bool:
    """Whether docker-py raised `exc`; docker-py is not imported just to ask (it cannot have)."""
    errors = sys.modules.get("docker.errors")
    return errors is not None and isinstance(exc, errors.DockerException)


app = typer.Typer(
    name="wgpu",
    cls=WgpuGroup,
    help="Run one ComfyUI worker per NVIDIA GPU, fed from one durable Redis job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Rich's help renderer imports ~60 ms of modules (markdown-it, tracebacks),
    # which alone would spend most of the 150 ms `wgpu --help` may take.
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Keeps `wgpu` a command group even while only one command is registered."""


for module in (count, hub, sim, workers, rollout, stack, client, compose, fleet, k8s, scheduling):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
