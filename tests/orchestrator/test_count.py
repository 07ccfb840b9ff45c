"""`wgpu count`: the GPU count from NVML, or 0 plus the reason when there is no driver."""

from __future__ import annotations

import json
import subprocess
import sys

import pynvml
import pytest

from orchestrator.gpus import nvml


def _nvml_count() -> tuple[int, str | None]:
    """Ask NVML directly, as the reference the command must agree with."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return 0, type(exc).__name__
    try:
        return int(pynvml.nvmlDeviceGetCount()), None
    finally:
        pynvml.nvmlShutdown()


def _wgpu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_count_prints_the_number_and_why_when_zero() -> None:
    expected, nvml_error = _nvml_count()
    done = _wgpu("count")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{expected}\n"
    if nvml_error == "NVMLError_LibraryNotFound":
        assert done.stderr.strip() == "NVML library not found: no NVIDIA driver on this host"
    elif nvml_error is None:
        assert done.stderr == ""
    else:
        assert len(done.stderr.strip().splitlines()) == 1


def test_count_json_lists_each_gpu() -> None:
    expected, nvml_error = _nvml_count()
    done = _wgpu("count", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"count", "gpus", "error"}
    assert report["count"] == expected == len(report["gpus"])
    assert [g["index"] for g in report["gpus"]] == list(range(expected))
    for gpu in report["gpus"]:
        assert set(gpu) == {"index", "uuid", "name", "memory_total"}
        assert gpu["uuid"].startswith(("GPU-", "MIG-")) and gpu["memory_total"] > 0
    if nvml_error is None:
        assert report["error"] is None
    else:
        assert isinstance(report["error"], str) and report["error"]


def test_monitor_without_nvml_reports_nothing_and_does_not_raise() -> None:
    expected, nvml_error = _nvml_count()
    with nvml.GpuMonitor() as monitor:
        stats = monitor.poll()
        assert sorted(stats) == list(range(expected))
        assert monitor.poll([expected + 5]) == {}  # an unknown index is skipped, not an error
        assert (monitor.error is None) == (nvml_error is None)
    for stat in stats.values():
        assert stat.vram_total_mb is None or stat.vram_total_mb > 0
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
