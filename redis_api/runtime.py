"""One hub process: its Redis store, output storage, metrics, dispatcher and background loops.

It holds no state that matters: sockets and caches only. Killing it loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from urllib.parse import urlsplit

from aiohttp import web

from wgpu_protocol.ports import REDIS_PORT

from . import event_fanout
from .auth import ApiKey, KeyRing
from .config import HubConfig
from .dispatch import Dispatcher
from .errors import ConfigError, RedisOutOfMemory
from .event_fanout import EventFanout
from .limits import ConnectionCounter, SubmitRateLimiter
from .live_feed import LiveFeed
from .maintenance import Maintenance
from .metrics import HubMetrics
from .progress import ProgressFeed
from .storage import LocalDirStorage, Storage
from .store import QueueLimits, Store
from .tasks import stop_tasks
from .webhooks import WebhookSender

log = logging.getLogger(__name__)

REDIS_LOG_EVERY_S = 5.0


def redis_display(url: str) -> str:
    """host:port/db of a Redis URL, without any credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or REDIS_PORT}{parts.path or ''}"


class Hub:
    def __init__(self, config: HubConfig, storage: Storage | None = None) -> None:
        self.config = config
        self.hub_id = uuid.uuid4().hex[:12]
        try:
            self.keyring = KeyRing(config.api_keys, config.admin_api_keys)
        except ValueError as exc:
            raise ConfigError(f"API_KEYS/ADMIN_API_KEYS: {exc}") from None
        if self.keyring.enabled and not config.worker_token:
            raise ConfigError(
                "API_KEYS is set but WORKER_TOKEN is not: anyone could connect as a worker and "
                "read every workflow; set WORKER_TOKEN too"
            )
        self.store = Store.from_url(config.redis_url, config.key_prefix, config.redis_timeout_s)
        self.events = EventFanout(
            self.store.stream_reader(event_fanout.BLOCK_MS / 1000), config.max_event_streams
        )
        self.limiter = SubmitRateLimiter(config.rate_limit_per_key)
        self.connections = ConnectionCounter(config.max_connections_per_ip)
        self.queue_limits = QueueLimits(
            config.max_queued_jobs,
            config.max_queued_bytes,
            config.max_queued_jobs_per_key,
            config.max_queued_bytes_per_key,
        )
        self.storage_owner = f"{redis_display(config.redis_url)} prefix={config.key_prefix}"
        if storage is None and config.storage_url:
            from .storage_s3 import S3Storage  # claimed at start (it needs the event loop)

            storage = S3Storage(
                config.storage_url,
                os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            )
        if storage is None:
            local = LocalDirStorage(config.outputs_dir)
            local.claim_root(self.storage_owner)
            storage = local
        self.storage: Storage = storage
        self.metrics = HubMetrics()
        self.dispatcher = Dispatcher(self.store, config, self.metrics)
        self.dispatcher.on_redis_error = self.redis_failed
        self.progress = ProgressFeed(self.store, self.events, self.hub_id)
        self.dispatcher.on_progress = self.progress.on_message
        self.webhooks = WebhookSender(self.store, config, self.metrics, self.storage)
        self.webhooks.on_redis_error = self.redis_failed
        self.live = LiveFeed(self.store, config, self.events, config.max_live_feeds)
        self.live.on_redis_error = self.redis_failed
        self.maintenance = Maintenance(
            self.store,
            self.storage,
            self.dispatcher,
            config,
            self.redis_failed,
            self.redis_ok,
        )
        self.store.on_deadline = self.maintenance.deadline_in
        # Each worker socket, with an event set once its session has recorded the disconnect.
        self.open_sockets: dict[web.WebSocketResponse, asyncio.Event] = {}
        self.pending_sockets = 0  # worker sockets not yet welcomed
        self.redis_down_since: float | None = None
        self.redis_oom_at: float | None = None  # monotonic time of the last "out of memory"
        self.closing = False
        self._last_redis_log = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def redis_where(self) -> str:
        return redis_display(self.config.redis_url)

    def redis_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if isinstance(exc, RedisOutOfMemory):
            # Redis answers, but refuses to grow: not "down" (reads and draining still work).
            if self.redis_oom_at is None or now - self._last_redis_log >= REDIS_LOG_EVERY_S:
                self._last_redis_log = now
                log.warning("Redis at %s is out of memory (maxmemory)", self.redis_where)
            self.redis_oom_at = now
            return
        if self.redis_down_since is None:
            self.redis_down_since = now
        if now - self._last_redis_log >= REDIS_LOG_EVERY_S:
            self._last_redis_log = now
            log.warning(
                "Redis at %s unavailable (%s); retrying", self.redis_where, type(exc).__name__
            )

    def redis_ok(self) -> None:
        if self.redis_down_since is not None:
            log.info("Redis at %s is back", self.redis_where)
            self.redis_down_since = None
            self.dispatcher.wake()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.dispatcher.run_pubsub(), name="hub-pubsub"),
            asyncio.create_task(self.maintenance.run(), name="hub-maintenance"),
            asyncio.create_task(self.webhooks.run(), name="hub-webhooks"),
            asyncio.create_task(self.progress.announce(), name="hub-progress-presence"),
        ]

    async def close(self) -> None:
        self.closing = True
        await stop_tasks(self._tasks)
        await self.events.close()
        await self.dispatcher.stop()
        await self.progress.close()
        await self.webhooks.close()
        await self.live.close()
        # Closing worker sockets lets each session record its disconnect (with the grace lease,
        # so the worker resumes its job on another hub or on this one after a restart).
        sockets = dict(self.open_sockets)
        await asyncio.gather(
            *(ws.close(code=1001, message=b"hub shutting down") for ws in sockets),
            return_exceptions=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(done.wait() for done in sockets.values())), 2.0)
        await self.store.close()
        closer = getattr(self.storage, "close", None)  # S3Storage holds a client session
        if closer is not None:
            await closer()


HUB_KEY = web.AppKey("hub", Hub)
# The API key a request was made with (absent when auth is off).
CALLER = web.RequestKey("caller", ApiKey)
