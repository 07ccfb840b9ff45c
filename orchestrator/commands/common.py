"""What every command that manages workers shares: opening a backend, choosing the slots,
reporting per-GPU results with the exit code they call for (orchestrator.console.ExitCode).

Heavy dependencies (docker, Rich, NVML) are imported where they are used, so that a command's
`--help` starts fast (see tests/orchestrator/test_cli_imports.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from orchestrator.backends.base import ActionResult, Backend, Outcome
from orchestrator.commands.options import BackendKind, SimModels
from orchestrator.console import ExitCode, err, fail, out, warn
from orchestrator.errors import HubError, HubUnreachable
from orchestrator.gpus.slots import Selection, select_slots, slot_indices

if TYPE_CHECKING:
    from orchestrator.gpus.nvml import GpuInventory


def open_backend(
    kind: BackendKind,
    docker_host: str | None = None,
    base_dir: Path | None = None,
    machine_id: str | None = None,
    network: str = "host",
    restart_policy: str = "unless-stopped",
) -> Backend:
    """The backend the options name (BackendUnreachable when the Docker engine does not answer:
    the CLI's handler exits UNREACHABLE)."""
    if kind == BackendKind.PROCESS:
        from orchestrator.backends.process_backend import ProcessBackend

        return ProcessBackend(base_dir, machine_id=machine_id)
    from orchestrator.backends.docker_backend import DockerBackend

    return DockerBackend.connect(
        docker_host, machine_id=machine_id, network_mode=network, restart_policy=restart_policy
    )


@contextlib.contextmanager
def backend_session(*args: Any, **kwargs: Any) -> Iterator[Backend]:
    backend = open_backend(*args, **kwargs)
    try:
        yield backend
    finally:
        backend.close()


def target_indices(
    target: str, gpus_option: str | None = None, inventory: GpuInventory | None = None
) -> list[int] | None:
    """The slots stop/restart/status/logs act on: GPU_ID|all, or --gpus (indices or UUIDs)."""
    selection = select(gpus_option, None, inventory=inventory) if gpus_option else None
    return slot_indices(target, selection)


def select(
    gpus_option: str | None,
    simulate: int | None,
    count: int | None = None,
    inventory: GpuInventory | None = None,
) -> Selection:
    """The slots to manage: --simulate, --gpus, --count, or every GPU NVML sees (`inventory`,
    when the caller already discovered it, so NVML is not asked twice)."""
    from orchestrator.gpus import nvml

    if simulate is not None:
        inventory = nvml.GpuInventory()
    elif inventory is None:
        inventory = nvml.discover()
    selection = select_slots(gpus_option, simulate, inventory.gpus, inventory.error, count)
    if selection.note:
        warn(selection.note)
    return selection


def exit_code_for(results: Sequence[ActionResult]) -> ExitCode:
    failed_slots = {r.index for r in results if not r.ok}
    if not failed_slots:
        return ExitCode.OK
    if all(r.outcome == Outcome.NOT_FOUND for r in results):
        return ExitCode.NOT_FOUND
    ok_slots = {r.index for r in results} - failed_slots
    return ExitCode.PARTIAL if ok_slots else ExitCode.FAILED


def report_managed(results: Sequence[ActionResult], as_json: bool, none_managed: str) -> None:
    """`report`, except that plain output says `none_managed` when no worker was managed here."""
    if not results and not as_json:
        out.print(none_managed)
        return
    report(results, as_json)


def report(results: Sequence[ActionResult], as_json: bool) -> None:
    """One line per service (or JSON), then exit with the code the results call for."""
    from orchestrator.backends.engine import NVIDIA_HINT

    if as_json:
        payload = [
            {"gpu": r.index, "service": r.role, "outcome": str(r.outcome), "detail": r.detail}
            for r in results
        ]
        typer.echo(json.dumps({"results": payload}))
    else:
        from rich.text import Text

        for r in results:
            style = "green" if r.ok else "red"
            detail = r.detail
            if detail == NVIDIA_HINT:
                detail = "Docker has no NVIDIA runtime"
            line = Text(f"gpu{r.index} {r.role}: ")
            line.append(str(r.outcome), style=style)
            if detail:
                line.append(f" ({detail})", style="dim")
            out.print(line, soft_wrap=True)
    code = exit_code_for(results)
    if any(r.detail == NVIDIA_HINT for r in results):
        err.print(f"[bold red]error:[/] {NVIDIA_HINT}", soft_wrap=True)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def parse_sim_models(value: str | None, simulate: int | None) -> SimModels:
    """`--sim-models` of `wgpu start` and `wgpu up`: per slot, its simulator's `--models`
    values (comfyui_sim.model_store.parse_slot_models), checked against `--simulate N`."""
    if not value:
        return ()
    if not simulate:
        fail(
            "--sim-models needs --simulate N (it sets the simulators' model files)", ExitCode.USAGE
        )
    from comfyui_sim.model_store import ModelStoreError, parse_slot_models

    try:
        per_slot = parse_slot_models(value)
    except ModelStoreError as exc:
        fail(str(exc), ExitCode.USAGE)
    outside = sorted(i for i in per_slot if i >= simulate)
    if outside:
        fail(
            f"--sim-models names slot {outside[0]}, but --simulate {simulate} has 0..{simulate - 1}"
        )
    return tuple((slot, tuple(specs)) for slot, specs in sorted(per_slot.items()))


@contextlib.contextmanager
def hub_errors(hub_url: str, doing: str = "") -> Iterator[None]:
    """What every command that talks to the hub says when it does not answer or refuses: one
    line (prefixed with what was being done) and the exit code the status calls for."""
    prefix = f"{doing}: " if doing else ""
    try:
        yield
    except HubUnreachable as exc:
        fail(
            f"{prefix}{exc}: start the stack with `wgpu up`, or pass --hub-url",
            ExitCode.UNREACHABLE,
        )
    except HubError as exc:
        if exc.status == 404:
            fail(f"{prefix}not found: {exc}", ExitCode.NOT_FOUND)
        if exc.status in (401, 403):
            fail(f"{prefix}the hub at {hub_url} refused the key: pass --api-key", ExitCode.USAGE)
        code = ExitCode.USAGE if exc.status in (400, 413) else ExitCode.FAILED
        fail(f"{prefix}the hub at {hub_url} refused: {exc}", code)
