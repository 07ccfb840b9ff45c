"""The Redis fixtures give real servers: Lua scripts run, and AOF data survives restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from orchestrator.errors import RedisUnavailable
from orchestrator.stack.local_redis import LocalRedis
from tests.fixtures.services import service_missing

pytestmark = pytest.mark.redis

# Moves a job id from one list to another only when its lease key is absent: the shape of the
# hub's atomic claim scripts.
CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return nil end
local job = redis.call('LPOP', KEYS[1])
if not job then return nil end
redis.call('RPUSH', KEYS[2], job)
redis.call('SET', KEYS[3], job, 'PX', ARGV[1])
return job
"""


def test_lua_script_runs_atomically_on_the_fixture(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.rpush("queue", "job-1", "job-2")
    claim = client.register_script(CLAIM_SCRIPT)
    keys = ["queue", "running", "lease"]

    assert claim(keys=keys, args=[60_000]) == "job-1"
    assert claim(keys=keys, args=[60_000]) is None  # the lease is held
    client.delete("lease")
    assert claim(keys=keys, args=[60_000]) == "job-2"
    assert client.lrange("running", 0, -1) == ["job-1", "job-2"]
    assert 0 < client.pttl("lease") <= 60_000
    client.close()


def _aof_files(server: LocalRedis) -> list[Path]:
    return sorted(server.data_dir.glob("appendonlydir/*.aof"))


def _wait_until_in_aof(server: LocalRedis, marker: bytes, timeout_s: float = 5) -> None:
    """Poll the AOF on disk until it holds `marker` (everysec writes before replying, but fsyncs
    in the background: poll instead of sleeping past the fsync point)."""
    deadline = time.monotonic() + timeout_s
    while not any(marker in path.read_bytes() for path in _aof_files(server)):
        assert time.monotonic() < deadline, f"{marker!r} never reached the AOF"
        time.sleep(0.02)
    client = redis.Redis.from_url(server.url)
    while client.info("persistence").get("aof_pending_bio_fsync", 0) != 0:
        assert time.monotonic() < deadline, "the AOF fsync never completed"
        time.sleep(0.02)
    client.close()


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_aof_data_survives_restart(redis_aof: LocalRedis, hard: bool) -> None:
    client = redis.Redis.from_url(redis_aof.url, decode_responses=True)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    marker = f"durable-{hard}"
    client.hset("job:1", mapping={"status": "queued", "marker": marker})
    client.rpush("queue", "job:1")
    client.close()
    _wait_until_in_aof(redis_aof, marker.encode())
    port = redis_aof.port

    redis_aof.restart(hard=hard)

    assert redis_aof.port == port
    client = redis.Redis.from_url(redis_aof.url, decode_responses=True)
    assert client.hgetall("job:1") == {"status": "queued", "marker": marker}
    assert client.lrange("queue", 0, -1) == ["job:1"]
    client.close()


def test_without_aof_a_hard_kill_loses_data(tmp_path: Path) -> None:
    # The control for the test above: the restart really starts from what is on disk.
    server = LocalRedis(data_dir=tmp_path / "no-aof", prefer="redis", aof=False)
    try:
        server.start()
    except RedisUnavailable as exc:
        service_missing("redis server", str(exc))
    try:
        client = redis.Redis.from_url(server.url)
        client.set("volatile", "1")
        client.close()
        server.restart(hard=True)
        client = redis.Redis.from_url(server.url)
        assert client.get("volatile") is None
        client.close()
    finally:
        server.stop()
