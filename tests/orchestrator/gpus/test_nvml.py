"""`wgpu count`: the GPU count from NVML, or 0 plus the reason when there is no driver.

The no-NVML branch runs where NVML cannot start; the GPU branch (marker `gpu`) where it can,
against a count taken without NVML (nvidia-smi). Whichever branch cannot run here is reported
as not run in the summary (tests/fixtures/gpu.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pynvml
import pytest

from orchestrator.gpus import nvml
from tests.fixtures.gpu import nvml_error, reference_gpu_count


def _wgpu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.no_gpu
def test_count_without_nvml_prints_0_and_one_line_why() -> None:
    done = _wgpu("count")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n"
    (line,) = done.stderr.strip().splitlines()
    if nvml_error() == "NVMLError_LibraryNotFound":
        assert line == "NVML library not found: no NVIDIA driver on this host"


@pytest.mark.no_gpu
def test_count_json_without_nvml_says_why() -> None:
    done = _wgpu("count", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == 0 and report["gpus"] == []
    assert isinstance(report["error"], str) and report["error"]


@pytest.mark.no_gpu
def test_monitor_without_nvml_reports_nothing_and_does_not_raise() -> None:
    with nvml.GpuMonitor() as monitor:
        assert monitor.poll() == {} and monitor.poll([0, 5]) == {}
        assert monitor.error is not None


@pytest.mark.gpu
def test_count_agrees_with_nvidia_smi() -> None:
    expected = reference_gpu_count()
    done = _wgpu("count")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"{expected}\n" and expected > 0


@pytest.mark.gpu
def test_count_json_lists_each_gpu() -> None:
    expected = reference_gpu_count()
    done = _wgpu("count", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"count", "gpus", "error"} and report["error"] is None
    assert report["count"] == expected == len(report["gpus"])
    assert [g["index"] for g in report["gpus"]] == list(range(expected))
    for gpu in report["gpus"]:
        assert set(gpu) == {"index", "uuid", "name", "memory_total"}
        assert gpu["uuid"].startswith(("GPU-", "MIG-")) and gpu["memory_total"] > 0


@pytest.mark.gpu
def test_monitor_polls_every_gpu() -> None:
    expected = reference_gpu_count()
    with nvml.GpuMonitor() as monitor:
        stats = monitor.poll()
        assert sorted(stats) == list(range(expected))
        assert monitor.poll([expected + 5]) == {}  # an unknown index is skipped, not an error
        assert monitor.error is None
    for stat in stats.values():
        assert stat.vram_total_mb is not None and stat.vram_total_mb > 0
        assert stat.util_percent is None or 0 <= stat.util_percent <= 100


@pytest.mark.parametrize("n", [0, 1, 4])
def test_simulated_slots(n: int) -> None:
    inventory = nvml.simulated(n)
    assert inventory.count == n and inventory.simulated and inventory.error is None
    assert [g.uuid for g in inventory.gpus] == [f"SIM-GPU-{i}" for i in range(n)]
    assert inventory.to_json()["count"] == n


def test_nvml_errors_read_as_one_line_for_users() -> None:
    messages = {
        nvml.describe_nvml_error(pynvml.NVMLError(code))
        for code in (
            pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
            pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
            pynvml.NVML_ERROR_NO_PERMISSION,
            pynvml.NVML_ERROR_UNKNOWN,
        )
    }
    assert "NVML library not found: no NVIDIA driver on this host" in messages
    assert len(messages) == 4 and all("\n" not in m for m in messages)
