"""Every exception the hub raises on purpose, under one root.

    HubError                  the root: catch this to catch anything the hub means to raise
    ├── BadRequest            input that breaks a rule (ValueError); `field` names it;
    │   │                     400 on REST, an `error` reply on the worker socket
    │   └── WorkflowTooLarge  a workflow that could never fit a job frame: 413
    ├── Refused               a valid request the hub will not take now: 429 with Retry-After
    │   ├── QueueFull         MAX_QUEUED_JOBS / MAX_QUEUED_BYTES (whole queue or one key)
    │   ├── RateLimited       RATE_LIMIT_PER_KEY
    │   ├── TooManyStreams    MAX_EVENT_STREAMS (SSE) or too many sockets
    │   └── WorkerConnected   a worker id whose socket is live on another hub (at hello)
    ├── StoreUnavailable      Redis did not answer (down, hung, timed out): 503. Raised only
    │   │                     by store.py (and the event fan-out reading through it), so any
    │   │                     other OSError is not mistaken for a Redis outage
    │   └── RedisOutOfMemory  Redis refuses writes at `maxmemory` (noeviction): 503
    │                         {"error": "redis out of memory"}; /health says so
    ├── StorageError          an output could not be written or read (disk full, permissions,
    │                         object store down); a job attempt ends with type `storage_error`
    ├── TargetRefused         a webhook URL the hub may not call (scheme, internal address):
    │                         400 at submit, the delivery given up at connect time
    ├── SubscriberDropped     (event_fanout.py) an event-stream subscriber fell too far behind
    │                         or the fan-out stopped: its stream ends, others go on
    ├── ConfigError           settings that cannot be run safely (API_KEYS without WORKER_TOKEN)
    └── PreludeError          (lua_source.py) lua/common.lua has a top-level statement the
                              script assembler cannot attribute to a name (a source defect)

wgpu_protocol.ProtocolError (a bad worker frame) belongs to the protocol package, not here.
"""

from __future__ import annotations


class HubError(Exception):
    """Root of the hub's exceptions."""


class BadRequest(HubError, ValueError):
    """A request or message that breaks a rule; the message names the field."""

    status = 400

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class WorkflowTooLarge(BadRequest):
    """The workflow could never reach a worker: refused at submit rather than lost later."""

    status = 413


class Refused(HubError):
    """The hub will not take this now; try again after `retry_after_s`."""

    status = 429

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Refused):
    """The queue (or one key's share of it) holds as many jobs or bytes as it may."""


class RateLimited(Refused):
    """This key submits faster than RATE_LIMIT_PER_KEY."""


class TooManyStreams(Refused):
    """This hub holds as many event streams (or sockets) as it may."""


class WorkerConnected(Refused):
    """Another hub holds a live socket for this worker id; it was asked to check that one."""


class StoreUnavailable(HubError):
    """Redis could not be reached or did not answer in time."""


class RedisOutOfMemory(StoreUnavailable):
    """Redis is at maxmemory and refuses writes that grow it."""


class StorageError(HubError):
    """Output storage failed (disk full, permission denied, object store unreachable)."""

    error_type = "storage_error"


class ConfigError(HubError):
    """The settings cannot be run safely; the message says which to change."""


class TargetRefused(HubError, ValueError):
    """A webhook URL the hub may not call; the message says why and what to do."""
