"""`GET /openapi.json`: the REST API as OpenAPI 3.1, so client generators work.

The shapes are not written twice: every schema is derived from the TypedDicts of
`wgpu_protocol.rest` (what the hub builds and the CLI reads), with every field required unless it
is `NotRequired` and no other field allowed. tests/hub/test_openapi.py calls every route, checks
each answer against this document, and fails on a route, status or field it does not describe.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

from aiohttp import web

from wgpu_protocol import rest

from .client_api import MAX_JOBS_LISTED
from .dashboard import MAX_JOBS_LISTED as MAX_FEED_JOBS
from .version import hub_version

Schema = dict[str, Any]

# The components, by name: each TypedDict becomes #/components/schemas/<name>.
COMPONENTS: dict[str, type] = {
    "Job": rest.JobJson,
    "JobList": rest.JobListJson,
    "Progress": rest.ProgressJson,
    "JobError": rest.JobErrorJson,
    "Output": rest.OutputJson,
    "Attempt": rest.AttemptJson,
    "Constraints": rest.ConstraintsJson,
    "Webhook": rest.WebhookJson,
    "Worker": rest.WorkerJson,
    "WorkerList": rest.WorkerListJson,
    "Gpu": rest.GpuJson,
    "GpuStats": rest.GpuStatsJson,
    "Drain": rest.DrainJson,
    "Quarantine": rest.QuarantineJson,
    "Health": rest.HealthJson,
    "Submit": rest.SubmitJson,
    "Error": rest.ErrorJson,
    "DrainRequest": rest.DrainRequestJson,
    "DrainAnswer": rest.DrainAnswerJson,
    "ResumeAnswer": rest.ResumeAnswerJson,
    "QueueSummary": rest.QueueSummaryJson,
    "LiveJobs": rest.LiveJobsJson,
    "LiveJob": rest.LiveJobJson,
    "InputRef": rest.InputRefJson,
    "InputData": rest.InputDataJson,
    "InputUrl": rest.InputUrlJson,
    "Upload": rest.UploadJson,
}
_NAMES = {cls: name for name, cls in COMPONENTS.items()}


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and typing.is_typeddict(tp)


def schema_of(tp: Any) -> Schema:
    """JSON Schema (2020-12, as OpenAPI 3.1 uses it) of a type from wgpu_protocol.rest."""
    origin = get_origin(tp)
    if origin in (Required, NotRequired):
        return schema_of(get_args(tp)[0])
    if tp is Any:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        options = [schema_of(arg) for arg in get_args(tp)]
        return {"anyOf": options}
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return {"type": "array", "items": schema_of(item)}
    if origin is dict:
        _key, value = get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": schema_of(value)}
    if _is_typeddict(tp):
        name = _NAMES.get(tp)
        return {"$ref": f"#/components/schemas/{name}"} if name else _object(tp)
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object(cls: type) -> Schema:
    hints = typing.get_type_hints(cls, include_extras=True)
    total = getattr(cls, "__total__", True)

    # With postponed annotations __required_keys__ misses NotRequired: read the hints.
    def required(hint: Any) -> bool:
        origin = get_origin(hint)
        return origin is Required or (origin is not NotRequired and total)

    schema: Schema = {
        "type": "object",
        "properties": {name: schema_of(hint) for name, hint in hints.items()},
        "required": sorted(name for name, hint in hints.items() if required(hint)),
        "additionalProperties": False,
    }
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _error(description: str) -> Schema:
    return _json("Error", description)


def _text(media: str, description: str) -> Schema:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _job_list_params(status_text: str, max_limit: int) -> list[Schema]:
    """A job list's `status` and `limit` (redis_api.jobs.parse_job_list_query reads them)."""
    return [
        _param("status", "query", status_text, {"enum": _STATES}),
        _param(
            "limit",
            "query",
            f"at most this many (1-{max_limit}, default 100)",
            {"type": "integer", "minimum": 1, "maximum": max_limit},
        ),
    ]


