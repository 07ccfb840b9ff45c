"""`comfy-worker` / `python -m comfy_worker`: run the worker, or `healthcheck` it.

Exit codes: 0 clean stop (SIGTERM included) or healthy; 1 unhealthy or crashed;
2 bad configuration (one line on stderr naming the variable).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from wgpu_protocol import worker_env as names

from .config import ConfigError, WorkerConfig
from .health import check_health

USAGE = """usage: comfy-worker [healthcheck]

Runs one worker for one GPU, configured from the environment:
  REDIS_API_HOST, REDIS_API_PORT   the hub (or HUB_URL=http://host:port)
  MACHINE_ID, GPU_ID, NUM_GPUS     the worker's id is {MACHINE_ID}-gpu{GPU_ID}
  COMFYUI_HOST, EXECUTION_SERVICE_PORT   ComfyUI (port default 8188 + GPU_ID)
  COMFYUI_CMD                      start and supervise ComfyUI with this command
  WORKER_TOKEN, LOG_LEVEL, HEALTH_FILE, WORKER_GRACE_S, WORKER_WATCHDOG_S
`healthcheck` exits 0 when the running worker is connected to the hub and ComfyUI answers."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if args and args[0] == "healthcheck":
        return healthcheck()
    if args:
        print(f"error: unknown argument {args[0]!r}: run `comfy-worker --help`", file=sys.stderr)
        return 2
    try:
        config = WorkerConfig.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.logging_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(max(config.logging_level, logging.WARNING))
    asyncio.run(_serve(config))
    return 0


def healthcheck() -> int:
    path = Path(os.environ.get(names.HEALTH_FILE, "").strip() or names.DEFAULT_HEALTH_FILE)
    max_age = float(os.environ.get(names.HEALTH_MAX_AGE_S, "") or names.DEFAULT_HEALTH_MAX_AGE_S)
    healthy, reason = check_health(path, max_age)
    print(reason)
    return 0 if healthy else 1


async def _serve(config: WorkerConfig) -> None:
    from .worker import Worker  # the heavy imports only when actually running

    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.run()


if __name__ == "__main__":
    sys.exit(main())
