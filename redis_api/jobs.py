"""Jobs as clients see them: validating a `POST /jobs` body, and the job JSON view."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any, cast, get_args
from urllib.parse import quote

from wgpu_protocol import models
from wgpu_protocol.messages import MAX_TEXT_FRAME_BYTES, ProtocolError, check_text, loads_strict
from wgpu_protocol.rest import (
    HELD_STATES,
    JOB_STATES,
    WORKER_STATES,
    DrainJson,
    JobErrorJson,
    JobJson,
    JobStatus,
    WebhookEvent,
    WebhookJson,
    WorkerJson,
)

from .config import HubConfig
from .errors import BadRequest, WorkflowTooLarge
from .store import Drain, JobSpec
from .webhook_targets import TargetPolicy, TargetRefused

# Events a webhook can get: a job's end (all by default) and, opted in, its progress.
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)

MAX_PRIORITY = 1000
MAX_TIMEOUT_S = 7 * 86400
MAX_ATTEMPTS = 100
MAX_KEY_LENGTH = 200
MAX_NODES = 10_000
# A workflow travels to its worker inside one `job` text frame: leave room for the envelope.
MAX_WORKFLOW_BYTES = MAX_TEXT_FRAME_BYTES - 4096
_FIELDS = {
    "workflow",
    "priority",
    "timeout_s",
    "max_attempts",
    "idempotency_key",
    "constraints",
    "webhook_url",
    "webhook_events",
    "allow_partial",
    "requires",
    "schedule_timeout_s",
    "queue_timeout_s",
    "inputs",  # resolved by redis_api.inputs (it needs storage and Redis)
}
_CONSTRAINTS = {"machine_id", "gpu", "min_vram_mb"}


def parse_body(raw: bytes) -> Any:
    """The request body as JSON, checked as untrusted text (depth, finite numbers, UTF-8)."""
    try:
        return loads_strict(raw, "the body")
    except ProtocolError as exc:
        raise BadRequest(str(exc), "body") from None


def _text(value: str, field: str, name: bool = True) -> str:
    try:
        return check_text(value, field, name)
    except ProtocolError as exc:
        raise BadRequest(str(exc), field) from None


@functools.lru_cache(maxsize=8)
def loader_table(extra: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """The loader table with the hub's configured custom-node loaders (MODEL_LOADERS)."""
    return models.loader_table(models.parse_loader_table(extra))


