"""The anchors: arq, rq, Dramatiq and taskiq doing no-op jobs on the same Redis with the same
number of consumers, measured by bench.drive exactly as our hub is.

`python -m bench.anchors [--quick] [--workers N]` runs them alone."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.drive import DispatchResult, measure
from bench.report import Table, emit
from bench.stats import percentile

ANCHORS = ("arq", "arq-tuned", "rq", "dramatiq", "taskiq")


class AnchorSystem:
    """N `bench.anchor_worker` processes (each running `concurrency` jobs at a time) plus this
    process as the submitter. `kind` is one of ANCHORS; `name` is what the tables show."""

    def __init__(
        self,
        kind: str,
        redis_url: str,
        workers: int,
        log_dir: Path,
        concurrency: int = 1,
        name: str = "",
    ) -> None:
        self.kind = kind
        self.name = name or kind
        self.redis_url = redis_url
        self.workers = workers
        self.concurrency = concurrency
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._arq_pool: Any = None
        self._rq_queue: Any = None
        self._taskiq_started = False

    async def start_workers(self) -> None:
        env = {"BENCH_REDIS_URL": self.redis_url}
        args = (self.kind, str(self.concurrency))
        for i in range(self.workers):
            log = self.log_dir / f"{self.kind}-worker{i}.log"
            self._procs.append(
                procs.spawn(procs.module_cmd("bench.anchor_worker", *args), log, env)
            )

    async def stop_workers(self) -> None:
        stopping, self._procs = self._procs, []
        await asyncio.to_thread(procs.stop_all, stopping)

    async def submit(self, index: int, t_submit: float) -> None:
        if self.kind.startswith("arq"):
            if self._arq_pool is None:
                from arq import create_pool
                from arq.connections import RedisSettings

                self._arq_pool = await create_pool(RedisSettings.from_dsn(self.redis_url))
            await self._arq_pool.enqueue_job("arq_noop", index, t_submit)
        elif self.kind == "rq":
            if self._rq_queue is None:
                from rq import Queue

                from bench.anchor_jobs import RQ_QUEUE

                self._rq_queue = Queue(RQ_QUEUE, connection=redis.Redis.from_url(self.redis_url))
            await asyncio.to_thread(
                self._rq_queue.enqueue, "bench.anchor_jobs.rq_noop", index, t_submit
            )
        elif self.kind == "taskiq":
            from bench.anchor_jobs import taskiq_broker, taskiq_noop

            if not self._taskiq_started:
                await taskiq_broker.startup()
                self._taskiq_started = True
            await taskiq_noop.kiq(index, t_submit)
        else:
            from bench.anchor_jobs import dramatiq_noop

            await asyncio.to_thread(dramatiq_noop.send, index, t_submit)

    def pids(self) -> dict[str, list[int]]:
        return {"workers": [p.pid for p in self._procs]}

    async def close(self) -> None:
        if self._arq_pool is not None:
            await self._arq_pool.aclose()
            self._arq_pool = None
        if self._taskiq_started:
            from bench.anchor_jobs import taskiq_broker

            await taskiq_broker.shutdown()
            self._taskiq_started = False


async def run_anchor(system: AnchorSystem, count: int, latency_s: float) -> DispatchResult:
    # The anchors read BENCH_REDIS_URL when bench.anchor_jobs is first imported (Dramatiq binds
    # its broker at actor declaration): set it before any import of that module.
    os.environ["BENCH_REDIS_URL"] = system.redis_url
    client = redis.Redis.from_url(system.redis_url)
    client.flushdb()
    try:
        return await measure(system, client, system.workers, count, latency_s)
    finally:
        client.flushdb()
        client.close()


def _spread(values: list[float], digits: int = 0) -> str:
    """median (min-max) of the runs that produced a figure."""
    good = [v for v in values if not math.isnan(v)]
    if not good:
        return "-"
    mid = percentile(good, 50)
    if len(good) == 1:
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({min(good):,.{digits}f}-{max(good):,.{digits}f})"


def median_of(runs: list[DispatchResult], pick: Callable[[DispatchResult], float]) -> float:
    good = [v for v in (pick(r) for r in runs if not r.error) if not math.isnan(v)]
    return percentile(good, 50) if good else math.nan


def p99(r: DispatchResult) -> float:
    return r.latency.get("p99_ms", math.nan)


def p50(r: DispatchResult) -> float:
    return r.latency.get("p50_ms", math.nan)


def jobs_per_s(r: DispatchResult) -> float:
    return r.jobs_per_s


def drain(r: DispatchResult) -> float:
    return r.drain_jobs_per_s


def dispatch_table(runs: dict[str, list[DispatchResult]], consumers: int) -> Table:
    table = Table(
        f"Dispatch: no-op jobs, {consumers} consumers, one Redis",
        [
            "system",
            "jobs/s",
            "drain jobs/s",
            "p50 ms @half",
            "p99 ms @half",
            "x jobs/s",
            "x drain",
            "p99 / ours",
        ],
    )
    ours = next(iter(runs.values()), [])
    for name, results in runs.items():
        ok = [r for r in results if not r.error]
        errors = {r.error for r in results if r.error}
        label = name + (f" ({len(errors)} failed: {sorted(errors)[0][:80]})" if errors else "")
        table.add(
            label,
            _spread([r.jobs_per_s for r in ok]),
            _spread([r.drain_jobs_per_s for r in ok]),
            _spread([p50(r) for r in ok], 2),
            _spread([p99(r) for r in ok], 2),
            median_of(ours, jobs_per_s) / median_of(results, jobs_per_s),
            median_of(ours, drain) / median_of(results, drain),
            median_of(results, p99) / median_of(ours, p99),
        )
    table.notes += [
        f"median (min-max) of {max((len(r) for r in runs.values()), default=0)} runs,"
        " the systems alternated within each round; x columns: ratios of the medians, this run",
        "jobs/s: one submitter process enqueueing concurrently while workers run (end to end)",
        "drain jobs/s: queue pre-filled, then workers started (dispatch alone)",
        "latency: enqueue call -> job start (time.time() on one host) at half the measured jobs/s",
        "x jobs/s, x drain: wgpu hub / that system (above 1: the hub is ahead);"
        " p99 / ours: that system's p99 over the hub's (above 1: the hub's tail is shorter)",
        "arq 0.28 defaults (max_jobs=10, polls every 0.5 s); arq-tuned polls every 10 ms; "
        "rq 3.0 SimpleWorker (no fork per job); Dramatiq 2.2; taskiq 0.11 with taskiq-redis"
        " 1.0 RedisStreamBroker (the last pair that runs on redis-py 5)",
    ]
    return table


def cpu_table(runs: dict[str, list[DispatchResult]], consumers: int) -> Table:
    parts = ["hub", "workers", "redis", "submitter"]
    table = Table(
        f"Where the CPU went at {consumers} consumers, saturated (% of one core; the machine has "
        f"{os.cpu_count()})",
        ["system", *parts, "redis CPU µs/job", "redis µs/job (cmdstats)", "redis cmds/job"],
    )
    for name, results in runs.items():
        table.add(
            name,
            *(median_of(results, lambda r, p=p: r.cpu_percent.get(p, math.nan)) for p in parts),
            _spread([r.redis_cpu_us_per_job for r in results if not r.error], 1),
            _spread([r.redis_usec_per_job for r in results if not r.error], 1),
            median_of(results, lambda r: r.redis_calls_per_job),
        )
    table.notes += [
        "redis CPU µs/job: the Redis process' CPU (/proc, 10 ms ticks) over the saturated phase"
        " per job, median (min-max): what bounds a shared Redis",
        "redis µs/job (cmdstats): INFO commandstats usec summed over commands; a Lua script's"
        " inner commands count twice (in EVALSHA and on their own), as do cmds/job",
        "both include the bench's own ~2 calls per job (the start record, polling)",
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--only", choices=ANCHORS, action="append")
    args = parser.parse_args()
    count = 1000 if args.quick else 5000
    latency_s = 3.0 if args.quick else 8.0
    runs: dict[str, list[DispatchResult]] = {}
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as server:
        for name in args.only or ANCHORS:
            print(f"anchor {name} ...", flush=True)
            system = AnchorSystem(name, server.url, args.workers, tmp / "logs")
            runs[name] = [asyncio.run(run_anchor(system, count, latency_s))]
    tables = [dispatch_table(runs, args.workers), cpu_table(runs, args.workers)]
    emit("anchors", tables, {"anchors": runs})


if __name__ == "__main__":
    main()
