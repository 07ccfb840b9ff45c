"""`wgpu submit`, `wgpu jobs`, `wgpu cancel`: the hub's REST API from the command line."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.backends.base import DEFAULT_HUB_URL
from orchestrator.commands.common import hub_errors
from orchestrator.commands.options import ApiKeyOption, HubUrlOption, JsonOption
from orchestrator.console import ExitCode, err, fail, one_line, out
from wgpu_protocol.rest import JobJson

if TYPE_CHECKING:  # the hub client (urllib, ssl) loads when a command talks to the hub
    from orchestrator.hub_client.client import HubClient
    from orchestrator.hub_client.job_watch import JobBoard

# Ids as docker shows container ids: 12 characters, and any unique prefix works (the hub
# resolves it) wherever a job id is taken.
SHORT_ID = 12

STATUS_STYLE = {
    "succeeded": "green",
    "assigned": "blue",
    "running": "cyan",
    "queued": "yellow",
    "failed": "red",
    "dead": "red",
    "timed_out": "red",
    "cancelled": "magenta",
    "unschedulable": "red",
    "expired": "red",
}


def submit(
    workflows: Annotated[
        list[Path], typer.Argument(metavar="WORKFLOW.json...", help="API-format workflows.")
    ],
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the jobs to the end."),
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Download outputs here (implies --wait)."),
    ] = None,
    priority: int | None = typer.Option(None, "--priority", "-p", help="Higher runs first."),
    count: int = typer.Option(1, "--count", "-n", min=1, help="Submit each workflow K times."),
    timeout: float | None = typer.Option(None, "--timeout", help="A job's time limit (s)."),
    wait_timeout: float = typer.Option(3600.0, "--wait-timeout", help="Stop waiting after (s)."),
    input_files: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="[NAME=]FILE",
            help="A file the workflow loads (LoadImage's image NAME; default the file's name). "
            "Repeatable; uploaded once for all jobs.",
        ),
    ] = None,
    mask_files: Annotated[
        list[str] | None,
        typer.Option(
            "--mask",
            metavar="IMAGE=FILE",
            help="FILE's alpha is the mask of input IMAGE: its LoadImage gives that MASK "
            "(ComfyUI's /upload/mask). Repeatable.",
        ),
    ] = None,
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit workflows; with --wait, a progress bar per job and the outputs downloaded."""
    from orchestrator.hub_client.client import HubClient
    from orchestrator.hub_client.job_watch import JobBoard, load_workflow

    loaded = [(path, load_workflow(path)) for path in workflows]
    named = [parse_input_option(option) for option in input_files or []]
    masks = [parse_mask_option(option) for option in mask_files or []]
    hub = HubClient(hub_url, api_key=api_key)
    board = JobBoard()
    with hub_errors(hub_url):
        inputs: dict[str, Any] = {name: {"ref": hub.upload(path)["ref"]} for name, path in named}
        for image, path in masks:
            inputs[f"mask-of-{image}"] = {"ref": hub.upload(path)["ref"], "mask_for": image}
        for path, workflow in loaded:
            for _ in range(count):
                job = hub.submit(workflow, priority=priority, timeout_s=timeout, inputs=inputs)
                board.add(str(job["id"]), path.name)
    if not (wait or out_dir):
        if as_json:
            typer.echo(json.dumps({"jobs": list(board.jobs)}))
        else:
            for job_id in board.jobs:
                typer.echo(job_id)
        return
    follow_with_progress(hub, board, wait_timeout, quiet=as_json)
    code = finish(hub, board, out_dir, as_json)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def parse_input_option(option: str) -> tuple[str, Path]:
    """`--input mask=mask.png` -> ("mask", mask.png); `--input in.png` -> ("in.png", in.png)."""
    name, sep, file = option.partition("=")
    path = Path(file if sep else option)
    if not sep:
        name = path.name
    if not name or "/" in name:
        fail(f"--input {option!r}: give NAME=FILE with a plain NAME", ExitCode.USAGE)
    if not path.is_file():
        fail(f"--input {option!r}: no file {path}", ExitCode.USAGE)
    return name, path


def parse_mask_option(option: str) -> tuple[str, Path]:
    """`--mask in.png=mask.png` -> ("in.png", mask.png): the image input it masks, the file."""
    image, sep, file = option.partition("=")
    if not sep or not image or "/" in image:
        fail(f"--mask {option!r}: give IMAGE=FILE, IMAGE an input's name", ExitCode.USAGE)
    path = Path(file)
    if not path.is_file():
        fail(f"--mask {option!r}: no file {path}", ExitCode.USAGE)
    return image, path


