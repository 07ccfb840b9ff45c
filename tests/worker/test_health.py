"""The health file and `comfy-worker healthcheck` (the Dockerfile's HEALTHCHECK)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfy_worker import worker as worker_module
from comfy_worker.health import HealthState, check_health, write_health

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.polling import eventually
from tests.worker.harness import HubClient, fault_workflow, running_worker, worker_config


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


@pytest.mark.redis
async def test_the_running_workers_health_file_follows_its_job(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Written off the event loop, the file still says which job the worker holds, and that it
    is idle again after it (and, once stopped, that it is cut off from the hub)."""
    monkeypatch.setattr(worker_module, "HEALTH_INTERVAL_S", 600.0)  # only changes write it
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    config = worker_config(hub.url, sim.url, tmp_path)

    async def health() -> dict[str, Any]:
        try:
            return json.loads(config.health_file.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    async with running_worker(config):
        await eventually(health, lambda h: h.get("hub_connected") and h.get("comfyui_ok"))
        job_id = await client.submit(fault_workflow("hang"))
        await eventually(health, lambda h: h.get("job_id") == job_id, what="the job named")
        await client.cancel(job_id)
        await client.wait_for(job_id)
        await eventually(health, lambda h: h.get("job_id") is None, what="idle again")
    final = await health()
    assert final["hub_connected"] is False and final["job_id"] is None
