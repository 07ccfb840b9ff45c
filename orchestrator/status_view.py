"""`wgpu status`: one table of GPUs, their worker and ComfyUI, and what the hub says of them.

Gathering is split from rendering: `build_snapshot` is a pure function of what the backend, NVML
and the hub reported; `collect_snapshot` does the I/O (one container list, one NVML poll, one
short hub call, the last two concurrently); `render_table` draws a snapshot; `watch` redraws in
place with Rich Live. A refresh never calls `docker stats` (about 2 s per container).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.backends.base import ROLE_COMFYUI, ROLE_WORKER, ServiceRecord
from orchestrator.console import one_line
from orchestrator.gpus.nvml import GpuDevice
from wgpu_protocol.ports import worker_id
from wgpu_protocol.rest import WorkerJson

# Rich loads only to draw (`wgpu status --json` never imports it), the messages only where
# NVML sees a GPU to describe.
if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

    from wgpu_protocol.messages import GpuStats


@dataclass(frozen=True)
class ServiceView:
    state: str
    uptime_s: float | None = None
    restarts: int = 0
    health: str | None = None
    exit_code: int | None = None
    ident: str = ""


@dataclass(frozen=True)
class SlotStatus:
    index: int
    name: str = ""
    uuid: str | None = None
    simulated: bool = False
    utilization_pct: float | None = None
    memory_used_mb: int | None = None
    memory_total_mb: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    worker: ServiceView | None = None
    comfyui: ServiceView | None = None
    hub_connected: bool | None = None  # None: the hub was not reachable or does not know it
    hub_status: str | None = None
    current_job: str | None = None
    current_job_status: str | None = None  # assigned (waiting in ComfyUI's queue) or running
    relaying_job: str | None = None  # pipelining: done in ComfyUI, its outputs still relayed
    progress_pct: float | None = None
    jobs_done: int | None = None
    jobs_failed: int | None = None
    drain_state: str | None = None  # draining | drained (wgpu drain), None in service
    worker_version: str | None = None  # what the worker said in hello
    worker_id: str | None = None  # the hub's id for this slot's worker
    quarantined: str | None = None  # why the hub gives this worker no jobs (`wgpu resume`)


@dataclass(frozen=True)
class StatusSnapshot:
    taken_at: float
    backend: str
    slots: list[SlotStatus]
    machine_id: str | None = None
    hub_url: str | None = None
    hub_error: str | None = None  # why the hub columns are blank
    gpu_error: str | None = None  # why the GPU columns are blank
    elapsed_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _service_view(record: ServiceRecord, now: float) -> ServiceView:
    uptime = now - record.started_at if record.started_at is not None else None
    return ServiceView(
        state=record.state,
        uptime_s=None if uptime is None else round(uptime, 1),
        restarts=record.restarts,
        health=record.health,
        exit_code=record.exit_code,
        ident=record.ident,
    )


def _progress_pct(progress: Any) -> float | None:
    if isinstance(progress, int | float):
        return float(progress)
    if isinstance(progress, dict):
        if isinstance(progress.get("percent"), int | float):
            return float(progress["percent"])
        value, maximum = progress.get("value"), progress.get("max")
        if isinstance(value, int | float) and isinstance(maximum, int | float) and maximum:
            return round(100.0 * value / maximum, 1)
    return None


def _drain_state(hub: WorkerJson | None) -> str | None:
    drain = hub.get("drain") if hub is not None else None
    return drain["state"] if drain else None


def _hub_worker_for(
    workers: Sequence[WorkerJson], machine_id: str | None, index: int
) -> WorkerJson | None:
    for worker in workers:
        gpu = worker.get("gpu") or {}
        same_machine = machine_id is None or worker.get("machine_id") == machine_id
        if same_machine and gpu.get("index") == index:
            return worker
        if machine_id is not None and worker.get("id") == worker_id(machine_id, index):
            return worker
    return None


def build_snapshot(
    records: Sequence[ServiceRecord],
    devices: Sequence[GpuDevice],
    stats: Mapping[int, GpuStats],
    hub_workers: Sequence[WorkerJson] | None,
    *,
    now: float,
    backend: str,
    machine_id: str | None = None,
    hub_url: str | None = None,
    hub_error: str | None = None,
    gpu_error: str | None = None,
    only: Iterable[int] | None = None,
    elapsed_ms: float | None = None,
) -> StatusSnapshot:
    """The status of every slot that has a GPU or a managed service. Pure: no I/O."""
    by_device = {device.index: device for device in devices}
    services: dict[int, dict[str, ServiceRecord]] = {}
    for record in records:
        services.setdefault(record.index, {})[record.role] = record
    indices = sorted(set(by_device) | set(services))
    if only is not None:
        wanted = set(only)
        indices = [i for i in indices if i in wanted]
    slots = []
    for index in indices:
        device, stat = by_device.get(index), stats.get(index)
        roles = services.get(index, {})
        worker, comfyui = roles.get(ROLE_WORKER), roles.get(ROLE_COMFYUI)
        any_record = worker or comfyui
        simulated = bool(any_record and any_record.simulated) and device is None
        slot_machine = machine_id or (any_record.machine_id if any_record else None) or None
        hub = _hub_worker_for(hub_workers or [], slot_machine, index)
        slots.append(
            SlotStatus(
                index=index,
                name=device.name if device else ("simulated" if simulated else ""),
                uuid=device.uuid if device else (any_record.gpu_uuid if any_record else None),
                simulated=simulated,
                utilization_pct=stat.util_percent if stat else None,
                memory_used_mb=stat.vram_used_mb if stat else None,
                memory_total_mb=(stat.vram_total_mb if stat else None)
                or (device.memory_total_mb if device else None),
                temperature_c=stat.temperature_c if stat else None,
                power_w=stat.power_w if stat else None,
                worker=_service_view(worker, now) if worker else None,
                comfyui=_service_view(comfyui, now) if comfyui else None,
                hub_connected=None if hub is None else bool(hub.get("connected")),
                hub_status=None if hub is None else hub.get("status"),
                current_job=None if hub is None else hub.get("current_job"),
                current_job_status=None if hub is None else hub.get("current_job_status"),
                relaying_job=None if hub is None else hub.get("relaying_job"),
                progress_pct=None if hub is None else _progress_pct(hub.get("progress")),
                jobs_done=None if hub is None else hub.get("jobs_done"),
                jobs_failed=None if hub is None else hub.get("jobs_failed"),
                drain_state=_drain_state(hub),
                worker_version=None if hub is None else (hub.get("version") or None),
                worker_id=None if hub is None else hub.get("id"),
                quarantined=_quarantine_reason(hub),
            )
        )
    return StatusSnapshot(
        taken_at=now,
        backend=backend,
        slots=slots,
        machine_id=machine_id,
        hub_url=hub_url,
        hub_error=hub_error,
        gpu_error=gpu_error,
        elapsed_ms=elapsed_ms,
    )


# --- I/O ------------------------------------------------------------------------------------


class _Services(Protocol):
    name: str

    def services(self) -> list[ServiceRecord]: ...


class _Monitor(Protocol):
    error: str | None

    def poll(self, indices: Iterable[int] | None = None) -> dict[int, GpuStats]: ...


class _Hub(Protocol):
    base_url: str

    def get_workers(self) -> list[WorkerJson]: ...


def collect_snapshot(
    backend: _Services,
    monitor: _Monitor | None,
    devices: Sequence[GpuDevice],
    hub: _Hub | None,
    *,
    machine_id: str | None = None,
    only: Iterable[int] | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> StatusSnapshot:
    """One refresh: the hub call runs beside the backend listing and the NVML poll."""
    started = time.perf_counter()
    own_pool = pool is None
    executor = pool or ThreadPoolExecutor(max_workers=1)
    try:
        hub_future = executor.submit(_hub_workers, hub) if hub is not None else None
        records = backend.services()
        stats = monitor.poll() if monitor is not None else {}
        hub_workers, hub_error = hub_future.result() if hub_future else (None, None)
    finally:
        if own_pool:
            executor.shutdown(wait=False)
    return build_snapshot(
        records,
        devices,
        stats,
        hub_workers,
        now=time.time(),
        backend=backend.name,
        machine_id=machine_id,
        hub_url=hub.base_url if hub else None,
        hub_error=hub_error,
        gpu_error=monitor.error if monitor is not None else None,
        only=only,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _hub_workers(hub: _Hub) -> tuple[list[WorkerJson] | None, str | None]:
    try:
        return hub.get_workers(), None
    except Exception as exc:  # any hub failure only blanks the hub columns
        return None, str(exc)


# --- rendering ------------------------------------------------------------------------------

_STATE_STYLE = {"running": "green", "restarting": "yellow", "created": "yellow", "stale": "red"}


# `wgpu status` fits 80 columns without wrapping a row: short cells (as `docker ps` does),
# one space between columns, long names cut with an ellipsis. Full values are in --json.
_SHORT_STATE = {"running": "up", "restarting": "restart", "exited": "exit"}
_HEALTH_MARK = {"healthy": ("✓", "green"), "unhealthy": ("✗", "red"), "starting": ("…", "yellow")}
_SHORT_HUB = {"unavailable": "n/a", "connected": "conn"}


def short_duration(seconds: float) -> str:
    """The largest unit only: 5s, 2m, 3h, 4d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _service_cell(view: ServiceView | None) -> Text:
    from rich.text import Text

    if view is None:
        return Text("-", style="dim")
    text = Text(_SHORT_STATE.get(view.state, view.state), style=_STATE_STYLE.get(view.state, "red"))
    if view.exit_code is not None:
        text.append(f" {view.exit_code}", style="dim")
    elif view.uptime_s is not None:
        text.append(f" {short_duration(view.uptime_s)}", style="dim")
    if view.health and view.exit_code is None:
        mark, style = _HEALTH_MARK.get(view.health, ("?", "yellow"))
        text.append(mark, style=style)
    if view.restarts:
        text.append(f" ↻{view.restarts}", style="yellow")
    return text


