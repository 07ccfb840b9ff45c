"""Issue #16's goals judged from one run's results (bench/results/*.json): one row per goal with
the measured value(s), the ratio to the goal or to the peer, "reached" or "not reached" (or "not
measured" when the run did not record the figure), and where to look for what bounds it.

No verdict is written down anywhere: each comes from the numbers in the result files.

`python -m bench.goals [--results DIR]` prints the table and writes goals.md and goals.json."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, Table, render_markdown
from bench.stats import median, percentile

REACHED = "reached"
NOT_REACHED = "not reached"
NOT_MEASURED = "not measured"

# Targets, as issue #16 states them.
REALISTIC_MAX_X = 2.0
P99_MAX_MS = 10.0
P99_MAX_X_BEST_PEER = 2.0
RELAY_P50_MAX_MS = 3.0
HELP_MAX_MS = 150.0
STATUS_MAX_MS = 300.0
START_ALL_MAX_X = 0.5
WORKERS_CPU_MAX_PERCENT = 5.0

HUB = "wgpu hub"
PROFILE_NAMES = ("hub-profile.txt", "hub-profile.html", "hub-profile.prof")

Results = Mapping[str, Mapping[str, Any]]


@dataclass
class GoalResult:
    goal: str
    measured: str
    ratio: str
    verdict: str
    evidence: str
    values: dict[str, float] = field(default_factory=dict)


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Every bench/results/NAME.json by NAME (goals.json and summary.json are outputs)."""
    found = {}
    for path in sorted(results_dir.glob("*.json")):
        if path.stem in ("goals", "summary"):
            continue
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def payload(results: Results, name: str) -> Any:
    """A bench's raw results, as `python -m bench` ({name: raw}) or the bench alone wrote them."""
    doc = results.get(name)
    if not doc:
        return None
    raw = doc.get("raw", {})
    return raw[name] if isinstance(raw, dict) and name in raw else raw


def _when(results: Results, name: str) -> str:
    machine = (results.get(name) or {}).get("machine", {})
    load = machine.get("load_average_1_5_15") or [math.nan]
    return f"{name}.json ({machine.get('when_utc', '?')} UTC, load {load[0]:.1f})"


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _verdict(ok: bool) -> str:
    return REACHED if ok else NOT_REACHED


def _missing(goal: str, why: str) -> GoalResult:
    return GoalResult(goal, "-", "-", NOT_MEASURED, " ".join(why.split()))  # one line


# ------------------------------------------------------------------ dispatch (no-op jobs)


def _levels(results: Results) -> dict[int, dict[str, list[dict[str, Any]]]]:
    raw = payload(results, "dispatch")
    if not isinstance(raw, dict):
        return {}
    out = {}
    for level, runs in raw.items():
        if str(level).isdigit() and isinstance(runs, dict):
            out[int(level)] = runs
    return out


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if not r.get("error")]


def _med(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], Any]) -> float:
    return median(pick(r) for r in _ok(runs))


def _field(runs: list[dict[str, Any]], key: str) -> float:
    return median(r.get(key, math.nan) for r in _ok(runs))


