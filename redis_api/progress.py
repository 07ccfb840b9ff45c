"""Live progress without a Redis write per step (issue #16).

A sampler reports every step; writing each one to Redis (job hash, events stream, lease) made a
30-step job cost Redis five times a no-op one. Here:

- every step of the job a socket was handed goes straight to this hub's SSE subscribers of the
  job (`ProgressFeed.publish`: an id-less `progress` entry on the event fan-out, not stored), and
  to other hubs over the `progress` channel only while some other hub serves event streams
  (a hub serving them says so on that channel every PRESENCE_EVERY_S, `announce`: nothing is
  written, and a hub serving none costs Redis nothing);
- the job records its latest progress (`job.progress`, fenced, renews the lease) at most once per
  `PROGRESS_PERSIST_S` per job (`ProgressThrottle`): the first step at once, the latest of the
  steps held back when the interval ends, and 100 % always at once. A client that connects or
  reconnects mid-job reads that latest progress from the job.

Progress is live state, not history: it is not in the events stream, so a stream resumed with
`Last-Event-ID` or read after the job ended has no progress events (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from .event_fanout import EventFanout
from .store import Store, StreamEntry
from .tasks import one_round

PROGRESS_KIND = "progress"
# A hub serving event streams says so this often; another hub believes it this long.
PRESENCE_EVERY_S = 1.0
PRESENCE_TTL_S = 5.0


class ProgressFeed:
    """One per hub: hands progress steps to SSE subscribers, here and on other hubs."""

    def __init__(self, store: Store, events: EventFanout, hub_id: str) -> None:
        self.store = store
        self.events = events
        self.hub_id = hub_id
        self._others_until = 0.0  # monotonic time until which another hub serves streams
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def others_watch(self) -> bool:
        """Whether some other hub serves event streams: only then is a step worth a PUBLISH."""
        return time.monotonic() < self._others_until

    async def announce(self) -> None:
        """Forever: while this hub serves event streams, tell the other hubs (an empty step on
        the progress channel), so that they publish the steps of their workers' jobs."""
        while True:
            if self.events.open_streams > 0:
                with one_round("live progress presence", lambda exc: None):
                    await self.store.publish_progress(self.hub_id, "", "")
            await asyncio.sleep(PRESENCE_EVERY_S)  # a local check; Redis hears only a server

    def publish(self, job_id: str, payload: str) -> None:
        """A step of a job whose worker is connected here (already checked to be its own)."""
        self._push_local(job_id, payload)
        if self.others_watch:
            task = asyncio.create_task(self._publish_remote(job_id, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _push_local(self, job_id: str, payload: str) -> None:
        """To this hub's SSE subscribers of the job: an id-less entry, not stored."""
        self.events.push(self.store.events_key(job_id), [StreamEntry("", PROGRESS_KIND, payload)])

    async def _publish_remote(self, job_id: str, payload: str) -> None:
        with contextlib.suppress(Exception):  # live progress is best effort; the job has it
            await self.store.publish_progress(self.hub_id, job_id, payload)

    def on_message(self, data: str) -> None:
        """A step published by another hub (ours come back too: skipped)."""
        parsed = self.store.parse_progress(data)
        if parsed is None or parsed[0] == self.hub_id:
            return
        _, job_id, payload = parsed
        if not job_id:  # another hub's `announce`
            self._others_until = time.monotonic() + PRESENCE_TTL_S
            return
        self._push_local(job_id, payload)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Persist = Callable[[str, int, str], None]


class ProgressThrottle:
    """One per worker socket: which steps of its jobs to record in Redis. `step()` answers
    whether to record this one now; a step held back is recorded by `persist` when the job's
    interval ends, unless a later step or the job's end comes first."""

    def __init__(self, interval_s: float, persist: Persist) -> None:
        self.interval_s = interval_s
        self._persist = persist
        self._last: dict[tuple[str, int], float] = {}  # monotonic time of the last record
        self._held: dict[tuple[str, int], tuple[str, asyncio.TimerHandle]] = {}

    def step(self, job_id: str, token: int, payload: str, final: bool) -> bool:
        key = (job_id, token)
        now = time.monotonic()
        last = self._last.get(key)
        if final or last is None or now - last >= self.interval_s:
            self._drop_held(key)
            self._last[key] = now
            return True
        held = self._held.get(key)
        if held is not None:
            self._held[key] = (payload, held[1])  # the timer records the newest step
            return False
        handle = asyncio.get_running_loop().call_later(last + self.interval_s - now, self._due, key)
        self._held[key] = (payload, handle)
        return False

    def _due(self, key: tuple[str, int]) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            self._last[key] = time.monotonic()
            self._persist(key[0], key[1], held[0])

    def _drop_held(self, key: tuple[str, int]) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            held[1].cancel()

    def ended(self, job_id: str, token: int) -> None:
        """The job's attempt ended on this socket: nothing more to record for it."""
        key = (job_id, token)
        self._drop_held(key)
        self._last.pop(key, None)

    def close(self) -> None:
        for key in list(self._held):
            self._drop_held(key)
        self._last.clear()
