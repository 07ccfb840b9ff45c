"""How results are shown and kept: a plain-text table on stdout, JSON under bench/results/,
and a markdown table for the README's Performance section."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def render_text(table: Table) -> str:
    cells = [table.columns] + [[fmt(v) for v in row] for row in table.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    line = "  ".join("-" * w for w in widths)
    out = [table.title, line]
    for i, row in enumerate(cells):
        out.append(
            "  ".join(
                c.rjust(w) if j else c.ljust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            out.append(line)
    out.extend(f"  note: {n}" for n in table.notes)
    return "\n".join(out)


def render_markdown(table: Table) -> str:
    out = [f"**{table.title}**", ""]
    out.append("| " + " | ".join(table.columns) + " |")
    out.append("|" + "|".join(" --- " for _ in table.columns) + "|")
    for row in table.rows:
        out.append("| " + " | ".join(fmt(v) for v in row) + " |")
    if table.notes:
        out.append("")
        out.extend(f"- {n}" for n in table.notes)
    return "\n".join(out)


@functools.cache
def machine_static() -> dict[str, Any]:
    """What does not change during a run: CPU, cores, memory, OS, Python, Redis, the commit."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 1024 / 1024
                break
    os_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "os": os_name,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": _redis_version(),
        "commit": _commit(),
    }


def _output(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _redis_version() -> str:
    """`redis-server --version` says "Redis server v=7.0.15 sha=..."; the version, or ""."""
    found = re.search(r"v=(\S+)", _output("redis-server", "--version"))
    return found.group(1) if found else ""


def _commit() -> str:
    """The short commit measured, "+" when tracked files other than the results differ."""
    repo = str(RESULTS_DIR.parent.parent)
    head = _output("git", "-C", repo, "rev-parse", "--short", "HEAD")
    if not head:
        return ""
    changed = _output(
        "git",
        "-C",
        repo,
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!bench/results",
        ":!docs/bench-*.png",
        ":!README.md",
    )
    return head + ("+" if changed else "")


def machine_description() -> dict[str, Any]:
    return {
        **machine_static(),
        # Other work on the machine skews every figure: keep the load next to them.
        "load_average_1_5_15": os.getloadavg(),
        "when_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    body = {"machine": machine_description(), **payload}
    path.write_text(json.dumps(body, indent=2, default=_json_default, allow_nan=True) + "\n")
    return path


def write_markdown(name: str, tables: Sequence[Table]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    m = machine_description()
    header = (
        f"Measured {m['when_utc']} UTC on {m['cpu'] or 'unknown CPU'}, {m['cores']} cores,"
        f" Python {m['python']}, load average {m['load_average_1_5_15'][0]:.2f}."
    )
    path.write_text(header + "\n\n" + "\n\n".join(render_markdown(t) for t in tables) + "\n")
    return path


def emit(name: str, tables: Sequence[Table], raw: dict[str, Any]) -> None:
    """Print the tables, keep JSON and markdown under bench/results/."""
    for table in tables:
        print(render_text(table), flush=True)
        print(flush=True)
    tables_json = [
        {"title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes} for t in tables
    ]
    path = write_json(name, {"tables": tables_json, "raw": raw})
    write_markdown(name, tables)
    print(f"results: {path}", flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dict__"):
        return vars(value)
    return repr(value)
