"""Stopping background tasks reliably.

On Python 3.11 a cancel that lands while a library's own timeout fires can come back as a
TimeoutError (an OSError) instead of CancelledError; a loop that retries on OSError would then run
on. `cancel_requested()` lets such loops notice, `one_round` is the guard each round of such a
loop runs under, and `stop_tasks` cancels until tasks are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from redis_api.errors import StoreUnavailable

log = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """True when the current task has been asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def one_round(what: str, on_redis_error: Callable[[BaseException], None]) -> Iterator[None]:
    """One round of a background loop that must outlive its failures: Redis being down goes to
    `on_redis_error`, anything else is logged, and the loop goes on with its next round; a
    cancel that came back as another error stays a cancel."""
    try:
        yield
    except StoreUnavailable as exc:
        if cancel_requested():
            raise asyncio.CancelledError from exc
        on_redis_error(exc)
    except Exception:
        if cancel_requested():
            raise asyncio.CancelledError from None
        log.exception("%s failed; retrying", what)


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], timeout_s: float = 2.0) -> None:
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.warning("background task %s did not stop within %.1fs", task.get_name(), timeout_s)
