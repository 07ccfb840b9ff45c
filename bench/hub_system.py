"""Our hub as a benchmark system: the hub in its own process (bench.hub_process), N fake worker
processes (bench.fake_worker), and this process submitting over HTTP with aiohttp."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.fake_worker import bench_workflow
from orchestrator.stack.local_redis import free_port


class HubProcess:
    """One hub process on loopback; `restart()` keeps its port."""

    def __init__(
        self,
        redis_url: str,
        log_dir: Path,
        port: int = 0,
        profile: Path | None = None,
        **settings: Any,
    ) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.port = port or free_port()
        self.profile = profile
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            "REDIS_URL": self.redis_url,
            "REDIS_API_HOST_BIND": "127.0.0.1",
            "REDIS_API_PORT": str(self.port),
            "OUTPUTS_DIR": str(self.log_dir / "outputs"),
            "LOG_LEVEL": "WARNING",
        }
        env.update({k.upper(): str(v) for k, v in self.settings.items()})
        if self.profile is not None:
            env["BENCH_PROFILE"] = str(self.profile)
        return env

    def start(self, timeout_s: float = 30.0) -> HubProcess:
        self.proc = procs.spawn(
            procs.module_cmd("bench.hub_process"), self.log_dir / "hub.log", self.env()
        )
        procs.wait_http(self.url + "/health", timeout_s, self.proc)
        return self

    def stop(self) -> None:
        procs.stop(self.proc, timeout_s=30.0 if self.profile else 5.0)
        self.proc = None

    def kill(self) -> None:
        procs.kill(self.proc)
        self.proc = None

    def restart(self, hard: bool = True) -> None:
        self.kill() if hard else self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


async def connected_workers(session: aiohttp.ClientSession, hub_url: str) -> list[dict[str, Any]]:
    async with session.get(hub_url + "/workers") as resp:
        body = await resp.json()
    return [w for w in body.get("workers", []) if w.get("connected")]


async def wait_workers(
    session: aiohttp.ClientSession, hub_url: str, count: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            have = len(await connected_workers(session, hub_url))
        except (aiohttp.ClientError, ValueError):
            have = -1
        if have >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{have} of {count} workers connected to the hub within {timeout_s} s"
            )
        await asyncio.sleep(0.05)


class HubSystem:
    name = "wgpu hub"

    def __init__(
        self,
        hub: HubProcess,
        redis_url: str,
        workers: int,
        log_dir: Path,
        connections: int = 64,
        worker_args: tuple[str, ...] = (),
        processes: int = 0,
    ) -> None:
        self.hub = hub
        # Worker connections spread over this many processes (0: one process per worker).
        self.processes = processes or workers
        self.redis_url = redis_url
        self.workers = workers
        self.log_dir = log_dir
        self.connections = connections
        self.worker_args = worker_args  # extra bench.fake_worker flags, for what-if runs
        self._procs: list[subprocess.Popen[bytes]] = []
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections)
            )
        return self._session

    async def start_workers(self) -> None:
        per_process = -(-self.workers // self.processes)
        for i, first in enumerate(range(0, self.workers, per_process)):
            args = [
                "--hub",
                self.hub.url,
                "--machine",
                "bench",
                "--count",
                str(min(per_process, self.workers - first)),
                "--first-index",
                str(first),
                "--record-redis",
                self.redis_url,
                *self.worker_args,
            ]
            self._procs.append(
                procs.spawn(
                    procs.module_cmd("bench.fake_worker", *args), self.log_dir / f"fake{i}.log"
                )
            )
        await wait_workers(await self.session(), self.hub.url, self.workers, 30)

    async def stop_workers(self) -> None:
        stopping, self._procs = self._procs, []
        await asyncio.to_thread(procs.stop_all, stopping)
        if stopping:
            session = await self.session()
            deadline = time.monotonic() + 10
            # Polling the hub is the point here: we wait on another process's view.
            while await connected_workers(session, self.hub.url) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    async def submit(self, index: int, t_submit: float) -> None:
        session = await self.session()
        body = {"workflow": bench_workflow(index, t_submit)}
        async with session.post(self.hub.url + "/jobs", json=body) as resp:
            if resp.status != 201:
                raise RuntimeError(f"POST /jobs answered {resp.status}: {await resp.text()}")
            await resp.read()

    def pids(self) -> dict[str, list[int]]:
        return {"hub": [self.hub.pid], "workers": [p.pid for p in self._procs]}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
