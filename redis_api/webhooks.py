"""Webhooks: durable, signed, retried deliveries of a job's end (and, opted in, its progress).

The script that ends a job writes a delivery into the Redis outbox (`webhook_outbox` in
lua/common.lua), so an end is never lost, whichever hub or worker recorded it. Every hub runs a
`WebhookSender`: it claims due deliveries (lua/webhook_claim.lua: a claim is a lease, so a hub that
dies mid-send leaves the delivery to another) when the outbox announces one (`wh:wake`, pub/sub)
or when the next retry falls due, never on a short poll; WEBHOOK_POLL_S only bounds how late a
dead hub's claim is taken over after its lease. It POSTs them signed per Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature`, signed with the `standardwebhooks`
library), and records the outcome (lua/webhook_result.lua): delivered, retried after the next gap
of WEBHOOK_RETRY_SCHEDULE (with jitter), or given up.

One receiver cannot hold up the others: each destination (scheme://host:port) has its own
concurrency limit and circuit breaker, and a delivery whose destination is busy or broken is
deferred in Redis (not counted as an attempt) instead of waiting in this process. Targets are
checked by `webhook_targets` (http(s) only; no loopback/private/link-local/CGNAT/metadata
addresses unless allowed; no redirects); the response body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

from .config import HubConfig
from .errors import StoreUnavailable
from .jobs import job_view
from .metrics import HubMetrics
from .storage import PRESIGN_MAX_S, Storage
from .store import Due, Store
from .subscriptions import listen
from .tasks import one_round
from .webhook_targets import TargetPolicy, TargetRefused, resolver_kwargs

log = logging.getLogger(__name__)

JITTER = 0.25  # each retry gap is scaled by a random factor in [1 - JITTER, 1 + JITTER]
DEFER_S = 1.0  # how long a delivery waits for a busy destination
PROGRESS_EVENT = "job.progress"


@dataclass
class Breaker:
    """Circuit breaker of one destination: open after N failures in a row, then one probe."""

    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


@dataclass
class Destination:
    in_flight: int = 0
    breaker: Breaker = field(default_factory=Breaker)


def destination_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def retry_delay_s(schedule: tuple[float, ...], attempts_made: int) -> float | None:
    """Seconds until the next attempt after `attempts_made` failed ones; None: give up."""
    if attempts_made > len(schedule):
        return None
    gap = schedule[attempts_made - 1]
    return gap * random.uniform(1 - JITTER, 1 + JITTER)


class Signer:
    """Standard Webhooks signatures: WEBHOOK_SECRET, or the secret of the job's API key name."""

    def __init__(self, config: HubConfig) -> None:
        self._default = Webhook(config.webhook_secret) if config.webhook_secret else None
        self._named = {name: Webhook(secret) for name, secret in config.webhook_secrets}

    @property
    def configured(self) -> bool:
        return self._default is not None or bool(self._named)

    def headers(self, message_id: str, body: str, owner: str) -> dict[str, str]:
        now = datetime.datetime.now(tz=datetime.UTC)
        headers = {"webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp()))}
        webhook = self._named.get(owner) or self._default
        if webhook is not None:
            headers["webhook-signature"] = webhook.sign(message_id, now, body)
        return headers


class WebhookSender:
    def __init__(
        self, store: Store, config: HubConfig, metrics: HubMetrics, storage: Storage | None = None
    ) -> None:
        self.store = store
        self.storage = storage
        self.config = config
        self.metrics = metrics
        self.policy = TargetPolicy(config.webhook_allowed_hosts)
        self.signer = Signer(config)
        self.destinations: dict[str, Destination] = {}
        self.on_redis_error: Callable[[BaseException], None] = lambda exc: None
        self._claim_token = uuid.uuid4().hex
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress_sent: dict[str, float] = {}
        self._stopping = False
        self._warned_unsigned = False
        self._wake = asyncio.Event()  # look at the outbox now
        self._full = False  # no room for more in flight: a finished attempt wakes the loop

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="hub-webhook-wakeups")
        try:
            while not self._stopping:
                self._wake.clear()
                wait_s = self.config.webhook_poll_s
                with one_round("webhook claims", self.on_redis_error):
                    room = self.config.webhook_max_in_flight - len(self._tasks)
                    self._full = room <= 0
                    if room > 0:
                        taken, next_ms = await self.store.claim_webhooks_next(
                            room, self._lease_ms, self._claim_token
                        )
                        for due in taken:
                            self._start(due)
                        if next_ms >= 0:
                            wait_s = min(wait_s, next_ms / 1000)
                if wait_s > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await self._wake.wait()
                else:
                    await asyncio.sleep(0)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _listen(self) -> None:
        """Wake the loop whenever a delivery is written or handed back (`wh:wake`)."""
        await listen(
            self.store,
            lambda: [self.store.webhook_channel],
            lambda channel, data: self._wake.set(),
            self._wake.set,  # anything written while nobody here listened
            self.on_redis_error,
            running=lambda: not self._stopping,
        )

    @property
    def _lease_ms(self) -> int:
        # Longer than one attempt can take, so only a dead hub's claims run out.
        return int((self.config.webhook_timeout_s + 10.0) * 1000)

    def _start(self, due: Due) -> None:
        task = asyncio.create_task(self._attempt(due), name=f"webhook-{due.delivery}")
        self._tasks.add(task)
        task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._full:
            self._wake.set()  # room again for the deliveries waiting

    async def _attempt(self, due: Due) -> None:
        dest_key = destination_of(due.url)
        dest = self.destinations.setdefault(dest_key, Destination())
        wait = self._must_wait(dest)
        if wait is not None:
            await self._record(due, "defer", delay_s=wait)
            return
        dest.in_flight += 1
        try:
            status, error = await self._post(due)
        finally:
            dest.in_flight -= 1
        refused = status is None and error.startswith("refused")
        delivered = status is not None and 200 <= status < 300
        self._breaker_result(dest, ok=delivered, counts=not refused)
        if delivered:
            self.metrics.webhook("delivered")
            await self._record(due, "delivered", status=status)
            return
        attempts = due.attempts + 1
        delay = None if refused else retry_delay_s(self._schedule(due), attempts)
        if delay is None:
            self.metrics.webhook("refused" if refused else "gave_up")
            log.warning(
                "webhook %s of job %s given up after %d attempt(s): %s",
                due.event,
                due.job_id,
                attempts,
                error or f"HTTP {status}",
            )
            await self._record(due, "gave_up", status=status, error=error)
        else:
            self.metrics.webhook("retry")
            await self._record(due, "retry", status=status, error=error, delay_s=delay)

    def _schedule(self, due: Due) -> tuple[float, ...]:
        # Stale progress is worth no retries.
        return () if due.event == PROGRESS_EVENT else self.config.webhook_retry_schedule

    def _must_wait(self, dest: Destination) -> float | None:
        """Seconds to defer a delivery to `dest`, or None to send it now."""
        if dest.in_flight >= self.config.webhook_per_destination:
            return DEFER_S * random.uniform(1.0, 1.5)
        breaker = dest.breaker
        if breaker.failures < self.config.webhook_breaker_failures:
            return None
        now = time.monotonic()
        if now < breaker.open_until or breaker.probing:
            return max(DEFER_S, breaker.open_until - now) * random.uniform(1.0, 1.2)
        breaker.probing = True  # half-open: this delivery is the probe
        return None

    def _breaker_result(self, dest: Destination, ok: bool, counts: bool) -> None:
        breaker = dest.breaker
        breaker.probing = False
        if ok:
            breaker.failures = 0
            return
        if not counts:
            return
        breaker.failures += 1
        if breaker.failures >= self.config.webhook_breaker_failures:
            breaker.open_until = time.monotonic() + self.config.webhook_breaker_cooldown_s
            if breaker.failures == self.config.webhook_breaker_failures:
                log.warning("webhook destination failing: deliveries to it paused")

    async def _post(self, due: Due) -> tuple[int | None, str]:
        """(HTTP status or None, error text) of one POST."""
        try:
            self.policy.check_url(due.url)
        except TargetRefused as exc:
            return None, f"refused: {exc}"
        fields = await self.store.get_job(due.job_id)
        if fields is None:
            return None, "refused: the job's result expired"
        body = json.dumps(await self.body(due, fields), separators=(",", ":"))
        if not self.signer.configured and not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning("WEBHOOK_SECRET is not set: webhooks are sent unsigned")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "wgpu-hub",
            **self.signer.headers(f"msg_{due.delivery}", body, due.owner),
        }
        try:
            async with self._client().post(
                due.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                return response.status, "" if response.status < 300 else f"HTTP {response.status}"
        except TargetRefused as exc:  # raised by the resolver at connect time
            return None, f"refused: {exc}"
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, TargetRefused):
                return None, f"refused: {cause}"
            return None, f"cannot connect: {cause.strerror or type(cause).__name__}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]

    async def body(self, due: Due, fields: dict[str, str]) -> dict[str, Any]:
        """The job JSON and the event, with output URLs a receiver can fetch: presigned when
        the storage backend offers it (S3), else absolute when PUBLIC_URL is set."""
        view = job_view(fields)
        base = self.config.public_url.rstrip("/")
        presign = getattr(self.storage, "presigned_url", None)
        for output in view.get("outputs") or []:
            if not isinstance(output, dict):
                continue
            if presign is not None and output.get("name"):
                # A receiver may fetch long after the POST; the URL lives as long as the result
                # (SigV4 presigned URLs last at most 7 days).
                expires_s = int(min(self.config.result_ttl_s, PRESIGN_MAX_S))
                output["url"] = await presign(due.job_id, str(output["name"]), expires_s)
            elif base and str(output.get("url", "")).startswith("/"):
                output["url"] = base + output["url"]
        return {"event": due.event, **view}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, force_close=True, **resolver_kwargs(self.policy)
                ),
                timeout=aiohttp.ClientTimeout(
                    total=self.config.webhook_timeout_s,
                    sock_connect=self.config.webhook_connect_timeout_s,
                ),
                auto_decompress=False,
            )
        return self._session

    async def _record(
        self,
        due: Due,
        outcome: str,
        status: int | None = None,
        error: str = "",
        delay_s: float = 0.0,
    ) -> None:
        try:
            await self.store.webhook_result(
                due.delivery,
                self._claim_token,
                outcome,
                "" if status is None else str(status),
                int(delay_s * 1000),
                error[:500],
            )
        except StoreUnavailable as exc:
            # The claim's lease runs out and some hub tries again: at least once, never lost.
            self.on_redis_error(exc)
            return
        if outcome in ("retry", "defer"):
            self._wake.set()  # the loop learns when it is due (it may sleep longer now)

    # -- progress (opt-in) -----------------------------------------------------------------

    def progress_due(self, job_id: str) -> bool:
        """Whether this step of a job should also queue a `job.progress` delivery (the script
        that records it skips jobs that did not opt in): at most one per
        WEBHOOK_PROGRESS_INTERVAL_S per job. Counts it as sent."""
        now = time.monotonic()
        if now - self._progress_sent.get(job_id, -1e9) < self.config.webhook_progress_interval_s:
            return False
        self._progress_sent[job_id] = now
        if len(self._progress_sent) > 10_000:  # forget jobs long finished
            cutoff = now - self.config.webhook_progress_interval_s
            self._progress_sent = {j: t for j, t in self._progress_sent.items() if t > cutoff}
        return True

    async def close(self) -> None:
        """Stop sending and hand back what this hub holds (see lua/webhook_release.lua): its
        deliveries are due again at once for the next hub, not after their claim's lease."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.store.release_webhooks(
                    self._claim_token, self.config.webhook_max_in_flight * 4
                )
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
