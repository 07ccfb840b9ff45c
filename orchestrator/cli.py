"""The `wgpu` command line. Each command family lives in its own module under `commands/`."""

from __future__ import annotations

import typer

from orchestrator.commands import (
    client,
    compose,
    count,
    fleet,
    hub,
    k8s,
    rollout,
    scheduling,
    sim,
    stack,
    workers,
)

app = typer.Typer(
    name="wgpu",
    help="Run one ComfyUI worker per NVIDIA GPU, fed from one durable Redis job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Rich's help renderer imports ~60 ms of modules (markdown-it, tracebacks),
    # which alone would spend most of the 150 ms `wgpu --help` may take.
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Keeps `wgpu` a command group even while only one command is registered."""


for module in (count, hub, sim, workers, rollout, stack, client, compose, fleet, k8s, scheduling):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
