"""`wgpu sim`: serve stock ComfyUI's API with simulated nodes (tests, demos, benchmarks).

The options are the simulator's own (comfyui_sim.cli_args): `wgpu sim --help` lists them, and
`wgpu sim ARGS` runs exactly what `python -m comfyui_sim ARGS` runs.
"""

from __future__ import annotations

import typer


def sim(ctx: typer.Context) -> None:
    """Run the ComfyUI simulator until Ctrl-C / SIGTERM (options: wgpu sim --help)."""
    from comfyui_sim.__main__ import main

    main(list(ctx.args), prog="wgpu sim")


def register(app: typer.Typer) -> None:
    """Add `sim` to `app`, its options parsed by the simulator itself."""
    app.command(
        "sim",
        context_settings={
            "allow_extra_args": True,
            "ignore_unknown_options": True,
            "help_option_names": [],  # --help goes to the simulator's parser
        },
        add_help_option=False,
    )(sim)
