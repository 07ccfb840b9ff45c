"""One Redis reader per hub for every event stream its clients follow.

Each open SSE stream used to hold a pooled Redis connection in a blocking XREAD, so a few hundred
streams exhausted the pool and took submissions and workers down with them. Here one task reads
all followed streams with one XREAD on a connection of its own, and hands each entry to every
subscriber of that stream through a bounded queue.

    async with hub.events.subscribe(store.events_key(job_id), after="0-0") as sub:
        while True:
            batch = await sub.next(timeout_s=15)   # [] after timeout_s without events
            for entry in batch: ...                # StreamEntry(id, kind, data)

`subscribe` raises TooManyStreams past `max_streams`. A subscriber that falls `QUEUE_LIMIT`
batches behind is dropped (`next` raises SubscriberDropped): its client resumes with
Last-Event-ID. Any stream key works (a job's events, or a hub-wide stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import HubError, StoreUnavailable, TooManyStreams
from .store import StreamEntry, StreamReader
from .tasks import cancel_requested, stop_tasks

log = logging.getLogger(__name__)

# One XREAD waits at most this long. A new subscription interrupts it (CLIENT UNBLOCK) so that
# the next read includes its stream; an interrupt that finds no read blocked (it raced the
# read) is sent again, so a new stream is never left waiting out the block.
BLOCK_MS = 1_000
# Interrupts are spaced by this much per followed stream, up to INTERRUPT_GAP_MAX_S: each one
# costs a read of every followed stream, so Redis' work for them stays bounded (about 50,000
# stream positions a second) whatever the number of streams. The first new subscription after
# a quiet spell interrupts at once, so a lone client waits for nothing; those arriving within
# the gap share the next interrupt (a burst of a thousand streams costs a few dozen reads).
INTERRUPT_GAP_PER_STREAM_S = 20e-6
INTERRUPT_GAP_MAX_S = 0.02
QUEUE_LIMIT = 256  # batches a subscriber may fall behind before it is dropped
RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class SubscriberDropped(HubError):
    """The subscriber fell too far behind (or the fan-out stopped): end its stream."""


@dataclass(eq=False)
class Subscription:
    key: str
    last_id: str  # entries up to this id were delivered (or skipped by the caller)
    queue: asyncio.Queue[list[StreamEntry] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    dropped: bool = False
    # Looked at by the fan-out's once-a-second tick (one task for all subscriptions, so that an
    # idle subscription costs no timer of its own): `alive` says whether its client is still
    # there (else the subscription ends); `watch` is for the subscriber's own tick handler.
    alive: Callable[[], bool] | None = None
    watch: Any = None

    def end(self) -> None:
        """End the subscription: its next() raises SubscriberDropped."""
        self.dropped = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def push(self, entries: list[StreamEntry]) -> None:
        """Entries that are not in the stream (ids ''), such as a changed waiting reason."""
        if not self.dropped:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(entries)

    async def next(self, timeout_s: float) -> list[StreamEntry]:
        """The next batch of entries after `last_id`, or [] after timeout_s without any."""
        if self.dropped and self.queue.empty():
            raise SubscriberDropped("the event stream fell behind")
        try:
            batch = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return []
        if batch is None:
            raise SubscriberDropped("the event stream fell behind")
        return batch

    def pending(self) -> list[StreamEntry]:
        """The entries of every batch already waiting, without waiting (an end marker stays
        queued for next())."""
        entries: list[StreamEntry] = []
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            if batch is None:
                self.queue.put_nowait(None)
                break
            entries += batch
        return entries

    def offer(self, entries: list[StreamEntry]) -> None:
        fresh = [e for e in entries if _id_after(e.id, self.last_id)]
        if not fresh or self.dropped:
            return
        self.last_id = fresh[-1].id
        try:
            self.queue.put_nowait(fresh)
        except asyncio.QueueFull:
            self.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()  # make room for the end marker
            self.queue.put_nowait(None)


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _id_after(candidate: str, last: str) -> bool:
    return _id_tuple(candidate) > _id_tuple(last)


TICK_S = 1.0
OnTick = Callable[[list[Subscription]], Awaitable[None]]


class EventFanout:
    def __init__(self, reader: StreamReader, max_streams: int) -> None:
        self.reader = reader
        self.max_streams = max_streams
        # Called once a second with every subscription that has a `watch` (see Subscription).
        self.on_tick: OnTick | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._subs: dict[str, set[Subscription]] = {}
        # Where the next XREAD starts, per followed key: kept up to date as entries are handed
        # out, so that a read costs nothing per subscriber (a thousand streams, one event each:
        # no pass over every subscription per event).
        self._positions: dict[str, str] = {}
        self._count = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        # A subscription was added since the read in flight took its positions.
        self._stale = False
        self._interrupted_at = -INTERRUPT_GAP_MAX_S  # loop time of the last interrupt
        self._interrupter: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        return self._count

    def push(self, key: str, entries: list[StreamEntry]) -> None:
        """Entries that are not in the stream (ids ''), such as live progress, to every
        subscriber of `key` on this hub, in the order pushed."""
        for sub in self._subs.get(key, ()):
            sub.push(entries)

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str, after: str) -> AsyncIterator[Subscription]:
        """Follow stream `key` from after id `after` (exclusive). Raises TooManyStreams."""
        if self._count >= self.max_streams:
            raise TooManyStreams(
                f"this hub serves {self.max_streams} event streams already (MAX_EVENT_STREAMS);"
                " retry later or poll GET /jobs/{id}",
                retry_after_s=5,
            )
        sub = Subscription(key, after)
        self._count += 1
        self._subs.setdefault(key, set()).add(sub)
        known = self._positions.get(key)
        if known is None or _id_after(known, after):
            self._positions[key] = after
        self._start()
        self._interrupt_soon()
        try:
            yield sub
        finally:
            self._count -= 1
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]
                    self._positions.pop(key, None)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="hub-event-fanout")
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="hub-event-tick")
        self._changed.set()

    async def _tick(self) -> None:
        while self._subs:
            await asyncio.sleep(TICK_S)
            subs = [sub for subs in self._subs.values() for sub in subs]
            for sub in subs:
                if sub.alive is not None and not sub.alive():
                    sub.end()  # its client went away: the handler ends now, not at a write
            watched = [sub for sub in subs if sub.watch is not None and not sub.dropped]
            if watched and self.on_tick is not None:
                try:
                    await self.on_tick(watched)
                except StoreUnavailable as exc:
                    log.debug("event tick: %s", exc)

    def _interrupt_soon(self) -> None:
        """A new subscriber: end the XREAD in flight, so the next one reads from its position
        (one interrupter at a time; subscribers arriving meanwhile ride on it)."""
        self._stale = True
        if self._reading and (self._interrupter is None or self._interrupter.done()):
            self._interrupter = asyncio.create_task(self._interrupt(), name="hub-event-unblock")

    async def _interrupt(self) -> None:
        loop = asyncio.get_running_loop()
        while self._stale and self._reading:
            gap = min(INTERRUPT_GAP_MAX_S, INTERRUPT_GAP_PER_STREAM_S * len(self._positions))
            wait = self._interrupted_at + gap - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # subscriptions meanwhile share this interrupt
                continue
            self._interrupted_at = loop.time()
            try:
                if await self.reader.interrupt():
                    return  # the read ends now; the next one takes every position
            except StoreUnavailable:
                return  # the read fails too, and is retried with every position
            # No read was blocked yet (the XREAD was still on its way): look again shortly.

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._subs:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._reading = True
            self._stale = False  # this read takes every subscription's position
            try:
                entries = await self.reader.read(dict(self._positions), BLOCK_MS)
                failures = 0
            except StoreUnavailable as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                log.warning("event fan-out: %s; retrying", exc)
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                continue
            finally:
                self._reading = False
            for key, batch in entries.items():
                subs = self._subs.get(key)
                if not subs or not batch:
                    continue
                for sub in list(subs):
                    sub.offer(batch)
                if _id_after(batch[-1].id, self._positions.get(key, "0")):
                    self._positions[key] = batch[-1].id  # every subscriber has it now

    async def close(self) -> None:
        tasks = (self._task, self._ticker, self._interrupter)
        await stop_tasks([t for t in tasks if t is not None])
        await self.reader.close()
