"""Where the CLI writes, and how it fails: one line saying what went wrong and what to do."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, NoReturn

import typer

from orchestrator.errors import ExitCode as ExitCode  # re-exported: the CLI's exit codes

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


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """Print `error: message` on stderr and exit. `message` says what to do, in one line."""
    error_line(message)
    raise typer.Exit(int(code))


def error_line(message: str) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
