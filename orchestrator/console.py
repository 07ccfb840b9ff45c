"""Where the CLI writes, and how it fails: one line saying what went wrong and what to do."""

from __future__ import annotations

import enum
from typing import NoReturn

import typer
from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class ExitCode(enum.IntEnum):
    """Exit codes a script can rely on."""

    OK = 0
    FAILED = 1  # the operation ran and failed (some GPU's worker did not start, a job failed)
    USAGE = 2  # bad arguments or input file
    UNREACHABLE = 3  # Docker engine, hub or Redis could not be reached
    NOT_FOUND = 4  # the named GPU, container or job does not exist
    PARTIAL = 5  # some targets succeeded, others failed (fleet, all-GPU operations)


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """Print `error: message` on stderr and exit. `message` says what to do, in one line."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(int(code))


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
