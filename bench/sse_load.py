"""Do 1,000 open event streams change `POST /jobs` or dispatch latency?

One hub process, fake workers (one process), and 1,000 jobs that wait for ever (a machine that
does not exist): the streams follow those, so each stream costs what a client's stream of a
queued job costs (its backlog read, the once-a-second waiting-reason tick, a key in the one
XREAD). Rounds alternate "no streams" and "1,000 streams held by another process" (the order
swapped each round, so that drift in the machine's load falls on both), and each submits the
same paced load. Per condition and round: p50/p99 of submit latency (the `POST /jobs` round
trip) and of dispatch latency (submit -> the worker has the job, bench.record's clock), and the
hub's CPU; the table shows medians over rounds and their ratio (streams / none).

`python -m bench.sse_load [--rounds 5] [--jobs 300] [--rate 40] [--streams 1000] [--quick]
[--profile FILE]` (FILE.html: pyinstrument, FILE.prof: cProfile, of the whole hub run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import procs
from bench.fake_worker import bench_workflow
from bench.hub_system import HubProcess, wait_workers
from bench.record import STARTS_KEY, read_records
from bench.report import Table, emit
from bench.stats import percentile, ratio

NONE, HELD = "no streams", "streams held"


@dataclass
class Sample:
    """One condition of one round."""

    submit_ms: list[float] = field(default_factory=list)
    dispatch_ms: list[float] = field(default_factory=list)
    hub_cpu_percent: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)  # wall clock, for the hub's GC log
    gc_pauses_ms: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, float]:
        seconds = max(1e-9, self.window[1] - self.window[0])
        return {
            "submit p50 ms": percentile(self.submit_ms, 50),
            "submit p99 ms": percentile(self.submit_ms, 99),
            "dispatch p50 ms": percentile(self.dispatch_ms, 50),
            "dispatch p99 ms": percentile(self.dispatch_ms, 99),
            "hub CPU %": self.hub_cpu_percent,
            "hub GC ms per s (pauses > 1 ms)": sum(self.gc_pauses_ms) / seconds,
            "hub longest GC pause ms": max(self.gc_pauses_ms, default=0.0),
        }


@dataclass
class SseLoadConfig:
    rounds: int = 5
    jobs: int = 300  # per condition and round
    rate: float = 40.0  # submissions per second
    streams: int = 1000
    workers: int = 4


async def _health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/health") as response:
        return dict(await response.json())


async def _wait_streams(
    session: aiohttp.ClientSession, url: str, want: int, at_least: bool, within_s: float = 120
) -> None:
    """Until the hub serves `want` event streams or more (at_least) or at most `want`."""
    deadline = time.monotonic() + within_s
    while True:
        have = int((await _health(session, url)).get("event_streams", -1))
        if (have >= want) if at_least else (0 <= have <= want):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the hub serves {have} event streams, not {want}")
        await asyncio.sleep(0.1)


async def _submit(session: aiohttp.ClientSession, url: str, index: int, sample: Sample) -> None:
    t_submit = time.time()
    t0 = time.monotonic()
    async with session.post(url + "/jobs", json={"workflow": bench_workflow(index, t_submit)}) as r:
        await r.read()
        if r.status != 201:
            raise RuntimeError(f"POST /jobs answered {r.status}")
    sample.submit_ms.append((time.monotonic() - t0) * 1000)


async def _paced_load(
    session: aiohttp.ClientSession,
    url: str,
    client: redis.Redis[bytes],
    cfg: SseLoadConfig,
    first: int,
    hub_pid: int,
) -> Sample:
    sample = Sample()
    client.delete(STARTS_KEY)
    loop = asyncio.get_running_loop()
    cpu0, t_start, wall0 = procs.cpu_seconds(hub_pid), loop.time(), time.time()
    tasks = []
    for i in range(cfg.jobs):
        delay = t_start + i / cfg.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_submit(session, url, first + i, sample)))
    await asyncio.gather(*tasks)
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(client.llen, STARTS_KEY) < cfg.jobs:
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not start within 60 s")
        await asyncio.sleep(0.02)
    elapsed = loop.time() - t_start
    sample.hub_cpu_percent = 100 * (procs.cpu_seconds(hub_pid) - cpu0) / elapsed
    sample.window = (wall0, time.time())
    sample.dispatch_ms = [(start - submit) * 1000 for _, submit, start in read_records(client)]
    return sample


async def _waiting_jobs(session: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    body = {"workflow": {"1": {"class_type": "Waits", "inputs": {}}}}
    body["constraints"] = {"machine_id": "nowhere"}  # type: ignore[assignment]
    ids = []
    for _ in range(count):
        async with session.post(url + "/jobs", json=body) as response:
            ids.append(str((await response.json())["id"]))
    return ids


def _holder(url: str, jobs_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """The streams, in a process of their own (their client's CPU is not the submitter's)."""
    return procs.spawn(procs.module_cmd("bench.sse_load", "--hold", url, str(jobs_file)), log)


async def run_sse_load(cfg: SseLoadConfig, work_dir: Path, profile: Path | None) -> dict[str, Any]:
    gc_log = work_dir / "hub-gc.log"
    with procs.local_redis(work_dir / "redis") as server:
        client = redis.Redis.from_url(server.url)
        hub = HubProcess(
            server.url,
            work_dir,
            profile=profile,
            max_connections_per_ip=0,  # every stream comes from 127.0.0.1
            max_event_streams=max(2000, cfg.streams + 100),
            bench_gc_log=str(gc_log),
        ).start()
        worker_args = ["--hub", hub.url, "--machine", "sse", "--count", str(cfg.workers)]
        workers = procs.spawn(
            procs.module_cmd("bench.fake_worker", *worker_args, "--record-redis", server.url),
            work_dir / "workers.log",
        )
        samples: dict[str, list[Sample]] = {NONE: [], HELD: []}
        load = {"start": os.getloadavg()}
        holder: subprocess.Popen[bytes] | None = None
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as session:
                await wait_workers(session, hub.url, cfg.workers, 30)
                jobs_file = work_dir / "waiting-jobs.txt"
                jobs = await _waiting_jobs(session, hub.url, cfg.streams)
                jobs_file.write_text("\n".join(jobs))
                warm = SseLoadConfig(**{**cfg.__dict__, "jobs": min(100, cfg.jobs)})
                await _paced_load(session, hub.url, client, warm, 10_000_000, hub.pid)
                index = 0
                for round_no in range(cfg.rounds):
                    order = (NONE, HELD) if round_no % 2 == 0 else (HELD, NONE)
                    for condition in order:
                        if condition == HELD:
                            holder = _holder(hub.url, jobs_file, work_dir / "holder.log")
                            await _wait_streams(session, hub.url, cfg.streams, at_least=True)
                        sample = await _paced_load(session, hub.url, client, cfg, index, hub.pid)
                        index += cfg.jobs
                        samples[condition].append(sample)
                        if holder is not None:
                            procs.stop(holder)
                            holder = None
                            await _wait_streams(session, hub.url, 0, at_least=False)
                        print(f"round {round_no + 1} {condition}: {sample.figures()}", flush=True)
        finally:
            procs.stop(holder)
            procs.stop_all([workers])
            hub.stop()
            client.close()
        load["end"] = os.getloadavg()
    logged = gc_log.read_text().splitlines() if gc_log.exists() else []
    pauses = [tuple(map(float, line.split())) for line in logged]
    for sample in samples[NONE] + samples[HELD]:
        start, end = sample.window
        sample.gc_pauses_ms = [ms for when, _, ms in pauses if start <= when <= end]
    return {"samples": samples, "load": load}


def sse_table(cfg: SseLoadConfig, raw: dict[str, Any]) -> Table:
    samples: dict[str, list[Sample]] = raw["samples"]
    held = f"{cfg.streams:,} streams"
    table = Table(
        f"Event streams and latency: {cfg.rounds} alternated rounds of {cfg.jobs} jobs at"
        f" {cfg.rate:g}/s, {cfg.workers} workers, without and with {held} open (medians)",
        ["figure", "no streams", held, "ratio"],
    )
    for name in Sample().figures():
        none = statistics.median(s.figures()[name] for s in samples[NONE])
        some = statistics.median(s.figures()[name] for s in samples[HELD])
        table.add(name, none, some, ratio(some, none))
    start, end = raw["load"]["start"], raw["load"]["end"]
    table.notes.append(
        f"load average (1 min) {start[0]:.1f} at the start, {end[0]:.1f} at the end; the"
        " streams follow 1,000 queued jobs that never run, held by another process"
    )
    per_round = [
        f"{ratio(b.figures()['submit p99 ms'], a.figures()['submit p99 ms']):.2f}"
        for a, b in zip(samples[NONE], samples[HELD], strict=True)
    ]
    table.notes.append(f"submit p99 ratio per round: {', '.join(per_round)}")
    return table


async def hold(url: str, jobs: list[str]) -> None:
    """Open one stream per job and hold them until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout()) as http:
        held = []
        for job_id in jobs:
            response = await http.get(f"{url}/jobs/{job_id}/events")
            held.append(response)
            if len(held) % 100 == 0:
                await asyncio.sleep(0)  # let the first bytes of each arrive
        await stop.wait()
        for response in held:
            response.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--hold":
        asyncio.run(hold(sys.argv[2], Path(sys.argv[3]).read_text().split()))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=300, help="per condition and round")
    parser.add_argument("--rate", type=float, default=40.0, help="submissions per second")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 150 jobs")
    parser.add_argument("--profile", type=Path, default=None, help="profile the hub to FILE")
    args = parser.parse_args()
    cfg = SseLoadConfig(args.rounds, args.jobs, args.rate, args.streams)
    if args.quick:
        cfg.rounds, cfg.jobs = 3, 150
    with procs.scratch_dir() as work_dir, contextlib.ExitStack():
        raw = asyncio.run(run_sse_load(cfg, work_dir, args.profile))
    emit("sse_load", [sse_table(cfg, raw)], {"config": cfg.__dict__, **raw})


if __name__ == "__main__":
    main()
