"""Small helpers both backends use: `--since` parsing, parallel fan-out, port probing."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

from orchestrator.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since` as unix seconds: `10m`, `2h`, `30s`, `1d`, unix seconds, or an ISO time."""
    text = text.strip()
    now = time.time() if now is None else now
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is not a time: use e.g. 10m, 2h or 2024-01-02T03:04:05Z"
        ) from None


def fan_out(func: Callable[[T], R], items: Sequence[T], max_workers: int = 16) -> list[R]:
    """`func` over `items` in parallel threads, results in the order of `items`."""
    if len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(func, items))


def port_answers(port: int, host: str = "127.0.0.1", timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            return not connected_to_itself(sock)
    except OSError:
        return False


def connected_to_itself(sock: socket.socket) -> bool:
    """A probe of a port in the ephemeral range can get that port as its own source and
    connect to itself (TCP simultaneous open): connected, yet nothing listens there, and what
    should listen cannot bind while the probe holds the port."""
    return bool(sock.getsockname() == sock.getpeername())


def humanize_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
