"""The measuring loop every dispatch system goes through, so that arq, rq, Dramatiq and our hub
are measured the same way: warm up, saturate (jobs/s), then half load (enqueue -> start
latency), then drain a pre-filled queue (dispatch rate with the submitter out of the picture)."""

from __future__ import annotations

import asyncio
import glob
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from bench.procs import cpu_seconds
from bench.record import STARTS_KEY, read_records
from bench.stats import latency_summary_ms

Submit = Callable[[int, float], Awaitable[None]]


class DispatchSystem(Protocol):
    name: str

    async def start_workers(self) -> None: ...
    async def stop_workers(self) -> None: ...
    async def submit(self, index: int, t_submit: float) -> None: ...
    async def close(self) -> None: ...
    def pids(self) -> dict[str, list[int]]: ...


@dataclass
class DispatchResult:
    name: str
    workers: int
    jobs_per_s: float = math.nan
    drain_jobs_per_s: float = math.nan
    half_load_rate: float = math.nan
    latency: dict[str, float] = field(default_factory=dict)
    saturation_latency: dict[str, float] = field(default_factory=dict)
    # Percent of one core used by each part during the saturation phase: what bounds jobs/s.
    cpu_percent: dict[str, float] = field(default_factory=dict)
    # The same during the drain (the submitter idle): what bounds the dispatch rate alone.
    drain_cpu_percent: dict[str, float] = field(default_factory=dict)
    # Percent of the saturation phase each part was runnable but waiting for a core (the
    # kernel's run-queue wait, /proc/PID/task/*/schedstat): high when the machine is the bound,
    # while a part that waits on another part sleeps instead.
    runqueue_wait_percent: dict[str, float] = field(default_factory=dict)
    # Redis' own accounting (INFO commandstats) over the saturation phase, per job.
    redis_usec_per_job: float = math.nan
    redis_calls_per_job: float = math.nan
    # The Redis process' own CPU per job (/proc): commands, scripts and networking, each once
    # (commandstats counts a script's inner commands both inside EVALSHA and on their own).
    redis_cpu_us_per_job: float = math.nan
    redis_top_commands: dict[str, float] = field(default_factory=dict)
    error: str = ""


async def submit_saturated(submit: Submit, count: int, concurrency: int, first: int = 0) -> None:
    next_index = first
    end = first + count

    async def pump() -> None:
        nonlocal next_index
        while next_index < end:
            index = next_index
            next_index += 1
            await submit(index, time.time())

    await asyncio.gather(*(pump() for _ in range(concurrency)))


async def submit_at_rate(submit: Submit, count: int, rate: float, first: int = 0) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []
    for i in range(count):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(submit(first + i, time.time())))
    await asyncio.gather(*tasks)


async def wait_records(client: redis.Redis[bytes], count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(client.llen, STARTS_KEY) < count:
        if time.monotonic() > deadline:
            have = client.llen(STARTS_KEY)
            raise TimeoutError(f"only {have} of {count} jobs started within {timeout_s} s")
        await asyncio.sleep(0.02)


def _cpu_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each group of processes; "submitter" is this process."""
    times = os.times()
    out = {"submitter": times.user + times.system}
    for name, pids in groups.items():
        out[name] = sum(_cpu_or_zero(pid) for pid in pids)
    return out


def _runqueue_wait_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    """Seconds so far each group of processes spent runnable, waiting for a core."""
    out = {"submitter": _runqueue_wait_s(os.getpid())}
    for name, pids in groups.items():
        out[name] = sum(_runqueue_wait_s(pid) for pid in pids)
    return out


def _runqueue_wait_s(pid: int) -> float:
    total = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/schedstat"):  # run ns, wait ns, timeslices
        try:
            with open(stat) as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile, or a kernel without schedstats
    return total / 1e9


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _redis_cost(client: redis.Redis[bytes], jobs: int, result: DispatchResult) -> None:
    stats: Mapping[str, Any] = client.info("commandstats")
    # The benchmark's own bookkeeping (RPUSH of start records, LLEN polling) is the same for
    # every system; it is left in, and is about 2 calls per job.
    usec = sum(s["usec"] for s in stats.values())
    calls = sum(s["calls"] for s in stats.values())
    result.redis_usec_per_job = usec / jobs
    result.redis_calls_per_job = calls / jobs
    top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:5]
    result.redis_top_commands = {k.removeprefix("cmdstat_"): v["usec"] / jobs for k, v in top}


async def measure(
    system: DispatchSystem,
    client: redis.Redis[bytes],
    workers: int,
    count: int,
    latency_seconds: float,
    concurrency: int = 32,
) -> DispatchResult:
    result = DispatchResult(system.name, workers)
    try:
        await system.start_workers()
        client.delete(STARTS_KEY)
        await submit_saturated(system.submit, 4 * workers, 4, first=10_000_000)
        await wait_records(client, 4 * workers, 60)

        client.delete(STARTS_KEY)
        groups = system.pids()
        groups["redis"] = [int(client.info("server")["process_id"])]
        client.config_resetstat()
        cpu_before, t_before = _cpu_by_group(groups), time.monotonic()
        wait_before = _runqueue_wait_by_group(groups)
        await submit_saturated(system.submit, count, concurrency)
        await wait_records(client, count, max(60.0, count / 50))
        cpu_after, elapsed = _cpu_by_group(groups), time.monotonic() - t_before
        wait_after = _runqueue_wait_by_group(groups)
        result.cpu_percent = {
            name: 100.0 * (cpu_after[name] - cpu_before[name]) / elapsed for name in cpu_after
        }
        result.runqueue_wait_percent = {
            name: 100.0 * (wait_after[name] - wait_before[name]) / elapsed for name in wait_after
        }
        result.redis_cpu_us_per_job = (cpu_after["redis"] - cpu_before["redis"]) / count * 1e6
        _redis_cost(client, count, result)
        records = read_records(client)
        span = max(r[2] for r in records) - min(r[1] for r in records)
        result.jobs_per_s = count / span
        result.saturation_latency = latency_summary_ms([r[2] - r[1] for r in records])

        rate = result.jobs_per_s / 2
        result.half_load_rate = rate
        n = max(100, min(count, int(rate * latency_seconds)))
        client.delete(STARTS_KEY)
        await submit_at_rate(system.submit, n, rate)
        await wait_records(client, n, max(60.0, n / 50))
        result.latency = latency_summary_ms([r[2] - r[1] for r in read_records(client)])

        await system.stop_workers()
        client.delete(STARTS_KEY)
        await submit_saturated(system.submit, count, concurrency)
        await system.start_workers()
        groups = {**system.pids(), "redis": groups["redis"]}
        cpu_before, t_before = _cpu_by_group(groups), time.monotonic()
        await wait_records(client, count, max(60.0, count / 50))
        cpu_after, elapsed = _cpu_by_group(groups), time.monotonic() - t_before
        result.drain_cpu_percent = {
            name: 100.0 * (cpu_after[name] - cpu_before[name]) / elapsed for name in cpu_after
        }
        starts = sorted(r[2] for r in read_records(client))
        result.drain_jobs_per_s = (count - 1) / (starts[-1] - starts[0])
    except Exception as exc:  # a benchmark reports a broken system, it does not stop the run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            await system.stop_workers()
        finally:
            await system.close()
    return result
