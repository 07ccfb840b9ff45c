"""The CLI imports a heavy dependency only in the command that needs it: `wgpu --help` loads
none of docker, aiohttp, redis, Rich; `wgpu status --json` only what reading state needs.
Start time itself is measured in bench/cli_start.py, never asserted here."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("docker", "aiohttp", "redis", "rich", "pynvml", "requests", "websockets")

# Runs the CLI in a fresh interpreter, then names the heavy packages it left in sys.modules.
PROBE = f"""
import sys
from orchestrator.cli import app
try:
    app(sys.argv[1:], prog_name="wgpu")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = sorted(name for name in {HEAVY!r} if name in sys.modules)
print("\\nEXIT", code, "LOADED", *loaded)
"""


def loaded_by(*argv: str) -> tuple[str, set[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "EXIT" and last[2] == "LOADED", result.stdout
    return last[1], set(last[3:])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        ["start", "--help"],
        ["submit", "--help"],
        ["fleet", "--help"],
    ],
)
def test_help_imports_no_heavy_dependency(argv: list[str]) -> None:
    code, loaded = loaded_by(*argv)
    assert code == "0"
    assert loaded == set()


def test_status_json_imports_neither_rich_nor_the_async_stack(tmp_path: Path) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"
    argv = ["status", "--json", "--backend", "process", "--base-dir", str(tmp_path)]
    code, loaded = loaded_by(*argv, "--hub-url", hub)
    assert code == "0"
    # NVML is what status reads GPUs with; the rest would be import time spent for nothing.
    assert loaded <= {"pynvml"}


def test_the_probe_sees_an_import_when_a_command_makes_one(tmp_path: Path) -> None:
    """The check above can fail: the plain status table does load Rich."""
    hub = f"http://127.0.0.1:{closed_port()}"
    argv = ["status", "--backend", "process", "--base-dir", str(tmp_path), "--hub-url", hub]
    code, loaded = loaded_by(*argv)
    assert code == "0"
    assert "rich" in loaded
