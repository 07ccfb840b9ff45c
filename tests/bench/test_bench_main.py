"""`python -m bench` judges the goals from the result files of its own run only, and records the
machine, the load and each part's wall clock in summary.json/md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bench.__main__ as bench_main
from bench import goals


def _write(directory: Path, name: str, when: str) -> None:
    body = {"machine": {"when_utc": when, "load_average_1_5_15": [1.0, 1.0, 1.0]}, "raw": {}}
    (directory / f"{name}.json").write_text(json.dumps(body))


def test_only_files_this_run_wrote_are_judged(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(bench_main, "RESULTS_DIR", tmp_path)
    _write(tmp_path, "relay", "2026-12-01 15:41:00")  # this run
    _write(tmp_path, "cli", "2026-12-01 12:00:00")  # an earlier run
    _write(tmp_path, "sse_load", "2026-12-01 15:42:00")  # not a part of this run
    found = bench_main._this_run("2026-12-01 15:40:00", ["relay", "cli"])
    assert set(found) == {"relay"}


def test_the_summary_keeps_machine_load_parts_and_goals(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(bench_main, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr("bench.report.RESULTS_DIR", tmp_path)
    run = {
        "machine": {
            "cpu": "Xeon",
            "cores": 2,
            "memory_gib": 8.0,
            "os": "Debian",
            "python": "3.11",
            "redis": "7.0.15",
            "commit": "abc1234",
        },
        "started_utc": "2026-12-01 15:40:00",
        "ended_utc": "2026-12-01 16:00:00",
        "seconds": 1200.0,
        "load": {
            "start": 0.5,
            "end": 0.7,
            "min": 0.2,
            "median": 0.5,
            "max": 1.5,
            "samples": [{}] * 41,
        },
        "parts": [{"name": "relay", "seconds": 12.0, "load_start": 0.5, "load_end": 0.6}],
    }
    rows = [goals.GoalResult("relay overhead <= 3 ms p50", "2 ms", "0.67x", goals.REACHED, "-")]
    path = bench_main.write_summary(run, [], rows)
    text = path.read_text()
    assert "2026-12-01 15:40:00 to 2026-12-01 16:00:00 UTC (20 min)" in text
    assert "commit abc1234" in text and "0.2-1.5 (median 0.5) over 41 samples" in text
    assert "| relay | 12.0 | 0.50 | 0.60 |" in text
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["parts"][0]["name"] == "relay"
    assert stored["goals"][0]["verdict"] == goals.REACHED
    assert stored["machine"]["commit"] == "abc1234"
