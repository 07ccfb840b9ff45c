"""The dashboard's live feed: `GET /events`, one server-sent stream of what a viewer may see.

While at least one viewer is connected, one task per hub reads a snapshot every
`live_interval_s` (workers with their current job's progress, job counts per state and the queued
jobs per priority and tenant, the recent jobs of each job-list filter in use) and hands each viewer
the parts that changed since it was last told, filtered by what its API key may see. The cost is
one set of reads per hub per interval, whatever the number of viewers, and nothing at all while
nobody watches.

Events: `workers` {"workers": [...]}, `queue` {"counts", "queued_by_priority",
"queued_by_tenant", "queued_scanned"}, `jobs` {"status", "jobs": [...]}. A viewer that cannot keep
up is dropped (its stream ends; the page reconnects and gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from wgpu_protocol.rest import JobJson, QueueSummaryJson, WorkerJson

from .config import HubConfig
from .errors import TooManyStreams
from .snapshots import queue_summary, recent_jobs, worker_views
from .store import Store
from .tasks import one_round, stop_tasks

log = logging.getLogger(__name__)

TOPICS = ("workers", "queue", "jobs")
QUEUE_LIMIT = 32  # events a viewer may fall behind before it is dropped


def _everything(owner: str | None) -> bool:
    return True


@dataclass(eq=False)
class Viewer:
    topics: frozenset[str]
    status: str | None
    limit: int
    may_see: Callable[[str | None], bool] = _everything
    queue: asyncio.Queue[tuple[str, str] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    sent: dict[str, str] = field(default_factory=dict)
    dropped: bool = False

    def offer(self, topic: str, data: dict[str, Any]) -> None:
        if topic not in self.topics or self.dropped:
            return
        text = json.dumps(data, separators=(",", ":"))
        if self.sent.get(topic) == text:
            return
        self.sent[topic] = text
        try:
            self.queue.put_nowait((topic, text))
        except asyncio.QueueFull:
            self.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    async def next(self, timeout_s: float) -> tuple[str, str] | None:
        """The next (event, data), or None after timeout_s. Raises EOFError once dropped."""
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None
        if item is None:
            raise EOFError("the viewer fell behind")
        return item


class LiveFeed:
    def __init__(self, store: Store, config: HubConfig, max_viewers: int) -> None:
        self.store = store
        self.config = config
        self.max_viewers = max_viewers
        self.viewers: set[Viewer] = set()
        self.on_redis_error: Callable[[BaseException], None] = lambda exc: None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def watch(
        self,
        topics: frozenset[str],
        status: str | None,
        limit: int,
        may_see: Callable[[str | None], bool] = _everything,
    ) -> AsyncIterator[Viewer]:
        if len(self.viewers) >= self.max_viewers:
            raise TooManyStreams(
                f"this hub serves {self.max_viewers} live feeds already; retry later",
                retry_after_s=5,
            )
        viewer = Viewer(topics, status, limit, may_see)
        self.viewers.add(viewer)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="hub-live-feed")
        self._wake.set()  # a new viewer gets its first snapshot now, not after an interval
        try:
            yield viewer
        finally:
            self.viewers.discard(viewer)

    async def _run(self) -> None:
        while self.viewers:
            self._wake.clear()
            with one_round("live feed snapshot", self.on_redis_error):
                await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.live_interval_s)

    async def tick(self) -> None:
        viewers = list(self.viewers)
        topics = set().union(*(v.topics for v in viewers))
        workers = await worker_views(self.store, self.config) if "workers" in topics else []
        queue = await queue_summary(self.store) if "queue" in topics else None
        lists: dict[tuple[str | None, int], list[JobJson]] = {}
        for viewer in viewers:
            if "jobs" in viewer.topics and (viewer.status, viewer.limit) not in lists:
                wanted = (viewer.status, viewer.limit)
                lists[wanted] = await recent_jobs(
                    self.store, self.config, viewer.status, viewer.limit
                )
        for viewer in viewers:
            if "workers" in viewer.topics:
                shown = [_worker_for(w, owner, viewer) for w, owner in workers]
                viewer.offer("workers", {"workers": shown})
            if queue is not None and "queue" in viewer.topics:
                viewer.offer("queue", _queue_for(queue, viewer))
            if "jobs" in viewer.topics:
                jobs = lists[(viewer.status, viewer.limit)]
                visible = [job for job in jobs if viewer.may_see(_owner(job))]
                viewer.offer("jobs", {"status": viewer.status, "jobs": visible})

    async def close(self) -> None:
        for viewer in list(self.viewers):
            viewer.dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                viewer.queue.put_nowait(None)
        await stop_tasks([self._task] if self._task is not None else [])


def _owner(job: JobJson) -> str | None:
    owner = dict(job).get("owner")  # API key name, once tenancy records it
    return owner if isinstance(owner, str) and owner else None


def _worker_for(worker: WorkerJson, owner: str | None, viewer: Viewer) -> dict[str, Any]:
    view: dict[str, Any] = dict(worker)
    if view.get("current_job") and not viewer.may_see(owner):
        view["current_job"] = None  # another key's job: the viewer sees the GPU busy, no more
        view["progress"] = None
    return view


def _queue_for(queue: QueueSummaryJson, viewer: Viewer) -> dict[str, Any]:
    tenants = queue["queued_by_tenant"]
    return dict(
        queue,
        queued_by_tenant={t: n for t, n in tenants.items() if viewer.may_see(t or None)},
    )
