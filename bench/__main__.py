"""`python -m bench [--quick] [--only dispatch,realjob,relay,orchestrator,scale,cli,outputs,sched]
[--profile]`:
every benchmark in turn; each prints its table, and all tables also go to bench/results/ as JSON
and as one markdown file (bench/results/summary.md) for the README's Performance section. The
two charts (docs/bench-*.png) are drawn from this run's dispatch and real-job results."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench import (
    charts,
    cli_start,
    dispatch,
    orchestrator_bench,
    outputs_bench,
    real_job,
    relay,
    scale,
    sched,
)
from bench.report import Table, emit, render_text, write_markdown

BENCHMARKS: dict[str, Callable[[argparse.Namespace], tuple[list[Table], Any]]] = {
    "dispatch": lambda a: dispatch.run(
        a.quick, [int(n) for n in a.consumers.split(",")], True, a.profile, repeats=a.repeats
    ),
    "realjob": lambda a: real_job.run(a.quick),
    "relay": lambda a: relay.run(a.quick),
    "orchestrator": lambda a: orchestrator_bench.run(a.quick),
    "scale": lambda a: scale.run(a.quick),
    "cli": lambda a: cli_start.run(a.quick),
    "outputs": lambda a: outputs_bench.run(a.quick),
    "sched": lambda a: sched.run(a.quick),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--consumers", default="4,32", help="dispatch concurrencies (4,32)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated dispatch rounds")
    dispatch.add_profile_option(
        parser, "profile the hub during dispatch: html = pyinstrument, prof = cProfile"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}: pick from {', '.join(BENCHMARKS)}"
        )
    all_tables: list[Table] = []
    t0 = time.monotonic()
    for name in names:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        tables, raw = BENCHMARKS[name](args)
        emit(name, tables, {name: raw, "quick": args.quick})
        all_tables += tables
        print(f"== {name} took {time.monotonic() - started:.0f} s\n", flush=True)
    path = write_markdown("summary", all_tables)
    if {"dispatch", "realjob"} <= set(names):
        for chart in charts.draw():
            print(f"chart: {chart}")
    print("\n".join(render_text(t) for t in all_tables))
    print(f"\nall benchmarks took {time.monotonic() - t0:.0f} s; markdown: {path}")


if __name__ == "__main__":
    main()
