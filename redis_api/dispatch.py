"""Push dispatch: which of this hub's workers want work, claiming for them, and the pub/sub
channels through which every hub hears "work is available" and "cancel job X on worker W" (and
each hub, on a channel of its own, requests about the worker sockets it holds).

No job state lives here: a claim is decided by the claim script in Redis. What this module keeps
is which sockets are connected to this hub, which of them said `ready`, and which have a claim in
flight. It owns that claim state; a session only sends what it is handed (`deliver`: the job,
with the ack of the report that claimed it in the same write).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from .config import HubConfig
from .errors import StoreUnavailable
from .metrics import HubMetrics
from .store import CancelNotice, Claim, ClaimMiss, Store
from .subscriptions import listen
from .tasks import cancel_requested, stop_tasks

log = logging.getLogger(__name__)


class Session(Protocol):
    """What the dispatcher needs of a worker's socket (see worker_ws.WorkerSession)."""

    worker_id: str
    # Pipelining: the finished job whose outputs the worker still relays (kept by its claims).
    relaying: tuple[str, int] | None

    @property
    def is_open(self) -> bool: ...

    async def deliver(self, claim: Claim, ack: str = "") -> bool:
        """Send the job, after `ack` (a ready frame) in the same write; False if the socket is
        gone."""

    async def send_frame(self, text: str) -> bool: ...

    async def send_cancel(self, notice: CancelNotice) -> None: ...


# A report's script that also claims (completed.ready_next): why the report was refused ('' if
# recorded), and the claim (None when refused: the worker says `ready` itself).
ReportAndClaim = Callable[[], Awaitable[tuple[str, Claim | ClaimMiss | None]]]


