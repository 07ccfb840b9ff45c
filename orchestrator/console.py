"""Where the CLI writes, and how it fails: one line saying what went wrong and what to do."""

from __future__ import annotations

import enum
from typing import IO, TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


class Stream:
    """stdout or stderr as a Rich Console made on first use: a command that only prints JSON
    (`wgpu status --json` under `watch`) never pays Rich's import."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False)
        return self._console

    @property
    def file(self) -> IO[str]:
        return self.console.file

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)


def one_line(cell: str | Text) -> Text:
    """A table cell that never wraps: cut with an ellipsis when its column is narrower, so a
    table on an 80-column terminal keeps one line per row."""
    from rich.text import Text

    text = Text(cell) if isinstance(cell, str) else cell  # plain: no markup from data
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


out = Stream(stderr=False)
err = Stream(stderr=True)


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
