"""The status snapshot (a pure function of what backend, NVML and hub said) and its rendering."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from rich.console import Console

from orchestrator.backends.base import (
    ROLE_COMFYUI,
    ROLE_WORKER,
    ServiceRecord,
    WorkerSettings,
    plan_slots,
)
from orchestrator.backends.process_backend import ProcessBackend
from orchestrator.gpus.nvml import GpuDevice
from orchestrator.gpus.slots import select_slots
from orchestrator.status_view import (
    StatusSnapshot,
    build_snapshot,
    collect_snapshot,
    render_table,
    watch,
)
from wgpu_protocol.messages import GpuStats

NOW = 1_000_000.0
DEVICES = [
    GpuDevice(0, "GPU-aaa", "NVIDIA H100 80GB HBM3", 81559),
    GpuDevice(1, "GPU-bbb", "NVIDIA H100 80GB HBM3", 81559),
]
STATS = {
    0: GpuStats(87.0, 40960, 81559, 64.0, 350.5),
    1: GpuStats(0.0, 512, 81559, 31.0, 70.0),
}
RECORDS = [
    ServiceRecord(
        0,
        ROLE_WORKER,
        "comfy-worker-gpu0",
        "running",
        machine_id="box",
        started_at=NOW - 125,
        restarts=2,
        health="healthy",
        ident="abc",
    ),
    ServiceRecord(
        0, ROLE_COMFYUI, "comfyui-gpu0", "running", machine_id="box", started_at=NOW - 130
    ),
    ServiceRecord(1, ROLE_WORKER, "comfy-worker-gpu1", "exited", machine_id="box", exit_code=137),
    ServiceRecord(
        3,
        ROLE_WORKER,
        "comfy-worker-gpu3",
        "running",
        machine_id="box",
        simulated=True,
        started_at=NOW - 5,
    ),
]
HUB_WORKERS = [
    {
        "id": "box-gpu0",
        "machine_id": "box",
        "gpu": {"index": 0},
        "connected": True,
        "status": "busy",
        "current_job": "job-1234567890abcdef",
        "progress": {"value": 3, "max": 4},
        "jobs_done": 12,
        "jobs_failed": 1,
    },
    {
        "id": "other-gpu1",
        "machine_id": "other",
        "gpu": {"index": 1},
        "connected": True,
        "status": "idle",
        "current_job": None,
        "progress": None,
        "jobs_done": 99,
        "jobs_failed": 0,
    },
    {
        "id": "box-gpu1",
        "machine_id": "box",
        "gpu": {"index": 1},
        "connected": False,
        "status": "offline",
        "current_job": None,
        "progress": None,
        "jobs_done": 4,
        "jobs_failed": 0,
    },
]


def snapshot(**overrides: object) -> StatusSnapshot:
    arguments: dict[str, object] = {"now": NOW, "backend": "docker", "hub_url": "http://h:1"}
    arguments.update(overrides)
    return build_snapshot(RECORDS, DEVICES, STATS, HUB_WORKERS, **arguments)  # type: ignore[arg-type]


def test_snapshot_joins_gpus_services_and_hub_workers() -> None:
    snap = snapshot()
    slots = {slot.index: slot for slot in snap.slots}
    assert sorted(slots) == [0, 1, 3]  # GPUs 0, 1 and a simulated slot 3
    gpu0 = slots[0]
    assert (gpu0.name, gpu0.utilization_pct, gpu0.memory_used_mb, gpu0.temperature_c) == (
        "NVIDIA H100 80GB HBM3",
        87,
        40960,
        64,
    )
    assert gpu0.worker is not None and gpu0.worker.uptime_s == 125 and gpu0.worker.restarts == 2
    assert gpu0.comfyui is not None and gpu0.comfyui.state == "running"
    assert (gpu0.hub_status, gpu0.current_job, gpu0.progress_pct) == (
        "busy",
        "job-1234567890abcdef",
        75.0,
    )
    assert (gpu0.jobs_done, gpu0.jobs_failed) == (12, 1)
    # Slot 1 is matched with this machine's worker, not another machine's gpu1.
    assert (slots[1].hub_connected, slots[1].jobs_done) == (False, 4)
    assert slots[1].worker is not None and slots[1].worker.exit_code == 137
    assert slots[3].simulated and slots[3].hub_connected is None and slots[3].name == "simulated"


def test_snapshot_without_hub_leaves_hub_fields_blank() -> None:
    snap = build_snapshot(
        RECORDS,
        DEVICES,
        {},
        None,
        now=NOW,
        backend="docker",
        hub_error="hub does not answer",
        gpu_error="no NVML",
        only=[0],
    )
    [slot] = snap.slots
    assert slot.hub_connected is None and slot.jobs_done is None
    assert slot.utilization_pct is None and slot.memory_total_mb == 81559
    data = json.loads(json.dumps(snap.to_json()))
    assert data["hub_error"] == "hub does not answer"
    assert data["slots"][0]["worker"]["state"] == "running"


def test_rendered_table_shows_every_column() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(render_table(snapshot(machine_id="box")))
    text = console.export_text()
    assert "machine box" in text
    row0 = next(line for line in text.splitlines() if "gpu0" in line)
    for cell in (
        "H100 80GB HBM3",
        "87%",
        "40/80",
        "64°C",
        "up 2m✓ ↻2",  # running 2m05s, healthy, restarted twice
        "busy",
        "job-1234 75%",
        "12/1",
    ):
        assert cell in row0, (cell, row0)
    row1 = next(line for line in text.splitlines() if "gpu1" in line)
    assert "exit 137" in row1 and "offline" in row1
    assert "simulated" in next(line for line in text.splitlines() if "gpu3" in line)


def test_status_fits_80_columns_without_wrapping_a_row() -> None:
    long_lived = [
        ServiceRecord(
            i,
            role,
            f"{role}-gpu{i}",
            "running" if i % 2 == 0 else "exited",
            machine_id="box",
            started_at=NOW - 3 * 86400,
            restarts=12,
            health="unhealthy" if role == ROLE_WORKER else None,
            exit_code=None if i % 2 == 0 else 137,
        )
        for i in range(10, 12)
        for role in (ROLE_WORKER, ROLE_COMFYUI)
    ]
    devices = [
        GpuDevice(i, f"GPU-{i}", "NVIDIA GeForce RTX 4090 Laptop GPU", 144_000) for i in (10, 11)
    ]
    stats = {i: GpuStats(100.0, 143_000, 144_000, 101.0, 700.0) for i in (10, 11)}
    hub_workers = [
        {
            "id": f"box-gpu{i}",
            "machine_id": "box",
            "gpu": {"index": i},
            "connected": True,
            "status": "unavailable",
            "current_job": "f" * 32,
            "current_job_status": "assigned" if i == 10 else "running",
            "progress": {"percent": 100.0},
            "jobs_done": 123456,
            "jobs_failed": 7890,
        }
        for i in (10, 11)
    ]
    for snap in (
        snapshot(machine_id="box"),
        build_snapshot(
            long_lived, devices, stats, hub_workers, now=NOW, backend="docker", machine_id="box"
        ),
    ):
        console = Console(record=True, width=80, color_system=None)
        console.print(render_table(snap))
        lines = console.export_text().splitlines()
        assert all(len(line) <= 80 for line in lines), lines
        rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
        rows = [line for line in lines[rule + 1 :] if line.strip()]
        # One line per GPU: a wrapped cell would add a continuation line.
        assert [row.split()[0] for row in rows] == [f"gpu{s.index}" for s in snap.slots], rows
    assert "ffffffff assigned" in next(row for row in rows if row.startswith("gpu10"))
    assert "ffffffff 100%" in next(row for row in rows if row.startswith("gpu11"))


def test_rendered_table_says_why_columns_are_blank() -> None:
    console = Console(record=True, width=200, color_system=None)
    snap = build_snapshot(
        [],
        [],
        {},
        None,
        now=NOW,
        backend="process",
        hub_error="hub at http://h:1 does not answer",
        gpu_error="no NVML",
    )
    console.print(render_table(snap))
    text = console.export_text()
    assert "no GPUs and no managed workers" in text
    assert "hub: hub at http://h:1 does not answer" in text and "gpus: no NVML" in text


def test_watch_redraws_in_place(tmp_path: Path) -> None:
    calls: list[int] = []

    def collect() -> StatusSnapshot:
        calls.append(len(calls))
        records = [ServiceRecord(0, ROLE_WORKER, "w", "running", started_at=NOW - len(calls))]
        return build_snapshot(records, [], {}, None, now=NOW, backend="docker")

    terminal = tmp_path / "tty"
    with terminal.open("w") as file:
        console = Console(file=file, force_terminal=True, width=120, color_system=None)
        last = watch(collect, console, interval_s=0.01, iterations=3)
    raw = terminal.read_text()
    assert len(calls) == 3 and last.slots[0].worker is not None
    assert last.slots[0].worker.uptime_s == 3
    # In place: the cursor moves up over the previous table; the screen is never cleared.
    assert "\x1b[2K" in raw and re.search(r"\x1b\[\d*A", raw)
    assert "\x1b[2J" not in raw
    assert raw.count("up 3s") >= 1 and raw.count("up 1s") == 1


def test_collect_snapshot_from_a_real_process_backend(tmp_path: Path) -> None:
    script = tmp_path / "idle.py"
    script.write_text("import time\nwhile True: time.sleep(0.05)\n")
    backend = ProcessBackend(tmp_path / "w", worker_command=[sys.executable, str(script)])
    selection = select_slots("0,1", None, [])
    try:
        backend.start(plan_slots(selection.slots, WorkerSettings(machine_id="m"), 2))
        snap = collect_snapshot(backend, None, [], None, machine_id="m")
        assert [(s.index, s.worker.state if s.worker else None) for s in snap.slots] == [
            (0, "running"),
            (1, "running"),
        ]
        assert snap.elapsed_ms is not None and snap.hub_error is None
    finally:
        backend.stop(None, timeout_s=2)


def test_a_drained_worker_and_the_worker_versions_show() -> None:
    drained = [
        {**HUB_WORKERS[0], "drain": {"state": "draining", "since": NOW, "deadline": None}},
        {**HUB_WORKERS[2], "connected": True, "status": "idle", "version": "src-bbb"},
    ]
    drained[0]["version"] = "src-aaa"
    snap = build_snapshot(RECORDS, DEVICES, STATS, drained, now=NOW, backend="docker")  # type: ignore[arg-type]
    by_index = {slot.index: slot for slot in snap.slots}
    assert by_index[0].drain_state == "draining" and by_index[1].drain_state is None
    assert by_index[0].worker_version == "src-aaa"
    console = Console(width=120, record=True)
    console.print(render_table(snap))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.strip().startswith("gpu0"))
    assert "draining" in row
    assert "src-aaa (gpu0)" in text and "src-bbb (gpu1)" in text


def test_a_quarantined_worker_shows_why_in_wgpu_status() -> None:
    reason = "5 jobs in a row failed here; last: execution_error: boom"
    quarantined = [
        {**HUB_WORKERS[0], "status": "idle", "quarantined": {"reason": reason, "since": NOW - 9}}
    ]
    snap = build_snapshot(
        RECORDS, DEVICES, STATS, quarantined, now=NOW, backend="docker", hub_url="http://h:1"
    )
    slot0 = next(slot for slot in snap.slots if slot.index == 0)
    assert slot0.quarantined == reason
    assert json.loads(json.dumps(snap.to_json()))["slots"][0]["quarantined"] == reason
    console = Console(record=True, width=200, color_system=None)
    console.print(render_table(snap))
    row0 = next(line for line in console.export_text().splitlines() if "gpu0" in line)
    assert "quarantined" in row0


def test_a_job_whose_outputs_are_still_relayed_shows_in_wgpu_status() -> None:
    relaying = [
        {**HUB_WORKERS[0], "relaying_job": "relay-abcdef0123"},
        {**HUB_WORKERS[2], "connected": True, "status": "idle", "relaying_job": "last-9876543210"},
    ]
    snap = build_snapshot(RECORDS, DEVICES, STATS, relaying, now=NOW, backend="docker")  # type: ignore[arg-type]
    by_index = {slot.index: slot for slot in snap.slots}
    assert by_index[1].relaying_job == "last-9876543210" and by_index[1].current_job is None
    assert json.loads(json.dumps(snap.to_json()))["slots"][0]["relaying_job"] == "relay-abcdef0123"
    console = Console(record=True, width=200, color_system=None)
    console.print(render_table(snap))
    rows = {line.split()[0]: line for line in console.export_text().splitlines() if "gpu" in line}
    assert "job-1234 75% +relay" in rows["gpu0"], rows
    assert "last-987 relaying" in rows["gpu1"], rows
