"""What Redis spends per no-op job, in isolation: the hub's own Redis transitions driven directly
through `redis_api.store.Store` (enqueue, then the worker's `completed` with the next claim
folded in, as `completed.ready_next` does) against Dramatiq's Redis broker path (enqueue, fetch,
ack: its dispatch.lua) on the same server, alternated. No hub process, no workers, no sockets
but the Redis one: only what Redis itself does per job.

`python -m bench.redis_cost [--jobs N] [--workers W] [--repeats R] [--quick] [--against DIR]`
(--against: also the hub scripts of another checkout, e.g. a worktree of main, alternated with
this one's: a before/after ratio from one run).

Per system and phase it reports the Redis process' CPU (INFO cpu, user + sys, net of the idle
rate measured first), commands (INFO commandstats: a script's inner commands, EVALSHA itself
counted once as a call), and which commands the µs went to (commandstats usec; EVALSHA's own
share is its usec minus its inner commands')."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.report import Table, emit
from orchestrator.stack.local_redis import LocalRedis
from redis_api.store import ClaimMiss, ClaimOptions, JobSpec, Store

WORKFLOW = '{"1": {"class_type": "Noop", "inputs": {}}}'
TTL_MS = 3_600_000
LEASE_MS = 30_000
SCRIPT_CALLS = ("evalsha", "eval", "fcall", "fcall_ro")


@dataclass
class Sample:
    jobs: int
    cpu_us: float  # Redis process CPU, net of its idle rate
    calls: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)

    def cpu_per_job(self) -> float:
        return self.cpu_us / self.jobs

    def commands_per_job(self) -> float:
        """Commands Redis ran: every inner command of a script, plus the script call itself."""
        return sum(self.calls.values()) / self.jobs

    def scripts_per_job(self) -> float:
        return sum(self.calls.get(c, 0) for c in SCRIPT_CALLS) / self.jobs


def _cpu_s(client: redis.Redis[bytes]) -> float:
    cpu: Mapping[str, Any] = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class Meter:
    """Redis' own accounting between start() and stop(), less the idle CPU of that interval."""

    def __init__(self, client: redis.Redis[bytes], idle_us_per_s: float) -> None:
        self.client = client
        self.idle_us_per_s = idle_us_per_s
        self._cpu0 = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self.client.config_resetstat()
        self._cpu0 = _cpu_s(self.client)
        self._t0 = time.monotonic()

    def stop(self, jobs: int) -> Sample:
        elapsed = time.monotonic() - self._t0
        cpu_us = (_cpu_s(self.client) - self._cpu0) * 1e6 - self.idle_us_per_s * elapsed
        stats: Mapping[str, Any] = self.client.info("commandstats")
        sample = Sample(jobs, max(0.0, cpu_us))
        for key, row in stats.items():
            name = key.removeprefix("cmdstat_")
            if name in ("info", "config|resetstat"):
                continue  # the meter's own
            sample.calls[name] = int(row["calls"])
            sample.usec[name] = int(row["usec"])
        return sample


def idle_rate(client: redis.Redis[bytes], seconds: float = 1.0) -> float:
    """Redis' CPU µs per second while nobody talks to it (serverCron)."""
    before, t0 = _cpu_s(client), time.monotonic()
    time.sleep(seconds)
    return (_cpu_s(client) - before) * 1e6 / (time.monotonic() - t0)


# ------------------------------------------------------------------------------ wgpu hub


