"""Waiting for a state in tests: poll until it holds, or fail naming the last value seen.

The one definition every test package uses: a test waits for the state that proves what it
checks, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], object] = bool,
    within: float = 5.0,
    every: float = 0.02,
    what: str = "condition",
) -> T:
    """Await `probe()` until `ok(value)`; return that value, or fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within}s; last value: {value!r}")
        await asyncio.sleep(every)


def eventually_blocking(
    probe: Callable[[], T],
    ok: Callable[[T], object] = bool,
    within: float = 10.0,
    every: float = 0.05,
    what: str = "condition",
) -> T:
    """`eventually` for tests without an event loop: call `probe()` until `ok(value)`."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within}s; last value: {value!r}")
        time.sleep(every)
