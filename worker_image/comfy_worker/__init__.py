"""The per-GPU worker: relays hub jobs to the co-located ComfyUI.

Programmatic use: `WorkerConfig.from_env(env)`, then `await Worker(config).run()`;
`worker.request_stop()` begins a graceful stop (what SIGTERM does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ConfigError, WorkerConfig
from .errors import WorkerError

if TYPE_CHECKING:
    from .worker import Worker

__version__ = "0.1.0"
__all__ = ["ConfigError", "Worker", "WorkerConfig", "WorkerError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `comfy-worker healthcheck` (run by Docker every few seconds) needs no aiohttp.
    if name == "Worker":
        from .worker import Worker

        return Worker
    raise AttributeError(f"module 'comfy_worker' has no attribute {name!r}")
