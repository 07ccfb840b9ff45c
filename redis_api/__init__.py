"""The Redis API hub: the durable job queue in Redis, REST + SSE for clients, a WebSocket per
worker. `HubConfig` + `start_hub` (in process) or `run_hub` (blocking); errors in `errors`.

Names load on first use, so `import redis_api` costs nothing until one is asked for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis_api.config import HubConfig
    from redis_api.errors import HubError, StoreUnavailable
    from redis_api.server import RunningHub, run_hub, start_hub

_HOME = {
    "HubConfig": "redis_api.config",
    "HubError": "redis_api.errors",
    "StoreUnavailable": "redis_api.errors",
    "RunningHub": "redis_api.server",
    "run_hub": "redis_api.server",
    "start_hub": "redis_api.server",
}
__all__ = ["HubConfig", "HubError", "RunningHub", "StoreUnavailable", "run_hub", "start_hub"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'redis_api' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
