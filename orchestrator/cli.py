"""The `wgpu` command line. Each command family lives in its own module under `commands/`.

A command's module is imported (and turned into a click command) only when that command runs or
`wgpu --help` lists it: `wgpu status --json` pays for `commands/workers.py`, not for the other
ten modules and their two dozen commands. COMMAND_MODULE says which module registers which name.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The command list in panels (Workers, Stack, Jobs, ...), in plain text: Rich's help
        renderer would cost `wgpu --help` ~60 ms of imports."""
        panels: dict[str, list[tuple[str, Any]]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            panels.setdefault(_PANEL_OF.get(name, "Other"), []).append((name, command))
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


# Settings every command is built with (root and per-module apps alike).
_APP_SETTINGS: dict[str, Any] = {
    "add_completion": False,
    "pretty_exceptions_enable": False,
    # Plain help: Rich's help renderer imports ~60 ms of modules (markdown-it, tracebacks),
    # which alone would spend most of the 150 ms `wgpu --help` may take.
    "rich_markup_mode": None,
}


class _LazyCommands(MutableMapping[str, Any]):
    """The root group's commands by name (click's `Group.commands`): the names are known up
    front (listing, "did you mean"), a command is built when it is looked up."""

    def __init__(self, eager: Mapping[str, Any]) -> None:
        self._eager = dict(eager)

    def __getitem__(self, name: str) -> Any:
        if name in self._eager:
            return self._eager[name]
        return _module_commands(COMMAND_MODULE[name]).commands[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._eager[name] = command

    def __delitem__(self, name: str) -> None:
        del self._eager[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._eager
        yield from (name for name in COMMAND_MODULE if name not in self._eager)

    def __len__(self) -> int:
        return len(self._eager.keys() | COMMAND_MODULE.keys())


@functools.cache
def _module_commands(module: str) -> TyperGroup:
    """The click commands orchestrator.commands.<module> registers, built on first use."""
    commands = typer.Typer(**_APP_SETTINGS)
    # __import__, not importlib.import_module: the import statement's path, which
    # `python -X importtime` (how start time is profiled) reports.
    __import__(f"orchestrator.commands.{module}", fromlist=["register"]).register(commands)
    group = typer.main.get_group(commands)
    assert isinstance(group, TyperGroup)
    return group


def _is_docker_error(exc: BaseException) -> bool:
    """Whether docker-py raised `exc`; docker-py is not imported just to ask (it cannot have)."""
    errors = sys.modules.get("docker.errors")
    return errors is not None and isinstance(exc, errors.DockerException)


app = typer.Typer(
    name="wgpu",
    cls=WgpuGroup,
    help="Run one ComfyUI worker per NVIDIA GPU, fed from one durable Redis job queue.",
    no_args_is_help=True,
    **_APP_SETTINGS,
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


# `wgpu --help` groups the commands; a command missing here is listed under "Other".
HELP_PANELS = {
    "Workers": ("count", "setup", "start", "stop", "restart", "status", "logs", "models"),
    "Rollout": ("drain", "resume", "update"),
    "Stack": ("up", "down", "demo", "compose", "fleet", "k8s"),
    "Jobs": ("submit", "jobs", "cancel"),
    "Services": ("hub", "sim"),
}
_PANEL_OF = {name: panel for panel, names in HELP_PANELS.items() for name in names}

# Which orchestrator.commands module registers each command (its `register(app)`), in the
# order `wgpu --help` lists them within a panel.
COMMAND_MODULE = {
    "count": "count",
    "hub": "hub",
    "sim": "sim",
    **dict.fromkeys(("setup", "start", "stop", "restart", "status", "logs"), "workers"),
    **dict.fromkeys(("drain", "resume", "update"), "rollout"),
    **dict.fromkeys(("up", "down", "demo"), "stack"),
    **dict.fromkeys(("submit", "jobs", "cancel"), "client"),
    "compose": "compose",
    "fleet": "fleet",
    "k8s": "k8s",
    "models": "scheduling",
}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
