"""The hub's one event reader (redis_api/event_fanout.py): a stream subscribed while the reader
blocks in XREAD is read at once (its subscription interrupts the read), never after the block
runs out, and a burst of subscriptions shares a few reads."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from redis_api import event_fanout
from redis_api.event_fanout import EventFanout, Subscription
from redis_api.store import Store, StreamEntry
from tests.polling import eventually

pytestmark = pytest.mark.redis

BLOCK_MS = 60_000  # far longer than any wait below: only an interrupt ends a read in time


@contextlib.asynccontextmanager
async def fanout_on(redis_url: str) -> AsyncIterator[tuple[Store, EventFanout, set[str]]]:
    """A store, a fan-out on it, and the Redis connections that were there before it (other
    tests' hubs may still be reading on the same server)."""
    store = Store.from_url(redis_url, "fan:")
    others = {str(c["id"]) for c in await store.redis.client_list()}
    fanout = EventFanout(store.stream_reader(BLOCK_MS / 1000), max_streams=1000)
    try:
        yield store, fanout, others
    finally:
        await fanout.close()
        await store.close()


async def wait_blocked(store: Store, others: set[str]) -> None:
    """Until the fan-out's reader is blocked in XREAD (its read in flight)."""

    async def blocked() -> int:
        clients = await store.redis.client_list()
        return sum(1 for c in clients if c.get("cmd") == "xread" and str(c["id"]) not in others)

    await eventually(blocked, lambda n: n == 1, what="a blocked XREAD")


async def entries(sub: Subscription, count: int) -> list[StreamEntry]:
    got: list[StreamEntry] = []
    while len(got) < count:
        batch = await sub.next(timeout_s=10)
        assert batch, f"nothing within 10 s (the reader blocks {BLOCK_MS} ms): {got}"
        got += batch
    return got


async def test_a_stream_subscribed_while_the_reader_blocks_is_read_at_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_fanout, "BLOCK_MS", BLOCK_MS)
    async with fanout_on(redis_url) as (store, fanout, others), fanout.subscribe("fan:a", "0-0"):
        await wait_blocked(store, others)
        for key in ("fan:b", "fan:c"):  # each one in turn, while the reader blocks
            async with fanout.subscribe(key, "0-0") as sub:
                await wait_blocked(store, others)
                await store.redis.xadd(key, {"k": "status", "d": '"x"'})
                assert [(e.kind, e.data) for e in await entries(sub, 1)] == [("status", '"x"')]


async def test_a_burst_of_subscriptions_shares_a_few_reads(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_fanout, "BLOCK_MS", BLOCK_MS)
    async with fanout_on(redis_url) as (store, fanout, others):
        reads = 0
        real_read = fanout.reader.read

        async def counted(positions: dict[str, str], block_ms: int) -> dict[str, list[StreamEntry]]:
            nonlocal reads
            reads += 1
            return await real_read(positions, block_ms)

        monkeypatch.setattr(fanout.reader, "read", counted)
        async with fanout.subscribe("fan:first", "0-0"), contextlib.AsyncExitStack() as stack:
            await wait_blocked(store, others)
            keys = [f"fan:s{i}" for i in range(200)]
            before = reads
            subs = [await stack.enter_async_context(fanout.subscribe(k, "0-0")) for k in keys]
            # Blocked again, on every new stream: an entry in the last one is read at once.
            await store.redis.xadd(keys[-1], {"k": "status", "d": keys[-1]})
            assert [e.data for e in await entries(subs[-1], 1)] == [keys[-1]]
            assert reads - before <= 10, f"{reads - before} reads for 200 subscriptions"
            for key in keys[:-1]:
                await store.redis.xadd(key, {"k": "status", "d": key})
            for key, sub in zip(keys[:-1], subs, strict=False):
                assert [e.data for e in await entries(sub, 1)] == [key]
