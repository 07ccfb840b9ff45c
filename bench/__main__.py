"""`python -m bench [--quick] [--only dispatch,relay,orchestrator,scale,cli] [--profile]`: every
benchmark in turn; each prints its table, and all tables also go to bench/results/ as JSON and
as one markdown file (bench/results/summary.md) for the README's Performance section."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench import cli_start, dispatch, orchestrator_bench, relay, scale
from bench.report import Table, emit, render_text, write_markdown

BENCHMARKS: dict[str, Callable[[argparse.Namespace], tuple[list[Table], Any]]] = {
    "dispatch": lambda a: dispatch.run(a.quick, a.workers, True, a.profile),
    "relay": lambda a: relay.run(a.quick),
    "orchestrator": lambda a: orchestrator_bench.run(a.quick),
    "scale": lambda a: scale.run(a.quick),
    "cli": lambda a: cli_start.run(a.quick),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--workers", type=int, default=4, help="workers per dispatch system")
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
    print("\n".join(render_text(t) for t in all_tables))
    print(f"\nall benchmarks took {time.monotonic() - t0:.0f} s; markdown: {path}")


if __name__ == "__main__":
    main()