def parse_submit(body: Any, config: HubConfig, owner: str = "") -> JobSpec:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with a 'workflow'")
    unknown = set(body) - _FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    workflow = body.get("workflow")
    _check_workflow(workflow)
    priority = _int(body.get("priority", 0), "priority", -MAX_PRIORITY, MAX_PRIORITY)
    timeout_s = _number(body.get("timeout_s", config.default_timeout_s), "timeout_s")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise BadRequest(f"timeout_s must be > 0 and <= {MAX_TIMEOUT_S}")
    max_attempts = _int(
        body.get("max_attempts", config.default_max_attempts), "max_attempts", 1, MAX_ATTEMPTS
    )
    key = body.get("idempotency_key") or ""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"idempotency_key must be a string of at most {MAX_KEY_LENGTH} characters",
            "idempotency_key",
        )
    _text(key, "idempotency_key")
    webhook = body.get("webhook_url") or ""
    if (
        not isinstance(webhook, str)
        or len(webhook) > 2000
        or (webhook and not webhook.startswith(("http://", "https://")))
    ):
        raise BadRequest("webhook_url must be an http:// or https:// URL", "webhook_url")
    _text(webhook, "webhook_url")
    if webhook:
        try:  # IP literals now; names are checked when the hub connects
            TargetPolicy(config.webhook_allowed_hosts).check_url(webhook)
        except TargetRefused as exc:
            raise BadRequest(f"webhook_url: {exc}", "webhook_url") from None
    events = _webhook_events(body.get("webhook_events"), bool(webhook))
    try:
        declared = models.check_requirements(body.get("requires") or {})
    except models.ModelSpecError as exc:
        raise BadRequest(str(exc), "requires") from None
    requires = models.merge(
        models.workflow_requirements(workflow or {}, loader_table(config.model_loaders)), declared
    )
    if len(models.flatten(requires)) > models.MAX_REQUIRED_FILES:
        raise BadRequest(
            f"the job needs more than {models.MAX_REQUIRED_FILES} model files", "requires"
        )
    schedule_timeout_s = _number(
        body.get("schedule_timeout_s", config.schedule_timeout_s), "schedule_timeout_s"
    )
    if not 0 < schedule_timeout_s <= MAX_TIMEOUT_S:
        raise BadRequest(
            f"schedule_timeout_s must be > 0 and <= {MAX_TIMEOUT_S}", "schedule_timeout_s"
        )
    queue_timeout_s = _number(body.get("queue_timeout_s") or 0, "queue_timeout_s")
    if not 0 <= queue_timeout_s <= MAX_TIMEOUT_S:
        raise BadRequest(
            f"queue_timeout_s must be >= 0 and <= {MAX_TIMEOUT_S} (0 = none)", "queue_timeout_s"
        )
    workflow_json = json.dumps(workflow, separators=(",", ":"))
    if len(workflow_json.encode()) > MAX_WORKFLOW_BYTES:
        raise WorkflowTooLarge(
            f"the workflow is {len(workflow_json.encode())} bytes encoded; the limit is "
            f"{MAX_WORKFLOW_BYTES}: move large inputs (images) to files ComfyUI can load"
        )
    constraints = _constraints(body.get("constraints"))
    allow_partial = body.get("allow_partial", False)
    if not isinstance(allow_partial, bool):
        raise BadRequest("allow_partial must be true or false", "allow_partial")
    extras: dict[str, Any] = {}
    if allow_partial:
        extras["allow_partial"] = True
    return JobSpec(
        workflow_json=workflow_json,
        priority=priority,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        constraints=constraints,
        idempotency_key=key,
        webhook_url=webhook,
        webhook_events=events,
        extras=extras or None,
        requires=requires,
        pool=models.pool_id(requires, constraints),
        owner=owner,
        schedule_timeout_s=schedule_timeout_s,
        queue_timeout_s=queue_timeout_s,
    )


def parse_job_list_query(query: Mapping[str, str], max_limit: int) -> tuple[str | None, int]:
    """A job list's `status` (None: every state) and `limit` (default 100) query parameters."""
    status = query.get("status") or None
    if status is not None and status not in JOB_STATES:
        raise BadRequest(f"status must be one of {', '.join(JOB_STATES)}", "status")
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer", "limit") from None
    if not 1 <= limit <= max_limit:
        raise BadRequest(f"limit must be from 1 to {max_limit}", "limit")
    return status, limit


def _webhook_events(raw: Any, has_url: bool) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not has_url:
        raise BadRequest("webhook_events needs a webhook_url", "webhook_events")
    if (
        not isinstance(raw, list)
        or not raw
        or len(raw) > len(WEBHOOK_EVENTS)
        or any(event not in WEBHOOK_EVENTS for event in raw)
    ):
        raise BadRequest(
            f"webhook_events must be a list of: {', '.join(WEBHOOK_EVENTS)}", "webhook_events"
        )
    return tuple(dict.fromkeys(raw))


def _check_workflow(workflow: Any) -> None:
    if not isinstance(workflow, dict) or not workflow:
        raise BadRequest("'workflow' must be a non-empty object {node_id: {class_type, inputs}}")
    if len(workflow) > MAX_NODES:
        raise BadRequest(f"the workflow has more than {MAX_NODES} nodes")
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            raise BadRequest(f"workflow node {node_id!r} must be an object")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise BadRequest(f"workflow node {node_id!r} needs a 'class_type' string")
        if not isinstance(node.get("inputs", {}), dict):
            raise BadRequest(f"workflow node {node_id!r}: 'inputs' must be an object")


