"""A small health file the worker rewrites while it runs, read by `comfy-worker healthcheck`.

The Dockerfile's HEALTHCHECK runs the check in a separate process, so the state travels through
a file: written atomically (temp file + rename) so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from wgpu_protocol.worker_env import DEFAULT_HEALTH_MAX_AGE_S  # older: hung or gone


@dataclass(frozen=True, slots=True)
class HealthState:
    worker_id: str
    hub_connected: bool
    comfyui_ok: bool
    job_id: str | None
    updated_at: float
    pid: int


def write_health(path: Path, state: HealthState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".health-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(state), handle)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def check_health(
    path: Path, max_age_s: float = DEFAULT_HEALTH_MAX_AGE_S, now: float | None = None
) -> tuple[bool, str]:
    """(healthy, one line saying why). Healthy = fresh file, hub connected, ComfyUI answering."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return False, f"no health file at {path}: the worker has not started (yet)"
    except (OSError, ValueError) as exc:
        return False, f"health file {path} is unreadable: {exc}"
    if not isinstance(raw, dict):
        return False, f"health file {path} is not a JSON object"
    age = (time.time() if now is None else now) - float(raw.get("updated_at", 0))
    if age > max_age_s:
        return False, f"health file is {age:.0f}s old: the worker is stuck or stopped"
    problems = []
    if not raw.get("hub_connected"):
        problems.append("not connected to the hub")
    if not raw.get("comfyui_ok"):
        problems.append("ComfyUI is not answering")
    if problems:
        return False, "; ".join(problems)
    job = raw.get("job_id")
    return True, f"ok ({'running ' + str(job) if job else 'idle'})"