def _param(name: str, where: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


JOB_ID = _param("job_id", "path", "the job id (32 hex characters) or a unique prefix of it")
WORKER_ID = _param("worker_id", "path", "the worker id, `{MACHINE_ID}-gpu{GPU_ID}`")
UNAUTHORIZED = _error("no valid API key (when API_KEYS is set)")
UNAVAILABLE = _error("Redis does not answer (the hub reconnects by itself)")
NOT_FOUND = _error("no such job (or not the caller's)")
BAD = _error("a field breaks a rule; the message names it")
SSE_NOTE = (
    "Server-sent events (`event: <kind>`, `data: <JSON>`); `x-events` gives each kind's data."
)
_STATES = list(rest.JOB_STATES)
_BINARY = {"type": "string", "format": "binary"}
MULTIPART_SUBMIT: Schema = {
    "type": "object",
    "properties": {"job": {"type": "string", "description": "the JSON body (Submit)"}},
    "required": ["job"],
    "additionalProperties": {**_BINARY, "description": "an input file; its field is its name"},
}
MULTIPART_UPLOAD: Schema = {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}


def _operations() -> dict[str, dict[str, Any]]:
    common = {"401": UNAUTHORIZED, "503": UNAVAILABLE}
    return {
        "/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a workflow (JSON, or multipart: a `job` part and its files)",
                "parameters": [
                    _param(
                        "wait",
                        "query",
                        "answer when the job ends, up to this many seconds",
                        {"type": "number", "minimum": 0, "maximum": 300},
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("Submit")},
                        "multipart/form-data": {"schema": MULTIPART_SUBMIT},
                    },
                },
                "responses": {
                    "201": _json("Job", "the job, queued"),
                    "200": _json(
                        "Job",
                        "the existing job of this idempotency_key, or (?wait) the job that ended",
                    ),
                    "202": _json("Job", "?wait: the job as it stands, not ended yet"),
                    "400": BAD,
                    "413": _error("the body or the workflow is too large"),
                    **common,
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs: queued in dispatch order, running, then finished newest first",
                "parameters": [
                    *_job_list_params("only jobs in this state", MAX_JOBS_LISTED),
                ],
                "responses": {"200": _json("JobList", "the jobs"), "400": BAD, **common},
            },
        },
        "/jobs/{job_id}": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getJob",
                "summary": "A job, with its workflow",
                "responses": {
                    "200": _json("Job", "the job"),
                    "400": _error("an ambiguous id prefix"),
                    "404": NOT_FOUND,
                    **common,
                },
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a job (a running one is interrupted on its worker)",
                "responses": {
                    "200": _json("Job", "the job, cancelled"),
                    "404": NOT_FOUND,
                    "409": _error("the job had already ended (`job` is its final state)"),
                    **common,
                },
            },
        },
        "/jobs/{job_id}/outputs/{name}": {
            "parameters": [JOB_ID, _param("name", "path", "the output's name")],
            "get": {
                "operationId": "getOutput",
                "summary": "An output file, with its content type",
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "404": _error("no such job or output (or no longer stored)"),
                    **common,
                },
            },
        },
        "/jobs/{job_id}/events": {
            "parameters": [
                JOB_ID,
                _param("Last-Event-ID", "header", "resume after this event id"),
            ],
            "get": {
                "operationId": "jobEvents",
                "summary": "The job's events until it ends: status, progress, output, done",
                "responses": {
                    "200": {
                        **_text("text/event-stream", SSE_NOTE),
                        "x-events": {
                            "status": {"type": "object"},
                            "progress": _ref("Progress"),
                            "output": {"type": "object"},
                            "done": _ref("Job"),
                        },
                    },
                    "400": _error("a bad Last-Event-ID"),
                    "404": NOT_FOUND,
                    **common,
                },
            },
        },
        "/uploads": {
            "post": {
                "operationId": "upload",
                "summary": "Store an input once (content-addressed) for any number of jobs",
                "parameters": [_param("name", "query", "the file name (raw bodies)")],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": MULTIPART_UPLOAD},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "201": _json("Upload", "stored"),
                    "400": _error("no file, a bad name, or larger than MAX_INPUT_BYTES"),
                    **common,
                },
            },
        },
        "/worker/inputs/{sha256}": {
            "parameters": [
                _param("sha256", "path", "the input's sha256, hex"),
                _param("worker_id", "query", "the worker asking (whose credential it shows)"),
                _param("job_id", "query", "the job the input is for, held by that worker"),
            ],
            "get": {
                "operationId": "workerInput",
                "summary": "An input's bytes, for the worker holding the job (its credential)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "400": _error("no valid job_id (when WORKER_TOKEN is set)"),
                    "401": _error("no valid credential for worker_id (when WORKER_TOKEN is set)"),
                    "403": _error("the job is not this worker's now, or has no such input"),
                    "404": _error("no such input (or expired)"),
                },
            },
        },
        "/workers": {
            "get": {
                "operationId": "listWorkers",
                "summary": "Every registered worker, its GPU and what it does",
                "responses": {"200": _json("WorkerList", "the workers"), **common},
            },
        },
        "/workers/{worker_id}/drain": {
            "parameters": [WORKER_ID],
            "post": {
                "operationId": "drainWorker",
                "summary": "Give the worker no new job (its current one finishes)",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("DrainRequest")}},
                },
                "responses": {"200": _json("DrainAnswer", "drained"), "400": BAD, **common},
            },
        },
        "/workers/{worker_id}/resume": {
            "parameters": [WORKER_ID],
            "post": {
                "operationId": "resumeWorker",
                "summary": "Put a drained or quarantined worker back in service",
                "responses": {"200": _json("ResumeAnswer", "resumed"), "400": BAD, **common},
            },
        },
        "/events": {
            "get": {
                "operationId": "liveFeed",
                "summary": "The dashboard's live feed: workers, queue, a job list, then changes",
                "parameters": [
                    _param("topics", "query", "comma-separated subset of workers,queue,jobs"),
                    *_job_list_params("the job list's state filter", MAX_FEED_JOBS),
                ],
                "responses": {
                    "200": {
                        **_text("text/event-stream", SSE_NOTE),
                        "x-events": {
                            "workers": _ref("WorkerList"),
                            "queue": _ref("QueueSummary"),
                            "jobs": _ref("LiveJobs"),
                            "job": _ref("LiveJob"),
                        },
                    },
                    "400": BAD,
                    "429": _error("too many live feeds or event streams on this hub (Retry-After)"),
                    **common,  # Redis down at connect: 503 (the snapshot needs it)
                },
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and Redis reachability (no key needed)",
                "security": [],
                "responses": {
                    "200": _json("Health", "ok"),
                    "503": _json("Health", "degraded: Redis does not answer"),
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition (no key needed)",
                "security": [],
                "responses": {"200": _text("text/plain", "metrics"), "503": UNAVAILABLE},
            },
        },
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The web dashboard (no key needed; it asks for one)",
                "security": [],
                "responses": {"200": _text("text/html", "the page")},
            },
        },
        "/dashboard/{name}": {
            "parameters": [_param("name", "path", "a file of the page (app.js, style.css)")],
            "get": {
                "operationId": "dashboardFile",
                "summary": "A static file of the dashboard",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("no such file"),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
        },
        "/ws/worker/{worker_id}": {
            "parameters": [WORKER_ID],
            "get": {
                "operationId": "workerSocket",
                "summary": "The worker WebSocket (wgpu_protocol.messages; WORKER_TOKEN bearer)",
                "security": [],
                "responses": {
                    "101": {"description": "switching to the WebSocket protocol"},
                    "401": _error("no valid worker token (when WORKER_TOKEN is set)"),
                },
            },
        },
    }


def build_spec() -> Schema:
    schemas = {name: _object(cls) for name, cls in COMPONENTS.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wgpu hub",
            "version": hub_version(),
            "description": "One pool of ComfyUI workers fed from one durable Redis job queue. "
            "Contracts: docs/architecture.md.",
        },
        "paths": _operations(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


_SPEC: Schema | None = None


async def openapi(request: web.Request) -> web.Response:
    global _SPEC
    if _SPEC is None:
        _SPEC = build_spec()
    return web.json_response(_SPEC)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi)
