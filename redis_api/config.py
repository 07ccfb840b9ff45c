"""The hub's settings: one dataclass, filled from arguments or the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from wgpu_protocol.output_chunks import DEFAULT_MAX_OUTPUT_BYTES
from wgpu_protocol.ports import HUB_PORT, REDIS_PORT

from .store import ClaimOptions

MIB = 1024 * 1024
# Seconds between webhook attempts: 8 attempts over ~11.7 h, each gap ~3x the last (plus jitter).
WEBHOOK_RETRY_SCHEDULE = (30.0, 90.0, 300.0, 900.0, 2700.0, 8100.0, 30000.0)


@dataclass(frozen=True)
class HubConfig:
    host: str = "0.0.0.0"
    port: int = HUB_PORT
    redis_url: str = f"redis://127.0.0.1:{REDIS_PORT}/0"
    worker_token: str | None = field(default=None, repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    disconnect_grace_s: float = 1.0
    # The longest the reaper sleeps (redis_api/maintenance.py): it wakes at the earliest deadline
    # it knows of and for those this hub writes, so this only bounds how late it notices one
    # that another hub wrote and then died.
    reap_interval_s: float = 2.0
    result_ttl_s: float = 86400.0
    outputs_dir: str = "./wgpu-outputs"
    max_body_bytes: int = 8 * MIB
    default_timeout_s: float = 600.0
    default_max_attempts: int = 3
    key_prefix: str = "wgpu:"
    # Webhooks (redis_api/webhooks.py): signing secrets, retry schedule, safety and limits.
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # per key name
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_connect_timeout_s: float = 5.0
    webhook_timeout_s: float = 15.0
    webhook_max_in_flight: int = 256
    webhook_per_destination: int = 4
    webhook_breaker_failures: int = 5
    webhook_breaker_cooldown_s: float = 30.0
    webhook_progress_interval_s: float = 5.0
    # A job records its latest progress at most this often (every step still reaches its SSE
    # clients live; redis_api/progress.py).
    progress_persist_s: float = 1.0
    # The longest the webhook sender sleeps: new deliveries are announced and retries are due at
    # known times, so this only bounds how late a dead hub's claim is taken over after its lease.
    webhook_poll_s: float = 5.0
    # The dashboard's live feed (`GET /events`): changes are pushed; worker stats (heartbeats)
    # are re-read this often; how many may watch (each also counts in max_event_streams).
    live_interval_s: float = 1.0
    max_live_feeds: int = 500
    # Where clients reach the hub (e.g. https://gpu.example.com): makes URLs in webhooks absolute.
    public_url: str = ""
    # Inputs and outputs (issue #11).
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    # Model-aware scheduling (docs/architecture.md "Scheduling"). affinity=False: plain
    # priority/fair order among the jobs a worker may take (still routed by inventory).
    affinity: bool = True
    # How long a job may wait for a GPU that has its models loaded before a cold one takes it.
    affinity_wait_ms: int = 1000
    # A cold GPU joins a pool whose queue is longer than this many jobs per warm GPU serving it.
    affinity_backlog: int = 8
    max_running_per_key: int = 0  # GPUs one owner (API key name) may hold at once; 0 = no cap
    schedule_timeout_s: float = 600.0  # a job no connected worker can take ends unschedulable
    quarantine_after: int = 5  # consecutive execution/ComfyUI failures; 0 = never quarantine
    # Custom-node loaders: `Class.input=folder;...` (wgpu_protocol.models.parse_loader_table).
    model_loaders: str = ""
    pool_idle_s: float = 60.0  # an empty pool is forgotten after this long
    # -- exposure limits (docs/operations: running the hub exposed) ---------------------
    # Keys with full access (see every key's jobs); same `name:secret` form as api_keys.
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_event_streams: int = 2000  # open SSE streams per hub; 429 beyond
    max_queued_jobs: int = 100_000  # whole queue; 429 + Retry-After beyond
    max_queued_bytes: int = 2048 * MIB  # workflow bytes queued, whole queue
    max_queued_jobs_per_key: int = 0  # 0: only the global limit
    max_queued_bytes_per_key: int = 0
    rate_limit_per_key: float = 0.0  # submissions per second per key; 0: off
    redis_timeout_s: float = 2.0  # request-path Redis timeout; no retry on timeout
    read_timeout_s: float = 10.0  # whole request head (and body) must arrive within this
    max_connections_per_ip: int = 512
    max_pending_sockets: int = 64  # worker sockets that have not said hello yet
    # A second socket for a worker id pings the live one: silent this long, it is closed.
    worker_ping_timeout_s: float = 5.0
    nofile_limit: int = 65536  # RLIMIT_NOFILE raised towards this at start
    max_input_bytes: int = 200 * 1000 * 1000  # per input file, and per job
    # Where outputs and inputs live: "" = outputs_dir on local disk; s3://bucket/prefix = an
    # S3-compatible store (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...).
    storage_url: str = ""
    # "presigned": GET /jobs/{id}/outputs/{name} redirects to a presigned URL (S3 only).
    output_redirect: str = ""
    fetch_allowed_hosts: tuple[str, ...] = ()  # URL inputs: hosts allowed despite private IPs
    fetch_timeout_s: float = 60.0  # URL inputs: the whole download

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> HubConfig:
        """Settings from `env` (default os.environ); keyword overrides win over the environment."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, (env_name, parse) in _ENV.items():
            raw = source.get(env_name)
            if raw is not None and raw != "":
                try:
                    values[name] = parse(raw)
                except ValueError:
                    raise ValueError(f"{env_name}={raw!r} is not a valid {name}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown hub settings: {', '.join(sorted(unknown))}")
        for name, parse in (
            ("api_keys", _keys),
            ("admin_api_keys", _keys),
            ("webhook_allowed_hosts", _keys),
            ("webhook_retry_schedule", _schedule),
            ("webhook_secrets", _named_secrets),
            ("fetch_allowed_hosts", _keys),
        ):
            if isinstance(values.get(name), str):
                values[name] = parse(values[name])
        return replace(cls(), **values)

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    @property
    def grace_ms(self) -> int:
        return max(0, int(self.disconnect_grace_s * 1000))

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.result_ttl_s * 1000))

    @property
    def claim_options(self) -> ClaimOptions:
        return ClaimOptions(
            self.affinity_wait_ms if self.affinity else -1,
            self.affinity_backlog,
            self.max_running_per_key,
        )

    @property
    def stale_ms(self) -> int:
        """A worker silent this long counts as gone (as `GET /workers` shows it)."""
        return int(max(3 * self.heartbeat_s, self.lease_s) * 1000) + 1000


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def _optional(raw: str) -> str | None:
    return raw or None


