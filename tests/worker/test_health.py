"""The health file and `comfy-worker healthcheck` (the Dockerfile's HEALTHCHECK)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from comfy_worker.health import HealthState, check_health, write_health


def _state(hub: bool = True, comfy: bool = True, age_s: float = 0.0) -> HealthState:
    return HealthState("m-gpu0", hub, comfy, None, time.time() - age_s, 1)


# The states are built inside the test: a timestamp taken at collection would age with the suite.
@pytest.mark.parametrize(
    ("state_args", "healthy", "says"),
    [
        ({}, True, "ok"),
        ({"hub": False}, False, "hub"),
        ({"comfy": False}, False, "ComfyUI"),
        ({"age_s": 3600}, False, "old"),
    ],
)
def test_check_health(tmp_path: Path, state_args: dict[str, Any], healthy: bool, says: str) -> None:
    path = tmp_path / "health.json"
    write_health(path, _state(**state_args))
    ok, reason = check_health(path)
    assert ok is healthy
    assert says in reason


def test_missing_or_garbled_file_is_unhealthy(tmp_path: Path) -> None:
    assert check_health(tmp_path / "none.json")[0] is False
    (tmp_path / "bad.json").write_text("{not json")
    assert check_health(tmp_path / "bad.json")[0] is False


def _healthcheck(path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HEALTH_FILE=str(path))
    return subprocess.run(
        [sys.executable, "-m", "comfy_worker", "healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_command_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert _healthcheck(path).returncode == 1
    write_health(path, _state())
    assert _healthcheck(path).returncode == 0
    write_health(path, _state(hub=False))
    done = _healthcheck(path)
    assert done.returncode == 1 and "hub" in done.stdout