async def hub_round(
    url: str, meter: Meter, jobs: int, workers: int, sources: dict[str, str] | None = None
) -> dict[str, Sample]:
    """`jobs` jobs enqueued, then `workers` workers in turn complete their job and claim the
    next in one script until all ran."""
    prefix = f"rc{uuid.uuid4().hex[:6]}:"
    store = Store.from_url(url, prefix=prefix)
    if sources:  # another checkout's scripts, called the same way (--against)
        store._scripts = {n: store.redis.register_script(src) for n, src in sources.items()}
    spec = JobSpec(workflow_json=WORKFLOW, priority=0, timeout_s=600, max_attempts=3)
    options = ClaimOptions()
    try:
        names = [f"w{i}" for i in range(workers)]
        for name in names:
            await store.hello(name, "s-" + name, "hub", "m", {}, "test", None, LEASE_MS)
        held: dict[str, tuple[str, int]] = {}
        # Prime: every worker holds a job.
        for name in names:
            await store.enqueue(uuid.uuid4().hex, spec)
            claim = await store.claim(name, LEASE_MS, options)
            assert not isinstance(claim, ClaimMiss), claim
            held[name] = (claim.job_id, claim.token)

        # Each phase is metered whole (the meter's own INFO calls stay out of the job's cost):
        # the jobs wait in their lane meanwhile, as under a backlog.
        meter.start()
        for _ in range(jobs):
            await store.enqueue(uuid.uuid4().hex, spec)
        enqueue = meter.stop(jobs)
        meter.start()
        for i in range(jobs):
            name = names[i % workers]
            job_id, token = held[name]
            refused, claim = await store.complete_and_claim(
                job_id, token, name, [], TTL_MS, job_id, (LEASE_MS, options)
            )
            assert not refused and claim is not None and not isinstance(claim, ClaimMiss)
            held[name] = (claim.job_id, claim.token)
        complete = meter.stop(jobs)
        await store.redis.flushdb()
        return {"enqueue": enqueue, "complete+claim": complete}
    finally:
        await store.close()


def _merge(into: Sample, add: Sample) -> None:
    into.jobs += add.jobs
    into.cpu_us += add.cpu_us
    for name, n in add.calls.items():
        into.calls[name] = into.calls.get(name, 0) + n
    for name, us in add.usec.items():
        into.usec[name] = into.usec.get(name, 0) + us


# ------------------------------------------------------------------------------ Dramatiq


def dramatiq_round(url: str, meter: Meter, jobs: int, workers: int) -> dict[str, Sample]:
    """Dramatiq's RedisBroker as its worker uses it: `jobs` enqueued (actor.send), then
    `workers` consumers in turn fetch (prefetch 2, as a 1-thread worker asks) and ack."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    namespace = f"rc{uuid.uuid4().hex[:6]}"
    broker = RedisBroker(url=url, namespace=namespace)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="bench", broker=broker)
    def noop() -> None:
        return None

    consumers = [broker.consume("bench", prefetch=2, timeout=100) for _ in range(workers)]
    # A backlog as deep as the consumers' prefetch, so that no fetch comes back empty.
    for _ in range(2 * workers):
        noop.send()
    meter.start()
    for _ in range(jobs):
        noop.send()
    enqueue = meter.stop(jobs)
    meter.start()
    for i in range(jobs):
        consumer = consumers[i % workers]
        message = next(consumer)
        if message is None:
            raise RuntimeError("a Dramatiq fetch came back empty despite the backlog")
        consumer.ack(message)
    fetch_ack = meter.stop(jobs)
    # Whatever a consumer prefetched is still queued under it: gone with the namespace.
    broker.client.flushdb()
    broker.close()
    return {"enqueue": enqueue, "fetch+ack": fetch_ack}


# ------------------------------------------------------------------------------ report


@dataclass
class Totals:
    cpu: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    scripts: list[float] = field(default_factory=list)
    phases: dict[str, list[Sample]] = field(default_factory=dict)


def _total(phases: dict[str, Sample]) -> Sample:
    total = Sample(0, 0.0)
    for sample in phases.values():
        _merge(total, sample)
    total.jobs = next(iter(phases.values())).jobs
    return total


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def attribution(name: str, phase: str, samples: list[Sample]) -> Table:
    merged = Sample(0, 0.0)
    for s in samples:
        _merge(merged, s)
    jobs = merged.jobs
    inner_usec = sum(u for c, u in merged.usec.items() if c not in SCRIPT_CALLS)
    table = Table(
        f"{name}, {phase}: commands per job (commandstats, all rounds)",
        ["command", "calls/job", "µs/job"],
    )
    rows = sorted(merged.calls, key=lambda c: -merged.usec.get(c, 0))
    for command in rows:
        usec = merged.usec.get(command, 0)
        if command in SCRIPT_CALLS:
            usec -= inner_usec  # the script's own: Lua, argument tables, replies
            command += " (own)"
        table.add(command, merged.calls[command.split()[0]] / jobs, usec / jobs)
    table.notes.append(
        f"Redis CPU µs/job in this phase (process, net of idle): {merged.cpu_per_job():.1f}"
    )
    return table


def scripts_of(checkout: Path) -> dict[str, str]:
    """The hub's script sources as another checkout assembles them (its redis_api/store.py)."""
    code = "import json, redis_api.store as s; print(json.dumps(s._SOURCES))"
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=checkout, capture_output=True, check=True
    )
    sources: dict[str, str] = json.loads(out.stdout)
    return sources


