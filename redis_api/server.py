"""Starting and stopping a hub: `start_hub` for tests and `wgpu up`, `run_hub` for `wgpu hub`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


async def start_hub(config: HubConfig, storage: Storage | None = None) -> RunningHub:
    """Start a hub on config.host:config.port (0 = a free port). Redis may still be down: the hub
    answers 503 until it is reachable."""
    hub_version()  # read once here (~0.1 s), not in the first /health
    hub = Hub(config, storage)
    runner = web.AppRunner(
        make_app(hub), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = int(sockets[0].getsockname()[1]) if sockets else config.port
    hub.start()
    log.info("hub %s listening on %s:%d, Redis %s", hub.hub_id, config.host, port, hub.redis_where)
    return RunningHub(config, hub, runner, port)


def run_hub(config: HubConfig) -> None:
    """Run until SIGTERM/SIGINT, then close cleanly (workers keep their jobs via resume)."""

    async def main() -> None:
        running = await start_hub(config)
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
