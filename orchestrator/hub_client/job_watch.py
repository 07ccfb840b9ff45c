"""Follow submitted jobs to the end and fetch their outputs (used by `wgpu submit` and `wgpu demo`).

Each job is followed on its own thread through the hub's event stream (`GET /jobs/{id}/events`);
if the stream breaks, the thread falls back to polling `GET /jobs/{id}` until the job ends.
`JobBoard` is the thread-safe picture the progress display reads.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import HubError, WorkflowFileError
from orchestrator.hub_client.client import HubClient
from wgpu_protocol.rest import TERMINAL_STATES

JsonObject = dict[str, Any]


def load_workflow(path: Path) -> JsonObject:
    """An API-format workflow: `{node_id: {class_type, inputs}}`, or one wrapped as ComfyUI's
    `/prompt` body (`{"prompt": {...}}`) or as ours (`{"workflow": {...}}`)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise WorkflowFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise WorkflowFileError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict):
        for key in ("workflow", "prompt"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    nodes_ok = (
        isinstance(data, dict)
        and data
        and all(isinstance(node, dict) and "class_type" in node for node in data.values())
    )
    if not nodes_ok:
        raise WorkflowFileError(
            f"{path} is not an API-format workflow ({{node_id: {{class_type, inputs}}}}): "
            "export it from ComfyUI with 'Save (API Format)'"
        )
    workflow: JsonObject = data
    return workflow


@dataclass
class JobState:
    job_id: str
    label: str
    status: str = "queued"
    percent: float = 0.0
    node: str | None = None
    worker: str | None = None
    job: JsonObject | None = None  # the final job, once done
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATES


@dataclass
class JobBoard:
    jobs: dict[str, JobState] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, job_id: str, label: str) -> None:
        with self.lock:
            self.jobs[job_id] = JobState(job_id, label)

    def update(self, job_id: str, **changes: Any) -> None:
        with self.lock:
            state = self.jobs[job_id]
            for key, value in changes.items():
                setattr(state, key, value)

    def snapshot(self) -> list[JobState]:
        with self.lock:
            return [JobState(**vars(s)) for s in self.jobs.values()]

    def all_done(self) -> bool:
        with self.lock:
            return all(s.done for s in self.jobs.values())


def _percent(progress: Any) -> float | None:
    if not isinstance(progress, dict):
        return None
    if isinstance(progress.get("percent"), int | float):
        return float(progress["percent"])
    value, maximum = progress.get("value"), progress.get("max")
    if isinstance(value, int | float) and isinstance(maximum, int | float) and maximum:
        return 100.0 * value / maximum
    return None


def _apply_job(board: JobBoard, job_id: str, job: Mapping[str, Any]) -> None:
    changes: dict[str, Any] = {
        "status": job.get("status", "queued"),
        "worker": job.get("worker_id"),
    }
    percent = _percent(job.get("progress"))
    if percent is not None:
        changes["percent"] = percent
    if job.get("status") in TERMINAL_STATES:
        changes["job"] = dict(job)
        if job.get("status") == "succeeded":
            changes["percent"] = 100.0
        error = job.get("error")
        if isinstance(error, dict):
            changes["error"] = f"{error.get('type', 'error')}: {error.get('message', '')}"
    board.update(job_id, **changes)


def _job_of(data: JsonObject) -> JsonObject:
    """An event's job: the data itself, or its `job` member."""
    inner = data.get("job")
    return inner if isinstance(inner, dict) else data


def follow_job(
    hub: HubClient, board: JobBoard, job_id: str, timeout_s: float, poll_s: float = 0.5
) -> None:
    """Feed `board` from the job's event stream until it ends (polling if the stream breaks)."""
    deadline = time.monotonic() + timeout_s
    try:
        for event in hub.events(job_id, timeout_s=timeout_s):
            data = event.data if isinstance(event.data, dict) else {}
            if event.kind == "progress":
                percent = _percent(data.get("progress", data))
                if percent is not None:
                    board.update(job_id, percent=percent, status="running", node=data.get("node"))
            elif event.kind == "status":
                job = _job_of(data)
                if "status" in job:
                    board.update(job_id, status=job["status"], worker=job.get("worker_id"))
            elif event.kind == "done":
                job = _job_of(data)
                if job.get("status") in TERMINAL_STATES:
                    _apply_job(board, job_id, job)
                    return
                break
    except (HubError, OSError, ValueError):
        pass  # the stream broke: the job's own record decides from here
    while time.monotonic() < deadline:
        try:
            record = hub.get_job(job_id)
        except HubError:
            time.sleep(poll_s)
            continue
        _apply_job(board, job_id, record)
        if record["status"] in TERMINAL_STATES:
            return
        time.sleep(poll_s)
    board.update(job_id, status="timed_out", error=f"no result within {timeout_s:.0f}s")


def follow_all(hub: HubClient, board: JobBoard, timeout_s: float) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=follow_job, args=(hub, board, job_id, timeout_s), daemon=True, name=job_id
        )
        for job_id in list(board.jobs)
    ]
    for thread in threads:
        thread.start()
    return threads


def wait_until(
    board: JobBoard,
    threads: Iterable[threading.Thread],
    on_tick: Callable[[], None],
    interval_s: float = 0.2,
) -> None:
    """Call `on_tick` every `interval_s` until every job has ended."""
    pending = list(threads)
    while pending:
        on_tick()
        pending[0].join(interval_s)
        pending = [t for t in pending if t.is_alive()]
    on_tick()


def download_outputs(
    hub: HubClient, job: JsonObject, dest: Path, subdir: str | None = None
) -> list[Path]:
    """Every output of a finished job into `dest/<subdir or job id>/<name>`; returns the paths."""
    written = []
    directory = dest / (subdir or str(job["id"]))
    for output in job.get("outputs") or []:
        name = Path(str(output["name"])).name  # never a path from the hub
        data = hub.get_output(str(job["id"]), str(output["name"]))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_bytes(data)
        written.append(path)
    return written
