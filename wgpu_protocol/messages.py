"""Every message between worker and hub, defined once.

No I/O here: `decode` turns a text frame into a typed message or raises `ProtocolError`;
`encode` does the reverse. Output files travel as binary frames (see `encode_output_frame`)
so that images are never base64-encoded into JSON.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, TypeAlias, TypeVar

from .errors import ProtocolError as ProtocolError  # re-exported: decode raises it
from .models import ModelSpecError, check_inventory

PROTOCOL_VERSION = 1

# Limits a hub and a worker both enforce, so that neither can be made to buffer without bound.
MAX_TEXT_FRAME_BYTES = 1 * 1024 * 1024
MAX_BINARY_FRAME_BYTES = 64 * 1024 * 1024
MAX_ID_LENGTH = 200
MAX_JSON_DEPTH = 64  # arrays/objects nested deeper are refused (a parser's stack is finite)
MAX_NAME_BYTES = 255  # a file name, as most file systems allow


# ----------------------------------------------------------------------------- shared parts


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What a worker's GPU is: sent once, in `hello`."""

    index: int
    uuid: str = ""
    name: str = ""
    vram_total_mb: int = 0


@dataclass(frozen=True, slots=True)
class GpuStats:
    """What a worker's GPU is doing now: sent with every heartbeat. Unknown fields are None."""

    util_percent: float | None = None
    vram_used_mb: int | None = None
    vram_total_mb: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job a worker holds, named by its fencing token."""

    job_id: str
    token: int


@dataclass(frozen=True, slots=True)
class JobError:
    type: str
    message: str
    node_id: str | None = None
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One output file the worker has already sent as binary frames. `sha256` (hex) is checked
    by the hub against what it stored; `node_id`, `kind` ("output"|"temp") and `subfolder` say
    where ComfyUI put it."""

    name: str
    content_type: str
    size: int
    sha256: str = ""
    node_id: str | None = None
    kind: str = "output"
    subfolder: str = ""


# ----------------------------------------------------------------------------- worker -> hub


@dataclass(frozen=True, slots=True)
class Hello:
    type: ClassVar[str] = "hello"
    worker_id: str
    machine_id: str
    gpu: GpuInfo
    version: str
    running: RunningJob | None = None
    protocol: int = PROTOCOL_VERSION
    boot_id: str = ""  # new per worker process: a changed one tells the hub the worker restarted
    relaying: RunningJob | None = None  # pipelining: the finished job whose outputs it relays
    # This worker sends `execution_started` (a hub then keeps its jobs `assigned` until it does).
    execution_started: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    type: ClassVar[str] = "heartbeat"
    comfyui_ok: bool
    gpu: GpuStats = field(default_factory=GpuStats)
    running: RunningJob | None = None
    models_digest: str = ""  # digest of the last `models` sent; the hub asks again on mismatch
    relaying: RunningJob | None = None  # its lease is renewed too (pipelining)


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is idle and ComfyUI answers: give it a job. `relaying` (pipelining, only to a
    hub whose welcome has `pipelining`): the worker still relays that finished job's outputs
    and keeps it; its `completed` or `failed` follows after the next job is given."""

    type: ClassVar[str] = "ready"
    relaying: RunningJob | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The worker cannot take work (ComfyUI is down, or it is shutting down)."""

    type: ClassVar[str] = "unavailable"
    reason: str


@dataclass(frozen=True, slots=True)
class Started:
    type: ClassVar[str] = "started"
    job_id: str
    token: int
    prompt_id: str


@dataclass(frozen=True, slots=True)
class ExecutionStarted:
    """ComfyUI sent `execution_start` for the job's prompt: it left ComfyUI's queue and runs.
    The hub moves the job from `assigned` to `running` (only a hub whose welcome has
    `execution_started` is sent this)."""

    type: ClassVar[str] = "execution_started"
    job_id: str
    token: int
    prompt_id: str


@dataclass(frozen=True, slots=True)
class Progress:
    type: ClassVar[str] = "progress"
    job_id: str
    token: int
    node: str | None
    value: float
    max: float
    node_class: str | None = None  # the running node's class_type (KSampler, ...)


