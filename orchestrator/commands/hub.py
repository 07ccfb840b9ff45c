"""`wgpu hub`: run the Redis API hub in the foreground."""

from __future__ import annotations

import os

import typer

from orchestrator.console import ExitCode, fail
from wgpu_protocol import ports


def hub(
    host: str = typer.Option(
        None, "--host", help="Address to bind (env REDIS_API_HOST_BIND, default 0.0.0.0)."
    ),
    port: int = typer.Option(
        None, "--port", help=f"Port (env REDIS_API_PORT, default {ports.HUB_PORT})."
    ),
    redis_url: str = typer.Option(
        None,
        "--redis-url",
        help=f"Redis URL (env REDIS_URL, default redis://127.0.0.1:{ports.REDIS_PORT}/0).",
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="LOG_LEVEL"),
) -> None:
    """Run the hub: durable job queue in Redis, push dispatch to workers, REST for clients."""
    import logging

    from redis_api.config import HubConfig
    from redis_api.errors import ConfigError
    from redis_api.server import run_hub

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = HubConfig.from_env(os.environ, host=host, port=port, redis_url=redis_url)
    except (ValueError, TypeError) as exc:
        fail(f"{exc}: fix the setting and run `wgpu hub` again", ExitCode.USAGE)
    try:
        run_hub(config)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    except OSError as exc:
        fail(
            f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}): "
            "choose another --port or stop what holds it",
            ExitCode.FAILED,
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("hub")(hub)
