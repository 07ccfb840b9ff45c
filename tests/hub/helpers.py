"""Small helpers shared by the hub tests: a JSON REST caller, job-state waits, and what Redis
holds or runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from redis_api.store import _SOURCES  # the scripts as the hub loads them
from tests.polling import eventually

WORKFLOW: dict[str, Any] = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
}


async def call(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON or text)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with http.request(method, base_url + path, data=data, headers=hdrs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def submit(base_url: str, **fields: Any) -> dict[str, Any]:
    body = {"workflow": WORKFLOW, **fields}
    status, job = await call(base_url, "POST", "/jobs", body)
    assert status == 201, job
    return dict(job)


async def get_job(base_url: str, job_id: str) -> dict[str, Any]:
    status, job = await call(base_url, "GET", f"/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


async def job_status(
    base_url: str, job_id: str, status: str, within: float = 5.0
) -> dict[str, Any]:
    return await eventually(
        lambda: get_job(base_url, job_id), lambda j: j["status"] == status, within
    )


async def lease_left_s(redis_url: str, job_id: str, prefix: str = "wgpu:") -> float | None:
    """Seconds of lease a running job has left, by Redis' own clock (the `running` zset of
    redis_api/README.md), or None when it holds none. A state to assert instead of sleeping
    past a deadline and hoping the reaper had its turn."""
    client = aioredis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.zscore(f"{prefix}running", job_id).time()
            score, (seconds, micros) = await pipe.execute()
    finally:
        await client.aclose()
    return None if score is None else score / 1000 - (seconds + micros / 1e6)


async def worker_field(
    redis_url: str, worker_id: str, field: str, prefix: str = "wgpu:"
) -> str | None:
    """One field of the worker's record in Redis (redis_api/README.md), e.g. `connected`."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        value = await client.hget(f"{prefix}worker:{worker_id}", field)
    finally:
        await client.aclose()
    return None if value is None else str(value)


@contextlib.asynccontextmanager
async def redis_commands(redis_url: str) -> AsyncIterator[list[str]]:
    """Every command Redis runs meanwhile (MONITOR), as its text, complete once the block ends
    (MONITOR lags behind: the block ends when it has seen a marker sent at the end). The hub's
    scripts are loaded first, as after their first calls: otherwise a script's first call in
    the block shows twice (EVALSHA answered NOSCRIPT, SCRIPT LOAD, EVALSHA again)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    for source in _SOURCES.values():
        await client.script_load(source)
    seen: list[str] = []
    started, caught_up = asyncio.Event(), asyncio.Event()
    marker = f"redis-commands-end-{uuid.uuid4().hex}"

    async def watch() -> None:
        async with client.monitor() as monitor:
            started.set()
            async for command in monitor.listen():
                text = str(command["command"])
                if marker in text:
                    caught_up.set()
                else:
                    seen.append(text)

    task = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(started.wait(), 5)
        yield seen
        await client.echo(marker)
        await asyncio.wait_for(caught_up.wait(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await client.aclose()


def recorded_progress(commands: list[str], job_id: str) -> int:
    """Progress reports recorded for `job_id` (report.lua runs as EVALSHA ... progress JOB)."""
    return sum(1 for c in commands if c.startswith("EVALSHA") and f" progress {job_id} " in c)
