"""Background work every hub does: moving jobs an older hub queued into today's layout (once,
at start), reaping expired leases and timeouts, keeping its idle workers' entries fresh, and
sweeping output files of jobs whose results expired.

Nothing here polls Redis on a short timer (an idle hub costs Redis almost nothing, and every
hub replica pays that cost for ever): the reaper sleeps until the earliest deadline it guards
(lua/reap.lua returns it), woken sooner when this hub writes a nearer one (`Store.on_deadline`:
a claim's lease and timeout, a cut socket's grace, a queue deadline...). Deadlines other hubs
write are read at the next round, at most `reap_interval_s` away: each of those hubs wakes for
its own, so that bound only matters when one dies.

Safe with any number of hubs: the reap script is idempotent, and the sweeper only deletes
outputs of jobs that no longer exist in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

from .config import HubConfig
from .dispatch import Dispatcher
from .errors import StorageError
from .migrate import migrate_old_jobs
from .storage import Storage
from .store import Store
from .tasks import one_round

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The shortest gap between two reaper rounds while deadlines keep falling due.
MIN_GAP_S = 0.01


class Maintenance:
    def __init__(
        self,
        store: Store,
        storage: Storage,
        dispatcher: Dispatcher,
        config: HubConfig,
        on_redis_error: Callable[[BaseException], None],
        on_redis_ok: Callable[[], None],
    ) -> None:
        self.store = store
        self.storage = storage
        self.dispatcher = dispatcher
        self.config = config
        self._on_redis_error = on_redis_error
        self._on_redis_ok = on_redis_ok
        # Sweep about twice per TTL, but not more often than the reaper runs nor less than 1/min.
        self.sweep_interval_s = max(config.reap_interval_s, min(60.0, config.result_ttl_s / 2))
        # Idle workers' entries live lease_s from their last refresh; refreshed well before.
        self.refresh_every_s = config.lease_s / 4
        # A claim for the waiting workers in case a wake-up was lost (pub/sub pushes work).
        self.safety_claim_every_s = max(config.reap_interval_s, self.refresh_every_s)
        # Empty pools are forgotten after pool_idle_s: looked for a few times per pool_idle_s.
        self.pool_sweep_every_s = max(config.reap_interval_s, config.pool_idle_s / 4)
        now = time.monotonic()
        self._reap_at = now  # monotonic times each part of the work is due next
        self._sweep_at = now
        self._refresh_at = now
        self._safety_claim_at = now
        self._pool_sweep_at = now
        self._done_at = now  # when finished jobs next need a look
        self._nearer = asyncio.Event()
        self._migrated = False

    def deadline_in(self, seconds: float) -> None:
        """This hub wrote a deadline `seconds` from now: reap then, if that is sooner than the
        round planned (Store.on_deadline)."""
        at = time.monotonic() + max(0.0, seconds)
        if at < self._reap_at:
            self._reap_at = at
            self._nearer.set()

    async def run(self) -> None:
        while True:
            with one_round("hub maintenance", self._on_redis_error):
                try:
                    await self.tick()
                    self._on_redis_ok()
                except StorageError as exc:
                    log.warning("output sweeper: %s; retrying", exc)
            await self._sleep()

    async def _sleep(self) -> None:
        """Until the next part of the work is due, or a nearer deadline is written."""
        self._nearer.clear()
        due = min(self._reap_at, self._sweep_at, self._refresh_at, self._safety_claim_at)
        delay = due - time.monotonic()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._nearer.wait()

    async def tick(self) -> None:
        """Whatever part of the work is due now."""
        if not self._migrated:
            # Once per hub start, before the first reap: jobs an older hub queued (migrate.py).
            await migrate_old_jobs(self.store, self.config)
            self._migrated = True
        now = time.monotonic()
        if now >= self._reap_at:
            await self.reap(now)
        if now >= self._refresh_at:
            self._refresh_at = now + self.refresh_every_s
            waiting = list(self.dispatcher.wanting)
            if waiting:
                await self.store.refresh_idle(waiting, self.config.lease_ms)
        if now >= self._safety_claim_at:
            self._safety_claim_at = now + self.safety_claim_every_s
            if self.dispatcher.wanting:
                self.dispatcher.wake()  # a safety net for a lost wake-up: one claim finds out
        if now >= self._sweep_at:
            self._sweep_at = now + self.sweep_interval_s
            await self.sweep_outputs()

    async def reap(self, now: float) -> None:
        """One reaper round; the next is planned at the earliest deadline it reported."""
        longest = self.config.reap_interval_s
        self._reap_at = now + longest  # also when a round that failed is tried again
        pool_sweep = now >= self._pool_sweep_at
        if pool_sweep:
            self._pool_sweep_at = now + self.pool_sweep_every_s
        look_at_done = now >= self._done_at
        reaped = await self.store.reap(
            self.config.ttl_ms,
            self.config.stale_ms,
            int(self.config.pool_idle_s * 1000) if pool_sweep else -1,
            look_at_done,
        )
        if look_at_done:
            # A job that ends from now on (on any hub) expires a whole TTL from now at the
            # earliest: until then only those already finished can fall due.
            ttl_s = self.config.result_ttl_s
            until = ttl_s if reaped.done_next_ms < 0 else min(ttl_s, reaped.done_next_ms / 1000)
            self._done_at = now + max(MIN_GAP_S, until)
        if reaped.next_ms >= 0:
            next_s = max(MIN_GAP_S, reaped.next_ms / 1000)
            # A nearer deadline written during the round (deadline_in) keeps its earlier time.
            self._reap_at = min(self._reap_at, now + min(longest, next_s))
        self._reap_at = min(self._reap_at, self._done_at)
        if reaped.requeued or reaped.dead or reaped.timed_out or reaped.ended_in_queue:
            log.info(
                "reaper: %d requeued, %d dead, %d timed out, %d expired/unschedulable in queue",
                reaped.requeued,
                reaped.dead,
                len(reaped.timed_out),
                reaped.ended_in_queue,
            )
        for job_id in reaped.expired:
            await self.storage.delete_job(job_id)
        for job_id, worker_id in await self.store.expire_drains():
            log.info("drain of %s timed out: job %s released to the queue", worker_id, job_id)

    async def sweep_outputs(self) -> int:
        """Delete stored outputs of jobs that no longer exist (another hub reaped them)."""
        stored = await self.storage.job_ids()
        swept = await self.sweep_inputs()
        if not stored:
            return swept
        alive = await self.store.existing_jobs(stored)
        gone = [job_id for job_id in stored if job_id not in alive]
        for job_id in gone:
            await self.storage.delete_job(job_id)
        return len(gone) + swept

    async def sweep_inputs(self) -> int:
        """Delete input blobs whose description expired (inputs expire like results)."""
        from .inputs import INPUTS_DIR

        stored = [n for n in await self.storage.names(INPUTS_DIR) if _SHA256.fullmatch(n)]
        if not stored:
            return 0
        alive = await self.store.existing_inputs(stored)
        gone = [sha256 for sha256 in stored if sha256 not in alive]
        for sha256 in gone:
            await self.storage.delete_name(INPUTS_DIR, sha256)
        return len(gone)
