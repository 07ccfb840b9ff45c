"""The CLI imports a heavy dependency only in the command that needs it: `wgpu --help` loads
none of docker, aiohttp, redis, Rich, pydantic; `wgpu status --json` only what reading state
needs, and only its own command module. Start time itself is measured in bench/cli_start.py,
never asserted here."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

# pydantic: Typer 0.29 coerces every option through a pydantic TypeAdapter (~90 ms a command),
# hence pyproject's typer<0.29. importlib.metadata: ~40 ms, only `wgpu --version` needs it.
HEAVY = (
    "docker",
    "aiohttp",
    "redis",
    "rich",
    "pynvml",
    "requests",
    "websockets",
    "pydantic",
    "importlib.metadata",
)
COMMAND_MODULES = "orchestrator.commands."

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
commands = sorted(name for name in sys.modules if name.startswith({COMMAND_MODULES!r}))
print("\\nEXIT", code, "LOADED", *loaded, "COMMANDS", *commands)
"""


def probe(*argv: str) -> tuple[str, set[str], set[str]]:
    """The exit code, the HEAVY packages loaded, and the command modules imported."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "EXIT" and last[2] == "LOADED", result.stdout
    split = last.index("COMMANDS")
    commands = {name.removeprefix(COMMAND_MODULES) for name in last[split + 1 :]}
    return last[1], set(last[3:split]), commands


def loaded_by(*argv: str) -> tuple[str, set[str]]:
    code, loaded, _ = probe(*argv)
    return code, loaded


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


def test_a_command_imports_only_its_own_command_module(tmp_path: Path) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"
    argv = ["status", "--json", "--backend", "process", "--base-dir", str(tmp_path)]
    code, _, commands = probe(*argv, "--hub-url", hub)
    assert code == "0"
    # workers: status itself; common and options: what every worker command shares.
    assert commands == {"workers", "common", "options"}


def test_help_lists_every_command_so_imports_every_command_module() -> None:
    """The probe above can fail: `wgpu --help` needs each command's help text."""
    from orchestrator.cli import COMMAND_MODULE

    code, _, commands = probe("--help")
    assert code == "0"
    assert set(COMMAND_MODULE.values()) <= commands


def test_command_module_names_what_each_module_registers() -> None:
    """cli.COMMAND_MODULE (what lets a command load alone) agrees with the modules' register()."""
    import typer
    import typer.main

    from orchestrator.cli import COMMAND_MODULE

    for module in set(COMMAND_MODULE.values()):
        app = typer.Typer()
        __import__(f"{COMMAND_MODULES}{module}", fromlist=["register"]).register(app)
        registered = set(typer.main.get_group(app).commands)
        assert registered == {n for n, m in COMMAND_MODULE.items() if m == module}, module


def test_the_probe_sees_an_import_when_a_command_makes_one(tmp_path: Path) -> None:
    """The check above can fail: the plain status table does load Rich."""
    hub = f"http://127.0.0.1:{closed_port()}"
    argv = ["status", "--backend", "process", "--base-dir", str(tmp_path), "--hub-url", hub]
    code, loaded = loaded_by(*argv)
    assert code == "0"
    assert "rich" in loaded