def follow_with_progress(hub: HubClient, board: JobBoard, timeout_s: float, quiet: bool) -> None:
    """A bar per job on stderr, fed by each job's event stream."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from orchestrator.hub_client.job_watch import follow_all, wait_until

    columns = (
        TextColumn("{task.fields[label]}", style="bold"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    threads = follow_all(hub, board, timeout_s)
    with Progress(*columns, console=err.console, disable=quiet, transient=False) as progress:
        tasks: dict[str, TaskID] = {
            state.job_id: progress.add_task(
                "", total=100, label=f"{state.job_id[:8]} {state.label}", status=state.status
            )
            for state in board.snapshot()
        }

        def tick() -> None:
            for state in board.snapshot():
                style = STATUS_STYLE.get(state.status, "white")
                progress.update(
                    tasks[state.job_id],
                    completed=state.percent,
                    status=f"[{style}]{state.status}[/]",
                )

        wait_until(board, threads, tick)


def finish(hub: HubClient, board: JobBoard, out_dir: Path | None, as_json: bool) -> ExitCode:
    """Download outputs, report one line per job; OK only when every job succeeded."""
    from orchestrator.hub_client.job_watch import download_outputs

    results = []
    failed = False
    with hub_errors(hub.base_url):
        for state in board.snapshot():
            files: list[Path] = []
            if state.status == "succeeded" and state.job is not None and out_dir is not None:
                files = download_outputs(hub, state.job, out_dir)
            failed = failed or state.status != "succeeded"
            results.append((state, files))
    if as_json:
        payload = [
            {
                "id": state.job_id,
                "workflow": state.label,
                "status": state.status,
                "error": state.error,
                "files": [str(f) for f in files],
            }
            for state, files in results
        ]
        typer.echo(json.dumps({"jobs": payload}))
    else:
        for state, files in results:
            style = STATUS_STYLE.get(state.status, "white")
            line = f"{state.job_id} {state.label}: [{style}]{state.status}[/]"
            if state.error:
                line += f" ({state.error})"
            if files:
                line += f" -> {', '.join(str(f) for f in files)}"
            out.print(line, soft_wrap=True)
    return ExitCode.FAILED if failed else ExitCode.OK


def _when(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return datetime.datetime.fromtimestamp(seconds).strftime("%H:%M:%S")


def _took(job: JobJson) -> str:
    start, end = job.get("started_at"), job.get("finished_at")
    if isinstance(start, int | float) and isinstance(end, int | float):
        return f"{end - start:.1f}s"
    return ""


def jobs(
    status: str | None = typer.Option(None, "--status", "-s", help="Only jobs in this state."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000),
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """The hub's jobs with their state, worker and times."""
    from orchestrator.hub_client.client import HubClient

    hub = HubClient(hub_url, api_key=api_key)
    with hub_errors(hub_url):
        found = hub.list_jobs(status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps({"jobs": found}))
        return
    from rich import box
    from rich.table import Table

    # One line per job on 80 columns: the id, status and times keep their width; the worker
    # and the error give way first, cut with an ellipsis.
    table = Table(title=f"jobs at {hub_url}", box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for header, flexible in (
        ("ID", False),
        ("Status", False),
        ("Prio", False),
        ("Worker", True),
        ("Progress", False),
        ("Created", False),
        ("Took", False),
        ("Error", True),
    ):
        table.add_column(header, no_wrap=not flexible, justify="left")
    for job in found:
        status_text = str(job.get("status", ""))
        progress = job.get("progress")
        percent = progress.get("percent") if progress else None
        table.add_row(
            str(job.get("id", ""))[:SHORT_ID],
            f"[{STATUS_STYLE.get(status_text, 'white')}]{status_text}[/]",
            str(job.get("priority", "")),
            one_line(str(job.get("worker_id") or "")),
            f"{percent:.0f}%" if isinstance(percent, int | float) else "",
            _when(job.get("created_at")),
            _took(job),
            one_line(_error_or_wait(job)),
        )
    out.print(table)
    if not found:
        out.print("no jobs" + (f" with status {status}" if status else ""))


def _error_or_wait(job: JobJson) -> str:
    """The error of an ended job, or why a queued one waits (no worker can take it)."""
    error = job.get("error")
    if error:
        return str(error.get("message", ""))
    reason = job.get("waiting_reason")
    return f"waiting: {reason}" if reason else ""


def cancel(
    job_id: str = typer.Argument(..., metavar="ID"),
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a job (a running one is interrupted on its worker)."""
    from orchestrator.hub_client.client import HubClient

    hub = HubClient(hub_url, api_key=api_key)
    with hub_errors(hub_url):
        job = hub.cancel(job_id)
    if as_json:
        typer.echo(json.dumps(job))
        return
    out.print(f"{job.get('id', job_id)}: {job.get('status')}")


def register(app: typer.Typer) -> None:
    """Add submit, jobs and cancel to `app`."""
    app.command("submit")(submit)
    app.command("jobs")(jobs)
    app.command("cancel")(cancel)
