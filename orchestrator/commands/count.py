"""`wgpu count`: how many NVIDIA GPUs this host has (0, with the reason on stderr, when none)."""

from __future__ import annotations

import json

import typer

from orchestrator.console import err


def count(
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Print {"count", "gpus": [{index, uuid, name, memory_total}], "error"}.',
    ),
) -> None:
    """Print the number of NVIDIA GPUs NVML sees (memory_total in MiB)."""
    from orchestrator.gpus import nvml

    inventory = nvml.discover()
    if as_json:
        typer.echo(json.dumps(inventory.to_json()))
        return
    typer.echo(str(inventory.count))
    if inventory.error:
        err.print(inventory.error, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add `count` to `app`."""
    app.command("count")(count)
