"""The shapes of the hub's REST answers (docs/architecture.md, "REST"), defined once.

The hub builds these (`redis_api.jobs.job_view`, `worker_view`) and the CLI reads them
(`orchestrator.hub_client`, `status_view`, `fleet`), so a field added, renamed or retyped on one
side is a type error on the other. Types only: nothing here validates or does I/O. A reader of
another hub version should still use `.get()`: these say what this version sends.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypeAlias, TypedDict, get_args

JobStatus: TypeAlias = Literal[
    "queued",
    "assigned",  # a worker holds it; it waits in that worker's ComfyUI queue
    "running",  # ComfyUI sent execution_start for it
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "dead",
    "unschedulable",  # no connected worker could take it for schedule_timeout_s
    "expired",  # not started within queue_timeout_s
]
JOB_STATES: tuple[JobStatus, ...] = get_args(JobStatus)  # in that order
TERMINAL_STATES: tuple[JobStatus, ...] = JOB_STATES[3:]
# Held by a worker (a fencing token, a lease): everything that ends or counts a worker's job
# treats both alike.
HELD_STATES: tuple[JobStatus, ...] = ("assigned", "running")

WorkerStatus: TypeAlias = Literal["idle", "busy", "unavailable", "offline"]
WORKER_STATES: tuple[WorkerStatus, ...] = get_args(WorkerStatus)


class ProgressJson(TypedDict):
    node: str | None
    node_class: str | None
    value: float
    max: float
    percent: float | None


class JobErrorJson(TypedDict):
    type: str
    message: str
    node_id: str | None


class OutputJson(TypedDict):
    name: str  # unique in the job
    url: str
    size: int
    content_type: str
    sha256: str  # hex, checked by the hub when it stored the file
    node_id: str | None
    kind: Literal["output", "temp", "input"]
    subfolder: str  # where ComfyUI wrote it


class AttemptJson(TypedDict):
    """One attempt in a job's `history`."""

    attempt: int
    worker_id: str
    outcome: str
    error: JobErrorJson | None


class ConstraintsJson(TypedDict, total=False):
    machine_id: str
    gpu: int | str  # index, UUID or name
    min_vram_mb: int


class WebhookJson(TypedDict):
    """Delivery state of a job's final-event webhook."""

    attempts: int
    last_status: int | None
    delivered_at: float | None
    next_attempt_at: float | None
    error: str | None
    events: list[str] | None


class JobJson(TypedDict):
    """`GET /jobs/{id}`, one entry of `GET /jobs`, the body of `POST /jobs` and `DELETE`."""

    id: str
    status: JobStatus
    priority: int
    timeout_s: float
    max_attempts: int
    attempts: int
    worker_id: str | None
    progress: ProgressJson | None
    created_at: float | None  # unix seconds
    started_at: float | None  # a worker took it (the claim: assigned)
    running_at: float | None  # ComfyUI began executing it (running); None before
    finished_at: float | None
    error: JobErrorJson | None
    outputs: list[OutputJson]
    results: dict[str, dict[str, Any]]  # non-file UI values per node (PreviewAny's "text")
    constraints: ConstraintsJson | None
    idempotency_key: str | None
    webhook_url: str | None
    webhook: WebhookJson | None  # None without a webhook_url
    history: list[AttemptJson]
    # Scheduling (docs/architecture.md "Scheduling"): model files {folder: [file, ...]}.
    requires: dict[str, list[str]]
    owner: str | None  # the API key name (fair share)
    queue_timeout_s: float | None
    schedule_timeout_s: float | None
    waiting_reason: str | None  # queued and no connected worker can take it: why
    workflow: NotRequired[dict[str, Any]]  # only in `GET /jobs/{id}`


class JobListJson(TypedDict):
    jobs: list[JobJson]


class GpuJson(TypedDict):
    index: int | None
    uuid: str
    name: str
    vram_total_mb: int


class GpuStatsJson(TypedDict, total=False):
    """`messages.GpuStats` as the hub shows it: only the fields the worker could read."""

    util_percent: float
    vram_used_mb: int
    vram_total_mb: int
    temperature_c: float
    power_w: float


class DrainJson(TypedDict):
    state: Literal["draining", "drained"]
    since: float  # unix seconds
    deadline: float | None


class QuarantineJson(TypedDict):
    reason: str
    since: float | None  # unix seconds


