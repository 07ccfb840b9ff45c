"""The hub's Redis connection packs commands with hiredis: byte for byte what redis-py's own
packer sends, and it works against a real server."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from redis_api.redis_conn import HiredisPackConnection
from redis_api.store import Store

pytestmark = pytest.mark.redis

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 0, "wgpu:", "job-1", 17, "", '{"1": {"x": "é✓"}}'),
    ("CONFIG GET", "maxmemory"),  # a command name with a space is sent as two arguments
    (b"SET", b"k", b"\x00\xff" * 5000),
    ("ZADD", "q", 1.5, "m", True),  # float and bool take redis-py's own path
    ("INCRBY", "n", -(2**62)),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packs_like_redis_py(args: tuple[Any, ...]) -> None:
    fast, plain = HiredisPackConnection(), Connection()
    if any(isinstance(a, bool) for a in args):
        with pytest.raises(Exception, match="bool"):
            fast.pack_command(*args)
        return
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


async def test_the_store_uses_it_against_real_redis(redis_url: str) -> None:
    store = Store.from_url(redis_url, "t:")
    try:
        value = '{"workflow": "é✓"}' * 1000
        await store.redis.set("t:k", value)
        assert await store.redis.get("t:k") == value
        assert store.redis.connection_pool.connection_class is HiredisPackConnection
    finally:
        await store.close()
