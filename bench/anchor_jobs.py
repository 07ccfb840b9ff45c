"""No-op jobs for the anchors (arq, rq, Dramatiq, taskiq). Each records its start exactly as
the fake hub worker does (bench.record). The Redis URL comes from BENCH_REDIS_URL, read at
import time because Dramatiq binds its broker when an actor is declared."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
import redis
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from dramatiq.brokers.redis import RedisBroker
from taskiq_redis import RedisStreamBroker

from bench.record import STARTS_KEY, start_record

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RQ_QUEUE = "bench"

_sync_client: redis.Redis[bytes] | None = None


def _client() -> redis.Redis[bytes]:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(REDIS_URL)
    return _sync_client


# ----------------------------------------------------------------------------- arq


async def arq_noop(ctx: dict[str, Any], index: int, t_submit: float) -> None:
    record = start_record(index, t_submit)
    await ctx["redis"].rpush(STARTS_KEY, record)


class ArqSettings:
    """arq 0.28 defaults (max_jobs=10 concurrent jobs per process, poll_delay 0.5 s)."""

    functions = [arq_noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)


class ArqTunedSettings:
    """arq polled every 10 ms: its best latency, at the price of constant Redis traffic.
    (Settings are read from the class's own __dict__, so nothing is inherited.)"""

    functions = [arq_noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    poll_delay = 0.01


# ----------------------------------------------------------------------------- rq


def rq_noop(index: int, t_submit: float) -> None:
    record = start_record(index, t_submit)
    _client().rpush(STARTS_KEY, record)


# ----------------------------------------------------------------------------- dramatiq

dramatiq.set_broker(RedisBroker(url=REDIS_URL))  # type: ignore[no-untyped-call]


@dramatiq.actor(max_retries=0)
def dramatiq_noop(index: int, t_submit: float) -> None:
    record = start_record(index, t_submit)
    _client().rpush(STARTS_KEY, record)


# ----------------------------------------------------------------------------- taskiq

# RedisStreamBroker: a consumer group on a Redis stream, acknowledged per task (taskiq's
# at-least-once broker; ListQueueBroker would be the fire-and-forget one).
taskiq_broker = RedisStreamBroker(url=REDIS_URL)


_async_client: aioredis.Redis[bytes] | None = None


@taskiq_broker.task
async def taskiq_noop(index: int, t_submit: float) -> None:
    global _async_client
    if _async_client is None:  # made in the worker's own event loop
        _async_client = aioredis.Redis.from_url(REDIS_URL)
    await _async_client.rpush(STARTS_KEY, start_record(index, t_submit))
