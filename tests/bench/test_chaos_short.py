"""A short chaos run: 200 jobs through 3 fake workers (separate processes) while one worker is
SIGKILLed, the hub is SIGKILLed and restarted, and Redis (AOF everysec) is restarted.
Nothing may be lost or completed twice, attempts stay within the cap, and every per-job key
is gone once the result TTL has passed. `python -m bench.chaos` is the 10,000-job version."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, run_chaos
from orchestrator.stack.local_redis import LocalRedis

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_chaos_short_loses_nothing_and_completes_once(
    redis_aof: LocalRedis, tmp_path: Path
) -> None:
    cfg = ChaosConfig(
        jobs=200,
        workers=3,
        rate=100.0,
        worker_kills=1,
        hub_restarts=1,
        redis_restarts=1,
        max_attempts=4,
        job_time_s=0.005,
        result_ttl_s=3.0,
        lease_s=2.0,
        heartbeat_s=0.5,
        settle_timeout_s=60.0,
    )
    report = await run_chaos(cfg, redis_aof, tmp_path)

    assert len(report.faults) == 3, report.faults
    assert report.accepted == report.submitted == 200
    assert report.lost == [], report.lost_detail
    assert report.duplicate_jobs == []
    assert report.double_completions == []
    assert report.history_double_success == []
    assert report.over_cap == []
    assert 1 <= report.max_attempts_seen <= cfg.max_attempts
    assert report.statuses == {"succeeded": 200}, report.statuses
    assert report.leftover_job_keys == []
    assert report.ok, report.problems()