@dataclass(frozen=True, slots=True)
class Completed:
    """`ready_next` (only to a hub whose welcome has `ready_next`): the worker is idle and
    healthy, so the hub may claim its next job with the result and send it right after the ack
    (then no `ready` follows; after a refused ack the worker sends `ready` itself)."""

    type: ClassVar[str] = "completed"
    job_id: str
    token: int
    outputs: tuple[OutputRef, ...] = ()
    ready_next: bool = False
    # Non-file UI values per output node (PreviewAny's {"text": [...]}, numbers...).
    results: dict[str, Any] = field(default_factory=dict)
    # The worker's warm models (see Models.warm) when they changed since it last told this
    # hub connection; None: unchanged. The hub places by them.
    warm: dict[str, list[str]] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    type: ClassVar[str] = "failed"
    job_id: str
    token: int
    error: JobError
    warm: dict[str, list[str]] | None = None  # as in Completed


@dataclass(frozen=True, slots=True)
class Released:
    """The worker hands a job back unfinished (shutdown): requeue it without counting a failure."""

    type: ClassVar[str] = "released"
    job_id: str
    token: int
    reason: str


@dataclass(frozen=True, slots=True)
class Models:
    """The model files the worker's ComfyUI has (`{folder: [file, ...]}`, see
    wgpu_protocol.models) and those it has loaded (warm: per loader folder, the models of the
    jobs it ran most recently, as many as its ComfyUI keeps, WARM_MODELS). Sent after each
    welcome and whenever either changes outside a job (a ComfyUI restart empties warm; after a
    job the warm set goes with `completed`/`failed`); `digest` = models.digest(inventory)."""

    type: ClassVar[str] = "models"
    digest: str
    inventory: dict[str, list[str]] = field(default_factory=dict)
    warm: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Bye:
    type: ClassVar[str] = "bye"


# ----------------------------------------------------------------------------- hub -> worker


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answer to hello. `resumed` says whether the hub kept the lease of `hello.running`,
    `relaying_resumed` the same of `hello.relaying`."""

    type: ClassVar[str] = "welcome"
    worker_id: str
    heartbeat_s: float
    lease_s: float
    resumed: bool = False
    ready_next: bool = False  # this hub honours completed.ready_next
    pipelining: bool = False  # this hub honours ready.relaying
    relaying_resumed: bool = False
    execution_started: bool = False  # this hub records `execution_started` (assigned -> running)


@dataclass(frozen=True, slots=True)
class JobAssigned:
    type: ClassVar[str] = "job"
    job_id: str
    token: int
    workflow: dict[str, Any]
    attempt: int
    timeout_s: float
    # Run the valid outputs of a prompt ComfyUI accepts with node_errors (else: validation_error).
    allow_partial: bool = False
    # Files to place in ComfyUI's input dir first: {name in the workflow: {"url", "size", ...}}.
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cancel:
    type: ClassVar[str] = "cancel"
    job_id: str
    token: int
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Ack:
    """The hub recorded (ok) or refused (not ok, with reason) a worker's report on a job."""

    type: ClassVar[str] = "ack"
    job_id: str
    token: int
    of: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    type: ClassVar[str] = "error"
    code: str
    message: str


WorkerMessage: TypeAlias = (
    Hello
    | Heartbeat
    | Ready
    | Unavailable
    | Started
    | ExecutionStarted
    | Progress
    | Completed
    | Failed
    | Released
    | Models
    | Bye
)
HubMessage: TypeAlias = Welcome | JobAssigned | Cancel | Ack | ErrorReply
Message: TypeAlias = WorkerMessage | HubMessage

WORKER_MESSAGES: dict[str, type[Any]] = {
    cls.type: cls
    for cls in (
        Hello,
        Heartbeat,
        Ready,
        Unavailable,
        Started,
        ExecutionStarted,
        Progress,
        Completed,
        Failed,
        Released,
        Models,
        Bye,
    )
}
HUB_MESSAGES: dict[str, type[Any]] = {
    cls.type: cls for cls in (Welcome, JobAssigned, Cancel, Ack, ErrorReply)
}

# ----------------------------------------------------------------------------- encode / decode


