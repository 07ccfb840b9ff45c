"""Scale: (1) hub CPU with 1,000 connected workers heartbeating; (2) Redis memory per queued
job beyond its payload, for 20,000 queued jobs (10,000 with --quick; a job's keys and its queue
entry cost the same at any depth, so a deeper fill only takes longer).

`python -m bench.scale [--quick] [--workers 1000] [--jobs 20000]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import procs
from bench.drive import submit_saturated
from bench.fake_worker import bench_workflow
from bench.hub_system import HubProcess, wait_workers
from bench.report import Table, emit

WORKERS_PER_PROCESS = 500


def hub_cpu_with_workers(
    redis_url: str, log_dir: Path, workers: int, window_s: float, heartbeat_s: float
) -> dict[str, Any]:
    # All the fake workers come from 127.0.0.1: lift the per-address cap above their number.
    hub = HubProcess(
        redis_url, log_dir, heartbeat_s=heartbeat_s, max_connections_per_ip=workers + 64
    ).start()
    fakes: list[subprocess.Popen[bytes]] = []
    try:
        idle_cpu = _cpu_percent(hub.pid, min(window_s, 5.0))
        for first in range(0, workers, WORKERS_PER_PROCESS):
            count = min(WORKERS_PER_PROCESS, workers - first)
            args = [
                "--hub",
                hub.url,
                "--machine",
                f"scale{first}",
                "--count",
                str(count),
                "--first-index",
                str(first),
            ]
            fakes.append(
                procs.spawn(
                    procs.module_cmd("bench.fake_worker", *args), log_dir / f"scale{first}.log"
                )
            )
        t0 = time.monotonic()

        async def connected() -> None:
            async with aiohttp.ClientSession() as session:
                await wait_workers(session, hub.url, workers, 120)

        asyncio.run(connected())
        connect_s = time.monotonic() - t0
        time.sleep(heartbeat_s)  # let the connection burst pass; measure the steady state
        busy_cpu = _cpu_percent(hub.pid, window_s)
        return {
            "workers": workers,
            "heartbeat_s": heartbeat_s,
            "window_s": window_s,
            "hub_cpu_percent": busy_cpu,
            "hub_cpu_percent_no_workers": idle_cpu,
            "connect_s": connect_s,
        }
    finally:
        for proc in fakes:
            procs.stop(proc)
        hub.stop()


def _cpu_percent(pid: int, window_s: float) -> float:
    c0, t0 = procs.cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    return 100.0 * (procs.cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def memory_per_job(redis_url: str, log_dir: Path, jobs: int) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    # The fill is the measurement: the queue limit must not be what stops it.
    hub = HubProcess(redis_url, log_dir, max_queued_jobs=2 * jobs + 1).start()
    try:

        async def fill() -> None:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

                async def submit(index: int, t_submit: float) -> None:
                    async with session.post(
                        hub.url + "/jobs", json={"workflow": bench_workflow(index, t_submit)}
                    ) as resp:
                        if resp.status != 201:
                            raise RuntimeError(
                                f"POST /jobs answered {resp.status}: {await resp.text()}"
                            )

                await submit(0, time.time())  # creates the hub's fixed keys before the baseline
                before_keys = client.dbsize()
                before.update(used=int(client.info("memory")["used_memory"]), keys=before_keys)
                await submit_saturated(submit, jobs, 64, first=1)

        before: dict[str, int] = {}
        t0 = time.monotonic()
        asyncio.run(fill())
        fill_s = time.monotonic() - t0
        after_used = int(client.info("memory")["used_memory"])
        payload = len(json.dumps(bench_workflow(123456, time.time()), separators=(",", ":")))
        per_job = (after_used - before["used"]) / jobs
        return {
            "jobs": jobs,
            "used_memory_before": before["used"],
            "used_memory_after": after_used,
            "bytes_per_job": per_job,
            "payload_bytes": payload,
            "bytes_per_job_beyond_payload": per_job - payload,
            "keys_per_job": (client.dbsize() - before["keys"]) / jobs,
            "submit_jobs_per_s": jobs / fill_s,
        }
    finally:
        hub.stop()
        client.flushdb()
        client.close()


def run(
    quick: bool, workers: int = 1000, jobs: int | None = None
) -> tuple[list[Table], dict[str, Any]]:
    n_jobs = jobs or (10_000 if quick else 20_000)
    window = 5.0 if quick else 15.0
    raw: dict[str, Any] = {}
    table = Table("Scale", ["measure", "value"])
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as server:
        try:
            cpu = hub_cpu_with_workers(server.url, tmp / "logs", workers, window, heartbeat_s=5.0)
            raw["workers"] = cpu
            table.add(
                f"hub CPU, {workers} workers heartbeating every {cpu['heartbeat_s']:g} s"
                " (% of one core)",
                cpu["hub_cpu_percent"],
            )
            table.add("hub CPU, no workers (% of one core)", cpu["hub_cpu_percent_no_workers"])
            table.add(f"seconds to connect {workers} workers", cpu["connect_s"])
        except Exception as exc:
            table.notes.append(f"workers: failed: {type(exc).__name__}: {exc}")
        try:
            mem = memory_per_job(server.url, tmp / "logs", n_jobs)
            raw["memory"] = mem
            table.add(f"Redis bytes per queued job ({n_jobs:,} jobs)", mem["bytes_per_job"])
            table.add("  of which the workflow payload", float(mem["payload_bytes"]))
            table.add("  beyond the payload", mem["bytes_per_job_beyond_payload"])
            table.add("Redis keys per queued job", mem["keys_per_job"])
            table.add("POST /jobs rate while filling (jobs/s)", mem["submit_jobs_per_s"])
        except Exception as exc:
            table.notes.append(f"memory: failed: {type(exc).__name__}: {exc}")
    table.notes.append(
        "CPU from /proc/PID/stat utime+stime over the window; memory from INFO used_memory"
    )
    return [table], raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    tables, raw = run(args.quick, args.workers, args.jobs)
    emit("scale", tables, raw)


if __name__ == "__main__":
    main()
