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

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The command list in panels (Workers, Stack, Jobs, ...), in plain text: Rich's help
        renderer would cost `wgpu --help` ~60 ms of imports."""
        panels: dict[str, list[tuple[str, Any]]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            panel = getattr(command, "rich_help_panel", None) or "Other"
            panels.setdefault(panel, []).append((name, command))
        if not panels:
            return
        widest = max(len(name) for rows in panels.values() for name, _ in rows)
        limit = formatter.width - 6 - widest
        for panel in sorted(panels, key=_panel_order):
            rows = [(name, command.get_short_help_str(limit)) for name, command in panels[panel]]
            with formatter.section(panel):
                formatter.write_dl(rows)


def _panel_order(panel: str) -> int:
    order = list(HELP_PANELS)
    return order.index(panel) if panel in order else len(order)


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


def _print_version(value: bool) -> None:
    if value:
        from orchestrator import DISTRIBUTION, __version__

        typer.echo(f"wgpu {__version__} ({DISTRIBUTION})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version and exit.",
    ),
) -> None:
    """Run one ComfyUI worker per NVIDIA GPU, fed from one durable Redis job queue."""


for module in (count, hub, sim, workers, rollout, stack, client, compose, fleet, k8s, scheduling):
    module.register(app)

# `wgpu --help` groups the commands; a command missing here is listed under "Other".
HELP_PANELS = {
    "Workers": ("count", "setup", "start", "stop", "restart", "status", "logs", "models"),
    "Rollout": ("drain", "resume", "update"),
    "Stack": ("up", "down", "demo", "compose", "fleet", "k8s"),
    "Jobs": ("submit", "jobs", "cancel"),
    "Services": ("hub", "sim"),
}
_PANEL_OF = {name: panel for panel, names in HELP_PANELS.items() for name in names}


for _command in app.registered_commands:
    _name = _command.name or (_command.callback.__name__ if _command.callback else "")
    _command.rich_help_panel = _PANEL_OF.get(_name.replace("_", "-"), "Other")
for _group in app.registered_groups:
    _group.rich_help_panel = _PANEL_OF.get(_group.name or "", "Other")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