def encode(message: Message) -> str:
    # As json.dumps(asdict(message)) writes it, without asdict's deep copy of every value:
    # json walks lists, tuples and dicts itself and asks _fields for each nested message part.
    body = _fields(message)
    body["type"] = message.type
    return json.dumps(body, separators=(",", ":"), default=_fields)


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass instance's fields in declaration order, one level deep (json.dumps' default)."""
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        if not is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"{type(value).__name__} is not a protocol message part")
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
    return {name: getattr(value, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def decode_worker_message(text: str | bytes) -> WorkerMessage:
    """Parse a frame a worker sent. Raises ProtocolError for anything that is not one."""
    return _decode(text, WORKER_MESSAGES)  # type: ignore[no-any-return]


def decode_hub_message(text: str | bytes) -> HubMessage:
    """Parse a frame the hub sent. Raises ProtocolError for anything that is not one."""
    return _decode(text, HUB_MESSAGES)  # type: ignore[no-any-return]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(text: str | bytes, where: str = "message", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for untrusted text: no NaN/Infinity, nesting at most `max_depth`, every string
    valid Unicode text (no lone surrogates). Raises ProtocolError naming what is wrong."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(f"{where} is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{where} is not JSON: {exc}") from None
    check_json_value(value, where, max_depth)
    return value


def check_json_value(value: Any, where: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Depth, finite numbers and valid text throughout a decoded JSON value (iterative). Errors
    name the place within `where`: `key.key[0]`."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth >= max_depth:
                raise ProtocolError(f"{where} is nested deeper than {max_depth} levels")
            for key, child in item.items():
                check_text(key, f"a key in {path or where}")
                stack.append((child, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            if depth >= max_depth:
                raise ProtocolError(f"{where} is nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            check_text(item, path or where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ProtocolError(f"{path or where}: numbers must be finite")


# NUL, the C0 controls and DEL: what a name may not contain (one regex search, not a Python
# loop per character: this runs on every id in every frame).
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str, where: str, name: bool = False) -> str:
    """Valid Unicode text (encodable as UTF-8); a `name` also has no NUL or control bytes."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ProtocolError(f"{where} is not valid UTF-8 text (a lone surrogate)") from None
    if name and _CONTROL_CHAR.search(value):
        raise ProtocolError(f"{where} contains a NUL or control character")
    return value