class Dispatcher:
    def __init__(self, store: Store, config: HubConfig, metrics: HubMetrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.wanting: dict[str, Session] = {}  # said `ready` and got nothing yet; in order
        # One claim at a time per session; a wake-up during one marks it to claim once more,
        # so a job enqueued while the claim was in flight is never missed.
        self._claiming: set[Session] = set()
        self._reclaim: set[Session] = set()
        self.paused_until = 0.0  # no claims before this (monotonic): outputs cannot be stored
        self._storage_backoff_s = 0.0
        self._wake_pending = False
        self._wake_seq = 0  # wake-ups so far: an empty miss claimed after the last one covers it
        self._wake_task: asyncio.Task[None] | None = None
        self.on_redis_error: Callable[[BaseException], None] = lambda exc: None
        # Live progress from other hubs (the progress channel; see progress.py).
        self.on_progress: Callable[[str], None] = lambda data: None
        self._tasks: set[asyncio.Task[None]] = set()  # fire-and-forget sends, kept referenced
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_at = 0.0
        # This hub's own channel (requests about the sockets it holds) and what handles them.
        self.own_channel = ""
        self.on_own_message: Callable[[str], Coroutine[Any, Any, None]] | None = None

    # -- sessions --------------------------------------------------------------------------

    def register(self, session: Session) -> Session | None:
        """Add a welcomed session; returns the one it replaces (same worker id), if any."""
        old = self.sessions.get(session.worker_id)
        self.sessions[session.worker_id] = session
        self.wanting.pop(session.worker_id, None)
        return old if old is not session else None

    def unregister(self, session: Session) -> None:
        if self.sessions.get(session.worker_id) is session:
            del self.sessions[session.worker_id]
        if self.wanting.get(session.worker_id) is session:
            del self.wanting[session.worker_id]

    def not_wanting(self, session: Session) -> None:
        if self.wanting.get(session.worker_id) is session:
            del self.wanting[session.worker_id]

    async def want_work(self, session: Session) -> None:
        """The worker said `ready`: claim a job for it now, or keep it waiting for one."""
        self.wanting[session.worker_id] = session
        await self.try_dispatch(session)

    # -- a pause while this hub cannot store outputs ---------------------------------------

    def storage_failed(self) -> None:
        """An output could not be stored: claim nothing for this hub's workers for a while
        (0.5 s, doubling to 10 s while failures go on), so that a full disk does not burn every
        queued job's attempts in a second. Jobs wait in the queue meanwhile."""
        self._storage_backoff_s = min(10.0, max(0.5, self._storage_backoff_s * 2))
        self.paused_until = time.monotonic() + self._storage_backoff_s
        loop = asyncio.get_running_loop()
        loop.call_later(self._storage_backoff_s, self.wake)

    def storage_ok(self) -> None:
        self._storage_backoff_s = 0.0

    @property
    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    def may_claim_with_report(self, session: Session) -> bool:
        """Whether a report's script may claim for this worker (no claim of its own in flight)."""
        return session not in self._claiming and session.is_open and not self.paused

    async def report_and_claim(
        self, session: Session, report: ReportAndClaim, ack: Callable[[str], str]
    ) -> str:
        """The fast path of a completion with `ready_next`: run `report` (one script records
        the result and claims the next job), counted as this worker's claim, then send
        `ack(refused)` with the job claimed in one write, or alone. Wake-ups meanwhile make it
        claim again after the ack, as in try_dispatch. Returns why the report was refused."""
        self.wanting[session.worker_id] = session
        self._claiming.add(session)
        self._reclaim.discard(session)
        try:
            refused, result = await report()
        except BaseException:
            self.not_wanting(session)
            raise
        finally:
            self._claiming.discard(session)
        announced = session in self._reclaim
        self._reclaim.discard(session)
        if isinstance(result, Claim):
            self.not_wanting(session)
            await self._deliver(session, result, ack(refused))
            return refused
        await session.send_frame(ack(refused))
        if result is None:
            self.not_wanting(session)  # refused: the worker says `ready` itself
        elif announced:
            await self.try_dispatch(session)  # work was announced while the script ran
        else:
            self._retry_later(result)
        return refused

    async def try_dispatch(self, session: Session) -> ClaimMiss | None:
        if session in self._claiming:
            self._reclaim.add(session)
            return None
        if self.paused:
            return None  # storage_failed schedules a wake-up for when the pause ends
        self._claiming.add(session)
        try:
            while self.wanting.get(session.worker_id) is session and session.is_open:
                self._reclaim.discard(session)
                result = await self.store.claim(
                    session.worker_id,
                    self.config.lease_ms,
                    self.config.claim_options,
                    session.relaying,
                )
                if isinstance(result, Claim):
                    self.not_wanting(session)
                    await self._deliver(session, result)
                    return None
                if session not in self._reclaim:
                    self._retry_later(result)
                    return result
            return None
        finally:
            self._claiming.discard(session)
            self._reclaim.discard(session)

    async def _deliver(self, session: Session, claim: Claim, ack: str = "") -> None:
        self.metrics.dispatch_latency.observe(max(0, claim.claimed_ms - claim.enqueued_ms) / 1000)
        self.metrics.dispatched += 1
        if await session.deliver(claim, ack):
            return
        # The socket closed while the claim was in flight: give the job straight back.
        await self.store.release(
            claim.job_id, claim.token, session.worker_id, "worker disconnected"
        )

    def _retry_later(self, miss: ClaimMiss) -> None:
        """Jobs wait for a GPU with their models loaded: claim again when that wait ends."""
        if miss.retry_ms <= 0:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + miss.retry_ms / 1000
        if self._retry_handle is not None and self._retry_at <= due:
            return  # an earlier wake-up is already set
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._retry_at = due
        self._retry_handle = loop.call_at(due, self._retry_due)

    def _retry_due(self) -> None:
        self._retry_handle = None
        self.wake()

    # -- wake-ups --------------------------------------------------------------------------

    def work_enqueued(self) -> None:
        """This hub accepted a job: claim for its waiting workers now, without waiting for the
        job's work message to come back over pub/sub (one hop less at low load)."""
        if self.wanting:
            self.wake()

    def wake(self) -> None:
        """Claim for every waiting worker (coalesced: many wake-ups, one pass at a time)."""
        self._wake_seq += 1
        self._wake_pending = True
        if self._wake_task is None or self._wake_task.done():
            self._wake_task = asyncio.create_task(self._wake_loop(), name="hub-wake")

    async def _wake_loop(self) -> None:
        while self._wake_pending:
            self._wake_pending = False
            for session in list(self.wanting.values()):
                seq = self._wake_seq
                try:
                    result = await self.try_dispatch(session)
                except StoreUnavailable as exc:
                    self.on_redis_error(exc)
                    return
                except Exception:
                    if cancel_requested():
                        raise asyncio.CancelledError from None
                    log.exception("claim for worker %s failed", session.worker_id)
                    continue
                if isinstance(result, ClaimMiss) and result.empty:
                    # The queue is empty: nobody else here can get a job either. A claim sent
                    # after every wake-up so far ran after what caused them (Redis is serial, a
                    # work message is published by the script that queued the job): no need to
                    # claim again for those (at low load the local wake-up and the work message
                    # of the same job, one pass instead of two).
                    if self._wake_seq == seq:
                        self._wake_pending = False
                    break

    async def stop(self) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        await stop_tasks([t for t in (self._wake_task,) if t is not None] + list(self._tasks))

    # -- pub/sub ---------------------------------------------------------------------------

    async def run_pubsub(self) -> None:
        """Listen on the work, cancel and progress channels and this hub's own, forever."""
        await listen(
            self.store,
            lambda: [
                c
                for c in (
                    self.store.work_channel,
                    self.store.cancel_channel,
                    self.store.progress_channel,
                    self.own_channel,
                )
                if c
            ],
            self._on_message,
            self.wake,  # anything published while we were not listening
            self.on_redis_error,
        )

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self.store.work_channel:
            if self.wanting:
                self.wake()
            return
        if channel == self.own_channel and self.on_own_message is not None:
            self._spawn(self.on_own_message(data))
            return
        if channel == self.store.progress_channel:
            self.on_progress(data)
            return
        notice = self.store.parse_cancel(data)
        if notice is None:
            return
        session = self.sessions.get(notice.worker_id)
        if session is not None:
            self._spawn(session.send_cancel(notice))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a pub/sub request failed: %s", task.exception())
