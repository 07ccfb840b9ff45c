"""The hub's settings: one dataclass, filled from arguments or the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class HubConfig:
    host: str = "0.0.0.0"
    port: int = 8001
    redis_url: str = "redis://127.0.0.1:6379/0"
    worker_token: str | None = field(default=None, repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    disconnect_grace_s: float = 1.0
    reap_interval_s: float = 0.25
    result_ttl_s: float = 86400.0
    outputs_dir: str = "./wgpu-outputs"
    max_body_bytes: int = 8 * MIB
    default_timeout_s: float = 600.0
    default_max_attempts: int = 3
    key_prefix: str = "wgpu:"
    # How many queued jobs a claim looks at for one that fits the worker's constraints.
    claim_scan_limit: int = 64

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
        if isinstance(values.get("api_keys"), str):
            values["api_keys"] = _keys(values["api_keys"])
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


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def _optional(raw: str) -> str | None:
    return raw or None


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
}
