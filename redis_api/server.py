"""Starting and stopping a hub: `start_hub` for tests and `wgpu up`, `run_hub` for `wgpu hub`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import resource
import signal
from dataclasses import dataclass

from aiohttp import web

from .config import HubConfig
from .runtime import Hub
from .storage import Storage
from .version import hub_version
from .web import make_app

log = logging.getLogger(__name__)


@dataclass
class RunningHub:
    """A started hub. `url` is http://host:port (loopback when bound to all interfaces)."""

    config: HubConfig
    hub: Hub
    runner: web.AppRunner
    port: int
    closed: bool = False

    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    async def close(self) -> None:
        """Stop the hub (idempotent)."""
        if self.closed:
            return
        self.closed = True
        await self.hub.close()
        await self.runner.cleanup()


def bound_port(runner: web.AppRunner, asked: int) -> int:
    """The port the runner listens on (`asked`, or the free one the OS gave for 0)."""
    for address in runner.addresses:  # (host, port[, flow, scope]) per listening socket
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


async def start_hub(config: HubConfig, storage: Storage | None = None) -> RunningHub:
    """Start a hub on config.host:config.port (0 = a free port). Redis may still be down: the hub
    answers 503 until it is reachable."""
    hub_version()  # read once here (~0.1 s), not in the first /health
    hub = Hub(config, storage)
    claim = getattr(hub.storage, "claim_root", None)
    if storage is None and claim is not None and inspect.iscoroutinefunction(claim):
        await claim(hub.storage_owner)  # S3: the prefix must be ours before the sweeper runs
    raise_nofile_limit(config.nofile_limit)
    warn_if_exposed(config)
    runner = web.AppRunner(
        make_app(hub),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        # A connection that has not sent a whole request head within read_timeout_s is closed
        # (slowloris): aiohttp's keep-alive timer runs until a request has arrived.
        keepalive_timeout=config.read_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
    await site.start()
    port = bound_port(runner, config.port)
    hub.start()
    log.info("hub %s listening on %s:%d, Redis %s", hub.hub_id, config.host, port, hub.redis_where)
    return RunningHub(config, hub, runner, port)


def raise_nofile_limit(wanted: int) -> None:
    """Raise the soft open-file limit towards `wanted` (bounded by the hard limit): each client,
    stream and worker socket is a file descriptor."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open-file limit to %d: %s", wanted, exc)


def warn_if_exposed(config: HubConfig) -> None:
    loopback = config.host in ("127.0.0.1", "::1", "localhost")
    if not loopback and not (config.api_keys or config.admin_api_keys):
        log.warning(
            "AUTH IS OFF on %s: anyone who can reach port %d can submit, read and cancel jobs%s."
            " Set API_KEYS and WORKER_TOKEN (see redis_api/README.md: running the hub exposed)",
            config.host or "all interfaces",
            config.port,
            "" if config.worker_token else " and connect as a worker",
        )


def run_hub(config: HubConfig) -> None:
    """Run until SIGTERM/SIGINT, then close cleanly (workers keep their jobs via resume)."""

    async def main() -> None:
        running = await start_hub(config)
        # What start-up made (modules, the app, ~50,000 objects) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it (13 ms idle, ~90 ms
        # on a loaded machine, every job in flight waiting meanwhile: the p99 at half load).
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("hub stopping")
            await running.close()

    try:
        import uvloop  # a faster event loop when installed (the hub is socket-bound)
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
