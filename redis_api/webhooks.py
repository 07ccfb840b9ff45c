"""Webhooks: once a job ends, POST its final JSON to the job's `webhook_url` (best effort, one
try, short timeout; the job's own state never depends on it)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from .jobs import job_view
from .store import Store

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 64


class WebhookSender:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    def send_for(self, job_id: str) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            log.warning(
                "webhook of job %s dropped: %d deliveries already in flight",
                job_id,
                len(self._tasks),
            )
            return
        task = asyncio.create_task(self._deliver(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job_id: str) -> None:
        fields = await self.store.get_job(job_id)
        url = fields.get("webhook_url") if fields else None
        if not fields or not url:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
            )
        try:
            async with self._session.post(url, json=job_view(fields)) as response:
                if response.status >= 400:
                    log.warning("webhook of job %s answered HTTP %d", job_id, response.status)
                else:
                    self.delivered += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("webhook of job %s failed: %s", job_id, type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
