"""bench.goals: each of issue #16's goals judged from sample result files, the verdict from the
numbers (reached, not reached, or not measured when a figure is missing)."""

from __future__ import annotations

import math
from typing import Any

from bench import goals

MACHINE = {"when_utc": "2026-12-01 15:40:00", "load_average_1_5_15": [0.5, 0.4, 0.3]}


def _run(
    rate: float, drain: float, p99: float, us: float = 100.0, calls: float = 10.0, error: str = ""
) -> dict[str, Any]:
    return {
        "jobs_per_s": rate,
        "drain_jobs_per_s": drain,
        "latency": {"p50_ms": p99 / 3, "p99_ms": p99},
        "cpu_percent": {"hub": 20.0, "workers": 30.0, "redis": 10.0, "submitter": 5.0},
        "runqueue_wait_percent": {"hub": 7.0, "workers": 12.0},
        "redis_cpu_us_per_job": us,
        "redis_calls_per_job": calls,
        "redis_top_commands": {"evalsha": 80.0, "hset": 5.0},
        "error": error,
    }


def _dispatch(levels: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {"dispatch": {"machine": MACHINE, "raw": {"dispatch": levels, "quick": False}}}


def _by_goal(rows: list[goals.GoalResult], words: str) -> goals.GoalResult:
    (row,) = [r for r in rows if words in r.goal]
    return row


def test_the_hub_ahead_of_every_peer_on_both_rates_reaches_the_dispatch_goal() -> None:
    results = _dispatch(
        {
            "4": {
                "wgpu hub": [_run(1000, 1500, 8), _run(1100, 1400, 9), _run(900, 1600, 7)],
                "Dramatiq (4 x 1 thread)": [_run(800, 1000, 5)] * 3,
                "rq SimpleWorker": [_run(400, 500, 4)] * 3,
            }
        }
    )
    row = _by_goal(goals.dispatch_ahead(results), "4 consumers")
    assert row.verdict == goals.REACHED
    assert row.values["hub_jobs_per_s"] == 1000  # the median of three
    assert row.values["best_peer_jobs_per_s"] == 800
    assert math.isclose(row.values["x_jobs_per_s"], 1.25)


def test_one_peer_ahead_on_drain_alone_is_not_reached() -> None:
    results = _dispatch(
        {
            "32": {
                "wgpu hub (4 x 8 workers)": [_run(3000, 4000, 8)],
                "Dramatiq (4 x 8 threads)": [_run(2000, 5000, 8)],
            }
        }
    )
    row = _by_goal(goals.dispatch_ahead(results), "32 consumers")
    assert row.verdict == goals.NOT_REACHED
    assert math.isclose(row.values["x_drain_jobs_per_s"], 0.8)
    assert "Dramatiq" in row.measured
    assert "CPU at saturation (% of one core): hub 20 %, workers 30 %" in row.evidence
    assert "waiting for a core (run queue, % of the phase): hub 7 %, workers 12 %" in row.evidence


def test_failed_runs_and_what_if_variants_are_not_peers() -> None:
    results = _dispatch(
        {
            "4": {
                "wgpu hub": [_run(1000, 1000, 5)],
                "wgpu hub, no started": [_run(5000, 5000, 1)],  # a --what-if variant of ours
                "Dramatiq (4 x 1 thread)": [_run(900, 900, 5)],
                "arq defaults": [_run(9000, 9000, 1, error="TimeoutError: only 3 of 3000")],
            }
        }
    )
    assert _by_goal(goals.dispatch_ahead(results), "4 consumers").verdict == goals.REACHED


def test_p99_must_be_within_10_ms_and_twice_the_best_peer() -> None:
    def verdict(ours: float, best: float) -> str:
        results = _dispatch(
            {
                "4": {
                    "wgpu hub": [_run(1, 1, ours)],
                    "taskiq": [_run(1, 1, best)],
                    "rq": [_run(1, 1, best * 3)],
                }
            }
        )
        return _by_goal(goals.p99_half_load(results), "4 consumers").verdict

    assert verdict(8.0, 5.0) == goals.REACHED
    assert verdict(8.0, 3.0) == goals.NOT_REACHED  # 2.67x the best peer
    assert verdict(12.0, 10.0) == goals.NOT_REACHED  # over 10 ms


def test_redis_per_noop_job_needs_both_fewer_us_and_fewer_commands_than_dramatiq() -> None:
    def verdict(us: float, calls: float) -> goals.GoalResult:
        results = _dispatch(
            {
                "4": {
                    "wgpu hub": [_run(1, 1, 1, us, calls)],
                    "Dramatiq (4 x 1 thread)": [_run(1, 1, 1, 100.0, 12.6)],
                }
            }
        )
        return goals.redis_noop(results)[0]

    assert verdict(90.0, 12.0).verdict == goals.REACHED
    worse = verdict(90.0, 50.0)
    assert worse.verdict == goals.NOT_REACHED
    assert math.isclose(worse.values["x_commands"], 50.0 / 12.6)
    assert "evalsha" in worse.evidence  # the hub's top Redis commands point at the cost


def test_isolated_redis_cost_gets_its_own_row_when_recorded() -> None:
    results = {
        **_dispatch(
            {"4": {"wgpu hub": [_run(1, 1, 1)], "Dramatiq (4 x 1 thread)": [_run(1, 1, 1)]}}
        ),
        "redis_cost": {
            "machine": MACHINE,
            "raw": {
                "systems": {
                    "wgpu hub": {
                        "cpu_us_per_job": [80.0, 70.0, 90.0],
                        "commands_per_job": [14.0] * 3,
                    },
                    "Dramatiq 2.2": {"cpu_us_per_job": [75.0] * 3, "commands_per_job": [13.0] * 3},
                }
            },
        },
    }
    row = _by_goal(goals.redis_noop(results), "Redis alone")
    assert row.verdict == goals.NOT_REACHED  # 80 > 75
    assert row.values["hub_us"] == 80.0


def _realjob(minimal: dict[str, float], realistic: dict[str, float]) -> dict[str, Any]:
    raw = {
        "runs": {"minimal job (1 node)": [minimal], "realistic job (30 steps)": [realistic]},
        "idle": [{"redis_cpu": 0.004}],
    }
    return {"realjob": {"machine": MACHINE, "raw": {"realjob": raw, "quick": False}}}


def test_realistic_job_is_judged_raw_and_net_of_the_idle_cost_separately() -> None:
    minimal = {
        "redis_cpu_us": 1000.0,
        "redis_calls": 100.0,
        "net_redis_cpu_us": 900.0,
        "net_redis_calls": 95.0,
    }
    realistic = {
        "redis_cpu_us": 2600.0,
        "redis_calls": 150.0,
        "net_redis_cpu_us": 1500.0,
        "net_redis_calls": 95.0,
    }
    raw, net = goals.realistic_job(_realjob(minimal, realistic))
    assert (raw.verdict, net.verdict) == (goals.NOT_REACHED, goals.REACHED)
    assert math.isclose(raw.values["x_us"], 2.6)
    assert math.isclose(net.values["x_commands"], 1.0)


def test_relay_overhead_is_the_median_of_paired_differences() -> None:
    def verdict(added_s: float) -> goals.GoalResult:
        direct = [0.002, 0.001, 0.003]
        raw = {"direct": direct, "via_hub": [d + added_s for d in direct]}
        return goals.relay_overhead({"relay": {"machine": MACHINE, "raw": {"relay": raw}}})[0]

    assert verdict(0.0025).verdict == goals.REACHED
    over = verdict(0.004)
    assert over.verdict == goals.NOT_REACHED
    assert math.isclose(over.values["added_p50_ms"], 4.0)


def test_cli_start_judges_help_and_each_status_backend() -> None:
    raw = {
        "samples_ms": {
            "python -c pass": [20.0] * 3,
            "wgpu --help": [140.0, 150.0, 400.0],
            "wgpu status --json (process backend)": [250.0] * 3,
            "wgpu status --json (docker backend)": [301.0] * 3,
        },
        "heavy_imports": {"wgpu status --json (docker backend)": ["docker"]},
    }
    rows = goals.cli_start({"cli": {"machine": MACHINE, "raw": raw}})  # as bench.cli_start wrote it
    verdicts = {r.goal.split("`")[1]: r.verdict for r in rows}
    assert verdicts == {
        "wgpu --help": goals.REACHED,
        "wgpu status --json (process backend)": goals.REACHED,
        "wgpu status --json (docker backend)": goals.NOT_REACHED,
    }
    assert "docker" in rows[-1].evidence


def test_start_all_and_the_thousand_workers() -> None:
    orch = {
        "wgpu_start_s": 3.0,
        "docker_loop_s": 7.0,
        "containers": 16,
        "samples_s": {"loop_wait": [8.0], "floor": [2.1]},
    }
    (start,) = goals.start_all(
        {"orchestrator": {"machine": MACHINE, "raw": {"orchestrator": orch}}}
    )
    assert start.verdict == goals.REACHED
    assert "started at once, no CLI): 2,100 ms, 0.30x the loop" in start.evidence
    workers = {
        "workers": 1000,
        "heartbeat_s": 5.0,
        "hub_cpu_percent": 5.0,
        "hub_cpu_percent_no_workers": 0.8,
    }
    (scale,) = goals.thousand_workers({"scale": {"machine": MACHINE, "raw": {"workers": workers}}})
    assert scale.verdict == goals.NOT_REACHED  # the goal is strictly under 5 %


def test_a_skipped_or_missing_part_is_not_measured_never_reached() -> None:
    skipped = {"orchestrator": {"machine": MACHINE, "raw": {"skipped": "no Docker Engine"}}}
    assert goals.start_all(skipped)[0].verdict == goals.NOT_MEASURED
    failed = {"orchestrator": {"machine": MACHINE, "raw": {"error": "start failed:\ngpu3: busy"}}}
    (row,) = goals.start_all(failed)
    assert row.evidence == "orchestrator.json: start failed: gpu3: busy"  # one line, for a table
    rows = goals.judge({})
    assert rows and {r.verdict for r in rows} == {goals.NOT_MEASURED}


def test_goals_are_written_as_json_and_markdown(tmp_path: Any) -> None:
    rows = goals.judge(_dispatch({"4": {"wgpu hub": [_run(2, 2, 1)], "rq": [_run(1, 1, 1)]}}))
    goals.write(rows, tmp_path)
    assert (
        "| jobs/s and drain ahead of every peer at 4 consumers |"
        in (tmp_path / "goals.md").read_text()
    )
    assert '"verdict": "reached"' in (tmp_path / "goals.json").read_text()


def test_the_hub_profile_of_the_run_is_evidence_with_its_cpu_share(tmp_path: Any) -> None:
    (tmp_path / "hub-profile.txt").write_text(
        "  _     ._   __/__   _ _  _  _ _/_   Recorded: 13:58:23  Samples:  7867\n"
        " /_//_/// /_\\ / //_// / //_'/ //     Duration: 10.000    CPU time: 2.500\n"
    )
    results = _dispatch({"4": {"wgpu hub": [_run(1, 1, 50)], "rq": [_run(2, 2, 5)]}})
    (row,) = goals.p99_half_load(results, tmp_path)
    assert row.verdict == goals.NOT_REACHED
    assert "bench/results/hub-profile.txt (the hub on CPU 2.5 s of 10.0 s, 25 %)" in row.evidence