def _split(runs: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """(the hub's name, the peers): the hub is the first `wgpu hub...` entry; the other hub
    entries are --what-if variants, not peers."""
    hub = next((name for name in runs if name.startswith(HUB)), "")
    peers = {name: rs for name, rs in runs.items() if not name.startswith(HUB) and _ok(rs)}
    return hub, peers


def _p99(r: dict[str, Any]) -> Any:
    return (r.get("latency") or {}).get("p99_ms", math.nan)


def _cpu_split(runs: list[dict[str, Any]]) -> str:
    parts = []
    for part in ("hub", "workers", "redis", "submitter"):
        value = median((r.get("cpu_percent") or {}).get(part, math.nan) for r in _ok(runs))
        if not math.isnan(value):
            parts.append(f"{part} {value:.0f} %")
    waits = []
    for part in ("hub", "workers", "redis", "submitter"):
        value = median(
            (r.get("runqueue_wait_percent") or {}).get(part, math.nan) for r in _ok(runs)
        )
        if not math.isnan(value):
            waits.append(f"{part} {value:.0f} %")
    return _join(
        "CPU at saturation (% of one core): " + ", ".join(parts) if parts else "",
        "waiting for a core (run queue, % of the phase): " + ", ".join(waits) if waits else "",
    )


def _profile(results_dir: Path | None) -> str:
    """Where the run's hub profile is, with the hub's CPU time over its wall time from the text
    profile (pyinstrument's "Duration: 13.1  CPU time: 2.9"): a hub far from 100 % waits."""
    if results_dir is None:
        return ""
    for name in PROFILE_NAMES:
        path = results_dir / name
        if not path.exists():
            continue
        found = ""
        if path.suffix == ".txt":
            head = path.read_text(errors="replace")[:2000]
            times = re.search(r"Duration:\s*([\d.]+)\s+CPU time:\s*([\d.]+)", head)
            if times:
                wall, cpu = float(times.group(1)), float(times.group(2))
                found = f" (the hub on CPU {cpu:.1f} s of {wall:.1f} s, {100 * cpu / wall:.0f} %)"
        return f"hub profile: bench/results/{name}{found}"
    return ""


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def redis_noop(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    """Redis per no-op job <= Dramatiq's, in Redis CPU µs and in commands: end to end at 4
    consumers (dispatch), and in isolation when bench.redis_cost ran."""
    goal = "Redis per no-op job <= Dramatiq's (Redis CPU µs and commands)"
    rows = []
    levels = _levels(results)
    level = 4 if 4 in levels else min(levels, default=0)
    runs = levels.get(level, {})
    hub, peers = _split(runs)
    dramatiq = next((n for n in peers if n.startswith("Dramatiq")), "")
    if hub and dramatiq and _ok(runs[hub]):
        ours_us = _med(runs[hub], lambda r: r.get("redis_cpu_us_per_job", math.nan))
        ours_n = _med(runs[hub], lambda r: r.get("redis_calls_per_job", math.nan))
        theirs_us = _med(peers[dramatiq], lambda r: r.get("redis_cpu_us_per_job", math.nan))
        theirs_n = _med(peers[dramatiq], lambda r: r.get("redis_calls_per_job", math.nan))
        rows.append(
            _against_dramatiq(
                f"{goal}, end to end at {level} consumers",
                (ours_us, ours_n, theirs_us, theirs_n),
                0,
                _join(_when(results, "dispatch"), _med_top(runs[hub]), _profile(results_dir)),
            )
        )
    else:
        rows.append(_missing(f"{goal}, end to end", "no hub and Dramatiq rows in dispatch.json"))
    isolated = payload(results, "redis_cost")
    systems = isolated.get("systems", {}) if isinstance(isolated, dict) else {}
    ours_sys = systems.get(HUB)
    theirs_sys = next((v for k, v in systems.items() if k.startswith("Dramatiq")), None)
    if ours_sys and theirs_sys:
        ours_us, theirs_us = (
            median(ours_sys["cpu_us_per_job"]),
            median(theirs_sys["cpu_us_per_job"]),
        )
        ours_n = median(ours_sys["commands_per_job"])
        theirs_n = median(theirs_sys["commands_per_job"])
        rows.append(
            _against_dramatiq(
                f"{goal}, Redis alone (bench.redis_cost)",
                (ours_us, ours_n, theirs_us, theirs_n),
                1,
                _join(_when(results, "redis_cost"), "per-command split: redis_cost.md"),
            )
        )
    return rows


def _against_dramatiq(
    goal: str, figures: tuple[float, float, float, float], digits: int, evidence: str
) -> GoalResult:
    """One Redis-per-job row: (our µs, our commands, Dramatiq's µs, Dramatiq's commands)."""
    ours_us, ours_n, theirs_us, theirs_n = figures
    x_us, x_n = ours_us / theirs_us, ours_n / theirs_n
    return GoalResult(
        goal,
        f"hub {_num(ours_us, digits)} µs, {_num(ours_n, 1)} commands; Dramatiq"
        f" {_num(theirs_us, digits)} µs, {_num(theirs_n, 1)} commands",
        f"{_x(x_us)} µs, {_x(x_n)} commands",
        _verdict(x_us <= 1.0 and x_n <= 1.0),
        evidence,
        {
            "hub_us": ours_us,
            "hub_commands": ours_n,
            "dramatiq_us": theirs_us,
            "dramatiq_commands": theirs_n,
            "x_us": x_us,
            "x_commands": x_n,
        },
    )


def _med_top(runs: list[dict[str, Any]]) -> str:
    """The hub's most expensive Redis commands (commandstats µs per job) of its first run."""
    ok = _ok(runs)
    top = (ok[0].get("redis_top_commands") or {}) if ok else {}
    if not top:
        return ""
    return "top Redis commands (µs/job): " + ", ".join(
        f"{name} {usec:.0f}" for name, usec in list(top.items())[:3]
    )


def dispatch_ahead(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    """jobs/s and drain ahead of every peer at each concurrency (ratios of the medians)."""
    rows = []
    levels = _levels(results)
    for level in sorted(levels) or [4, 32]:
        goal = f"jobs/s and drain ahead of every peer at {level} consumers"
        runs = levels.get(level, {})
        hub, peers = _split(runs)
        if not hub or not peers or not _ok(runs[hub]):
            rows.append(_missing(goal, "no hub or no peer results in dispatch.json"))
            continue
        values: dict[str, float] = {}
        cells = []
        worst: dict[str, tuple[float, str]] = {}
        for key, label in (("jobs_per_s", "jobs/s"), ("drain_jobs_per_s", "drain")):
            ours = _field(runs[hub], key)
            by_peer = {name: _field(rs, key) for name, rs in peers.items()}
            best = max(by_peer, key=lambda n: by_peer[n])
            x = ours / by_peer[best]
            worst[label] = (x, best)
            values[f"hub_{key}"] = ours
            values[f"best_peer_{key}"] = by_peer[best]
            values[f"x_{key}"] = x
            cells.append(f"{label}: hub {_num(ours)}, best peer {_num(by_peer[best])} ({best})")
        reached = all(x > 1.0 for x, _ in worst.values())
        rows.append(
            GoalResult(
                goal,
                "; ".join(cells),
                ", ".join(f"{_x(x)} {label}" for label, (x, _) in worst.items()),
                _verdict(reached),
                _join(_when(results, "dispatch"), _cpu_split(runs[hub]), _profile(results_dir)),
                values,
            )
        )
    return rows


def p99_half_load(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    rows = []
    levels = _levels(results)
    for level in sorted(levels) or [4, 32]:
        goal = (
            f"p99 at half load <= {P99_MAX_MS:g} ms and <= {P99_MAX_X_BEST_PEER:g}x the best"
            f" peer's, {level} consumers"
        )
        runs = levels.get(level, {})
        hub, peers = _split(runs)
        if not hub or not peers or not _ok(runs[hub]):
            rows.append(_missing(goal, "no hub or no peer results in dispatch.json"))
            continue
        ours = _med(runs[hub], _p99)
        by_peer = {name: _med(rs, _p99) for name, rs in peers.items()}
        best = min(by_peer, key=lambda n: by_peer[n])
        x = ours / by_peer[best]
        spread = [_p99(r) for r in _ok(runs[hub])]
        rows.append(
            GoalResult(
                goal,
                f"hub {_num(ours, 1)} ms (runs {_num(min(spread), 1)}-{_num(max(spread), 1)});"
                f" best peer {_num(by_peer[best], 1)} ms ({best})",
                f"{_x(x)} the best peer",
                _verdict(ours <= P99_MAX_MS and x <= P99_MAX_X_BEST_PEER),
                _join(_when(results, "dispatch"), _profile(results_dir)),
                {"hub_p99_ms": ours, "best_peer_p99_ms": by_peer[best], "x_best_peer": x},
            )
        )
    return rows


# ------------------------------------------------------------------ the other benches


def realistic_job(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    """Redis per realistic job <= 2x the minimal job's, raw and net of the stack's idle cost."""
    raw = payload(results, "realjob")
    runs = raw.get("runs", {}) if isinstance(raw, dict) else {}
    kinds = list(runs)
    minimal = next((k for k in kinds if k.startswith("minimal")), "")
    realistic = next((k for k in kinds if k.startswith("realistic")), "")
    rows = []
    for net, label in ((False, "raw"), (True, "net of the stack's idle cost")):
        goal = f"Redis per realistic job <= {REALISTIC_MAX_X:g}x the no-op (minimal) job, {label}"
        if not (minimal and realistic and runs[minimal] and runs[realistic]):
            rows.append(_missing(goal, "no minimal and realistic runs in realjob.json"))
            continue
        prefix = "net_" if net else ""
        values: dict[str, float] = {}
        for key, what in (("redis_cpu_us", "us"), ("redis_calls", "commands")):
            lo = median(r.get(prefix + key, math.nan) for r in runs[minimal])
            hi = median(r.get(prefix + key, math.nan) for r in runs[realistic])
            values[f"minimal_{what}"], values[f"realistic_{what}"] = lo, hi
            values[f"x_{what}"] = hi / lo if lo else math.nan
        idle = raw.get("idle") or []
        idle_cpu = median(i.get("redis_cpu", math.nan) * 1e6 for i in idle)
        rows.append(
            GoalResult(
                goal,
                f"Redis CPU {_num(values['realistic_us'])} vs {_num(values['minimal_us'])} µs,"
                f" commands {_num(values['realistic_commands'], 1)} vs"
                f" {_num(values['minimal_commands'], 1)}",
                f"{_x(values['x_us'])} µs, {_x(values['x_commands'])} commands",
                _verdict(
                    values["x_us"] <= REALISTIC_MAX_X and values["x_commands"] <= REALISTIC_MAX_X
                ),
                _join(
                    _when(results, "realjob"),
                    f"the stack's idle Redis CPU {_num(idle_cpu)} µs/s" if idle else "",
                    "per-command counts: realjob.json runs[].commands",
                ),
                values,
            )
        )
    return rows


def relay_overhead(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    goal = (
        f"relay overhead (hub + worker vs straight to the simulator) <= {RELAY_P50_MAX_MS:g} ms p50"
    )
    raw = payload(results, "relay")
    if not (isinstance(raw, dict) and raw.get("direct") and raw.get("via_hub")):
        return [_missing(goal, "no samples in relay.json")]
    pairs = [b - a for a, b in zip(raw["direct"], raw["via_hub"], strict=False)]
    added = percentile(pairs, 50) * 1000
    straight = percentile(raw["direct"], 50) * 1000
    through = percentile(raw["via_hub"], 50) * 1000
    return [
        GoalResult(
            goal,
            f"added {_num(added, 1)} ms p50 (straight {_num(straight, 1)} ms, through the hub"
            f" {_num(through, 1)} ms, {len(pairs)} pairs)",
            f"{_x(added / RELAY_P50_MAX_MS)} the goal",
            _verdict(added <= RELAY_P50_MAX_MS),
            _join(_when(results, "relay"), _profile(results_dir)),
            {"added_p50_ms": added, "straight_p50_ms": straight, "through_p50_ms": through},
        )
    ]


def cli_start(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    raw = payload(results, "cli")
    samples = raw.get("samples_ms", {}) if isinstance(raw, dict) else {}
    imports = raw.get("heavy_imports", {}) if isinstance(raw, dict) else {}
    floor = median(samples.get("python -c pass", []))
    rows = []
    wanted = [("wgpu --help", HELP_MAX_MS)] + [
        (name, STATUS_MAX_MS) for name in samples if name.startswith("wgpu status")
    ]
    if not any(name.startswith("wgpu status") for name, _ in wanted):
        wanted.append(("wgpu status --json", STATUS_MAX_MS))
    for name, limit in wanted:
        goal = f"`{name}` <= {limit:g} ms (whole process, median)"
        if not samples.get(name):
            rows.append(_missing(goal, "no samples in cli.json"))
            continue
        value = median(samples[name])
        rows.append(
            GoalResult(
                goal,
                f"{_num(value)} ms ({_num(min(samples[name]))}-{_num(max(samples[name]))},"
                f" {len(samples[name])} runs)",
                f"{_x(value / limit)} the goal",
                _verdict(value <= limit),
                _join(
                    _when(results, "cli"),
                    f"`python -c pass` {_num(floor)} ms" if not math.isnan(floor) else "",
                    "heavy imports: " + (", ".join(imports.get(name, [])) or "none"),
                ),
                {"median_ms": value, "python_floor_ms": floor},
            )
        )
    return rows


def start_all(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    goal = f"`wgpu start all` for 8 slots <= {START_ALL_MAX_X:g}x a sequential `docker run` loop"
    raw = payload(results, "orchestrator")
    if raw is None:
        return [_missing(goal, "no orchestrator.json from this run")]
    if not isinstance(raw, dict) or raw.get("skipped") or not raw.get("docker_loop_s"):
        why = (raw or {}).get("skipped") or (raw or {}).get("error") or "no samples"
        said = " ".join(str(why).split())
        if len(said) > 240:  # its start and the end, where the failure is said
            said = f"{said[:80]} ... {said[-160:]}"
        return [_missing(goal, f"orchestrator.json: {said}")]
    ours, loop = float(raw["wgpu_start_s"]), float(raw["docker_loop_s"])
    samples = raw.get("samples_s", {})
    waiting = median(samples.get("loop_wait", []))
    floor = median(samples.get("floor", []))
    x = ours / loop
    return [
        GoalResult(
            goal,
            f"{_num(ours * 1000)} ms vs {_num(loop * 1000)} ms ({raw.get('containers', '?')}"
            " containers)",
            f"{_x(x)} the loop",
            _verdict(x <= START_ALL_MAX_X),
            _join(
                _when(results, "orchestrator"),
                f"the loop waiting for each ComfyUI like `wgpu start`: {_num(waiting * 1000)} ms"
                f" ({_x(ours / waiting)})"
                if not math.isnan(waiting)
                else "",
                "the engine alone (every container created and started at once, no CLI):"
                f" {_num(floor * 1000)} ms, {_x(floor / loop)} the loop"
                if not math.isnan(floor)
                else "",
            ),
            {"wgpu_start_ms": ours * 1000, "docker_loop_ms": loop * 1000, "x_loop": x},
        )
    ]


def thousand_workers(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    goal = f"1,000 connected workers < {WORKERS_CPU_MAX_PERCENT:g} % of a core for the hub"
    raw = payload(results, "scale")
    cpu = raw.get("workers") if isinstance(raw, dict) else None
    if not cpu:
        return [_missing(goal, "no workers measurement in scale.json")]
    value = float(cpu["hub_cpu_percent"])
    return [
        GoalResult(
            goal,
            f"{value:.1f} % with {cpu['workers']:,} workers heartbeating every"
            f" {cpu['heartbeat_s']:g} s ({cpu['hub_cpu_percent_no_workers']:.1f} % with none)",
            f"{_x(value / WORKERS_CPU_MAX_PERCENT)} the goal",
            _verdict(value < WORKERS_CPU_MAX_PERCENT),
            _when(results, "scale"),
            {"hub_cpu_percent": value},
        )
    ]


GOALS: tuple[Callable[[Results, Path | None], list[GoalResult]], ...] = (
    redis_noop,
    realistic_job,
    dispatch_ahead,
    p99_half_load,
    relay_overhead,
    cli_start,
    start_all,
    thousand_workers,
)


def judge(results: Results, results_dir: Path | None = None) -> list[GoalResult]:
    rows: list[GoalResult] = []
    for goal in GOALS:
        try:
            rows += goal(results, results_dir)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            name = goal.__name__.replace("_", " ")
            rows.append(_missing(name, f"results unreadable: {type(exc).__name__}: {exc}"))
    return rows


def table(rows: list[GoalResult]) -> Table:
    out = Table(
        "Issue #16's goals, judged from this run",
        ["goal", "measured", "ratio", "verdict", "evidence"],
    )
    for row in rows:
        out.add(row.goal, row.measured, row.ratio, row.verdict, row.evidence)
    counts = {v: sum(r.verdict == v for r in rows) for v in (REACHED, NOT_REACHED, NOT_MEASURED)}
    out.notes.append(", ".join(f"{n} {v}" for v, n in counts.items()))
    return out


def render_lines(rows: list[GoalResult]) -> str:
    """The goals for a terminal: one line per goal, then its evidence when not reached."""
    out = []
    for row in rows:
        out.append(f"[{row.verdict}] {row.goal}: {row.measured} ({row.ratio})")
        if row.verdict != REACHED:
            out.append(f"    evidence: {row.evidence}")
    return "\n".join(out)


def write(rows: list[GoalResult], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps([asdict(r) for r in rows], indent=2, allow_nan=True)
    (results_dir / "goals.json").write_text(body + "\n")
    path = results_dir / "goals.md"
    path.write_text(render_markdown(table(rows)) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    rows = judge(load_results(args.results), args.results)
    path = write(rows, args.results)
    print(render_lines(rows))
    print(f"\ngoals: {path}")


if __name__ == "__main__":
    main()
