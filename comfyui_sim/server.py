"""Starting and stopping the simulator: `start_sim` (in this event loop) and `run_sim` (blocking).

Programmatic use:
    sim = await start_sim(SimConfig(port=0, node_time_s=0.01))
    sim.url, sim.port
    await sim.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from comfyui_sim.config import SimConfig
from comfyui_sim.faults import Fault
from comfyui_sim.routes import SIM_VERSION, SimServer
from comfyui_sim.ws_hub import SERVER_FEATURES

log = logging.getLogger(__name__)

__all__ = ["RunningSim", "SimConfig", "build_app", "run_sim", "start_sim"]


def build_app(server: SimServer) -> web.Application:
    # Stock accepts uploads up to max_upload_size (/features: 100 MiB).
    app = web.Application(client_max_size=SERVER_FEATURES["max_upload_size"] + 1024**2)
    for method, path, handler in server.routes():
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_route("POST", "/wgpu-sim/faults", server.post_faults)
    for method, path, handler in server.models.control_routes():
        app.router.add_route(method, path, handler)
    executor_task: dict[str, asyncio.Task[None]] = {}

    async def start_executor(app: web.Application) -> None:
        executor_task["task"] = asyncio.create_task(server.executor.run_forever())

    async def stop_executor(app: web.Application) -> None:
        task = executor_task.get("task")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.ws.close_all()

    app.on_startup.append(start_executor)
    app.on_shutdown.append(stop_executor)
    return app


@dataclass
class RunningSim:
    """A simulator serving on `url` until `close()`."""

    server: SimServer
    runner: web.AppRunner
    host: str
    port: int
    _closed: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> SimConfig:
        return self.server.config

    @property
    def output_dir(self) -> Path:
        return self.server.store.dirs["output"]

    @property
    def input_dir(self) -> Path:
        return self.server.store.dirs["input"]

    @property
    def crashed(self) -> bool:
        return self.server.crashed.is_set()

    def inject_fault(self, mode: str, after_s: float = 0.0) -> None:
        """Like POST /wgpu-sim/faults {"next": mode}: the next prompt to start fails so."""
        self.server.executor.injected_faults.append(Fault(mode, after_s))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    """The free port the OS gave for port 0 (aiohttp's public `runner.addresses`)."""
    address = runner.addresses[0]  # (host, port[, flow, scope])
    return int(address[1])


async def start_sim(config: SimConfig | None = None) -> RunningSim:
    """Start a simulator in this event loop; `config.port=0` picks a free port."""
    config = config or SimConfig()
    server = SimServer(config)
    runner = web.AppRunner(build_app(server), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    port = config.port or _bound_port(runner)
    sim = RunningSim(server, runner, config.host, port)

    async def stop_serving() -> None:
        # An in-process "crash": the port closes and every socket drops, like a dead process.
        asyncio.get_running_loop().create_task(sim.close())

    server._on_crash.append(stop_serving)
    log.info("wgpu-sim (ComfyUI %s API) listening on %s", SIM_VERSION, sim.url)
    return sim


def run_sim(config: SimConfig) -> None:
    """Serve until SIGTERM/SIGINT (for `python -m comfyui_sim` and `wgpu sim`)."""

    async def main() -> None:
        sim = await start_sim(config)
        print(f"wgpu-sim: ComfyUI API on {sim.url} (outputs in {sim.output_dir})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.close()

    asyncio.run(main())
