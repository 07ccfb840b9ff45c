"""`wgpu fleet up|down|status --inventory fleet.toml`: workers on many machines, one hub."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.commands.options import (
    ComfyuiImageOption,
    ImageOption,
    JsonOption,
    StopTimeoutOption,
    WorkerSrcOption,
)
from orchestrator.console import ExitCode, err, fail, out

if TYPE_CHECKING:  # the fleet module (docker-py) and Rich load when a fleet command runs
    from orchestrator.fleet.inventory import HostResult, Inventory

fleet_app = typer.Typer(help="Workers on many machines, all feeding one hub.", no_args_is_help=True)

InventoryOption = Annotated[
    Path,
    typer.Option(
        "--inventory", "-i", envvar="WGPU_INVENTORY", help="fleet.toml: [defaults], [[hosts]]."
    ),
]
DEFAULT_INVENTORY = Path("fleet.toml")


def read(path: Path) -> Inventory:
    from orchestrator.fleet.inventory import load_inventory

    return load_inventory(path)


def exit_code(oks: int, fails: int) -> ExitCode:
    if not fails:
        return ExitCode.OK
    return ExitCode.PARTIAL if oks else ExitCode.FAILED


def report(results: Sequence[HostResult], verb: str, as_json: bool) -> None:
    if as_json:
        payload = [
            {
                "machine_id": r.machine_id,
                "docker_host": r.docker_host,
                "ok": r.ok,
                "detail": r.detail,
                "actions": [
                    {
                        "gpu": a.index,
                        "service": a.role,
                        "outcome": str(a.outcome),
                        "detail": a.detail,
                    }
                    for a in r.actions
                ],
            }
            for r in results
        ]
        typer.echo(json.dumps({"hosts": payload}))
    else:
        from rich.text import Text

        for r in results:
            line = Text(f"{r.machine_id} ({r.docker_host or 'default engine'}): ")
            if r.ok:
                done = sum(1 for a in r.actions if a.role == "worker")
                line.append(f"{verb} ({done} worker(s))", style="green")
            else:
                line.append("failed", style="red")
                line.append(f" {r.detail}", style="dim")
            out.print(line, soft_wrap=True)
    oks = sum(1 for r in results if r.ok)
    code = exit_code(oks, len(results) - oks)
    if code != ExitCode.OK:
        err.print(f"[red]{len(results) - oks} of {len(results)} host(s) failed[/]", soft_wrap=True)
        raise typer.Exit(int(code))


@fleet_app.command("up")
def up(
    inventory: InventoryOption = DEFAULT_INVENTORY,
    image: ImageOption = None,
    ship_image_from: Annotated[
        str | None,
        typer.Option(
            "--ship-image",
            help="Copy the worker image from this engine (e.g. unix:///var/run/docker.sock) "
            "to hosts that lack it: for machines without a registry.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start every host's workers in parallel; failed hosts are reported, the others go on."""
    from orchestrator.backends.docker_backend import DockerBackend
    from orchestrator.fleet.inventory import fleet_up

    spec = read(inventory)
    source: Any = None
    if ship_image_from:
        source = DockerBackend.connect(ship_image_from).client
    try:
        results = fleet_up(spec, default_image=image, ship_from=source)
    finally:
        if source is not None:
            with contextlib.suppress(Exception):
                source.close()
    report(results, "started", as_json)