def _constraints(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("constraints must be an object {machine_id?, gpu?, min_vram_mb?}")
    unknown = set(raw) - _CONSTRAINTS
    if unknown:
        raise BadRequest(f"unknown constraint(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    if raw.get("machine_id") is not None:
        machine = raw["machine_id"]
        if not isinstance(machine, str) or not machine or len(machine) > MAX_KEY_LENGTH:
            raise BadRequest("constraints.machine_id must be a non-empty string")
        out["machine_id"] = _text(machine, "constraints.machine_id")
    if raw.get("gpu") is not None:
        gpu = raw["gpu"]
        if isinstance(gpu, bool) or not isinstance(gpu, int | str) or str(gpu) == "":
            raise BadRequest("constraints.gpu must be a GPU index, UUID or name")
        if len(str(gpu)) > MAX_KEY_LENGTH:
            raise BadRequest("constraints.gpu is too long")
        _text(str(gpu), "constraints.gpu")
        out["gpu"] = gpu
    if raw.get("min_vram_mb") is not None:
        out["min_vram_mb"] = _int(raw["min_vram_mb"], "constraints.min_vram_mb", 0, 2**40)
    return out or None


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number", name)
    return float(value)


# ----------------------------------------------------------------------------- views


def _seconds(ms: str | None) -> float | None:
    return int(ms) / 1000.0 if ms else None


def _json(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def output_url(job_id: str, name: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}/outputs/{quote(name, safe='')}"


def _unscoped(key: str | None, owner: str) -> str:
    """The idempotency key as its client gave it (stored prefixed with the owner's name)."""
    if key and owner and key.startswith(owner + ":"):
        return key[len(owner) + 1 :]
    return key or ""


def _error_view(error: Any) -> JobErrorJson | None:
    """An error as the contract shows it: every key present (Lua scripts leave `node_id` out)."""
    if not isinstance(error, dict):
        return None
    node_id = error.get("node_id")
    return {
        "type": str(error.get("type", "")),
        "message": str(error.get("message", "")),
        "node_id": None if node_id is None else str(node_id),
    }


def job_view(
    fields: dict[str, str], with_workflow: bool = False, waiting_reason: str | None = None
) -> JobJson:
    """The job JSON of docs/architecture.md from its Redis hash. `waiting_reason`: why a queued
    job waits (no connected worker can take it), from Store.waiting_reasons."""
    owner = fields.get("owner") or ""
    status = fields.get("status", "")
    running = status in HELD_STATES
    error = _error_view(_json(fields.get("error"), None))
    history = _json(fields.get("history"), [])
    for attempt in history:
        attempt["error"] = _error_view(attempt.get("error"))
    view: JobJson = {
        "id": fields.get("id", ""),
        "status": cast(JobStatus, status),
        "priority": int(fields.get("priority", 0)),
        "timeout_s": float(fields.get("timeout_s", 0)),
        "max_attempts": int(fields.get("max_attempts", 0)),
        "attempts": int(fields.get("attempts", 0)),
        "worker_id": fields.get("worker_id") or None,
        "progress": _json(fields.get("progress"), None) if running else None,
        "created_at": _seconds(fields.get("created_ms")),
        "started_at": _seconds(fields.get("started_ms")),
        "running_at": _seconds(fields.get("running_ms")),
        "finished_at": _seconds(fields.get("finished_ms")),
        "error": error,
        "outputs": _json(fields.get("outputs"), []),
        "results": _json(fields.get("results"), {}),
        "constraints": _json(fields.get("constraints"), None),
        "idempotency_key": _unscoped(fields.get("idempotency_key"), owner) or None,
        "owner": owner or None,
        "webhook_url": fields.get("webhook_url") or None,
        "webhook": webhook_state(fields),
        "history": history,
        "requires": _json(fields.get("requires"), {}),
        "queue_timeout_s": int(fields["queue_ms"]) / 1000.0 if fields.get("queue_ms") else None,
        "schedule_timeout_s": int(fields["sched_ms"]) / 1000.0 if fields.get("sched_ms") else None,
        "waiting_reason": (waiting_reason or None) if status == "queued" else None,
    }
    if with_workflow:
        view["workflow"] = _json(fields.get("workflow"), {})
    return view


def webhook_state(fields: dict[str, str]) -> WebhookJson | None:
    """Delivery state of the job's final-event webhook (None without a webhook_url)."""
    if not fields.get("webhook_url"):
        return None
    status = fields.get("wh_last_status") or ""
    return {
        "attempts": int(fields.get("wh_attempts") or 0),
        "last_status": int(status) if status.isdigit() else None,
        "delivered_at": _seconds(fields.get("wh_delivered_ms")),
        "next_attempt_at": _seconds(fields.get("wh_next_ms")),
        "error": fields.get("wh_error") or None,
        "events": (fields.get("wh_events") or "").split(",") if fields.get("wh_events") else None,
    }


def progress_json(
    node: str | None, value: float, maximum: float, node_class: str | None = None
) -> str:
    percent = round(100.0 * value / maximum, 1) if maximum > 0 else None
    return json.dumps(
        {"node": node, "node_class": node_class, "value": value, "max": maximum, "percent": percent}
    )


def drain_view(record: Drain | None, holds_job: bool) -> DrainJson | None:
    """A worker's drain as `/workers` shows it: draining while it holds a job (its current one or
    one whose outputs it still relays), then drained."""
    if record is None:
        return None
    return {
        "state": "draining" if holds_job else "drained",
        "since": record.since_ms / 1000.0,
        "deadline": record.deadline_ms / 1000.0 if record.deadline_ms else None,
    }


def worker_view(
    fields: dict[str, str],
    now_ms: int,
    stale_ms: int,
    jobs: dict[str, dict[str, str]],
    drain: Drain | None = None,
    model_files: tuple[set[str], set[str]] | None = None,
) -> WorkerJson:
    """One entry of `GET /workers`; `model_files` = (on disk, loaded) as `folder/file`."""
    seen = int(fields.get("seen_ms") or 0)
    connected = fields.get("connected") == "1" and now_ms - seen <= stale_ms
    current = fields.get("current_job") or None
    job = jobs.get(current) if current else None
    state = fields.get("state") or "unavailable"
    if not connected:
        state = "offline"
    gpu_index = fields.get("gpu_index", "")
    running = current if job and job.get("status") in HELD_STATES else None
    relay = fields.get("relay_job") or None
    relay_row = jobs.get(relay) if relay else None
    relaying = (
        relay
        if relay_row
        and relay_row.get("status") in HELD_STATES
        and relay_row.get("worker_id") == fields.get("id")
        else None
    )
    return {
        "id": fields.get("id", ""),
        "machine_id": fields.get("machine_id", ""),
        "gpu": {
            "index": int(gpu_index) if gpu_index.lstrip("-").isdigit() else None,
            "uuid": fields.get("gpu_uuid", ""),
            "name": fields.get("gpu_name", ""),
            "vram_total_mb": int(fields.get("vram_mb") or 0),
        },
        "connected": connected,
        "status": state if state in WORKER_STATES else "unavailable",
        "current_job": running,
        "current_job_status": cast(JobStatus, job.get("status")) if running and job else None,
        "progress": _json(job.get("progress"), None) if job else None,
        "relaying_job": relaying,
        "last_heartbeat": seen / 1000.0 if seen else None,
        "gpu_stats": _json(fields.get("gpu_stats"), {}),
        "comfyui_ok": fields.get("comfyui_ok") == "1" if "comfyui_ok" in fields else None,
        "jobs_done": int(fields.get("jobs_done") or 0),
        "jobs_failed": int(fields.get("jobs_failed") or 0),
        "version": fields.get("version", ""),
        "drain": drain_view(drain, bool(running or relaying)),
        # None until the worker reported them (an old worker): it is then trusted with any job.
        "models": models.unflatten(model_files[0])
        if model_files and fields.get("inv_known") == "1"
        else None,
        "warm": models.unflatten(model_files[1]) if model_files else {},
        "models_digest": fields.get("models_digest") or None,
        "quarantined": (
            {
                "reason": fields["quarantined"],
                "since": _seconds(fields.get("quarantined_ms")),
            }
            if fields.get("quarantined")
            else None
        ),
    }
