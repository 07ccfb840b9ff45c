"""Limits on what one client can take from a hub: submissions per second per key, and
connections per IP address. Both are per hub process (kept in memory, not in Redis)."""

from __future__ import annotations

import time

from .errors import RateLimited, TooManyStreams


class SubmitRateLimiter:
    """A token bucket per API key name: `rate` submissions a second, bursts of up to one second
    of them. rate 0 turns it off."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def check(self, key: str) -> None:
        """Take one submission for `key`, or raise RateLimited."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(
                f"this key submits faster than RATE_LIMIT_PER_KEY={self.rate:g} jobs/s",
                retry_after_s=(1.0 - tokens) / self.rate,
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # keys come from configuration: a safety net only
            self._buckets.clear()


class ConnectionCounter:
    """Open connections per peer address; refuses past `per_ip`."""

    def __init__(self, per_ip: int) -> None:
        self.per_ip = per_ip
        self.open: dict[str, int] = {}

    def opened(self, peer: str) -> None:
        count = self.open.get(peer, 0)
        if self.per_ip > 0 and count >= self.per_ip:
            raise TooManyStreams(f"{peer} holds {count} connections to this hub already")
        self.open[peer] = count + 1

    def closed(self, peer: str) -> None:
        count = self.open.get(peer, 0) - 1
        if count > 0:
            self.open[peer] = count
        else:
            self.open.pop(peer, None)
