"""The Rich view of `wgpu update`: one row per GPU with its step, versions and detail."""

from __future__ import annotations

from rich.console import Console

from orchestrator.commands.rollout import progress_table
from orchestrator.rollout.update import SlotUpdate, Step


def test_each_gpu_shows_its_step_and_versions() -> None:
    updates = [
        SlotUpdate(0, "m-gpu0", Step.DONE, "src-aaa", "src-bbb"),
        SlotUpdate(1, "m-gpu1", Step.ROLLED_BACK, "src-aaa", "src-ccc", "not ready within 6s"),
        SlotUpdate(2, "m-gpu2", Step.SKIPPED, "src-aaa", "src-ccc", "an earlier GPU did not"),
    ]
    console = Console(width=120, record=True)
    console.print(progress_table(updates))
    lines = [line.strip() for line in console.export_text().splitlines()]
    row = {line.split()[0]: line for line in lines if line.startswith("gpu")}
    assert "updated" in row["gpu0"] and "src-bbb" in row["gpu0"]
    assert "rolled back" in row["gpu1"] and "not ready within 6s" in row["gpu1"]
    assert "skipped" in row["gpu2"]
    assert SlotUpdate(3, "m-gpu3").to_json()["outcome"] == "waiting"
