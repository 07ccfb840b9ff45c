"""Dispatch: our hub with N fake workers against Dramatiq, taskiq, arq and rq with N consumers,
on the same Redis, in the same run, at 4 and at 32 consumers, each system 3 times alternated.
`python -m bench.dispatch [--quick] [--consumers 4,32] [--repeats 3] [--no-anchors]
[--what-if] [--profile [html|prof]]` (profiles the hub: pyinstrument, or cProfile with call counts;
written to bench/results/hub-profile.*)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import procs
from bench.anchors import AnchorSystem, cpu_table, dispatch_table, median_of, run_anchor
from bench.drive import DispatchResult, measure
from bench.hub_system import HubProcess, HubSystem
from bench.report import RESULTS_DIR, Table, emit


async def run_hub_dispatch(
    redis_url: str,
    workers: int,
    count: int,
    latency_s: float,
    log_dir: Path,
    profile: Path | None = None,
    worker_args: tuple[str, ...] = (),
    name: str = "wgpu hub",
    processes: int = 0,
) -> DispatchResult:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    hub = HubProcess(redis_url, log_dir, profile=profile).start()
    system = HubSystem(
        hub, redis_url, workers, log_dir, worker_args=worker_args, processes=processes
    )
    system.name = name
    try:
        return await measure(
            system,
            client,
            workers,
            count,
            latency_s,
        )
    finally:
        hub.stop()
        client.flushdb()
        client.close()


# Protocol what-ifs, run with --what-if: the same hub, fake workers that skip a hop.
WHAT_IFS: dict[str, tuple[str, ...]] = {
    "wgpu hub, ready after ack": ("--no-ready-next",),
    "wgpu hub, no started": ("--no-started",),
    "wgpu hub, ready before ack": ("--eager-ready",),
    "wgpu hub, both": ("--no-started", "--eager-ready"),
}


@dataclass(frozen=True)
class Contender:
    """One system at one concurrency: `processes` worker processes, each taking `per_process`
    jobs at a time (the hub: that many worker connections per process)."""

    name: str
    kind: str  # "hub", or one of bench.anchors.ANCHORS
    processes: int
    per_process: int = 1

    @property
    def consumers(self) -> int:
        return self.processes * self.per_process


def contenders(consumers: int) -> list[Contender]:
    """Equal consumers: one job at a time per process up to 4 (like GPUs); above, as Dramatiq's
    defaults do it (processes x threads), every system with the same split."""
    if consumers <= 4:
        return [
            Contender("wgpu hub", "hub", consumers),
            Contender(f"Dramatiq ({consumers} x 1 thread)", "dramatiq", consumers),
            Contender(f"taskiq RedisStreamBroker ({consumers} x 1 task)", "taskiq", consumers),
            Contender("arq defaults", "arq", consumers),
            Contender("arq, polling 10 ms", "arq-tuned", consumers),
            Contender("rq SimpleWorker", "rq", consumers),
        ]
    processes = 4
    split = consumers // processes
    return [
        Contender(f"wgpu hub ({processes} x {split} workers)", "hub", processes, split),
        Contender(f"Dramatiq ({processes} x {split} threads)", "dramatiq", processes, split),
        Contender(f"taskiq ({processes} x {split} tasks)", "taskiq", processes, split),
    ]


async def run_contender(
    contender: Contender,
    redis_url: str,
    count: int,
    latency_s: float,
    log_dir: Path,
    profile: Path | None = None,
    worker_args: tuple[str, ...] = (),
) -> DispatchResult:
    if contender.kind != "hub":
        system = AnchorSystem(
            contender.kind,
            redis_url,
            contender.processes,
            log_dir,
            contender.per_process,
            contender.name,
        )
        return await run_anchor(system, count, latency_s)
    return await run_hub_dispatch(
        redis_url,
        contender.consumers,
        count,
        latency_s,
        log_dir,
        profile,
        worker_args,
        contender.name,
        contender.processes,
    )


Runs = dict[str, list[DispatchResult]]

PARTS = ("hub", "workers", "redis", "submitter")


def _us_per_job(cpu_percent: dict[str, float], rate: float, part: str = "") -> float:
    """CPU µs per job of one part (all parts when `part` is empty) at `rate` jobs/s."""
    if not rate or math.isnan(rate):
        return math.nan
    percent = cpu_percent.get(part, math.nan) if part else sum(cpu_percent.values())
    return percent * 1e4 / rate


def cpu_per_job_table(runs: Runs, consumers: int) -> Table:
    """What bounds jobs/s where every part shares the machine's cores: CPU per job, per part,
    and the rate those cores would allow if nothing else ran; the run-queue wait says whether
    a part waited for a core (the machine) rather than on another part."""
    cores = os.cpu_count() or 1
    table = Table(
        f"CPU per job at {consumers} consumers (µs, all processes; the machine has {cores} cores)",
        [
            "system",
            *(f"{p} sat" for p in PARTS),
            "total sat",
            "total drain",
            f"{cores}-core ceiling jobs/s (sat / drain)",
            "run-queue wait % (hub / workers)",
        ],
    )
    for name, results in runs.items():
        sat = median_of(results, lambda r: _us_per_job(r.cpu_percent, r.jobs_per_s))
        drain = median_of(results, lambda r: _us_per_job(r.drain_cpu_percent, r.drain_jobs_per_s))
        hub_wait = median_of(results, lambda r: r.runqueue_wait_percent.get("hub", math.nan))
        workers_wait = median_of(
            results, lambda r: r.runqueue_wait_percent.get("workers", math.nan)
        )
        table.add(
            name,
            *(
                median_of(results, lambda r, p=p: _us_per_job(r.cpu_percent, r.jobs_per_s, p))
                for p in PARTS
            ),
            sat,
            drain,
            f"{cores * 1e6 / sat:,.0f} / {cores * 1e6 / drain:,.0f}"
            if sat > 0 and drain > 0
            else "-",
            f"{hub_wait:.0f} / {workers_wait:.0f}" if not math.isnan(workers_wait) else "-",
        )
    table.notes += [
        "µs/job: each part's CPU (/proc) over a phase divided by the jobs done in it, median of"
        " the runs; sat = saturated (submitter running), drain = pre-filled queue",
        "ceiling: cores x 1e6 / total µs per job, the most those cores allow with every part"
        " on them; a system below its ceiling on a quiet machine waits on something",
        "run-queue wait: % of the saturated phase a part was runnable but not running"
        " (/proc/PID/task/*/schedstat, summed over threads and processes)",
    ]
    return table


def run(
    quick: bool,
    consumers: Sequence[int] = (4, 32),
    anchors: bool = True,
    profile: str = "",
    what_if: bool = False,
    repeats: int = 3,
) -> tuple[list[Table], dict[int, Runs]]:
    """Every contender at each concurrency, `repeats` rounds with the systems alternated
    within each round, so that load from elsewhere on the machine falls on all of them."""
    count = 1000 if quick else 3000
    latency_s = 2.0 if quick else 4.0
    by_level: dict[int, Runs] = {}
    profile_path = RESULTS_DIR / f"hub-profile.{profile}" if profile else None
    if profile_path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as server:
        logs = tmp / "logs"
        for level in consumers:
            field = contenders(level) if anchors else contenders(level)[:1]
            if what_if and level == consumers[0]:
                field += [Contender(name, "hub", level) for name in WHAT_IFS]
            runs: Runs = {c.name: [] for c in field}
            for rep in range(repeats):
                for contender in field:
                    print(f"dispatch: {contender.name} ({rep + 1}/{repeats}) ...", flush=True)
                    result = asyncio.run(
                        run_contender(
                            contender,
                            server.url,
                            count,
                            latency_s,
                            logs,
                            profile_path if rep == 0 and contender.kind == "hub" else None,
                            WHAT_IFS.get(contender.name, ()),
                        )
                    )
                    if result.error:
                        print(f"  {contender.name} failed: {result.error}", flush=True)
                    runs[contender.name].append(result)
                    if contender.kind == "hub" and profile_path:
                        profile_path = None  # one profile: the first hub run
            by_level[level] = runs
    tables = []
    for level, runs in by_level.items():
        tables += [dispatch_table(runs, level), cpu_table(runs, level)]
        tables.append(cpu_per_job_table(runs, level))
    return tables, by_level


def add_profile_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--profile [html|prof]`: the hub's profiler (`html` when given bare, "" when absent)."""
    parser.add_argument(
        "--profile", nargs="?", const="html", default="", choices=["html", "prof"], help=help_text
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--consumers", default="4,32", help="comma-separated concurrencies (default 4,32)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds per system")
    parser.add_argument("--no-anchors", action="store_true")
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also run the hub with fake workers that skip `started` and/or send `ready` early",
    )
    add_profile_option(
        parser, "profile the hub: html = pyinstrument, prof = cProfile (call counts)"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.consumers.split(",") if n.strip()]
    tables, results = run(
        args.quick, levels, not args.no_anchors, args.profile, args.what_if, args.repeats
    )
    emit("dispatch", tables, {"dispatch": results})


if __name__ == "__main__":
    main()
