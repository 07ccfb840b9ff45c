"""Stopping background tasks reliably.

On Python 3.11 a cancel that lands while a library's own timeout fires can come back as a
TimeoutError (an OSError) instead of CancelledError; a loop that retries on OSError would then run
on. `cancel_requested()` lets such loops notice, and `stop_tasks` cancels until tasks are done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """True when the current task has been asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