def run(
    jobs: int, workers: int, repeats: int, against: Path | None = None
) -> tuple[list[Table], dict[str, Any]]:
    other = scripts_of(against) if against else None
    with procs.scratch_dir() as tmp:
        server = LocalRedis(data_dir=tmp / "redis").start()
        try:
            client: redis.Redis[bytes] = redis.Redis.from_url(server.url)
            idle = idle_rate(client)
            meter = Meter(client, idle)
            totals: dict[str, Totals] = {"wgpu hub": Totals(), "Dramatiq 2.2": Totals()}
            if other:
                totals[f"wgpu hub at {against}"] = Totals()
            # A warm-up round each (script cache, connection pools, allocator).
            asyncio.run(hub_round(server.url, meter, 200, workers))
            dramatiq_round(server.url, meter, 200, workers)
            for _ in range(repeats):
                for name in totals:
                    if name.startswith("wgpu hub"):
                        sources = None if name == "wgpu hub" else other
                        phases = asyncio.run(hub_round(server.url, meter, jobs, workers, sources))
                    else:
                        phases = dramatiq_round(server.url, meter, jobs, workers)
                    t = totals[name]
                    total = _total(phases)
                    t.cpu.append(total.cpu_per_job())
                    t.commands.append(total.commands_per_job())
                    t.scripts.append(total.scripts_per_job())
                    for phase, sample in phases.items():
                        t.phases.setdefault(phase, []).append(sample)
            client.close()
        finally:
            server.stop()

    summary = Table(
        f"Redis per no-op job, isolated ({workers} workers, {jobs} jobs x {repeats} rounds)",
        ["system", "Redis CPU µs/job", "commands/job", "scripts/job", "x CPU vs Dramatiq"],
    )
    anchor = statistics.median(totals["Dramatiq 2.2"].cpu)
    for name, t in totals.items():
        summary.add(
            name,
            _spread(t.cpu),
            statistics.median(t.commands),
            statistics.median(t.scripts),
            statistics.median(t.cpu) / anchor,
        )
    summary.notes += [
        "median (min-max) of the rounds, systems alternated; CPU: INFO cpu user+sys of the"
        f" Redis process, net of its idle rate ({idle:.0f} µs/s)",
        "commands: commandstats calls, a script's inner commands each, plus the script call",
    ]
    tables = [summary]
    for name, t in totals.items():
        for phase, samples in t.phases.items():
            tables.append(attribution(name, phase, samples))
    raw = {
        "workers": workers,
        "jobs": jobs,
        "repeats": repeats,
        "idle_us_per_s": idle,
        "systems": {
            name: {"cpu_us_per_job": t.cpu, "commands_per_job": t.commands}
            for name, t in totals.items()
        },
    }
    return tables, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per round and system")
    parser.add_argument("--workers", type=int, default=4, help="workers (Dramatiq consumers)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds")
    parser.add_argument("--quick", action="store_true", help="500 jobs, 2 rounds")
    parser.add_argument(
        "--against", type=Path, help="also the hub scripts of this checkout (before/after)"
    )
    args = parser.parse_args()
    jobs, repeats = (500, 2) if args.quick else (args.jobs, args.repeats)
    tables, raw = run(jobs, args.workers, repeats, args.against)
    emit("redis_cost", tables, raw)


if __name__ == "__main__":
    main()
