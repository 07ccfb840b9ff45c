"""`wgpu demo`: the real pipeline on any machine, no GPU, no Docker, no registry.

Local Redis (or the embedded Valkey) -> the hub -> N simulated slots (simulator + worker each),
the example workflows submitted through the hub's REST API, followed in the live status table,
their outputs written to a directory, and everything stopped again (Ctrl-C included).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from orchestrator.console import ExitCode
from orchestrator.errors import HubError, StackError, WorkflowFileError
from orchestrator.hub_client.client import HubClient
from orchestrator.hub_client.job_watch import JobBoard, download_outputs, follow_all, load_workflow
from orchestrator.stack.lifecycle import ProcessStack, ProcessStackConfig, free_port_block
from orchestrator.status_view import collect_snapshot, render_table

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STATUS_STYLE = {"succeeded": "green", "running": "cyan", "queued": "yellow"}


@dataclass
class DemoOptions:
    slots: int = 2
    out_dir: Path = Path("wgpu-demo-output")
    examples: list[Path] | None = None  # workflow files; default: examples/*.json
    count: int = 1  # submissions per example
    node_time_s: float | None = 0.05
    timeout_s: float = 300.0
    refresh_s: float = 0.25
    keep_state: bool = False


def example_workflows(directory: Path | None = None) -> list[Path]:
    """examples/*.json of this checkout, else of the current directory."""
    for candidate in (directory,) if directory else (REPO_EXAMPLES, Path.cwd() / "examples"):
        found = sorted(p for p in candidate.glob("*.json") if p.is_file())
        if found:
            return found
    return []


def jobs_table(board: JobBoard) -> Table:
    table = Table(title="jobs")
    for header in ("Job", "Workflow", "Status", "Progress", "Worker"):
        table.add_column(header)
    for state in board.snapshot():
        style = STATUS_STYLE.get(state.status, "red")
        table.add_row(
            state.job_id[:12],
            state.label,
            f"[{style}]{state.status}[/]",
            f"{state.percent:.0f}%",
            state.worker or "",
        )
    return table


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the same clean way out as Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


INTERRUPTED = 130  # as a shell reports a Ctrl-C'd command


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; the exit code: 0 when every job succeeded with its outputs on disk."""
    files = options.examples if options.examples is not None else example_workflows()
    if not files:
        console.print(f"[red]error:[/] no example workflows in {REPO_EXAMPLES}: pass --workflow")
        return ExitCode.USAGE
    try:
        workflows = [(path, load_workflow(path)) for path in files]
    except WorkflowFileError as exc:
        console.print(f"[red]error:[/] {exc}")
        return ExitCode.USAGE
    state_dir = Path(tempfile.mkdtemp(prefix="wgpu-demo-"))
    ports = free_port_block(options.slots + 1)
    config = ProcessStackConfig(
        state_dir=state_dir,
        slots=options.slots,
        hub_port=ports,
        port_base=ports + 1,
        machine_id="demo",
        sim_node_time_s=options.node_time_s,
    )

    def step(part: str, state: str) -> None:
        mark = "[red]x[/]" if state == "failed" else "[green]✓[/]"
        console.print(f"{mark} {part}: {state}", soft_wrap=True)

    stack = ProcessStack(config, on_step=step)
    code: int = ExitCode.FAILED
    with sigterm_as_interrupt():
        try:
            console.print(
                f"[bold]wgpu demo[/]: Redis, hub, {options.slots} simulated GPU slot(s), "
                f"{len(workflows)} workflow(s) (state in {state_dir})"
            )
            stack.start()
            stack.wait_workers()
            code = _submit_and_follow(stack, workflows, options, console)
        except StackError as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True)
            code = ExitCode.FAILED
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] stopping everything")
            code = INTERRUPTED
        finally:
            stopped = stack.stop()
            console.print(f"stopped {len(stopped)} process(es): {', '.join(stopped)}")
            if code == ExitCode.OK and not options.keep_state:
                shutil.rmtree(state_dir, ignore_errors=True)
            else:
                console.print(f"logs kept in {state_dir}")
    return code


def _submit_and_follow(
    stack: ProcessStack,
    workflows: list[tuple[Path, dict[str, object]]],
    options: DemoOptions,
    console: Console,
) -> ExitCode:
    hub = HubClient(stack.config.hub_url, timeout_s=5.0)
    board = JobBoard()
    labels: dict[str, str] = {}
    try:
        for path, workflow in workflows:
            for _ in range(options.count):
                job = hub.submit(dict(workflow))
                board.add(str(job["id"]), path.name)
                labels[str(job["id"])] = path.stem
    except HubError as exc:
        console.print(f"[red]error:[/] submitting failed: {exc}")
        return ExitCode.FAILED
    console.print(f"submitted {len(board.jobs)} job(s) to {stack.config.hub_url}")
    threads = follow_all(hub, board, options.timeout_s)
    status_hub = HubClient(stack.config.hub_url, timeout_s=0.5)

    def view() -> RenderableType:
        snapshot = collect_snapshot(
            stack.backend, None, [], status_hub, machine_id=stack.config.machine_id
        )
        return Group(render_table(snapshot), jobs_table(board))

    with Live(view(), console=console, auto_refresh=False) as live:
        while any(t.is_alive() for t in threads):
            time.sleep(options.refresh_s)
            live.update(view(), refresh=True)
        live.update(view(), refresh=True)
    console.print()
    return _collect_outputs(hub, board, labels, options.out_dir, console)


def _collect_outputs(
    hub: HubClient, board: JobBoard, labels: dict[str, str], out_dir: Path, console: Console
) -> ExitCode:
    ok = True
    for state in board.snapshot():
        if state.status != "succeeded" or state.job is None:
            why = f"{state.status} {state.error or ''}".strip()
            console.print(f"[red]x[/] {state.label} {state.job_id}: {why}", soft_wrap=True)
            ok = False
            continue
        destination = out_dir / f"{labels[state.job_id]}-{state.job_id[:8]}"
        try:
            written = download_outputs(hub, state.job, destination.parent, subdir=destination.name)
        except HubError as exc:
            console.print(f"[red]x[/] {state.label}: downloading outputs failed: {exc}")
            ok = False
            continue
        if not written or not all(path.stat().st_size > 0 for path in written):
            console.print(f"[red]x[/] {state.label} {state.job_id}: succeeded without outputs")
            ok = False
            continue
        listing = ", ".join(str(path) for path in written)
        console.print(f"[green]✓[/] {state.label} {state.job_id[:8]}: {listing}", soft_wrap=True)
    if ok:
        total = len(board.jobs)
        console.print(f"[bold green]all {total} job(s) succeeded[/]; outputs in {out_dir}")
    return ExitCode.OK if ok else ExitCode.FAILED
