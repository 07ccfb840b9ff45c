"""Listening on Redis pub/sub channels for as long as the hub runs, resubscribing after outages.

The dispatcher (work, cancel, progress and its own channel) and the webhook sender (`wh:wake`)
each keep one such connection; what a message means is theirs, the connection's upkeep is here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from .errors import StoreUnavailable
from .store import Store
from .tasks import cancel_requested

# Seconds before resubscribing after the n-th failure in a row (the last one repeats).
RESUBSCRIBE_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
IDLE_READ_S = 10.0  # how long one read waits for a message; nothing hangs on it


async def listen(
    store: Store,
    channels: Callable[[], Sequence[str]],
    on_message: Callable[[str, str], None],
    on_subscribed: Callable[[], None],
    on_redis_error: Callable[[BaseException], None],
    running: Callable[[], bool] = lambda: True,
) -> None:
    """Call `on_message(channel, data)` for each message on `channels()` (read at each
    subscription) until cancelled (or
    `running()` turns false at a resubscription). `on_subscribed` runs after each (re)subscribe:
    what was published while nobody listened is lost, so the caller looks again then."""
    failures = 0
    while running():
        pubsub = store.pubsub()
        try:
            await pubsub.subscribe(*channels())
            failures = 0
            on_subscribed()
            while True:
                message = await pubsub.get_message(timeout=IDLE_READ_S)
                if message is not None:
                    on_message(str(message["channel"]), str(message["data"]))
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, StoreUnavailable) as exc:  # pub/sub reads Redis itself
            if cancel_requested():
                raise asyncio.CancelledError from exc
            on_redis_error(exc)
            await asyncio.sleep(RESUBSCRIBE_S[min(failures, len(RESUBSCRIBE_S) - 1)])
            failures += 1
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[attr-defined]