@fleet_app.command("down")
def down(
    inventory: InventoryOption = DEFAULT_INVENTORY,
    timeout: StopTimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Stop and remove every host's workers (and their ComfyUI)."""
    from orchestrator.fleet.inventory import fleet_down

    report(fleet_down(read(inventory), timeout), "removed", as_json)


@fleet_app.command("status")
def status(inventory: InventoryOption = DEFAULT_INVENTORY, as_json: JsonOption = False) -> None:
    """One line per host: containers, connected workers, jobs, GPU figures from heartbeats."""
    from rich.table import Table
    from rich.text import Text

    from orchestrator.fleet.inventory import fleet_status, iter_rows

    spec = read(inventory)
    snapshot = fleet_status(spec)
    if as_json:
        typer.echo(json.dumps(snapshot.to_json()))
    else:
        table = Table(title=f"fleet ({spec.source})")
        for header in (
            "Machine",
            "Engine",
            "Containers",
            "Workers",
            "Busy",
            "GPU util",
            "VRAM",
            "Done/Failed",
        ):
            table.add_column(header)
        for row in iter_rows(snapshot):
            if not row["reachable"]:
                table.add_row(
                    row["machine_id"],
                    row["docker_host"],
                    Text("unreachable", style="red"),
                    "",
                    "",
                    "",
                    "",
                    "",
                )
                continue
            vram = row["vram"]
            table.add_row(
                row["machine_id"],
                row["docker_host"],
                row["containers"],
                row["workers"],
                str(row["busy"]),
                "" if row["util"] is None else f"{row['util']:g}%",
                "" if vram is None else f"{vram[0] / 1024:.1f}/{vram[1] / 1024:.1f} GiB",
                f"{row['done']}/{row['failed']}",
            )
        out.print(table)
        for row in iter_rows(snapshot):
            if row["error"]:
                err.print(f"{row['machine_id']}: {row['error']}", soft_wrap=True, markup=False)
        for url, error in snapshot.hub_errors.items():
            err.print(f"hub {url}: {error}", soft_wrap=True, markup=False)
    down_hosts = sum(1 for h in snapshot.hosts if not h.reachable)
    if down_hosts:
        raise typer.Exit(int(exit_code(len(snapshot.hosts) - down_hosts, down_hosts)))


@fleet_app.command("update")
def update(
    inventory: InventoryOption = DEFAULT_INVENTORY,
    image: ImageOption = None,
    comfyui_image: ComfyuiImageOption = None,
    worker_src: WorkerSrcOption = None,
    max_unavailable: Annotated[int, typer.Option("--max-unavailable", min=1)] = 1,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", min=1)] = 120.0,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", min=0.1)] = 600.0,
    as_json: JsonOption = False,
) -> None:
    """`wgpu update` host by host, in inventory order: the first host that rolls a GPU back
    stops the update (exit 5) and later hosts are left as they are. A --worker-src DIR must be
    at the same path on every host."""
    from rich.text import Text

    from orchestrator.commands.workers import resolve_src
    from orchestrator.fleet.inventory import connect
    from orchestrator.hub_client.client import HubClient
    from orchestrator.rollout.fleet_update import fleet_update, summary
    from orchestrator.rollout.update import Change, UpdateSettings

    if not (image or comfyui_image or worker_src):
        fail("nothing to update: pass --image, --comfyui-image or --worker-src", ExitCode.USAGE)
    spec = read(inventory)
    change = Change(image=image, comfyui_image=comfyui_image, worker_src=resolve_src(worker_src))
    settings = UpdateSettings(
        drain_timeout_s=drain_timeout,
        ready_timeout_s=ready_timeout,
        max_unavailable=max_unavailable,
    )

    def on_change(host: Any, gpu: Any) -> None:
        if not as_json:
            err.print(f"{host.machine_id} gpu{gpu.index}: {gpu.step} {gpu.detail}", soft_wrap=True)

    hosts = fleet_update(spec, change, settings, connect, HubClient, on_change)
    if as_json:
        typer.echo(json.dumps({"hosts": [h.to_json() for h in hosts]}))
    else:
        for host in hosts:
            style = "green" if host.ok else ("dim" if host.outcome == "skipped" else "red")
            line = Text(f"{host.machine_id}: ")
            line.append(host.outcome, style=style)
            if host.detail:
                line.append(f" ({host.detail})", style="dim")
            out.print(line, soft_wrap=True)
    done, not_done = summary(hosts)
    if not_done:
        raise typer.Exit(int(ExitCode.PARTIAL if done else ExitCode.FAILED))


def register(app: typer.Typer) -> None:
    """Add `fleet up|down|status|update` to `app`."""
    app.add_typer(fleet_app, name="fleet")
