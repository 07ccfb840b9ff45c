"""bench.readme: README's Performance section is rewritten between its two markers only, from
a run's results, and README's first two commands stay outside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import goals, readme
from tests.paths import REPO

MACHINE = {"when_utc": "2026-12-01 15:40:00", "load_average_1_5_15": [0.5, 0.4, 0.3]}


def _doc(title: str, rows: list[list[Any]], raw: Any) -> dict[str, Any]:
    table = {"title": title, "columns": ["system", "jobs/s"], "rows": rows, "notes": ["a note"]}
    return {"machine": MACHINE, "tables": [table], "raw": raw}


def test_only_the_text_between_the_markers_changes() -> None:
    text = f"# t\nbefore\n{readme.START}\nold table\n{readme.END}\nafter\n"
    new = readme.replace_section(text, "new table")
    assert new == f"# t\nbefore\n{readme.START}\n\nnew table\n\n{readme.END}\nafter\n"
    assert readme.replace_section(new, "new table") == new  # rewriting is idempotent


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all",
        f"{readme.START}\nonly the start",
        f"{readme.START}\n{readme.START}\n{readme.END}",
        f"{readme.END}\nend before start\n{readme.START}",
    ],
)
def test_missing_repeated_or_swapped_markers_are_refused(text: str) -> None:
    with pytest.raises(readme.SectionError):
        readme.replace_section(text, "body")


def test_readme_holds_the_markers_in_performance_after_its_first_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    start = text.index(readme.START)
    assert text.count(readme.START) == 1 and text.count(readme.END) == 1
    assert text.rindex("## Performance", 0, start) > text.index("<!-- ci:test-command -->")
    assert text.index(".venv/bin/wgpu demo") < start
    section = text[start : text.index(readme.END)]
    assert "## " not in section.replace("### ", "").replace("#### ", "")  # no other top section


def test_the_section_shows_the_run_its_goals_and_its_tables() -> None:
    results = {
        "dispatch": _doc(
            "Dispatch: no-op jobs, 4 consumers, one Redis",
            [["wgpu hub", "900 (800-1,000)"], ["Dramatiq (4 x 1 thread)", "700"]],
            {"dispatch": {"4": {}}},
        ),
        "relay": _doc("Relay overhead", [["added", 2.5]], {"relay": {}}),
    }
    summary = {
        "machine": {
            "cpu": "Xeon",
            "cores": 2,
            "python": "3.11.7",
            "redis": "7.0.15",
            "commit": "abc1234",
        },
        "started_utc": "2026-12-01 15:40:00",
        "ended_utc": "2026-12-01 15:59:00",
        "seconds": 1140.0,
        "argv": {"quick": False, "repeats": 3},
        "load": {
            "start": 0.2,
            "end": 0.4,
            "min": 0.1,
            "median": 0.3,
            "max": 0.9,
            "samples": [{}, {}, {}],
        },
        "parts": [{"name": "dispatch", "seconds": 600.0, "load_start": 0.2, "load_end": 0.9}],
    }
    rows = [
        goals.GoalResult(
            "relay overhead <= 3 ms p50", "added 2.5 ms", "0.83x", goals.REACHED, "relay.json"
        )
    ]
    body = readme.render(results, summary, rows)
    prose = " ".join(body.split())  # the prose is refilled to 100 columns
    assert "2026-12-01 15:40:00 to 15:59:00 UTC (19 min)" in prose
    assert "commit `abc1234`" in prose and "Redis 7.0.15" in prose
    assert "0.1-0.9 (median 0.3) over 3 samples" in prose
    assert "| relay overhead <= 3 ms p50 | added 2.5 ms | 0.83x | reached | relay.json |" in body
    assert "| **wgpu hub** | **900 (800-1,000)** |" in body  # the hub's row stands out
    assert "| Dramatiq (4 x 1 thread) | 700 |" in body
    assert "| dispatch | 10.0 | 0.20 | 0.90 |" in body  # minutes and load per part
    assert "Orchestrator: not measured in this run" in prose
    assert all(len(line) <= 100 for line in body.splitlines() if not line.startswith("|"))


def test_main_rewrites_a_readme_from_a_results_dir(tmp_path: Path, monkeypatch: Any) -> None:
    results = tmp_path / "results"
    results.mkdir()
    readme_path = tmp_path / "README.md"
    readme_path.write_text(f"top\n{readme.START}\nstale\n{readme.END}\nbottom\n")
    monkeypatch.setattr(
        "sys.argv",
        ["bench.readme", "--results", str(results), "--readme", str(readme_path), "--no-charts"],
    )
    readme.main()
    text = readme_path.read_text()
    assert "stale" not in text and text.startswith("top\n") and text.endswith("bottom\n")
    assert "not measured" in text  # no result files: every goal says so
