"""The dashboard's live feed: `GET /events`, one server-sent stream of what a viewer may see.

A viewer gets a snapshot when it connects (workers with their current job's progress, job counts
per state and the queued jobs per priority and tenant, the recent jobs of its job-list filter),
then changes as they happen: the scripts that change a job (or a worker's connection) append its
id to one hub-wide stream (`feed`, lua/common.lua `feed`), and each viewer follows that stream
through the hub's one event reader (event_fanout.py), like the per-job streams, counted in the
same MAX_EVENT_STREAMS. The scripts write the stream only while some hub has a viewer (`feed_on`,
kept alive here). Reads are shared: the viewers of a hub that receive the same entries read the
changed jobs once, and the workers and queue summary at most once per `MIN_GAP_S`; worker stats
from heartbeats (GPU util, VRAM, temperature) are not events, so they are also re-read every
`live_interval_s`.

Events: `workers` {"workers": [...]}, `queue` {"counts", "queued_by_priority",
"queued_by_tenant", "queued_scanned"}, `jobs` {"status", "jobs": [...]} (the snapshot of the
filtered list, at connect), `job` {"job": {...}} (one job changed: it may now enter or leave the
viewer's filter). Each is filtered by what the viewer's API key may see. A viewer that cannot
keep up is dropped (its stream ends; the page reconnects and gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wgpu_protocol.rest import JobJson, QueueSummaryJson, WorkerJson

from .config import HubConfig
from .errors import TooManyStreams
from .event_fanout import EventFanout, Subscription
from .jobs import job_view
from .snapshots import (
    JobOwners,
    queue_summary,
    recent_jobs,
    waiting_reasons,
    worker_for,
    worker_views,
)
from .store import Store, StreamEntry
from .tasks import one_round, stop_tasks

log = logging.getLogger(__name__)

TOPICS = ("workers", "queue", "jobs")
FEED_ON_TTL_S = 30.0  # `feed_on` outlives a hub that stops renewing it by this much at most
MIN_GAP_S = 0.2  # the workers and queue summary are re-read at most this often per hub
_MEMO = 16  # batches of changed jobs remembered for the other viewers of a hub


def _everything(owner: str | None) -> bool:
    return True


@dataclass(eq=False)
class Viewer:
    """What one `GET /events` asked for, and what it was last sent (so it is sent changes)."""

    topics: frozenset[str]
    status: str | None
    limit: int
    may_see: Callable[[str | None], bool] = _everything
    sent: dict[str, str] = field(default_factory=dict)

    def changed(self, topic: str, data: dict[str, Any]) -> list[tuple[str, str]]:
        """[(topic, JSON)] when the viewer follows `topic` and `data` differs from the last."""
        if topic not in self.topics:
            return []
        text = _json(data)
        if self.sent.get(topic) == text:
            return []
        self.sent[topic] = text
        return [(topic, text)]


@dataclass
class _Summary:
    covers: tuple[int, int]  # the feed entries read before it (their effects are in it)
    taken_at: float
    workers: list[tuple[WorkerJson, JobOwners]]
    queue: QueueSummaryJson


class LiveFeed:
    def __init__(
        self, store: Store, config: HubConfig, events: EventFanout, max_viewers: int
    ) -> None:
        self.store = store
        self.config = config
        self.events = events
        self.max_viewers = max_viewers
        self.viewers = 0
        self.on_redis_error: Callable[[BaseException], None] = lambda exc: None
        self._feed_on: asyncio.Task[None] | None = None
        self._seen: tuple[int, int] = (0, 0)  # the newest feed entry any viewer received
        self._summary: _Summary | None = None
        self._reading: asyncio.Task[_Summary] | None = None
        self._jobs: OrderedDict[tuple[str, ...], asyncio.Task[list[tuple[JobJson, str]]]] = (
            OrderedDict()
        )

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Subscription]:
        """A subscription to the feed from now on. Raises TooManyStreams."""
        if self.viewers >= self.max_viewers:
            raise TooManyStreams(
                f"this hub serves {self.max_viewers} live feeds already; retry later",
                retry_after_s=5,
            )
        self.viewers += 1
        try:
            # Turned on before the position is taken: nothing written after it is missed.
            await self.store.feed_on(int(FEED_ON_TTL_S * 1000))
            if self._feed_on is None or self._feed_on.done():
                self._feed_on = asyncio.create_task(self._keep_feed_on(), name="hub-feed-on")
            after = await self.store.feed_last_id()
            async with self.events.subscribe(self.store.feed_key, after) as sub:
                yield sub
        finally:
            self.viewers -= 1

    async def _keep_feed_on(self) -> None:
        while self.viewers:
            await asyncio.sleep(FEED_ON_TTL_S / 3)
            with one_round("live feed switch", self.on_redis_error):
                await self.store.feed_on(int(FEED_ON_TTL_S * 1000))

    async def snapshot(self, viewer: Viewer) -> list[tuple[str, str]]:
        """Everything `viewer` asked for, as it stands (sent at connect)."""
        out: list[tuple[str, str]] = []
        if viewer.topics & {"workers", "queue"}:
            out += self._summary_for(await self._read_summary(), viewer)
        if "jobs" in viewer.topics:
            jobs = await recent_jobs(self.store, self.config, viewer.status, viewer.limit)
            visible = [job for job in jobs if viewer.may_see(_owner(job))]
            out += viewer.changed("jobs", {"status": viewer.status, "jobs": visible})
        return out

    async def changes(
        self, entries: Sequence[StreamEntry], viewer: Viewer
    ) -> list[tuple[str, str]]:
        """What `entries` of the feed changed, for `viewer`; no entries: the slow timer (worker
        stats from heartbeats are not in the feed)."""
        out: list[tuple[str, str]] = []
        if entries:
            last = max(_id(e.id) for e in entries)
            self._seen = max(self._seen, last)
            ids = tuple(sorted({e.data for e in entries if e.kind in ("job", "progress")}))
            if ids and "jobs" in viewer.topics:
                batch = (entries[0].id, entries[-1].id, *ids)
                for job, owner in await self._changed_jobs(batch, ids):
                    if viewer.may_see(owner or None):
                        out.append(("job", _json({"job": job})))
            if viewer.topics & {"workers", "queue"}:
                out += self._summary_for(await self._summary_after(last), viewer)
        elif "workers" in viewer.topics:
            summary = self._summary
            if (
                summary is None
                or time.monotonic() - summary.taken_at >= self.config.live_interval_s
            ):
                summary = await self._read_summary()
            out += self._summary_for(summary, viewer)
        return out

    def _summary_for(self, summary: _Summary, viewer: Viewer) -> list[tuple[str, str]]:
        shown = [worker_for(w, owners, viewer.may_see) for w, owners in summary.workers]
        return [
            *viewer.changed("workers", {"workers": shown}),
            *viewer.changed("queue", _queue_for(summary.queue, viewer)),
        ]

    async def _summary_after(self, entry: tuple[int, int]) -> _Summary:
        """A summary read after feed entry `entry` was received (so it shows its effect)."""
        while True:
            summary = self._summary
            if summary is not None and summary.covers >= entry:
                return summary
            reading = self._reading
            if reading is not None and not reading.done():
                await asyncio.shield(reading)  # it may have started before `entry`: look again
                continue
            if summary is not None:
                wait = summary.taken_at + MIN_GAP_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # changes meanwhile ride on the next read
                    continue
            return await self._read_summary()

    async def _read_summary(self) -> _Summary:
        """One read of workers and queue at a time per hub; callers meanwhile share it."""
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.create_task(self._summary_now())
        return await asyncio.shield(reading)

    async def _summary_now(self) -> _Summary:
        covers, taken_at = self._seen, time.monotonic()
        workers = await worker_views(self.store, self.config)
        summary = _Summary(covers, taken_at, workers, await queue_summary(self.store))
        if self._summary is None or self._summary.covers <= covers:
            self._summary = summary
        return summary

    async def _changed_jobs(
        self, batch: tuple[str, ...], ids: tuple[str, ...]
    ) -> list[tuple[JobJson, str]]:
        """The jobs `ids` as they are now, with their owners; read once for all viewers that
        received the same entries (`batch`: their first and last stream ids, and `ids`)."""
        task = self._jobs.get(batch)
        if task is None or (task.done() and task.exception() is not None):
            task = self._jobs[batch] = asyncio.create_task(self._read_jobs(ids))
            while len(self._jobs) > _MEMO:
                self._jobs.popitem(last=False)
        return await asyncio.shield(task)

    async def _read_jobs(self, ids: tuple[str, ...]) -> list[tuple[JobJson, str]]:
        rows = await self.store.get_jobs(ids)
        reasons = await waiting_reasons(self.store, self.config, rows)
        return [
            (job_view(row, False, reasons.get(row.get("pool", ""))), row.get("owner", ""))
            for row in rows
            if row.get("id")
        ]

    async def close(self) -> None:
        reads: list[asyncio.Task[Any]] = [*self._jobs.values()]
        if self._reading is not None:
            reads.append(self._reading)
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await stop_tasks([self._feed_on] if self._feed_on is not None else [])


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms or 0), int(seq or 0)


def _owner(job: JobJson) -> str | None:
    owner = dict(job).get("owner")  # API key name, once tenancy records it
    return owner if isinstance(owner, str) and owner else None


def _queue_for(queue: QueueSummaryJson, viewer: Viewer) -> dict[str, Any]:
    tenants = queue["queued_by_tenant"]
    return dict(
        queue,
        queued_by_tenant={t: n for t, n in tenants.items() if viewer.may_see(t or None)},
    )
