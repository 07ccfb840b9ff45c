"""Background work every hub does: moving jobs an older hub queued into today's layout (once,
at start), reaping expired leases and timeouts, keeping its idle workers' entries fresh, and
sweeping output files of jobs whose results expired.

Safe with any number of hubs: the reap script is idempotent, and the sweeper only deletes
outputs of jobs that no longer exist in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from .config import HubConfig
from .dispatch import Dispatcher
from .errors import StorageError
from .migrate import migrate_old_jobs
from .progress import ProgressFeed
from .storage import Storage
from .store import Store
from .tasks import one_round

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# How often a hub says whether it serves event streams, and how long that holds without a
# refresh (a hub that died stops counting after that).
PRESENCE_EVERY_S = 1.0
PRESENCE_TTL_MS = 5_000


class Maintenance:
    def __init__(
        self,
        store: Store,
        storage: Storage,
        dispatcher: Dispatcher,
        config: HubConfig,
        on_redis_error: Callable[[BaseException], None],
        on_redis_ok: Callable[[], None],
        progress: ProgressFeed | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.dispatcher = dispatcher
        self.config = config
        self._on_redis_error = on_redis_error
        self._on_redis_ok = on_redis_ok
        self.progress = progress
        # Sweep about twice per TTL, but not more often than the reaper runs nor less than 1/min.
        self.sweep_interval_s = max(config.reap_interval_s, min(60.0, config.result_ttl_s / 2))
        self._last_sweep = 0.0
        self._migrated = False
        self._last_presence = -PRESENCE_EVERY_S

    async def run(self) -> None:
        while True:
            with one_round("hub maintenance", self._on_redis_error):
                try:
                    await self.tick()
                    self._on_redis_ok()
                except StorageError as exc:
                    log.warning("output sweeper: %s; retrying", exc)
            await asyncio.sleep(self.config.reap_interval_s)

    async def tick(self) -> None:
        if not self._migrated:
            # Once per hub start, before the first reap: jobs an older hub queued (migrate.py).
            await migrate_old_jobs(self.store, self.config)
            self._migrated = True
        reaped = await self.store.reap(
            self.config.ttl_ms, self.config.stale_ms, int(self.config.pool_idle_s * 1000)
        )
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
        waiting = list(self.dispatcher.wanting)
        if waiting:
            await self.store.refresh_idle(waiting, self.config.lease_ms)
            self.dispatcher.wake()  # a safety net for a lost wake-up: one claim finds out
        now = time.monotonic()
        if self.progress is not None and now - self._last_presence >= PRESENCE_EVERY_S:
            # Live progress goes to other hubs only while one of them serves event streams.
            self._last_presence = now
            self.progress.others_watch = await self.store.sse_presence(
                self.progress.hub_id, self.progress.events.open_streams > 0, PRESENCE_TTL_MS
            )
        if now - self._last_sweep >= self.sweep_interval_s:
            self._last_sweep = now
            await self.sweep_outputs()

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