def _num(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:g}{unit}"


def _gib(mb: float) -> str:
    gib = mb / 1024
    return f"{gib:.0f}" if gib >= 10 else f"{gib:.1f}"


def _vram(slot: SlotStatus) -> str:
    if slot.memory_total_mb is None:
        return ""
    used = "?" if slot.memory_used_mb is None else _gib(slot.memory_used_mb)
    return f"{used}/{_gib(slot.memory_total_mb)}"


def _quarantine_reason(hub: WorkerJson | None) -> str | None:
    quarantine = hub.get("quarantined") if hub is not None else None
    return str(quarantine.get("reason") or "quarantined") if quarantine else None


def _hub_cell(slot: SlotStatus) -> Text:
    from rich.text import Text

    if slot.hub_connected is None:
        return Text("")
    if slot.quarantined:
        return Text("quarantined", style="red")
    if slot.drain_state:
        return Text(slot.drain_state, style="yellow")
    if not slot.hub_connected:
        return Text(slot.hub_status or "offline", style="red")
    status = slot.hub_status or "connected"
    return Text(_SHORT_HUB.get(status, status), style="green" if slot.hub_status else "")


STATUS_JOB_ID = 8  # a unique prefix is enough for every job command


def _job_cell(slot: SlotStatus) -> str:
    if not slot.current_job:  # an idle ComfyUI may still have its last job's outputs relayed
        return f"{slot.relaying_job[:STATUS_JOB_ID]} relaying" if slot.relaying_job else ""
    if slot.current_job_status == "assigned":  # waiting in its ComfyUI's queue, not running
        current = f"{slot.current_job[:STATUS_JOB_ID]} assigned"
    else:
        progress = "" if slot.progress_pct is None else f" {slot.progress_pct:.0f}%"
        current = f"{slot.current_job[:STATUS_JOB_ID]}{progress}"
    return f"{current} +relay" if slot.relaying_job else current


