"""CLI start time: `wgpu --help` and `wgpu status --json` as whole processes, as a person (or
`watch wgpu status`) runs them. `python -m bench.cli_start [--quick]`.

Each command runs N times, the commands alternated so load from elsewhere falls on all of them;
the table gives the median with min-max. `python -c pass` is the floor any Python CLI pays.
`status --json` runs against the process backend (no Docker needed) and, when the test Docker
Engine answers, against it too; the hub URL is a closed port, so the hub call fails at once, as
it does when the hub is down. The imports each command pulled in are listed from `-X importtime`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from bench import procs
from bench.report import Table, emit
from bench.stats import percentile

DOCKER_HOST = os.environ.get("WGPU_TEST_DOCKER_HOST", "unix:///run/wgpu-test/docker.sock")
GOALS_MS = {"help": 150.0, "status": 300.0}
HEAVY = ("docker", "aiohttp", "redis", "rich", "pynvml", "pydantic", "requests")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wgpu_argv() -> list[str]:
    """The installed `wgpu` script when it is this Python's, else `python -m orchestrator`."""
    script = shutil.which("wgpu", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "orchestrator"]


def _docker_answers() -> bool:
    path = DOCKER_HOST.removeprefix("unix://")
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
        return True
    except OSError:
        return False


def commands(tmp: str) -> dict[str, list[str]]:
    hub = f"http://127.0.0.1:{_closed_port()}"
    wgpu = _wgpu_argv()
    found = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "wgpu --help": [*wgpu, "--help"],
        "wgpu status --json (process backend)": [
            *wgpu,
            "status",
            "--json",
            "--backend",
            "process",
            "--base-dir",
            tmp,
            "--hub-url",
            hub,
        ],
    }
    if _docker_answers():
        found["wgpu status --json (docker backend)"] = [
            *wgpu,
            "status",
            "--json",
            "--docker-host",
            DOCKER_HOST,
            "--hub-url",
            hub,
        ]
    return found


def time_once(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=procs.child_env(), check=False)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 3):  # 3: hub or Docker unreachable, still a full answer
        raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr[-400:]!r}")
    return elapsed * 1000.0


def heavy_imports(argv: list[str]) -> list[str]:
    """Top-level packages among HEAVY that the command imported, from -X importtime."""
    if argv[0] != sys.executable:  # the console script: run the same entry point under -X
        argv = [sys.executable, "-m", "orchestrator", *argv[1:]]
    env = procs.child_env({"PYTHONPROFILEIMPORTTIME": "1"})
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seen = set(re.findall(r"\|\s+([A-Za-z_]\w*)\s*$", result.stderr, flags=re.MULTILINE))
    return sorted(name for name in HEAVY if name in seen)


def run(quick: bool) -> tuple[list[Table], dict[str, Any]]:
    repeats = 7 if quick else 21
    with procs.scratch_dir() as tmp:
        found = commands(str(tmp))
        times: dict[str, list[float]] = {name: [] for name in found}
        for argv in found.values():  # warm the page cache and .pyc files, not timed
            time_once(argv)
        for _ in range(repeats):
            for name, argv in found.items():
                times[name].append(time_once(argv))
        imports = {name: heavy_imports(argv) for name, argv in found.items()}
    table = Table(
        f"CLI start: whole processes, median of {repeats} alternated runs",
        ["command", "median ms", "min-max ms", "goal ms", "heavy imports"],
    )
    for name, samples in times.items():
        goal = next((v for k, v in GOALS_MS.items() if k in name), None)
        table.add(
            name,
            percentile(samples, 50),
            f"{min(samples):.0f}-{max(samples):.0f}",
            goal,
            ", ".join(imports[name]) or "none",
        )
    table.notes.append(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return [table], {"samples_ms": times, "heavy_imports": imports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tables, raw = run(args.quick)
    emit("cli", tables, raw)  # the name `python -m bench` gives it


if __name__ == "__main__":
    main()
