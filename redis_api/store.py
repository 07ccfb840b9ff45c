"""The job store: Lua scripts and the Python that calls them. Knows Redis, not HTTP.

Every state change is one script (see lua/*.lua; what each uses of lua/common.lua is prepended
to it, redis_api/lua_source.py), timed by Redis' TIME. Reads (job views, worker lists, counts)
are plain commands.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from wgpu_protocol.rest import HELD_STATES, JOB_STATES, TERMINAL_STATES

from .batching import ScriptBatcher
from .errors import QueueFull, RedisOutOfMemory, StoreUnavailable, WorkerConnected
from .lua_source import used_prelude
from .metrics import lua_buckets_ms
from .redis_conn import HiredisPackConnection

REAP_BATCH = 500


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated `POST /jobs` body, ready to store."""

    workflow_json: str
    priority: int
    timeout_s: float
    max_attempts: int
    constraints: dict[str, Any] | None = None
    idempotency_key: str = ""
    webhook_url: str = ""
    webhook_events: tuple[str, ...] = ()  # empty: every final event
    # Sent to the worker with the job: {"allow_partial": true, "inputs": {...}} (only if set).
    extras: dict[str, Any] | None = None
    # Placement (wgpu_protocol.models): the model files the job needs, the pool of jobs with
    # equal needs, the owner (API key name) for fair share, and the queue deadlines.
    requires: dict[str, list[str]] = field(default_factory=dict)
    pool: str = ""
    owner: str = ""
    schedule_timeout_s: float = 0.0
    queue_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Due:
    """A webhook delivery claimed by this hub (see redis_api/webhooks.py)."""

    delivery: str
    job_id: str
    event: str
    attempts: int  # made before this one
    url: str
    owner: str


@dataclass(frozen=True, slots=True)
class ClaimOptions:
    """How a claim chooses (see lua/common.lua claim_for): affinity_ms < 0 turns affinity off."""

    affinity_ms: int = 1000
    backlog: int = 8
    max_running_per_owner: int = 0

    def args(self) -> tuple[int, int, int]:
        return (self.affinity_ms, self.backlog, self.max_running_per_owner)


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Backpressure: enqueue refuses beyond these (0: no limit). See enqueue.lua."""

    max_jobs: int = 0
    max_bytes: int = 0
    max_jobs_per_owner: int = 0
    max_bytes_per_owner: int = 0


NO_LIMITS = QueueLimits()


@dataclass(frozen=True, slots=True)
class Enqueued:
    job_id: str
    created: bool  # False: an existing job with the same idempotency key
    created_ms: int


@dataclass(frozen=True, slots=True)
class Claim:
    job_id: str
    token: int
    attempt: int
    timeout_s: float
    workflow_json: str
    enqueued_ms: int
    claimed_ms: int
    # JSON object of job fields for the worker beyond the workflow (allow_partial, inputs).
    extras_json: str = ""


@dataclass(frozen=True, slots=True)
class Reaped:
    requeued: int
    dead: int
    timed_out: tuple[tuple[str, str, int], ...]  # (job_id, worker_id, token)
    expired: tuple[str, ...]
    ended_in_queue: int = 0  # queued jobs that became expired or unschedulable
    # Until the earliest deadline of the running and queued jobs, and of the finished ones
    # (0: now; -1: none; -2: not looked at).
    next_ms: int = -1
    done_next_ms: int = -2


@dataclass(frozen=True, slots=True)
class Cancelled:
    outcome: str  # was_queued | was_running | unknown_job | the terminal status it had
    worker_id: str
    token: int


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One event: its stream id, kind (status/progress/output/done) and data JSON."""

    id: str
    kind: str
    data: str


@dataclass(frozen=True, slots=True)
class CancelNotice:
    """A `cancel` published for whichever hub holds `worker_id`'s socket."""

    worker_id: str
    job_id: str
    token: int
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    """A worker the hub gives no new work: since when, and when its job is released (0: never)."""

    worker_id: str
    since_ms: int
    deadline_ms: int

    @classmethod
    def from_json(cls, worker_id: str, text: str) -> Drain:
        try:
            raw = json.loads(text)
            return cls(worker_id, int(raw["since_ms"]), int(raw["deadline_ms"]))
        except (ValueError, KeyError, TypeError):
            return cls(worker_id, 0, 0)  # unreadable: still drained, no deadline


class ClaimMiss:
    """No claim: `empty` says the whole queue is empty (no other idle worker can get one);
    `retry_ms` > 0: jobs wait for a worker with their models loaded, ask again after that long;
    `quarantined`: this worker takes nothing until resumed."""

    __slots__ = ("empty", "quarantined", "retry_ms")

    def __init__(self, empty: bool, retry_ms: int = 0, quarantined: bool = False) -> None:
        self.empty = empty
        self.retry_ms = retry_ms
        self.quarantined = quarantined


