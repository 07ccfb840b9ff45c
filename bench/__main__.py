"""`python -m bench [--quick] [--only dispatch,profile,redis_cost,...] [--profile html|prof]`:
every benchmark in turn, then issue #16's goals judged from this run's figures.

Each part prints its tables and keeps them in bench/results/ (NAME.json with the raw samples,
NAME.md). The run also writes summary.md and summary.json (the machine, the commit, the load
average at the start, every 30 s and at the end, each part's wall clock, every table),
goals.md and goals.json (bench.goals), and draws the two charts (docs/bench-*.png) from this
run's dispatch and real-job results. `python -m bench.readme` then rewrites README's
Performance section from these files."""

from __future__ import annotations

import argparse
import pstats
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import (
    charts,
    cli_start,
    dispatch,
    goals,
    orchestrator_bench,
    outputs_bench,
    real_job,
    redis_cost,
    relay,
    scale,
    sched,
)
from bench.loadavg import LoadSampler, describe, utc_now
from bench.report import (
    RESULTS_DIR,
    Table,
    emit,
    machine_static,
    render_markdown,
    render_text,
    write_json,
)

Part = Callable[[argparse.Namespace], tuple[list[Table], Any]]


def _profile(args: argparse.Namespace) -> tuple[list[Table], Any]:
    """One more hub run at 4 consumers under the profiler, apart from the measured rounds (a
    profiled hub is slower): the evidence for what bounds the dispatch goals."""
    for stale in RESULTS_DIR.glob("hub-profile.*"):
        stale.unlink()
    # The quick counts (1,000 jobs): enough for a picture of where the hub's time goes.
    tables, by_level = dispatch.run(True, [4], False, args.profile, repeats=1)
    cprofile = RESULTS_DIR / "hub-profile.prof"
    if cprofile.exists():  # cProfile's binary stats: the top of them as text, for the record
        with open(RESULTS_DIR / "hub-profile.txt", "w") as out:
            stats = pstats.Stats(str(cprofile), stream=out)
            stats.sort_stats("cumulative").print_stats(60)
    written = sorted(p.name for p in RESULTS_DIR.glob("hub-profile.*"))
    for table in tables:
        table.title += " (the hub under its profiler: not comparable, not in the goals)"
    return tables, {"files": written, "dispatch": by_level}


BENCHMARKS: dict[str, Part] = {
    "dispatch": lambda a: dispatch.run(
        a.quick, [int(n) for n in a.consumers.split(",")], True, "", repeats=a.repeats
    ),
    "profile": _profile,
    "redis_cost": lambda a: redis_cost.run(500 if a.quick else 2000, 4, 2 if a.quick else 3),
    "realjob": lambda a: real_job.run(a.quick),
    "relay": lambda a: relay.run(a.quick),
    "orchestrator": lambda a: orchestrator_bench.run(a.quick),
    "scale": lambda a: scale.run(a.quick),
    "cli": lambda a: cli_start.run(a.quick),
    "outputs": lambda a: outputs_bench.run(a.quick),
    "sched": lambda a: sched.run(a.quick),
}


def _this_run(started_utc: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """The result files this run wrote: goals are judged from them only."""
    found = goals.load_results(RESULTS_DIR)
    return {
        name: doc
        for name, doc in found.items()
        if name in names and doc.get("machine", {}).get("when_utc", "") >= started_utc
    }


def write_summary(
    run: dict[str, Any], tables: list[Table], goal_rows: list[goals.GoalResult]
) -> Path:
    """summary.json (the run: machine, commit, load, parts, goals) and summary.md (all of it
    in markdown, every table of the run included)."""
    write_json("summary", {**run, "goals": [asdict(g) for g in goal_rows]})
    machine = run["machine"]
    header = (
        f"Measured {run['started_utc']} to {run['ended_utc']} UTC"
        f" ({run['seconds'] / 60:.0f} min) on {machine['cpu'] or 'unknown CPU'},"
        f" {machine['cores']} cores, {machine['memory_gib']} GiB, {machine['os']},"
        f" Python {machine['python']}, Redis {machine['redis'] or '?'},"
        f" commit {machine['commit'] or '?'}; {describe(run['load'])}."
    )
    timing = Table("How long each part took", ["part", "seconds", "load at start", "at end"])
    for part in run["parts"]:
        timing.add(part["name"], part["seconds"], part["load_start"], part["load_end"])
    timing.add("all", run["seconds"], run["load"]["start"], run["load"]["end"])
    body = [render_markdown(t) for t in [goals.table(goal_rows), timing, *tables]]
    path = RESULTS_DIR / "summary.md"
    path.write_text(header + "\n\n" + "\n\n".join(body) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--consumers", default="4,32", help="dispatch concurrencies (4,32)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated dispatch rounds")
    parser.add_argument(
        "--profile",
        default="html",
        choices=["html", "prof"],
        help="the profile part's profiler: html = pyinstrument (.html and .txt), prof = cProfile",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}: pick from {', '.join(BENCHMARKS)}"
        )
    all_tables: list[Table] = []
    parts: list[dict[str, Any]] = []
    started_utc, t0 = utc_now(), time.monotonic()
    machine = machine_static()  # now: the commit measured is the one checked out at the start
    with LoadSampler(interval_s=30.0) as load:
        for name in names:
            began, at_start = time.monotonic(), load.sample(f"{name} start")
            print(f"== {name} (load {at_start.one:.2f})", flush=True)
            tables, raw = BENCHMARKS[name](args)
            emit(name, tables, {name: raw, "quick": args.quick})
            all_tables += tables
            seconds = time.monotonic() - began
            at_end = load.sample(f"{name} end")
            parts.append(
                {
                    "name": name,
                    "seconds": seconds,
                    "started_utc": at_start.when_utc,
                    "load_start": at_start.one,
                    "load_end": at_end.one,
                }
            )
            print(f"== {name} took {seconds:.0f} s\n", flush=True)
    run: dict[str, Any] = {
        "machine": machine,
        "argv": {k: v for k, v in vars(args).items()},
        "started_utc": started_utc,
        "ended_utc": utc_now(),
        "seconds": time.monotonic() - t0,
        "load": load.summary(),
        "parts": parts,
    }
    goal_rows = goals.judge(_this_run(started_utc, names), RESULTS_DIR)
    goals.write(goal_rows, RESULTS_DIR)
    path = write_summary(run, all_tables, goal_rows)
    if {"dispatch", "realjob"} <= set(names):
        for chart in charts.draw():
            print(f"chart: {chart}")
    print("\n".join(render_text(t) for t in all_tables))
    print("\n" + goals.render_lines(goal_rows))
    for part in parts:
        print(f"  {part['name']}: {part['seconds']:.0f} s")
    print(f"\nall benchmarks took {run['seconds']:.0f} s; {describe(run['load'])}")
    print(f"markdown: {path}; goals: {RESULTS_DIR / 'goals.md'}")


if __name__ == "__main__":
    main()