def _schedule(raw: str) -> tuple[float, ...]:
    gaps = tuple(float(part) for part in raw.split(",") if part.strip())
    if not gaps or any(not 0 <= gap < 7 * 86400 for gap in gaps):
        raise ValueError(raw)
    return gaps


def _named_secrets(raw: str) -> tuple[tuple[str, str], ...]:
    """`name=whsec_...,other=whsec_...`: the signing secret of each API key name."""
    pairs = []
    for part in raw.split(","):
        name, sep, secret = part.strip().partition("=")
        if not sep or not name or not secret:
            raise ValueError(raw)
        pairs.append((name.strip(), secret.strip()))
    return tuple(pairs)


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_ENV: dict[str, tuple[str, Any]] = {
    "host": ("REDIS_API_HOST_BIND", str),
    "port": ("REDIS_API_PORT", int),
    "redis_url": ("REDIS_URL", str),
    "worker_token": ("WORKER_TOKEN", _optional),
    "api_keys": ("API_KEYS", _keys),
    "lease_s": ("LEASE_S", float),
    "heartbeat_s": ("HEARTBEAT_S", float),
    "disconnect_grace_s": ("DISCONNECT_GRACE_S", float),
    "reap_interval_s": ("REAP_INTERVAL_S", float),
    "result_ttl_s": ("RESULT_TTL_S", float),
    "outputs_dir": ("OUTPUTS_DIR", str),
    "max_body_bytes": ("MAX_BODY_BYTES", int),
    "default_timeout_s": ("DEFAULT_TIMEOUT_S", float),
    "default_max_attempts": ("DEFAULT_MAX_ATTEMPTS", int),
    "key_prefix": ("KEY_PREFIX", str),
    "webhook_secret": ("WEBHOOK_SECRET", _optional),
    "webhook_secrets": ("WEBHOOK_SECRETS", _named_secrets),
    "webhook_retry_schedule": ("WEBHOOK_RETRY_SCHEDULE", _schedule),
    "webhook_allowed_hosts": ("WEBHOOK_ALLOWED_HOSTS", _keys),
    "webhook_connect_timeout_s": ("WEBHOOK_CONNECT_TIMEOUT_S", float),
    "webhook_timeout_s": ("WEBHOOK_TIMEOUT_S", float),
    "webhook_max_in_flight": ("WEBHOOK_MAX_IN_FLIGHT", int),
    "webhook_per_destination": ("WEBHOOK_PER_DESTINATION", int),
    "webhook_breaker_failures": ("WEBHOOK_BREAKER_FAILURES", int),
    "webhook_breaker_cooldown_s": ("WEBHOOK_BREAKER_COOLDOWN_S", float),
    "webhook_progress_interval_s": ("WEBHOOK_PROGRESS_INTERVAL_S", float),
    "progress_persist_s": ("PROGRESS_PERSIST_S", float),
    "public_url": ("PUBLIC_URL", str),
    "max_output_bytes": ("MAX_OUTPUT_BYTES", int),
    "affinity": ("AFFINITY", _flag),
    "affinity_wait_ms": ("AFFINITY_WAIT_MS", int),
    "affinity_backlog": ("AFFINITY_BACKLOG", int),
    "max_running_per_key": ("MAX_RUNNING_PER_KEY", int),
    "schedule_timeout_s": ("SCHEDULE_TIMEOUT_S", float),
    "quarantine_after": ("QUARANTINE_AFTER", int),
    "model_loaders": ("MODEL_LOADERS", str),
    "pool_idle_s": ("POOL_IDLE_S", float),
    "live_interval_s": ("LIVE_INTERVAL_S", float),
    "max_live_feeds": ("MAX_LIVE_FEEDS", int),
    "admin_api_keys": ("ADMIN_API_KEYS", _keys),
    "max_event_streams": ("MAX_EVENT_STREAMS", int),
    "max_queued_jobs": ("MAX_QUEUED_JOBS", int),
    "max_queued_bytes": ("MAX_QUEUED_BYTES", int),
    "max_queued_jobs_per_key": ("MAX_QUEUED_JOBS_PER_KEY", int),
    "max_queued_bytes_per_key": ("MAX_QUEUED_BYTES_PER_KEY", int),
    "rate_limit_per_key": ("RATE_LIMIT_PER_KEY", float),
    "redis_timeout_s": ("REDIS_TIMEOUT_S", float),
    "read_timeout_s": ("READ_TIMEOUT_S", float),
    "max_connections_per_ip": ("MAX_CONNECTIONS_PER_IP", int),
    "max_pending_sockets": ("MAX_PENDING_SOCKETS", int),
    "worker_ping_timeout_s": ("WORKER_PING_TIMEOUT_S", float),
    "nofile_limit": ("NOFILE_LIMIT", int),
    "max_input_bytes": ("MAX_INPUT_BYTES", int),
    "storage_url": ("STORAGE_URL", str),
    "output_redirect": ("OUTPUT_REDIRECT", str),
    "fetch_allowed_hosts": ("FETCH_ALLOWED_HOSTS", _keys),
    "fetch_timeout_s": ("FETCH_TIMEOUT_S", float),
}
