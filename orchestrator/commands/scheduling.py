"""`wgpu models`: which GPUs have each model on disk and which have it loaded, from the hub's
`/workers`."""

from __future__ import annotations

import json
from collections.abc import Sequence

import typer

from orchestrator.backends.base import DEFAULT_HUB_URL
from orchestrator.commands.common import hub_errors
from orchestrator.commands.options import ApiKeyOption, HubUrlOption, JsonOption
from orchestrator.console import one_line, out
from wgpu_protocol.rest import WorkerJson

ModelRows = list[tuple[str, list[str], list[str]]]


def model_rows(workers: Sequence[WorkerJson]) -> ModelRows:
    """(folder/file, workers with it on disk, workers with it loaded), sorted by model. Pure."""
    on_disk: dict[str, set[str]] = {}
    warm: dict[str, set[str]] = {}
    for worker in workers:
        name = str(worker.get("id", ""))
        for target, files in ((on_disk, worker.get("models") or {}), (warm, worker.get("warm"))):
            for folder, names in (files or {}).items():
                for file in names:
                    target.setdefault(f"{folder}/{file}", set()).add(name)
    return [
        (model, sorted(on_disk.get(model, ())), sorted(warm.get(model, ())))
        for model in sorted(set(on_disk) | set(warm))
    ]


def models(
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each model file -> the GPUs (workers) that have it on disk, and those that have it loaded."""
    from orchestrator.hub_client.client import HubClient

    hub = HubClient(hub_url, api_key=api_key)
    with hub_errors(hub_url):
        workers = hub.get_workers()
    rows = model_rows(workers)
    if as_json:
        typer.echo(
            json.dumps({"models": [{"model": m, "on_disk": d, "warm": w} for m, d, w in rows]})
        )
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"models at {hub_url}", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    table.add_column("Model", overflow="fold")
    table.add_column("On disk", overflow="fold")
    table.add_column("Loaded", overflow="fold")
    for model, disk, loaded in rows:
        table.add_row(model, one_line(", ".join(disk)), one_line(", ".join(loaded)))
    out.print(table)
    unknown = [str(w.get("id")) for w in workers if w.get("models") is None]
    if not rows:
        out.print("no worker has reported models")
    if unknown:
        out.print(f"not reported (taking any job): {', '.join(unknown)}", style="dim")


def register(app: typer.Typer) -> None:
    """Add `models` to `app` (`wgpu resume`, which also ends a quarantine, is in rollout.py)."""
    app.command("models")(models)