class WorkerJson(TypedDict):
    """One entry of `GET /workers`."""

    id: str
    machine_id: str
    gpu: GpuJson
    connected: bool
    status: WorkerStatus
    current_job: str | None
    current_job_status: JobStatus | None  # assigned (in ComfyUI's queue) or running
    progress: ProgressJson | None
    relaying_job: str | None  # pipelining: done in ComfyUI, its outputs still being relayed
    last_heartbeat: float | None  # unix seconds
    gpu_stats: GpuStatsJson
    comfyui_ok: bool | None
    jobs_done: int
    jobs_failed: int
    version: str
    drain: DrainJson | None
    models: dict[str, list[str]] | None  # on disk; None: never reported (trusted with any job)
    warm: dict[str, list[str]]  # loaded (the last jobs' models, per folder)
    models_digest: str | None
    quarantined: QuarantineJson | None


class WorkerListJson(TypedDict):
    workers: list[WorkerJson]


class HealthJson(TypedDict):
    """`GET /health`: 200 with status ok, or 503 with status degraded and an error."""

    status: Literal["ok", "degraded"]
    redis: Literal["ok", "unavailable", "out of memory"]
    hub_id: NotRequired[str]
    version: NotRequired[str]  # the hub's package version
    workers_connected: NotRequired[int]
    event_streams: NotRequired[int]  # SSE streams this hub serves (MAX_EVENT_STREAMS caps them)
    error: NotRequired[str]
    redis_used_memory: NotRequired[int]  # with "out of memory"
    redis_maxmemory: NotRequired[int]


# -- requests and the other answers (issue #13: /openapi.json is built from these) ------------

WebhookEvent: TypeAlias = Literal[
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.timed_out",
    "job.dead",
    "job.expired",
    "job.unschedulable",
    "job.progress",
]


class InputRefJson(TypedDict):
    ref: str  # "sha256:<hex>" from POST /uploads
    mask_for: NotRequired[str]  # this file is the mask (alpha) of that image input


class InputDataJson(TypedDict):
    data: str  # base64
    mask_for: NotRequired[str]  # this file is the mask (alpha) of that image input


class InputMaskJson(TypedDict):
    mask_for: str  # the image input this file part (of the same name) masks


class InputUrlJson(TypedDict):
    url: str  # http(s), fetched by the hub (FETCH_ALLOWED_HOSTS for internal hosts)
    mask_for: NotRequired[str]  # this file is the mask (alpha) of that image input


class UploadJson(TypedDict):
    """`POST /uploads`: a stored input, content-addressed."""

    ref: str
    name: str
    size: int
    content_type: str


class SubmitJson(TypedDict):
    """The body of `POST /jobs` (the hub refuses any other field)."""

    workflow: dict[str, Any]  # API format: {node_id: {"class_type", "inputs"}}
    priority: NotRequired[int]  # -1000..1000, higher first
    timeout_s: NotRequired[float]
    max_attempts: NotRequired[int]
    idempotency_key: NotRequired[str]
    constraints: NotRequired[ConstraintsJson]
    webhook_url: NotRequired[str]
    webhook_events: NotRequired[list[WebhookEvent]]
    allow_partial: NotRequired[bool]
    requires: NotRequired[dict[str, list[str]]]
    schedule_timeout_s: NotRequired[float]
    queue_timeout_s: NotRequired[float]
    # By file name; InputMaskJson: a multipart job's mask, its bytes in the file part.
    inputs: NotRequired[dict[str, InputRefJson | InputDataJson | InputUrlJson | InputMaskJson]]


class ErrorJson(TypedDict):
    """Every error answer: one line saying what went wrong (and, for a 409 on cancel, the job)."""

    error: str
    job: NotRequired[JobJson | None]


class DrainRequestJson(TypedDict):
    timeout_s: NotRequired[float]


class DrainAnswerJson(TypedDict):
    """`POST /workers/{id}/drain`."""

    worker_id: str
    drain: DrainJson | None
    current_job: str | None
    relaying_job: str | None  # pipelining: the drain waits for its relay too


class ResumeAnswerJson(TypedDict):
    """`POST /workers/{id}/resume`."""

    worker_id: str
    drain: None
    was_drained: bool
    was_quarantined: bool


class QueueSummaryJson(TypedDict):
    """The `queue` event of `GET /events`."""

    counts: dict[str, int]  # jobs per state, all of them
    queued_by_priority: dict[str, int]  # of the first queued_scanned queued jobs
    queued_by_tenant: dict[str, int]  # API key name ('' without keys), as the viewer may see
    queued_by_pool: dict[str, int]  # requirement pool ('' when the job needs nothing)
    queued_scanned: int


class LiveJobsJson(TypedDict):
    """The `jobs` event of `GET /events`: the job list of the stream's filter."""

    status: JobStatus | None
    jobs: list[JobJson]


class LiveJobJson(TypedDict):
    """The `job` event of `GET /events`: one job changed (it may enter or leave the list)."""

    job: JobJson
