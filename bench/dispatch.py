"""Dispatch: our hub with N fake workers against arq, rq and Dramatiq with N workers, on the
same Redis, in the same run. `python -m bench.dispatch [--quick] [--workers N] [--no-anchors]
[--what-if] [--profile [html|prof]]` (profiles the hub: pyinstrument, or cProfile with call counts;
written to bench/results/hub-profile.*)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import redis

from bench import procs
from bench.anchors import ANCHORS, cpu_table, dispatch_table, run_anchor
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
) -> DispatchResult:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    hub = HubProcess(redis_url, log_dir, profile=profile).start()
    system = HubSystem(hub, redis_url, workers, log_dir, worker_args=worker_args)
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


def run(
    quick: bool,
    workers: int = 4,
    anchors: bool = True,
    profile: str = "",
    what_if: bool = False,
) -> tuple[list[Table], list[DispatchResult]]:
    count = 1000 if quick else 10_000
    latency_s = 3.0 if quick else 8.0
    results = []
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as server:
        print("dispatch: wgpu hub ...", flush=True)
        profile_path = RESULTS_DIR / f"hub-profile.{profile}" if profile else None
        if profile_path:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        logs = tmp / "logs"
        results.append(
            asyncio.run(run_hub_dispatch(server.url, workers, count, latency_s, logs, profile_path))
        )
        if results[0].error:
            print(f"  hub failed: {results[0].error}", flush=True)
            hub_log = logs / "hub.log"
            print(hub_log.read_text()[-3000:] if hub_log.exists() else "", flush=True)
        for name, flags in WHAT_IFS.items() if what_if else ():
            print(f"dispatch: {name} ...", flush=True)
            results.append(
                asyncio.run(
                    run_hub_dispatch(server.url, workers, count, latency_s, logs, None, flags, name)
                )
            )
        for name in ANCHORS if anchors else ():
            print(f"dispatch: {name} ...", flush=True)
            results.append(
                asyncio.run(run_anchor(name, server.url, workers, count, latency_s, logs))
            )
    return [dispatch_table(results), cpu_table(results)], results


def add_profile_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--profile [html|prof]`: the hub's profiler (`html` when given bare, "" when absent)."""
    parser.add_argument(
        "--profile", nargs="?", const="html", default="", choices=["html", "prof"], help=help_text
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
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
    tables, results = run(args.quick, args.workers, not args.no_anchors, args.profile, args.what_if)
    emit("dispatch", tables, {"dispatch": results})


if __name__ == "__main__":
    main()
