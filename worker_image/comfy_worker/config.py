"""The worker's configuration, read from the environment once at start.

Names follow the original comfy-worker (REDIS_API_HOST, REDIS_API_PORT, EXECUTION_SERVICE_PORT,
MACHINE_ID, GPU_ID, NUM_GPUS) so existing deployments keep working. A bad value raises
`ConfigError` whose text is one line naming the variable and what to set it to.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wgpu_protocol import models
from wgpu_protocol import worker_env as names
from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.output_chunks import DEFAULT_MAX_OUTPUT_BYTES
from wgpu_protocol.ports import comfyui_port as comfyui_port_of
from wgpu_protocol.ports import worker_id
from wgpu_protocol.worker_env import (
    DEFAULT_COMFYUI_PORT_BASE,
    DEFAULT_HEALTH_FILE,
    DEFAULT_HUB_PORT,
)

from .errors import WorkerError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(WorkerError, ValueError):
    """An environment variable has a value the worker cannot use."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    machine_id: str
    gpu_id: int = 0
    num_gpus: int = 1
    hub_url: str = f"ws://127.0.0.1:{DEFAULT_HUB_PORT}"  # ws:// or wss:// base, no path
    comfyui_url: str = f"http://127.0.0.1:{DEFAULT_COMFYUI_PORT_BASE}"  # http:// base, no path
    comfyui_port: int = DEFAULT_COMFYUI_PORT_BASE
    worker_token: str | None = None
    # This worker's own credential, as `wgpu` hands it out (see wgpu_protocol.credentials);
    # derived from worker_token when only that is set.
    worker_credential: str | None = None
    log_level: str = names.DEFAULT_LOG_LEVEL
    comfyui_cmd: str | None = None
    health_file: Path = Path(DEFAULT_HEALTH_FILE)
    # Timings. Defaults suit production; tests shorten them through the same fields.
    grace_s: float = names.DEFAULT_GRACE_S  # SIGTERM: how long the running job may still take
    # ComfyUI socket silence during a job before /history is polled
    watchdog_s: float = names.DEFAULT_WATCHDOG_S
    comfyui_check_s: float = names.DEFAULT_COMFYUI_CHECK_S  # how often /system_stats is probed
    # unreachable this long during a job = ComfyUI crashed
    comfyui_lost_s: float = names.DEFAULT_COMFYUI_LOST_S
    reconnect_max_s: float = names.DEFAULT_RECONNECT_MAX_S  # cap of the hub reconnect backoff
    # no ack of a result this long: reconnect and resend
    ack_timeout_s: float = names.DEFAULT_ACK_TIMEOUT_S
    progress_interval_s: float = names.DEFAULT_PROGRESS_INTERVAL_S
    heartbeat_s: float = 5.0  # used until the hub's welcome says otherwise
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES  # MAX_OUTPUT_BYTES: larger outputs fail
    # COMFYUI_INPUT_DIR: ComfyUI's input directory, when this worker can reach it: a job's
    # uploaded inputs are deleted there after the job (ComfyUI has no route for that).
    comfyui_input_dir: Path | None = None
    model_scan_s: float = names.DEFAULT_MODEL_SCAN_S  # MODEL_SCAN_S: re-read ComfyUI's models
    model_loaders: str = ""  # MODEL_LOADERS: custom-node loaders, `Class.input=folder;...`
    # Take the next job while the previous job's outputs are relayed (off: the "before" of
    # bench/outputs_bench.py, and a worker for a hub without pipelining).
    pipeline: bool = True
    warm_models: int = names.DEFAULT_WARM_MODELS  # WARM_MODELS: kept loaded per loader kind
    # The loader table: the built-in loaders and those of model_loaders, parsed once here.
    loaders: models.LoaderTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            extra = models.parse_loader_table(self.model_loaders)
        except models.ModelSpecError as exc:
            raise ConfigError(f"{names.MODEL_LOADERS}={self.model_loaders!r}: {exc}") from None
        object.__setattr__(self, "loaders", models.loader_table(extra))

    @property
    def worker_id(self) -> str:
        """Stable across restarts, so the hub recognises the worker and its running job."""
        return worker_id(self.machine_id, self.gpu_id)

    @property
    def credential(self) -> str | None:
        """What this worker shows the hub: its own credential, never the fleet token itself."""
        if self.worker_credential:
            return self.worker_credential
        if self.worker_token:
            return worker_credential(self.worker_token, self.worker_id)
        return None

    @property
    def hub_ws_url(self) -> str:
        return f"{self.hub_url}/ws/worker/{self.worker_id}"

    @property
    def hub_http_url(self) -> str:
        """The hub's HTTP base (its REST routes for workers, e.g. /worker/inputs)."""
        base = self.hub_url
        return "http" + base[2:] if base.startswith("ws") else base

    def replace(self, **changes: Any) -> WorkerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerConfig:
        """Build from `env` (default os.environ); keyword overrides win over the environment."""
        env = os.environ if env is None else env
        reader = _EnvReader(env)
        gpu_id = reader.integer(names.GPU_ID, names.DEFAULT_GPU_ID, minimum=0)
        num_gpus = reader.integer(names.NUM_GPUS, names.DEFAULT_NUM_GPUS, minimum=1)
        comfyui_port = reader.integer(
            names.COMFYUI_PORT, comfyui_port_of(gpu_id), minimum=1, maximum=65535
        )
        comfyui_host = reader.text(names.COMFYUI_HOST, names.DEFAULT_COMFYUI_HOST)
        log_level = reader.text(names.LOG_LEVEL, names.DEFAULT_LOG_LEVEL).upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                f"{names.LOG_LEVEL}={log_level!r} is not valid: use one of {LOG_LEVELS}"
            )
        values: dict[str, Any] = {
            "machine_id": reader.text(names.MACHINE_ID, socket.gethostname()),
            "gpu_id": gpu_id,
            "num_gpus": num_gpus,
            "hub_url": _hub_url(reader),
            "comfyui_url": f"http://{_host_for_url(comfyui_host)}:{comfyui_port}",
            "comfyui_port": comfyui_port,
            "worker_token": reader.optional(names.WORKER_TOKEN),
            "worker_credential": reader.optional(names.WORKER_CREDENTIAL),
            "log_level": log_level,
            "comfyui_cmd": reader.optional(names.COMFYUI_CMD),
            "health_file": Path(reader.text(names.HEALTH_FILE, DEFAULT_HEALTH_FILE)),
            "grace_s": reader.seconds(names.GRACE_S, names.DEFAULT_GRACE_S),
            "watchdog_s": reader.seconds(names.WATCHDOG_S, names.DEFAULT_WATCHDOG_S),
            "comfyui_check_s": reader.seconds(names.COMFYUI_CHECK_S, names.DEFAULT_COMFYUI_CHECK_S),
            "comfyui_lost_s": reader.seconds(names.COMFYUI_LOST_S, names.DEFAULT_COMFYUI_LOST_S),
            "reconnect_max_s": reader.seconds(names.RECONNECT_MAX_S, names.DEFAULT_RECONNECT_MAX_S),
            "ack_timeout_s": reader.seconds(names.ACK_TIMEOUT_S, names.DEFAULT_ACK_TIMEOUT_S),
            "comfyui_input_dir": (
                Path(d) if (d := reader.optional(names.COMFYUI_INPUT_DIR)) else None
            ),
            "max_output_bytes": reader.integer(
                names.MAX_OUTPUT_BYTES, DEFAULT_MAX_OUTPUT_BYTES, minimum=1
            ),
            "progress_interval_s": reader.seconds(
                names.PROGRESS_INTERVAL_S, names.DEFAULT_PROGRESS_INTERVAL_S
            ),
            "model_scan_s": reader.seconds(names.MODEL_SCAN_S, names.DEFAULT_MODEL_SCAN_S),
            "model_loaders": reader.text(names.MODEL_LOADERS, ""),  # parsed in __post_init__
            "warm_models": reader.integer(
                names.WARM_MODELS, names.DEFAULT_WARM_MODELS, minimum=1, maximum=64
            ),
            "pipeline": reader.flag(names.PIPELINE, True),
        }
        if gpu_id >= num_gpus and names.NUM_GPUS in env:
            raise ConfigError(
                f"{names.GPU_ID}={gpu_id} is not below {names.NUM_GPUS}={num_gpus}: "
                "GPU ids count from 0"
            )
        if not _is_valid_id(values["machine_id"]):
            raise ConfigError(
                f"{names.MACHINE_ID}={values['machine_id']!r} is not usable: use letters, digits, "
                "'.', '_' or '-' (at most 100 characters)"
            )
        values.update(overrides)
        return cls(**values)

    @property
    def logging_level(self) -> int:
        return int(getattr(logging, self.log_level))


def _is_valid_id(value: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 0 < len(value) <= 100 and set(value) <= allowed


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _hub_url(reader: _EnvReader) -> str:
    override = reader.optional(names.HUB_URL)
    if override is None:
        host = reader.text(names.HUB_HOST, names.DEFAULT_HUB_HOST)
        port = reader.integer(names.HUB_PORT_VAR, DEFAULT_HUB_PORT, minimum=1, maximum=65535)
        return f"ws://{_host_for_url(host)}:{port}"
    parts = urlsplit(override)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(
            f"{names.HUB_URL}={override!r} is not a URL: use e.g. "
            f"http://hub-host:{DEFAULT_HUB_PORT} or ws://hub-host:{DEFAULT_HUB_PORT}"
        )
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(
        self, name: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a whole number: set it to e.g. {default}"
            ) from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name}={value} is out of range: use a number {bounds}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not valid: use 1 or 0")

    def seconds(self, name: str, default: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a number of seconds: e.g. {default}"
            ) from None
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
        return value