def short_count(n: int) -> str:
    """1234 -> 1.2k, 123456 -> 123k, 2500000 -> 2.5M."""
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def _done_cell(slot: SlotStatus) -> str:
    if slot.jobs_done is None and slot.jobs_failed is None:
        return ""
    return f"{short_count(slot.jobs_done or 0)}/{short_count(slot.jobs_failed or 0)}"


def render_table(snapshot: StatusSnapshot) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = f"wgpu workers ({snapshot.backend}" + (
        f", machine {snapshot.machine_id})" if snapshot.machine_id else ")"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    # Every cell stays on one line. On a narrow terminal the flexible columns (name, services,
    # hub, counts) give up width first, their cells cut with an ellipsis; the GPU, its numbers
    # and the job keep theirs. VRAM is used/total GiB; Done is succeeded/failed.
    for header, justify, flexible in (
        ("GPU", "right", False),
        ("Name", "left", True),
        ("Util", "right", False),
        ("VRAM", "right", False),
        ("Temp", "right", False),
        ("Worker", "left", True),
        ("ComfyUI", "left", True),
        ("Hub", "left", True),
        ("Job", "left", False),
        ("Done", "right", True),
    ):
        table.add_column(
            header,
            justify=justify,  # type: ignore[arg-type]
            max_width=14 if header == "Name" else None,
            no_wrap=not flexible,  # flexible ones may narrow; their cells never wrap (one_line)
        )
    for slot in snapshot.slots:
        table.add_row(
            f"gpu{slot.index}",
            one_line(slot.name.removeprefix("NVIDIA ")),  # every name starts so
            _num(slot.utilization_pct, "%"),
            _vram(slot),
            _num(slot.temperature_c, "°C"),
            one_line(_service_cell(slot.worker)),
            one_line(_service_cell(slot.comfyui)),
            one_line(_hub_cell(slot)),
            _job_cell(slot),
            one_line(_done_cell(slot)),
        )
    notes = []
    versions: dict[str, list[str]] = {}
    for slot in snapshot.slots:
        if slot.worker_version:
            versions.setdefault(slot.worker_version, []).append(f"gpu{slot.index}")
    if versions:
        listed = "; ".join(f"{v} ({', '.join(gpus)})" for v, gpus in versions.items())
        notes.append(Text(f"worker version: {listed}", style="dim"))
    if not snapshot.slots:
        notes.append(Text("no GPUs and no managed workers: run `wgpu start`", style="yellow"))
    for slot in snapshot.slots:
        if slot.quarantined:
            notes.append(
                Text(
                    f"gpu {slot.index} quarantined: {slot.quarantined} "
                    f"(`wgpu resume {slot.index}` takes it back)",
                    style="red",
                )
            )
    if snapshot.hub_error:
        notes.append(Text(f"hub: {snapshot.hub_error}", style="dim"))
    if snapshot.gpu_error:
        notes.append(Text(f"gpus: {snapshot.gpu_error}", style="dim"))
    return Group(table, *notes) if notes else table


def watch(
    collect: Callable[[], StatusSnapshot],
    console: Console,
    interval_s: float = 1.0,
    iterations: int | None = None,
) -> StatusSnapshot:
    """Redraw the table in place every `interval_s` until Ctrl-C (or `iterations` refreshes)."""
    from rich.live import Live

    snapshot = collect()
    count = 1
    with Live(render_table(snapshot), console=console, auto_refresh=False) as live:
        next_at = time.monotonic() + interval_s
        while iterations is None or count < iterations:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + interval_s, time.monotonic())  # steady, never a burst
            snapshot = collect()
            live.update(render_table(snapshot), refresh=True)
            count += 1
    return snapshot