CLAIM_EMPTY = ClaimMiss(True)
CLAIM_NONE_FIT = ClaimMiss(False)
CLAIM_QUARANTINED = ClaimMiss(False, quarantined=True)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The hub's exception for a Redis failure (see errors.py)."""
    # redis-py raises OutOfMemoryError (a ResponseError its stubs do not list), or, from a
    # script or a pipeline, a plain ResponseError with Redis' own "OOM ..." message.
    if isinstance(exc, ResponseError) and "command not allowed when used memory" in str(exc):
        return RedisOutOfMemory("redis out of memory")
    return StoreUnavailable(f"{type(exc).__name__}: {exc}")


def _redis_call(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Redis failures (and socket errors redis-py lets through) leave as StoreUnavailable."""

    @functools.wraps(fn)
    async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    return call


_T = TypeVar("_T")


def _redis_calls(cls: type[_T]) -> type[_T]:
    for name, member in list(vars(cls).items()):
        if not name.startswith("__") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _redis_call(member))
    return cls


class StreamReader:
    """Blocking reads of many streams on one connection of its own (the event fan-out's), so
    that waiting for events never holds a connection of the shared pool."""

    def __init__(self, pool_client: aioredis.Redis[str], timeout_s: float) -> None:
        base = pool_client.connection_pool
        kwargs = dict(base.connection_kwargs)
        kwargs["socket_timeout"] = timeout_s
        self._shared = pool_client
        pool = aioredis.ConnectionPool(
            connection_class=base.connection_class, max_connections=1, **kwargs
        )
        self._client: aioredis.Redis[str] = aioredis.Redis(connection_pool=pool)  # type: ignore[assignment]  # decode_responses is in kwargs
        self._client_id: int | None = None

    async def read(self, positions: dict[str, str], block_ms: int) -> dict[str, list[StreamEntry]]:
        """Entries after each stream's position; waits up to block_ms for the first."""
        try:
            if self._client_id is None:
                self._client_id = int(await self._client.client_id())
            reply = await self._client.xread(positions, count=100, block=block_ms)
        except (RedisError, OSError) as exc:
            self._client_id = None  # a new connection has a new id
            raise unavailable(exc) from exc
        return {
            str(key): [StreamEntry(eid, f.get("k", ""), f.get("d", "null")) for eid, f in entries]
            for key, entries in reply or ()
        }

    async def interrupt(self) -> bool:
        """End a read in flight at once (as if it timed out). False: no read was blocked."""
        if self._client_id is None:
            return False
        try:
            return bool(await self._shared.client_unblock(self._client_id))
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def close(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]


def _warm_args(warm: Sequence[str] | None) -> tuple[str, str]:
    """A worker's warm report as two script arguments: reported (1|0), `folder/file` lines."""
    return ("", "") if warm is None else ("1", "\n".join(warm))


def _load_scripts() -> dict[str, str]:
    folder = resources.files("redis_api") / "lua"
    buckets = f"local DURATION_BUCKETS_MS = {{{lua_buckets_ms()}}}\n"
    common = buckets + (folder / "common.lua").read_text()
    names = (
        "enqueue",
        "claim",
        "hello",
        "disconnect",
        "heartbeat",
        "report",
        "complete",
        "fail",
        "release",
        "cancel",
        "reap",
        "drain",
        "resume",
        "drain_expire",
        "webhook_claim",
        "webhook_result",
        "webhook_release",
        "models",
        "why",
        "migrate",
        "unplaced",
        "upload",
    )

    # Under Redis OOM (maxmemory, noeviction) every script but enqueue runs (allow-oom): they
    # end or rewrite jobs, so the queue drains. Without the flag a script could stop half way,
    # at its first growing write. enqueue is flagged without it: refused whole, before it runs.
    def shebang(name: str) -> str:
        return "#!lua" if name in ("enqueue", "upload") else "#!lua flags=allow-oom"

    sources = {}
    for name in names:
        body = (folder / f"{name}.lua").read_text()
        sources[name] = shebang(name) + "\n" + used_prelude(common, body) + "\n" + body
    return sources


_SOURCES = _load_scripts()


@_redis_calls
class Store:
    def __init__(self, client: aioredis.Redis[str], prefix: str = "wgpu:") -> None:
        self.redis = client
        self.prefix = prefix
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(source) for name, source in _SOURCES.items()
        }
        self._batcher = ScriptBatcher(client)
        # Told the seconds until the nearest deadline a write of this hub set (the reaper sleeps
        # until the earliest one it knows of: Maintenance.deadline_in).
        self.on_deadline: Callable[[float], None] = lambda seconds: None
        self.timeout_s = float(
            client.connection_pool.connection_kwargs.get("socket_timeout") or 2.0
        )

    @classmethod
    def from_url(cls, url: str, prefix: str = "wgpu:", timeout_s: float = 2.0) -> Store:
        # A short timeout and no retry on it: a hung Redis costs a request timeout_s, not 20 s.
        client = aioredis.Redis.from_url(  # type: ignore[call-overload]  # stubs lack connection_class
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=5,
            max_connections=512,
            connection_class=HiredisPackConnection,  # unix:// and rediss:// URLs keep their own
        )
        return cls(client, prefix)

    async def close(self) -> None:
        await self.redis.aclose()  # type: ignore[attr-defined]

    def key(self, name: str) -> str:
        return self.prefix + name

    async def _run(self, name: str, *args: Any) -> Any:
        return await self._batcher.call(self._scripts[name], (self.prefix, *args))

    async def memory(self) -> tuple[int, int]:
        """Redis' used_memory and maxmemory (0: no limit), in bytes."""
        info = await self.redis.info("memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(
        self, job_id: str, spec: JobSpec, limits: QueueLimits = NO_LIMITS
    ) -> Enqueued:
        """Store a queued job. Raises QueueFull (naming the limit) when the queue is full."""
        c = spec.constraints or {}
        gpu = c.get("gpu")
        result = await self._run(
            "enqueue",
            job_id,
            spec.priority,
            _num(spec.timeout_s),
            spec.max_attempts,
            spec.workflow_json,
            json.dumps(c) if c else "",
            c.get("machine_id") or "",
            "" if gpu is None else str(gpu).lower(),
            "" if c.get("min_vram_mb") is None else str(c["min_vram_mb"]),
            spec.idempotency_key,
            spec.webhook_url,
            spec.pool,
            json.dumps(spec.requires, separators=(",", ":")) if spec.requires else "",
            spec.owner,
            int(spec.schedule_timeout_s * 1000),
            int(spec.queue_timeout_s * 1000),
            json.dumps(spec.extras, separators=(",", ":")) if spec.extras else "",
            limits.max_jobs,
            limits.max_bytes,
            limits.max_jobs_per_owner,
            limits.max_bytes_per_owner,
        )
        if not result[0]:
            limit = str(result[3])
            raise QueueFull(f"the queue is full ({limit.upper()}); retry later", retry_after_s=5)
        timeouts = [t for t in (spec.schedule_timeout_s, spec.queue_timeout_s) if t > 0]
        if timeouts:
            self.on_deadline(min(timeouts))
        return Enqueued(str(result[0]), bool(int(result[1])), int(result[2]))

    async def jobs_with_prefix(self, prefix: str, limit: int = 50) -> list[tuple[str, str]]:
        """(id, owner) of existing jobs whose id starts with `prefix` (hex), at most `limit`."""
        # `ids` holds every job id with score 0, so it sorts by id: a prefix is a lex range.
        found = await self.redis.zrangebylex(
            self.key("ids"), f"[{prefix}", f"({prefix}~", start=0, num=limit
        )
        if not found:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in found:
                pipe.hmget(self.key(f"job:{job_id}"), ["id", "owner"])
            rows: list[list[str | None]] = await pipe.execute()
        return sorted((str(row[0]), row[1] or "") for row in rows if row[0] is not None)

    async def enqueue_many(
        self, jobs: Sequence[tuple[str, JobSpec]], chunk: int = 2000
    ) -> list[Enqueued]:
        """Enqueue many jobs, pipelined (`chunk` scripts per round trip)."""
        done: list[Enqueued] = []
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            done += await asyncio.gather(*(self.enqueue(job_id, spec) for job_id, spec in part))
        return done

    async def get_job(self, job_id: str) -> dict[str, str] | None:
        fields: dict[str, str] = await self.redis.hgetall(self.key(f"job:{job_id}"))
        return fields or None

    async def get_job_with_workflow(self, job_id: str) -> dict[str, str] | None:
        """The job's fields with its `workflow` (kept in a key of its own, `wf:{id}`)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key(f"job:{job_id}"))
            pipe.get(self.key(f"wf:{job_id}"))
            fields, workflow = await pipe.execute()
        if not fields:
            return None
        if workflow is not None:
            fields["workflow"] = workflow
        return dict(fields)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.key(f"job:{job_id}"))
            rows: list[dict[str, str]] = await pipe.execute()
        return [row for row in rows if row]

    async def list_job_ids(self, status: str | None, limit: int) -> list[str]:
        """Queued in dispatch order, assigned by claim, running by lease, finished newest
        first."""
        ids: list[str] = []
        for state in (status,) if status else JOB_STATES:
            if len(ids) >= limit:
                break
            want = limit - len(ids)
            if state == "queued":
                ids += await self.redis.zrange(self.key("queue"), 0, want - 1)
            elif state == "assigned":
                ids += await self.redis.zrange(self.key("assigned"), 0, want - 1)
            elif state == "running":
                ids += await self._running_ids(want)
            else:
                ids += await self.redis.zrevrange(self.key(f"done:{state}"), 0, want - 1)
        return ids

    async def _running_ids(self, want: int) -> list[str]:
        # The lease set `running` holds assigned jobs too (both are held by a worker).
        ids: list[str] = []
        start, batch = 0, max(want, 100)
        while len(ids) < want:
            chunk = await self.redis.zrange(self.key("running"), start, start + batch - 1)
            if not chunk:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hget(self.key(f"job:{job_id}"), "status")
                statuses = await pipe.execute()
            ids += [j for j, s in zip(chunk, statuses, strict=True) if s == "running"]
            start += batch
        return ids[:want]

    async def counts(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.key("queue"))
            pipe.zcard(self.key("assigned"))
            pipe.zcard(self.key("running"))
            for state in TERMINAL_STATES:
                pipe.zcard(self.key(f"done:{state}"))
            values = [int(v) for v in await pipe.execute()]
        values[2] = max(0, values[2] - values[1])  # the lease set holds both held states
        return dict(zip(JOB_STATES, values, strict=True))

    async def queued_breakdown(self, limit: int) -> list[tuple[str, str, str]]:
        """(priority, owner, pool) of the first `limit` queued jobs, in dispatch order."""
        ids = await self.redis.zrange(self.key("queue"), 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.key(f"job:{job_id}"), ["priority", "owner", "pool"])
            rows: list[list[str | None]] = await pipe.execute()
        return [(row[0] or "0", row[1] or "", row[2] or "") for row in rows if row[0] is not None]

    async def attempt_histograms(self) -> dict[str, str]:
        """The attempt histograms' raw fields (lua/common.lua observe_attempt)."""
        fields: dict[str, str] = await self.redis.hgetall(self.key("attempt_hist"))
        return fields

    async def cancel(self, job_id: str, ttl_ms: int) -> Cancelled:
        outcome, worker, token = await self._run("cancel", job_id, ttl_ms)
        self.on_deadline(ttl_ms / 1000)
        return Cancelled(str(outcome), str(worker), int(token or 0))

    async def output_allowed(self, job_id: str, token: int, worker_id: str) -> str:
        """'' when `worker_id` holds `job_id` under `token`, else why not."""
        status, current, owner = await self.redis.hmget(
            self.key(f"job:{job_id}"), ["status", "token", "worker_id"]
        )
        if status is None:
            return "unknown_job"
        if status in TERMINAL_STATES:
            return "already_finished"
        if status not in HELD_STATES or current != str(token) or owner != worker_id:
            return "stale_token"
        return ""

    # -- workers ---------------------------------------------------------------------------

    async def hello(
        self,
        worker_id: str,
        session: str,
        hub_id: str,
        machine_id: str,
        gpu: dict[str, Any],
        version: str,
        running: tuple[str, int] | None,
        lease_ms: int,
        boot_id: str = "",
        relaying: tuple[str, int] | None = None,
    ) -> tuple[bool, bool]:
        """Whether the worker keeps (resumes) the running job it names, and the job it still
        relays (pipelining). WorkerConnected while another hub holds a live socket for this
        worker id."""
        job_id, token = running if running else ("", 0)
        relay_id, relay_token = relaying if relaying else ("", 0)
        resumed = await self._run(
            "hello",
            worker_id,
            session,
            hub_id,
            machine_id,
            gpu.get("index", ""),
            gpu.get("uuid", ""),
            gpu.get("name", ""),
            gpu.get("vram_total_mb", 0),
            version,
            job_id,
            token if running else "",
            lease_ms,
            boot_id,
            relay_id,
            relay_token if relaying else "",
        )
        self.on_deadline(0.0)  # a job the worker no longer runs is requeued by the reaper now
        if int(resumed[0]) < 0:
            raise WorkerConnected(
                f"worker {worker_id} has a live socket on another hub; that hub pings it and "
                "closes it if it is silent: retry"
            )
        return bool(int(resumed[0])), bool(int(resumed[1]))

    async def claim(
        self,
        worker_id: str,
        lease_ms: int,
        options: ClaimOptions = ClaimOptions(),
        relaying: tuple[str, int] | None = None,
    ) -> Claim | ClaimMiss:
        """Claim a job for the worker; `relaying` (pipelining) is the finished job whose outputs
        it still relays: it stays the worker's, any other job recorded as its own is lost."""
        relay_id, relay_token = relaying if relaying else ("", 0)
        return self._claimed(
            _claim_result(
                await self._run(
                    "claim",
                    worker_id,
                    lease_ms,
                    *options.args(),
                    fencing_token(),
                    relay_id,
                    relay_token if relaying else "",
                )
            ),
            lease_ms,
        )

    def _claimed(self, result: Claim | ClaimMiss, lease_ms: int) -> Claim | ClaimMiss:
        if isinstance(result, Claim):  # its lease and its timeout start now
            self.on_deadline(min(lease_ms / 1000, result.timeout_s))
        return result

    async def set_models(
        self,
        worker_id: str,
        session: str,
        digest: str,
        files: Sequence[str],
        warm: Sequence[str],
    ) -> bool:
        """Replace a worker's model inventory and warm set (`folder/file` strings)."""
        return bool(
            int(
                await self._run(
                    "models", worker_id, session, digest, "\n".join(files), "\n".join(warm)
                )
            )
        )

    async def worker_models(
        self, worker_ids: Sequence[str]
    ) -> dict[str, tuple[set[str], set[str]]]:
        """Per worker: (files on disk, files loaded)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in worker_ids:
                pipe.smembers(self.key(f"inv:{worker_id}"))
                pipe.smembers(self.key(f"warm:{worker_id}"))
            rows = await pipe.execute()
        return {
            worker_id: (set(rows[2 * i]), set(rows[2 * i + 1]))
            for i, worker_id in enumerate(worker_ids)
        }

    async def waiting_reasons(self, pools: Sequence[str], stale_ms: int) -> dict[str, str]:
        """Why jobs of each pool wait ('' when a connected worker can take them)."""
        unique = sorted(set(pools))
        if not unique:
            return {}
        reasons = await self._run("why", stale_ms, *unique)
        return {pool: str(reason or "") for pool, reason in zip(unique, reasons, strict=True)}

    async def heartbeat(
        self,
        worker_id: str,
        session: str,
        running: tuple[str, int] | None,
        lease_ms: int,
        gpu_stats_json: str,
        comfyui_ok: bool,
        models_digest: str = "",
        relaying: tuple[str, int] | None = None,
    ) -> tuple[str, bool, str]:
        """Renews the leases of the running job (named, else the one recorded) and of the
        relaying one. Returns (why the running job is not the worker's or '', whether the hub's
        record of its models differs from `models_digest`, why the relaying job is not the
        worker's or '')."""
        job_id, token = running if running else ("", 0)
        relay_id, relay_token = relaying if relaying else ("", 0)
        result = await self._run(
            "heartbeat",
            worker_id,
            session,
            job_id,
            token if running else "",
            lease_ms,
            gpu_stats_json,
            int(comfyui_ok),
            models_digest,
            relay_id,
            relay_token if relaying else "",
        )
        return str(result[0] or ""), bool(int(result[1])), str(result[2] or "")

    async def set_worker_state(self, worker_id: str, session: str, state: str) -> None:
        key = self.key(f"worker:{worker_id}")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, "state", state)
            pipe.zrem(self.key("idle"), worker_id)
            await pipe.execute()

    async def disconnect(self, worker_id: str, session: str, grace_ms: int) -> None:
        await self._run("disconnect", worker_id, session, grace_ms)
        self.on_deadline(grace_ms / 1000)

    async def refresh_idle(self, worker_ids: Sequence[str], lease_ms: int) -> None:
        """Keep idle entries of workers waiting on this hub alive (they expire if the hub dies)."""
        if not worker_ids:
            return
        now_s, now_us = await self.redis.time()
        until = now_s * 1000 + now_us // 1000 + lease_ms
        await self.redis.zadd(self.key("idle"), {w: until for w in worker_ids}, xx=True)

    async def workers(self) -> list[dict[str, str]]:
        ids = sorted(await self.redis.smembers(self.key("workers")))
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(self.key(f"worker:{worker_id}"))
            rows: list[dict[str, str]] = await pipe.execute()
        gone = [w for w, row in zip(ids, rows, strict=True) if not row]
        if gone:
            await self.redis.srem(self.key("workers"), *gone)
        return [row for row in rows if row]

    # -- drain (a worker taken out of service; see lua/drain.lua) ---------------------------

    async def drain(self, worker_id: str, timeout_ms: int) -> Drain:
        since, deadline = await self._run("drain", worker_id, timeout_ms)
        if timeout_ms > 0:
            self.on_deadline(timeout_ms / 1000)
        return Drain(worker_id, int(since), int(deadline))

    async def resume(self, worker_id: str) -> tuple[bool, bool]:
        """Back in service: ends a drain and a quarantine. Returns (was drained, was
        quarantined)."""
        was_drained, was_quarantined = await self._run("resume", worker_id)
        return bool(int(was_drained)), bool(int(was_quarantined))

    async def drains(self) -> dict[str, Drain]:
        raw: dict[str, str] = await self.redis.hgetall(self.key("drains"))
        return {worker: Drain.from_json(worker, text) for worker, text in raw.items()}

    async def expire_drains(self) -> list[tuple[str, str]]:
        """Release the jobs of drained workers past their deadline: [(job_id, worker_id)]."""
        flat = await self._run("drain_expire")
        return [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def now_ms(self) -> int:
        now_s, now_us = await self.redis.time()
        return int(now_s) * 1000 + int(now_us) // 1000

    # -- reports from a worker on its job --------------------------------------------------

    async def started(
        self, job_id: str, token: int, worker_id: str, prompt_id: str, lease_ms: int
    ) -> str:
        return str(
            await self._run("report", "started", job_id, token, worker_id, lease_ms, prompt_id)
            or ""
        )

    async def record_held(
        self, job_id: str, token: int, worker_id: str, held: str, lease_ms: int
    ) -> str:
        """Record what the hub held back of a job's reports (lua/common.lua record_held), on
        its own: fenced, renews the lease."""
        return str(
            await self._run("report", "held", job_id, token, worker_id, lease_ms, held) or ""
        )

    async def execution_started(
        self, job_id: str, token: int, worker_id: str, prompt_id: str, lease_ms: int
    ) -> str:
        """ComfyUI began executing the job: assigned -> running (fenced like every report)."""
        return str(
            await self._run(
                "report", "execution_started", job_id, token, worker_id, lease_ms, prompt_id
            )
            or ""
        )

    async def progress(
        self,
        job_id: str,
        token: int,
        worker_id: str,
        progress_json: str,
        lease_ms: int,
        prompt_id: str = "",
        webhook: bool = False,
    ) -> str:
        """Record the job's latest progress. `prompt_id`: a `started` the hub held back,
        recorded first (same fencing); `webhook`: also queue a `job.progress` delivery if the
        job opted in."""
        return str(
            await self._run(
                "report",
                "progress",
                job_id,
                token,
                worker_id,
                lease_ms,
                progress_json,
                prompt_id,
                "1" if webhook else "",
            )
            or ""
        )

    async def complete(
        self,
        job_id: str,
        token: int,
        worker_id: str,
        outputs: list[dict[str, Any]],
        ttl_ms: int,
        prompt_id: str = "",
        results: dict[str, Any] | None = None,
        warm: Sequence[str] | None = None,
    ) -> str:
        refused, _ = await self.complete_and_claim(
            job_id, token, worker_id, outputs, ttl_ms, prompt_id, None, results, warm
        )
        return refused

    async def complete_and_claim(
        self,
        job_id: str,
        token: int,
        worker_id: str,
        outputs: list[dict[str, Any]],
        ttl_ms: int,
        prompt_id: str,
        claim: tuple[int, ClaimOptions] | None,
        results: dict[str, Any] | None = None,
        warm: Sequence[str] | None = None,
    ) -> tuple[str, Claim | ClaimMiss | None]:
        """Record a success; with `claim` = (lease_ms, options) also claim the worker's next
        job in the same script (`completed.ready_next`). `warm`: the worker's warm set as it
        reported it (`folder/file`), None when unchanged. Returns (refusal or '', claim result,
        None when refused or not asked)."""
        extra: tuple[Any, ...] = ("", "", "", "")
        if claim is not None:
            extra = (claim[0], *claim[1].args())
        r = await self._run(
            "complete",
            job_id,
            token,
            worker_id,
            json.dumps(outputs),
            ttl_ms,
            prompt_id,
            *extra,
            json.dumps(results) if results else "",
            fencing_token(),
            *_warm_args(warm),
        )
        refused = str(r[0] or "")
        if not refused:
            self.on_deadline(ttl_ms / 1000)  # its result expires then
        if len(r) > 1 and claim is not None:
            return refused, self._claimed(_claim_result(r[1:]), claim[0])
        return refused, (_claim_result(r[1:]) if len(r) > 1 else None)

    async def fail(
        self,
        job_id: str,
        token: int,
        worker_id: str,
        error: dict[str, Any],
        retryable: bool,
        ttl_ms: int,
        prompt_id: str = "",
        counts_against_worker: bool = False,
        quarantine_after: int = 0,
        warm: Sequence[str] | None = None,
    ) -> tuple[str, str, bool]:
        """Returns (refusal or '', the job's new status, whether the worker is now quarantined).
        `warm` as in complete_and_claim."""
        refused, status, quarantined = await self._run(
            "fail",
            job_id,
            token,
            worker_id,
            json.dumps(error),
            int(retryable),
            ttl_ms,
            prompt_id,
            int(counts_against_worker),
            quarantine_after,
            *_warm_args(warm),
        )
        if not refused:
            self.on_deadline(ttl_ms / 1000)  # a result that ends it expires then
        return str(refused or ""), str(status or ""), bool(int(quarantined or 0))

    async def release(self, job_id: str, token: int, worker_id: str, reason: str) -> str:
        return str(await self._run("release", job_id, token, worker_id, reason) or "")

    # -- jobs of an older hub (migrate.py) ---------------------------------------------------

    async def jobs_without_pool(self) -> list[tuple[str, str, str]]:
        """Queued and running jobs an older hub stored (their hash has no `pool`): (id,
        workflow JSON, constraints JSON); the queued ones first, in their queue order."""
        found: list[tuple[str, str, str]] = []
        # Scanning the whole queue costs seconds at 100,000 jobs: only when some are in no lane.
        # The running set is small (one job per worker, two with pipelining).
        scan = ("queue", "running") if int(await self._run("unplaced")) > 0 else ("running",)
        for zset in scan:
            members = [
                (score, member)
                async for member, score in self.redis.zscan_iter(self.key(zset), count=1000)
            ]
            ids = [member for _score, member in sorted(set(members))]
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in chunk:
                        key = self.key(f"job:{job_id}")
                        pipe.hmget(key, "status", "pool", "constraints", "workflow")
                    rows = await pipe.execute()
                old = [
                    (job_id, row)
                    for job_id, row in zip(chunk, rows, strict=True)
                    if row[0] is not None and row[1] is None
                ]
                if not old:
                    continue
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id, _row in old:
                        pipe.get(self.key(f"wf:{job_id}"))
                    workflows = await pipe.execute()
                for (job_id, row), workflow in zip(old, workflows, strict=True):
                    found.append((job_id, workflow or row[3] or "", row[2] or ""))
        return found

    async def migrate_jobs(
        self, rows: Sequence[tuple[str, str, str]], schedule_ms: int
    ) -> tuple[int, int]:
        """Give old jobs (id, pool, requires JSON) today's fields and lanes (lua/migrate.lua).
        Returns (queued jobs moved, running jobs given their pool)."""
        args = [value for row in rows for value in row]
        moved, fixed = await self._run("migrate", schedule_ms, *args)
        return int(moved), int(fixed)

    # -- maintenance -----------------------------------------------------------------------

    async def reap(
        self,
        ttl_ms: int,
        stale_ms: int = 60_000,
        pool_idle_ms: int = 60_000,
        look_at_done: bool = True,
    ) -> Reaped:
        """One reaper round (lua/reap.lua); pool_idle_ms < 0 skips the pool sweep,
        look_at_done=False the finished jobs."""
        requeued, dead, timed, expired, ended, next_ms, done_next_ms = await self._run(
            "reap", ttl_ms, REAP_BATCH, stale_ms, pool_idle_ms, "1" if look_at_done else ""
        )
        triples = tuple(
            (str(timed[i]), str(timed[i + 1]), int(timed[i + 2] or 0))
            for i in range(0, len(timed), 3)
        )
        expired_ids = tuple(str(x) for x in expired)
        return Reaped(
            int(requeued),
            int(dead),
            triples,
            expired_ids,
            int(ended),
            int(next_ms),
            int(done_next_ms),
        )

    # -- webhook outbox (see redis_api/webhooks.py) ------------------------------------------

    async def claim_webhooks(self, limit: int, lease_ms: int, claim: str) -> list[Due]:
        """Due deliveries, each claimed by this hub for lease_ms."""
        return (await self.claim_webhooks_next(limit, lease_ms, claim))[0]

    async def claim_webhooks_next(
        self, limit: int, lease_ms: int, claim: str
    ) -> tuple[list[Due], int]:
        """Due deliveries, each claimed by this hub for lease_ms, and the ms until the next one
        is due (0: more are due now; -1: none is waiting)."""
        *r, next_ms = await self._run("webhook_claim", limit, lease_ms, claim)
        return [
            Due(str(r[i]), str(r[i + 1]), str(r[i + 2]), int(r[i + 3] or 0), str(r[i + 4]),
                str(r[i + 5]))
            for i in range(0, len(r), 6)
        ], int(next_ms)  # fmt: skip

    async def webhook_result(
        self, delivery: str, claim: str, outcome: str, status: str, delay_ms: int, error: str
    ) -> str:
        return str(
            await self._run("webhook_result", delivery, claim, outcome, status, delay_ms, error)
        )

    async def release_webhooks(self, claim: str, limit: int) -> int:
        """Hand back every delivery claimed under `claim` (a stopping hub)."""
        return int(await self._run("webhook_release", claim, limit))

    # -- inputs (content-addressed uploads, issue #11) -------------------------------------

    async def put_input(self, sha256: str, meta: dict[str, Any], ttl_ms: int) -> None:
        """Describe a stored input blob; a repeated upload refreshes its expiry."""
        key = self.key(f"input:{sha256}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: json.dumps(v) for k, v in meta.items()})
            pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    async def charge_input(
        self, owner: str, sha256: str, size: int, ttl_ms: int, limit: int
    ) -> tuple[bool, float, int]:
        """Count an owner's stored input against its byte limit (lua/upload.lua). Returns
        (charged, seconds until room may come (-1: unknown), bytes counted)."""
        ok, retry_ms, used = await self._run("upload", owner, sha256, size, ttl_ms, limit)
        return bool(int(ok)), int(retry_ms) / 1000 if int(retry_ms) > 0 else -1.0, int(used)

    async def owner_bytes(self, owner: str) -> tuple[int, float]:
        """(bytes counted against an owner's limit now: queued workflows and live inputs,
        seconds until its first input expires or -1) for an early refusal; upload.lua decides."""
        _, retry_s, used = await self.charge_input(owner, "", 0, 0, 0)
        return used, retry_s

    async def existing_inputs(self, hashes: Sequence[str]) -> set[str]:
        return await self._existing("input", hashes)

    async def held_job_inputs(self, job_id: str, worker_id: str) -> set[str] | None:
        """The sha256 of each input of a job that `worker_id` holds now (None when the job is
        unknown, ended, queued or another worker's)."""
        status, owner, extras = await self.redis.hmget(
            self.key(f"job:{job_id}"), ["status", "worker_id", "extras"]
        )
        if status not in HELD_STATES or owner != worker_id:
            return None
        inputs = json.loads(extras).get("inputs", {}) if extras else {}
        return {str(meta.get("ref", "")).removeprefix("sha256:") for meta in inputs.values()}

    async def get_input(self, sha256: str) -> dict[str, Any] | None:
        raw: dict[str, str] = await self.redis.hgetall(self.key(f"input:{sha256}"))
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    async def set_webhook_events(self, job_id: str, events: Sequence[str]) -> None:
        await self.redis.hset(self.key(f"job:{job_id}"), "wh_events", ",".join(events))

    async def existing_jobs(self, job_ids: Sequence[str]) -> set[str]:
        return await self._existing("job", job_ids)

    async def _existing(self, kind: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` still have their `{kind}:{id}` key (the sweeper's question)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for one in ids:
                pipe.exists(self.key(f"{kind}:{one}"))
            found = await pipe.execute()
        return {one for one, n in zip(ids, found, strict=True) if n}

    # -- events and notifications ----------------------------------------------------------

    def events_key(self, job_id: str) -> str:
        return self.key(f"events:{job_id}")

    @property
    def feed_key(self) -> str:
        """The dashboards' hub-wide stream of changes (lua/common.lua `feed`)."""
        return self.key("feed")

    async def feed_on(self, ttl_ms: int) -> None:
        """Have the scripts write the feed for ttl_ms more (some viewer is watching)."""
        await self.redis.set(self.key("feed_on"), "1", px=ttl_ms)

    async def feed_last_id(self) -> str:
        """The feed's newest entry id ('0-0' when empty): following it from there misses
        nothing written later."""
        newest = await self.redis.xrevrange(self.feed_key, count=1)
        return str(newest[0][0]) if newest else "0-0"

    def stream_reader(self, block_s: float) -> StreamReader:
        """A reader for the event fan-out, on a connection of its own."""
        return StreamReader(self.redis, block_s + self.timeout_s)

    async def read_stream(self, key: str, after: str, count: int = 1000) -> list[StreamEntry]:
        """Entries of stream `key` after id `after` (exclusive), oldest first, no waiting."""
        entries = await self.redis.xrange(key, min=f"({after}", count=count)
        return [StreamEntry(eid, f.get("k", ""), f.get("d", "null")) for eid, f in entries]

    async def job_exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.key(f"job:{job_id}")))

    async def read_events(
        self, job_id: str, after: str, block_ms: int | None
    ) -> list[tuple[str, str, str]]:
        """Events after stream id `after` as (id, kind, data JSON); waits up to block_ms."""
        key = self.key(f"events:{job_id}")
        if block_ms is None:
            entries = await self.redis.xrange(key, min=f"({after}" if after != "0" else "-")
            return [(eid, f.get("k", ""), f.get("d", "null")) for eid, f in entries]
        reply = await self.redis.xread({key: after}, count=100, block=block_ms)
        return [
            (eid, f.get("k", ""), f.get("d", "null"))
            for _stream, entries in reply
            for eid, f in entries
        ]

    def pubsub(self) -> PubSub:
        return self.redis.pubsub(ignore_subscribe_messages=True)

    @property
    def work_channel(self) -> str:
        return self.key("work")

    @property
    def cancel_channel(self) -> str:
        return self.key("cancel")

    def hub_channel(self, hub_id: str) -> str:
        """Requests to one hub about the worker sockets it holds (hello.lua publishes them)."""
        return self.key(f"hub:{hub_id}")

    @property
    def progress_channel(self) -> str:
        return self.key("progress")

    @property
    def webhook_channel(self) -> str:
        """Published when a webhook delivery is written or handed back (webhook_outbox)."""
        return self.key("wh:wake")

    async def publish_progress(self, hub_id: str, job_id: str, payload: str) -> None:
        """A live progress step for other hubs' SSE subscribers (not stored anywhere)."""
        await self.redis.publish(self.progress_channel, f"{hub_id}\n{job_id}\n{payload}")

    @staticmethod
    def parse_progress(data: str) -> tuple[str, str, str] | None:
        parts = data.split("\n", 2)
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    @staticmethod
    def parse_cancel(data: str) -> CancelNotice | None:
        parts = data.split("\n")
        if len(parts) != 4:
            return None
        try:
            return CancelNotice(parts[0], parts[1], int(parts[2] or 0), parts[3])
        except ValueError:
            return None


def fencing_token() -> int:
    """A random fencing token: unguessable, above any sequential one an older hub handed out,
    and below 2**53 so that every JSON reader keeps it exact."""
    return _TOKEN_FLOOR + secrets.randbelow(2**53 - _TOKEN_FLOOR)


_TOKEN_FLOOR = 2**32


def _claim_result(r: Sequence[Any]) -> Claim | ClaimMiss:
    code = int(r[0])
    if code == 1:
        extras = str(r[8] or "") if len(r) > 8 else ""
        return Claim(
            str(r[1]), int(r[2]), int(r[3]), float(r[4]), str(r[5]), int(r[6]), int(r[7]), extras
        )
    if code == 3:
        return ClaimMiss(False, retry_ms=int(r[1]))
    if code == 4:
        return CLAIM_QUARANTINED
    return CLAIM_EMPTY if code == 0 else CLAIM_NONE_FIT


def _num(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))
