"""`wgpu sim`: serve stock ComfyUI's API with simulated nodes (tests, demos, benchmarks)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.console import ExitCode, fail


def sim(
    port: int = typer.Option(8188, "--port", help="Port to serve on (0 = any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    node_time: float = typer.Option(0.02, "--node-time", help="Seconds each node takes."),
    step_time: float = typer.Option(0.01, "--step-time", help="Seconds per progress step."),
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Where SaveImage writes (default: a temp dir)."),
    ] = None,
    temp_dir: Annotated[
        Path | None, typer.Option("--temp-dir", help="Where PreviewImage writes.")
    ] = None,
    cache: bool = typer.Option(
        True, "--cache/--cache-none", help="Serve identical resubmits from cache, as stock."
    ),
    device_name: str | None = typer.Option(None, "--device-name", help="Name in /system_stats."),
    vram_mb: int | None = typer.Option(None, "--vram-mb", help="VRAM in /system_stats (MiB)."),
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Model files it has, per folder (repeatable): checkpoints=a.ckpt,b.ckpt",
        ),
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option("--models-dir", help="Model folders (default: a temp dir).")
    ] = None,
    load_time: float = typer.Option(2.0, "--load-time", min=0, help="Seconds per model load."),
    vram_models: int = typer.Option(
        1, "--vram-models", min=1, help="Models kept loaded per loader kind."
    ),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
) -> None:
    """Run the ComfyUI simulator until Ctrl-C / SIGTERM."""
    from comfyui_sim.config import SimConfig
    from comfyui_sim.model_store import ModelStoreError, parse_models_option
    from comfyui_sim.server import run_sim

    if node_time < 0 or step_time < 0:
        fail("--node-time and --step-time must be >= 0", ExitCode.USAGE)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s wgpu-sim %(message)s")
    try:
        files = parse_models_option(models or [])
    except ModelStoreError as exc:
        fail(str(exc), ExitCode.USAGE)
    config = SimConfig(
        host=host,
        port=port,
        node_time_s=node_time,
        step_time_s=step_time,
        output_dir=output_dir,
        temp_dir=temp_dir,
        cache_enabled=cache,
        argv=["main.py", *sys.argv[1:]],
        models=files,
        models_dir=models_dir,
        load_time_s=load_time,
        vram_models=vram_models,
    )
    if device_name:
        config.device_name = device_name
    if vram_mb:
        config.vram_total = vram_mb * 1024 * 1024
    try:
        run_sim(config)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port")


def register(app: typer.Typer) -> None:
    """Add `sim` to `app`."""
    app.command("sim")(sim)
