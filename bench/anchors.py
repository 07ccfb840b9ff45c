"""The anchors: arq, rq and Dramatiq doing no-op jobs on the same Redis with the same number of
worker processes, measured by bench.drive exactly as our hub is.

`python -m bench.anchors [--quick] [--workers N]` runs them alone."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.drive import DispatchResult, measure
from bench.report import Table, emit

ANCHORS = ("arq", "arq-tuned", "rq", "dramatiq")


class AnchorSystem:
    """N `bench.anchor_worker` processes plus this process as the submitter."""

    def __init__(self, name: str, redis_url: str, workers: int, log_dir: Path) -> None:
        self.name = name
        self.redis_url = redis_url
        self.workers = workers
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._arq_pool: Any = None
        self._rq_queue: Any = None

    async def start_workers(self) -> None:
        env = {"BENCH_REDIS_URL": self.redis_url}
        for i in range(self.workers):
            log = self.log_dir / f"{self.name}-worker{i}.log"
            self._procs.append(
                procs.spawn(procs.module_cmd("bench.anchor_worker", self.name), log, env)
            )

    async def stop_workers(self) -> None:
        stopping, self._procs = self._procs, []
        await asyncio.to_thread(procs.stop_all, stopping)

    async def submit(self, index: int, t_submit: float) -> None:
        if self.name.startswith("arq"):
            if self._arq_pool is None:
                from arq import create_pool
                from arq.connections import RedisSettings

                self._arq_pool = await create_pool(RedisSettings.from_dsn(self.redis_url))
            await self._arq_pool.enqueue_job("arq_noop", index, t_submit)
        elif self.name == "rq":
            if self._rq_queue is None:
                from rq import Queue

                from bench.anchor_jobs import RQ_QUEUE

                self._rq_queue = Queue(RQ_QUEUE, connection=redis.Redis.from_url(self.redis_url))
            await asyncio.to_thread(
                self._rq_queue.enqueue, "bench.anchor_jobs.rq_noop", index, t_submit
            )
        else:
            from bench.anchor_jobs import dramatiq_noop

            await asyncio.to_thread(dramatiq_noop.send, index, t_submit)

    def pids(self) -> dict[str, list[int]]:
        return {"workers": [p.pid for p in self._procs]}

    async def close(self) -> None:
        if self._arq_pool is not None:
            await self._arq_pool.aclose()
            self._arq_pool = None


async def run_anchor(
    name: str, redis_url: str, workers: int, count: int, latency_s: float, log_dir: Path
) -> DispatchResult:
    # The anchors read BENCH_REDIS_URL when bench.anchor_jobs is first imported (Dramatiq binds
    # its broker at actor declaration): set it before any import of that module.
    os.environ["BENCH_REDIS_URL"] = redis_url
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        return await measure(
            AnchorSystem(name, redis_url, workers, log_dir), client, workers, count, latency_s
        )
    finally:
        client.flushdb()
        client.close()


def dispatch_table(results: list[DispatchResult], ours: str = "wgpu hub") -> Table:
    table = Table(
        f"Dispatch: no-op jobs, {results[0].workers if results else '?'} worker processes,"
        " one Redis",
        [
            "system",
            "jobs/s",
            "drain jobs/s",
            "p50 ms @half",
            "p99 ms @half",
            "half-load rate",
            "x jobs/s",
            "x drain",
        ],
    )
    base = next((r for r in results if r.name == ours), None)
    for r in results:
        x = base.jobs_per_s / r.jobs_per_s if base and r.jobs_per_s else float("nan")
        xd = (
            base.drain_jobs_per_s / r.drain_jobs_per_s
            if base and r.drain_jobs_per_s
            else float("nan")
        )
        table.add(
            r.name + (f" (error: {r.error})" if r.error else ""),
            r.jobs_per_s,
            r.drain_jobs_per_s,
            r.latency.get("p50_ms", float("nan")),
            r.latency.get("p99_ms", float("nan")),
            r.half_load_rate,
            x if r.name != ours else 1.0,
            xd if r.name != ours else 1.0,
        )
    table.notes += [
        "jobs/s: one submitter process enqueueing concurrently while workers run (end to end)",
        "drain jobs/s: queue pre-filled, then workers started (dispatch alone)",
        "latency: enqueue call -> job start (time.time() on one host) at half the measured jobs/s",
        "x columns: wgpu hub / that system (higher is better for wgpu)",
        "arq 0.28 defaults (max_jobs=10, polls every 0.5 s); arq-tuned polls every 10 ms; "
        "rq 3.0 SimpleWorker (no fork per job); dramatiq 2.2, 1 thread per process",
    ]
    return table


def cpu_table(results: list[DispatchResult]) -> Table:
    parts = ["hub", "workers", "redis", "submitter"]
    table = Table(
        "Where the CPU went during the saturation phase (% of one core; the machine has "
        f"{os.cpu_count()})",
        ["system", *parts, "total", "redis µs/job", "redis cmds/job"],
    )
    for r in results:
        cpu = r.cpu_percent
        table.add(
            r.name,
            *(cpu.get(p, float("nan")) for p in parts),
            sum(cpu.values()),
            r.redis_usec_per_job,
            r.redis_calls_per_job,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--only", choices=ANCHORS, action="append")
    args = parser.parse_args()
    count = 1000 if args.quick else 5000
    latency_s = 3.0 if args.quick else 8.0
    results = []
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as server:
        for name in args.only or ANCHORS:
            print(f"anchor {name} ...", flush=True)
            results.append(
                asyncio.run(
                    run_anchor(name, server.url, args.workers, count, latency_s, tmp / "logs")
                )
            )
    emit("anchors", [dispatch_table(results), cpu_table(results)], {"anchors": results})


if __name__ == "__main__":
    main()