def _decode(text: str | bytes, registry: dict[str, type[Any]]) -> Any:
    if len(text) > MAX_TEXT_FRAME_BYTES:
        raise ProtocolError(
            f"message of {len(text)} bytes exceeds {MAX_TEXT_FRAME_BYTES}", "too_large"
        )
    raw = _loads_message(text)
    if not isinstance(raw, dict):
        raise ProtocolError("message must be a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in registry:
        raise ProtocolError(f"unknown message type {kind!r}", "unknown_type")
    return _build(registry[kind], raw, kind)


def _loads_message(text: str | bytes) -> Any:
    # Messages are checked field by field below; only the parse itself needs guarding here.
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(f"message is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None


_T = TypeVar("_T")


def _build(cls: type[_T], raw: dict[str, Any], where: str) -> _T:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(f"{where}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _check(cls, f.name, raw[f.name], where)
    return cls(**kwargs)


def _check(cls: type[Any], name: str, value: Any, where: str) -> Any:
    # Unknown keys are ignored (newer peers may add fields); known ones are checked.
    return _SCHEMA[(cls, name)](value, f"{where}.{name}")


# Field validators: small functions, so that the schema stays next to the types it guards.


def _str(limit: int = MAX_ID_LENGTH, name: bool = True) -> Any:
    """A string of at most `limit` characters; a `name` (ids, types) has no control bytes."""

    def check(v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise ProtocolError(f"{where} must be a string")
        if len(v) > limit:
            raise ProtocolError(f"{where} is longer than {limit} characters")
        return check_text(v, where, name)

    return check


def _opt(inner: Any) -> Any:
    def check(v: Any, where: str) -> Any:
        return None if v is None else inner(v, where)

    return check


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{where} must be an integer")
    if not -(2**63) <= v < 2**63:
        raise ProtocolError(f"{where} is out of range")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError(f"{where} must be a finite number")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"{where} must be true or false")
    return v


def _obj(cls: type[Any]) -> Any:
    def check(v: Any, where: str) -> Any:
        if not isinstance(v, dict):
            raise ProtocolError(f"{where} must be an object")
        return _build(cls, v, where)

    return check


def _workflow(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ProtocolError(f"{where} must be an object")
    check_json_value(v, where)
    return v


def _results(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict) or len(v) > 1000:
        raise ProtocolError(f"{where} must be an object of at most 1000 nodes")
    for node_id, value in v.items():
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}.{node_id} must be an object")
    return v


def _kind(v: Any, where: str) -> str:
    if v not in ("output", "temp", "input"):
        raise ProtocolError(f"{where} must be output, temp or input")
    return str(v)


def _sha256(v: Any, where: str) -> str:
    if not isinstance(v, str) or (v and (len(v) != 64 or not set(v) <= set("0123456789abcdef"))):
        raise ProtocolError(f"{where} must be a lowercase hex sha256")
    return v


def _models(v: Any, where: str) -> dict[str, list[str]]:
    try:
        return check_inventory(v, where)
    except ModelSpecError as exc:
        raise ProtocolError(str(exc)) from None


def _outputs(v: Any, where: str) -> tuple[OutputRef, ...]:
    if not isinstance(v, list) or len(v) > 1000:
        raise ProtocolError(f"{where} must be a list of at most 1000 outputs")
    return tuple(_obj(OutputRef)(item, f"{where}[{i}]") for i, item in enumerate(v))


_SCHEMA: dict[tuple[type[Any], str], Any] = {
    (GpuInfo, "index"): _int,
    (GpuInfo, "uuid"): _str(),
    (GpuInfo, "name"): _str(name=False),
    (GpuInfo, "vram_total_mb"): _int,
    (GpuStats, "util_percent"): _opt(_num),
    (GpuStats, "vram_used_mb"): _opt(_int),
    (GpuStats, "vram_total_mb"): _opt(_int),
    (GpuStats, "temperature_c"): _opt(_num),
    (GpuStats, "power_w"): _opt(_num),
    (RunningJob, "job_id"): _str(),
    (RunningJob, "token"): _int,
    (JobError, "type"): _str(),
    (JobError, "message"): _str(10_000, name=False),
    (JobError, "node_id"): _opt(_str()),
    (JobError, "retryable"): _bool,
    (OutputRef, "name"): _str(),
    (OutputRef, "content_type"): _str(name=False),  # the hub serves only allow-listed types
    (OutputRef, "size"): _int,
    (OutputRef, "sha256"): _sha256,
    (OutputRef, "node_id"): _opt(_str()),
    (OutputRef, "kind"): _kind,
    (OutputRef, "subfolder"): _str(1000),
    (Hello, "worker_id"): _str(),
    (Hello, "machine_id"): _str(),
    (Hello, "gpu"): _obj(GpuInfo),
    (Hello, "version"): _str(),
    (Hello, "running"): _opt(_obj(RunningJob)),
    (Hello, "protocol"): _int,
    (Hello, "boot_id"): _str(),
    (Hello, "relaying"): _opt(_obj(RunningJob)),
    (Heartbeat, "relaying"): _opt(_obj(RunningJob)),
    (Ready, "relaying"): _opt(_obj(RunningJob)),
    (Hello, "execution_started"): _bool,
    (Heartbeat, "comfyui_ok"): _bool,
    (Heartbeat, "gpu"): _obj(GpuStats),
    (Heartbeat, "running"): _opt(_obj(RunningJob)),
    (Unavailable, "reason"): _str(1000, name=False),
    (Heartbeat, "models_digest"): _str(),
    (Models, "digest"): _str(),
    (Models, "inventory"): _models,
    (Models, "warm"): _models,
    (Started, "job_id"): _str(),
    (Started, "token"): _int,
    (Started, "prompt_id"): _str(),
    (ExecutionStarted, "job_id"): _str(),
    (ExecutionStarted, "token"): _int,
    (ExecutionStarted, "prompt_id"): _str(),
    (Progress, "job_id"): _str(),
    (Progress, "token"): _int,
    (Progress, "node"): _opt(_str()),
    (Progress, "value"): _num,
    (Progress, "max"): _num,
    (Progress, "node_class"): _opt(_str()),
    (Completed, "job_id"): _str(),
    (Completed, "token"): _int,
    (Completed, "outputs"): _outputs,
    (Completed, "ready_next"): _bool,
    (Completed, "results"): _results,
    (Completed, "warm"): _opt(_models),
    (Failed, "job_id"): _str(),
    (Failed, "token"): _int,
    (Failed, "error"): _obj(JobError),
    (Failed, "warm"): _opt(_models),
    (Released, "job_id"): _str(),
    (Released, "token"): _int,
    (Released, "reason"): _str(1000, name=False),
    (Welcome, "worker_id"): _str(),
    (Welcome, "heartbeat_s"): _num,
    (Welcome, "lease_s"): _num,
    (Welcome, "resumed"): _bool,
    (Welcome, "ready_next"): _bool,
    (Welcome, "pipelining"): _bool,
    (Welcome, "relaying_resumed"): _bool,
    (Welcome, "execution_started"): _bool,
    (JobAssigned, "job_id"): _str(),
    (JobAssigned, "token"): _int,
    (JobAssigned, "workflow"): _workflow,
    (JobAssigned, "attempt"): _int,
    (JobAssigned, "timeout_s"): _num,
    (JobAssigned, "allow_partial"): _bool,
    (JobAssigned, "inputs"): _workflow,
    (Cancel, "job_id"): _str(),
    (Cancel, "token"): _int,
    (Cancel, "reason"): _str(1000, name=False),
    (Ack, "job_id"): _str(),
    (Ack, "token"): _int,
    (Ack, "of"): _str(),
    (Ack, "ok"): _bool,
    (Ack, "reason"): _str(1000, name=False),
    (ErrorReply, "code"): _str(),
    (ErrorReply, "message"): _str(10_000, name=False),
}

# ----------------------------------------------------------------------------- binary frames

# An output file: b"WGO1" + 4-byte big-endian header length + JSON header + file bytes.
# The header is {"job_id", "token", "name", "content_type"}; the size is the rest of the frame.
_OUTPUT_MAGIC = b"WGO1"


@dataclass(frozen=True, slots=True)
class OutputFrame:
    job_id: str
    token: int
    name: str
    content_type: str
    data: bytes

    @property
    def ref(self) -> OutputRef:
        return OutputRef(self.name, self.content_type, len(self.data))


def encode_output_frame(frame: OutputFrame) -> bytes:
    header = json.dumps(
        {
            "job_id": frame.job_id,
            "token": frame.token,
            "name": frame.name,
            "content_type": frame.content_type,
        },
        separators=(",", ":"),
    ).encode()
    return _OUTPUT_MAGIC + struct.pack(">I", len(header)) + header + frame.data


def decode_output_frame(blob: bytes) -> OutputFrame:
    if len(blob) > MAX_BINARY_FRAME_BYTES:
        raise ProtocolError(
            f"output frame of {len(blob)} bytes exceeds {MAX_BINARY_FRAME_BYTES}", "too_large"
        )
    if len(blob) < 8 or blob[:4] != _OUTPUT_MAGIC:
        raise ProtocolError("binary frame is not an output frame")
    (length,) = struct.unpack(">I", blob[4:8])
    if length > 64 * 1024 or 8 + length > len(blob):
        raise ProtocolError("output frame header length is invalid")
    try:
        header = json.loads(blob[8 : 8 + length])
    except ValueError:
        raise ProtocolError("output frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("output frame header must be an object")
    job_id = _str()(header.get("job_id"), "output.job_id")
    token = _int(header.get("token"), "output.token")
    name = _str()(header.get("name"), "output.name")
    content_type = _str(name=False)(header.get("content_type"), "output.content_type")
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ProtocolError("output.name must be a plain file name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ProtocolError(f"output.name is longer than {MAX_NAME_BYTES} bytes")
    return OutputFrame(job_id, token, name, content_type, blob[8 + length :])
